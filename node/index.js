'use strict';
// @sm/microvm: sm's Node.js binding. The native addon (sm.node, built by ./build.sh) does
// the work off the JS thread; this file shapes the API: env objects, strings as bytes,
// warm-up functions, signal names, streams.

const path = require('node:path');
const { Readable, Writable } = require('node:stream');

function loadAddon() {
  const candidates = [
    process.env.SM_NODE_ADDON,
    path.join(__dirname, 'sm.node'),
    path.join(__dirname, '..', 'target', 'release', 'libsm_node.so'),
  ].filter(Boolean);
  const errors = [];
  for (const file of candidates) {
    try {
      return require(file);
    } catch (e) {
      errors.push(`${file}: ${e.message}`);
    }
  }
  throw new Error(`@sm/microvm: the native addon is missing (run node/build.sh): ${errors.join('; ')}`);
}

const native = loadAddon();

// The guest tools (sm-vmm, the backends) are found beside the sm binary or in SM_BIN_DIR;
// in a source checkout they are in target/release.
if (!process.env.SM_BIN_DIR) {
  const built = path.join(__dirname, '..', 'target', 'release');
  try {
    require('node:fs').accessSync(path.join(built, 'sm-vmm'));
    process.env.SM_BIN_DIR = built;
  } catch {}
}

const SIGNALS = { SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGKILL: 9, SIGUSR1: 10, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15, SIGCONT: 18, SIGSTOP: 19 };

function argsError(message) {
  const e = new Error(message);
  e.code = 'args';
  return e;
}

/** `{K: V}` or `[[K, V]]` or `['K=V']` to `['K=V']`, order kept. */
function envList(env) {
  if (env == null) return undefined;
  if (Array.isArray(env)) return env.map((e) => (Array.isArray(e) ? `${e[0]}=${e[1]}` : String(e)));
  if (typeof env === 'object') return Object.entries(env).map(([k, v]) => `${k}=${v}`);
  throw argsError('env: want an object of strings');
}

function bytes(data) {
  if (data == null) return undefined;
  if (Buffer.isBuffer(data)) return data;
  if (typeof data === 'string') return Buffer.from(data);
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw argsError('want a string, Buffer or Uint8Array');
}

function execOptions(o) {
  if (Array.isArray(o)) o = { argv: o };
  if (!o || !Array.isArray(o.argv) || o.argv.length === 0) throw argsError('exec: argv must be a non-empty array');
  return {
    argv: o.argv.map(String),
    env: envList(o.env),
    cwd: o.cwd,
    stdin: bytes(o.stdin),
    timeoutMs: o.timeoutMs,
  };
}

/** Runs `fn` and turns a synchronous throw into a rejection. */
async function call(fn) {
  return fn();
}

class Child {
  constructor(raw) {
    this._raw = raw;
    this._stdout = null;
    this._stderr = null;
    this._stdin = null;
  }
  writeStdin(data) { return call(() => this._raw.writeStdin(bytes(data))); }
  closeStdin() { return this._raw.closeStdin(); }
  readStdout(maxBytes) { return this._raw.readStdout(maxBytes); }
  readStderr(maxBytes) { return this._raw.readStderr(maxBytes); }
  kill(signal = 'SIGTERM') {
    return call(() => {
      const n = typeof signal === 'number' ? signal : SIGNALS[signal];
      if (n === undefined) throw argsError(`kill: unknown signal ${signal}`);
      return this._raw.kill(n);
    });
  }
  wait() { return this._raw.wait(); }
  /** stdout as a Readable stream (read as it comes). */
  get stdout() { return (this._stdout ??= readable((n) => this._raw.readStdout(n))); }
  /** stderr as a Readable stream. */
  get stderr() { return (this._stderr ??= readable((n) => this._raw.readStderr(n))); }
  /** stdin as a Writable stream; end() closes it. */
  get stdin() {
    return (this._stdin ??= new Writable({
      write: (chunk, _enc, cb) => this._raw.writeStdin(chunk).then(() => cb(), cb),
      final: (cb) => this._raw.closeStdin().then(() => cb(), cb),
    }));
  }
}

function readable(read) {
  let reading = false;
  return new Readable({
    read(size) {
      if (reading) return;
      reading = true;
      read(Math.max(size, 16384)).then(
        (chunk) => { reading = false; this.push(chunk); },
        (e) => { reading = false; this.destroy(e); },
      );
    },
  });
}

class Vm {
  constructor(raw) { this._raw = raw; }
  /** Runs a command to its end: `{ stdout, stderr, exitCode, signal }`. */
  exec(options) {
    try {
      return this._raw.exec(execOptions(options));
    } catch (e) {
      return Promise.reject(e);
    }
  }
  /** Starts a command; drive it through the child. */
  spawn(options) { return call(async () => new Child(await this._raw.spawn(execOptions(options)))); }
  writeFile(file, data, mode) { return call(() => this._raw.writeFile(String(file), bytes(data), mode)); }
  readFile(file, options) {
    return call(async () => {
      const o = typeof options === 'string' ? { encoding: options } : options || {};
      const b = await this._raw.readFile(String(file), o.maxBytes);
      return o.encoding ? b.toString(o.encoding) : b;
    });
  }
  exposeTcp(options) {
    return call(() => {
      const o = typeof options === 'number' ? { guestPort: options } : options || {};
      if (!Number.isInteger(o.guestPort)) throw argsError('exposeTcp: guestPort must be a port number');
      return this._raw.exposeTcp({ guestPort: o.guestPort, hostPort: o.hostPort ?? 0 });
    });
  }
  snapshot(dir) { return call(() => this._raw.snapshot(path.resolve(String(dir)))); }
  release() {
    // Most releases need no thread: the pool takes the VM back without waiting.
    return this._raw.releaseNow() ? Promise.resolve() : this._raw.release();
  }
}

function wrapVm(raw) { return new Vm(raw); }

class Pool {
  constructor(raw) { this._raw = raw; }
  acquire() { return this._raw.acquire().then(wrapVm); }
  counts() { return this._raw.counts(); }
  shutdown() { return this._raw.shutdown(); }
}

function buildOptions(o) {
  if (!o || typeof o.name !== 'string' || o.name === '') throw argsError('Image.build: name is required');
  const { warmup, env, ...rest } = o;
  const opts = { ...rest, env: envList(env) };
  if (typeof o.cmd === 'string') opts.cmd = ['/bin/sh', '-c', o.cmd];
  if (o.extraKernelArgs && Array.isArray(o.extraKernelArgs)) opts.extraKernelArgs = o.extraKernelArgs.join(' ');
  for (const k of ['mounts', 'volumes', 'extraFiles']) {
    if (opts[k]) opts[k] = opts[k].map((m) => ({ ...m, hostPath: path.resolve(m.hostPath) }));
  }
  if (opts.snapshotsDir) opts.snapshotsDir = path.resolve(opts.snapshotsDir);
  let fn;
  if (typeof warmup === 'string') opts.warmupShell = warmup;
  else if (typeof warmup === 'function') {
    // The bake awaits the promise of this; the VM given to it is usable until it settles.
    fn = async (rawVm) => { await warmup(new Vm(rawVm)); };
  } else if (warmup != null) throw argsError('warmup: want an async function or a shell command line');
  return [opts, fn];
}

class Image {
  constructor(raw) { this._raw = raw; }
  /** Bakes (boot, workload, warm-up, snapshot) or finds the identical bake's snapshot. */
  static build(options) {
    return call(async () => {
      const [opts, fn] = buildOptions(options);
      return new Image(await native.Image.build(opts, fn));
    });
  }
  /** The snapshot in `dir` (one `vm.snapshot`, `sm snapshot` or a bake wrote). */
  static fromSnapshot(dir) {
    return call(async () => new Image(await native.Image.fromSnapshot(path.resolve(String(dir)))));
  }
  get snapshot() { return this._raw.snapshot; }
  get wasCached() { return this._raw.wasCached; }
  async pool(options = {}) { return new Pool(await this._raw.pool(options)); }
}

module.exports = { Image, Pool, Vm, Child, native, version: native.version() };
