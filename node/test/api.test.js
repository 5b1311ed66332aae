'use strict';
// Every method of the API against real guests: Image.build (warm-up awaited, cache hit),
// Image.fromSnapshot, image.pool, pool.acquire/counts/shutdown, vm.exec/spawn/writeFile/
// readFile/exposeTcp/snapshot/release, the child's methods, and the forwarder.
const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const { Image } = require('..');
const { build, warmup, data, rejectsWith } = require('./_image');

let image;
let pool;

before(async () => {
  image = await build();
  pool = await image.pool({ min: 1, max: 2, restoreOnRelease: true, acquireTimeoutMs: 120_000 });
});

after(async () => {
  if (pool) await pool.shutdown();
});

test('Image.build bakes once and the second build is a cache hit', async () => {
  assert.match(image.snapshot, /nodetest/);
  const again = await build();
  assert.equal(again.wasCached, true);
  assert.equal(again.snapshot, image.snapshot);
});

test('the warm-up was awaited and its VM is of no use after it', async (t) => {
  if (!warmup.vm) return t.skip('the snapshot came from an earlier bake (cache hit)');
  assert.equal(warmup.calls, 1);
  await rejectsWith(warmup.vm.exec({ argv: ['true'] }), 'pool');
});

test('a pooled VM sees the warm volume, the workload and the baked environment', async () => {
  const vm = await pool.acquire();
  try {
    const r = await vm.exec({
      argv: ['sh', '-c', 'cat /cache/from-writefile /cache/late; ls /cache | grep -c "^f[0-9]"; pidof sleep >/dev/null && echo workload; echo $GREETING'],
    });
    assert.equal(r.exitCode, 0, r.stderr.toString());
    assert.equal(r.stdout.toString(), 'written by the warm-up\nlate\n20\nworkload\nhi\n');
  } finally {
    await vm.release();
  }
});

test('exec: stdout, stderr, exit code, env, cwd, stdin', async () => {
  const vm = await pool.acquire();
  try {
    const r = await vm.exec({
      argv: ['sh', '-c', 'echo out; echo err >&2; echo "$A $B"; pwd; cat; exit 7'],
      env: { A: 'one', B: 'two' },
      cwd: '/tmp',
      stdin: 'from stdin\n',
      timeoutMs: 30_000,
    });
    assert.ok(Buffer.isBuffer(r.stdout) && Buffer.isBuffer(r.stderr));
    assert.equal(r.stdout.toString(), 'out\none two\n/tmp\nfrom stdin\n');
    assert.equal(r.stderr.toString(), 'err\n');
    assert.equal(r.exitCode, 7);
    assert.equal(r.signal ?? null, null);
    const bin = await vm.exec({ argv: ['cat'], stdin: Buffer.from([0, 1, 2, 255]) });
    assert.deepEqual([...bin.stdout], [0, 1, 2, 255]);
    const e = await rejectsWith(vm.exec({ argv: ['sh', '-c', 'echo before; sleep 30'], timeoutMs: 500 }), 'timeout');
    assert.equal(e.stdout.toString(), 'before\n');
    await rejectsWith(vm.exec({ argv: [] }), 'args');
    const missing = await vm.exec({ argv: ['/no/such/command'] }).then((r) => r.exitCode, (e) => e.code);
    assert.ok(missing === 127 || missing === 'exec', `a missing command: ${missing}`);
  } finally {
    await vm.release();
  }
});

test('writeFile and readFile move bytes both ways', async () => {
  const vm = await pool.acquire();
  try {
    const blob = Buffer.alloc(300_000, 7);
    blob[0] = 0;
    await vm.writeFile('/tmp/a/b/blob', blob, 0o600);
    const back = await vm.readFile('/tmp/a/b/blob');
    assert.ok(back.equals(blob));
    const r = await vm.exec({ argv: ['stat', '-c', '%a %s', '/tmp/a/b/blob'] });
    assert.equal(r.stdout.toString(), '600 300000\n');
    await vm.writeFile('/tmp/text', 'text\n');
    assert.equal(await vm.readFile('/tmp/text', 'utf8'), 'text\n');
    await rejectsWith(vm.readFile('/tmp/a/b/blob', { maxBytes: 1000 }), 'io');
    await rejectsWith(vm.readFile('/no/such/file'), 'io');
  } finally {
    await vm.release();
  }
});

test('spawn: stdin, stdout, stderr as they come, kill, wait', async () => {
  const vm = await pool.acquire();
  try {
    const child = await vm.spawn({ argv: ['sh', '-c', 'read line; echo "got $line"; echo warn >&2; read rest; echo "then $rest"; exit 4'] });
    await child.writeStdin('first\n');
    assert.equal((await child.readStdout()).toString(), 'got first\n');
    assert.equal((await child.readStderr()).toString(), 'warn\n');
    await child.writeStdin(Buffer.from('second\n'));
    await child.closeStdin();
    let rest = '';
    for (let c; (c = await child.readStdout()) !== null;) rest += c;
    assert.equal(rest, 'then second\n');
    const ended = await child.wait();
    assert.equal(ended.exitCode, 4);
    assert.equal(ended.signal ?? null, null);
    assert.equal(ended.timedOut, false);

    const sleeper = await vm.spawn({ argv: ['sleep', '60'] });
    await sleeper.kill('SIGKILL');
    const end = await sleeper.wait();
    assert.equal(end.signal, 9);
    assert.equal(end.exitCode, 137);
    const term = await vm.spawn({ argv: ['sleep', '60'] });
    await term.kill();
    assert.equal((await term.wait()).signal, 15);
    await rejectsWith(term.kill('SIGNOPE'), 'args');

    const streamed = await vm.spawn({ argv: ['tr', 'a-z', 'A-Z'] });
    streamed.stdin.end('streams too\n');
    let out = '';
    for await (const c of streamed.stdout) out += c;
    assert.equal(out, 'STREAMS TOO\n');
    assert.equal((await streamed.wait()).exitCode, 0);

    const limited = await vm.spawn({ argv: ['sleep', '60'], timeoutMs: 300 });
    assert.equal((await limited.wait()).timedOut, true);
  } finally {
    await vm.release();
  }
});

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

test('exposeTcp forwards a host port to a guest listener; close stops it', async () => {
  const vm = await pool.acquire();
  try {
    await vm.writeFile('/tmp/www/index.html', 'served\n');
    const server = await vm.spawn({ argv: ['httpd', '-f', '-p', '8080', '-h', '/tmp/www'] });
    const fwd = await vm.exposeTcp({ guestPort: 8080, hostPort: 0 });
    assert.match(fwd.address, /^127\.0\.0\.1:\d+$/);
    assert.equal(fwd.address, `${fwd.host}:${fwd.port}`);
    let body;
    for (let i = 0; i < 50 && body === undefined; i++) {
      body = await get(`http://${fwd.address}/index.html`).catch(() => undefined);
      if (body === undefined || body === '') { body = undefined; await new Promise((r) => setTimeout(r, 200)); }
    }
    assert.equal(body, 'served\n');
    await fwd.close();
    await assert.rejects(get(`http://${fwd.address}/index.html`));
    await server.kill('SIGKILL');
    await server.wait();
    // A host port in use is refused.
    const busy = net.createServer();
    await new Promise((r) => busy.listen(0, '127.0.0.1', r));
    await rejectsWith(vm.exposeTcp({ guestPort: 8080, hostPort: busy.address().port }), 'io');
    busy.close();
  } finally {
    await vm.release();
  }
});

test('snapshot of a running VM, then Image.fromSnapshot pools from it', async () => {
  const vm = await pool.acquire();
  const dir = path.join(data, `mid-${process.pid}`);
  try {
    await vm.exec({ argv: ['sh', '-c', 'echo kept > /tmp/mark; echo mine > /cache/mine'] });
    await vm.snapshot(dir);
    assert.equal((await vm.exec({ argv: ['cat', '/tmp/mark'] })).stdout.toString(), 'kept\n', 'the VM runs on');
    await rejectsWith(vm.snapshot(dir), 'snapshot'); // it exists now
  } finally {
    await vm.release();
  }
  const saved = await Image.fromSnapshot(dir);
  assert.equal(saved.snapshot, dir);
  const p = await saved.pool({ min: 1, max: 1 });
  try {
    const c = await p.acquire();
    assert.equal((await c.exec({ argv: ['cat', '/tmp/mark', '/cache/mine'] })).stdout.toString(), 'kept\nmine\n');
    await c.release();
  } finally {
    await p.shutdown();
  }
});

test('release: a fresh clone next (restoreOnRelease), the same VM without it; calls after it reject', async () => {
  const vm = await pool.acquire();
  await vm.exec({ argv: ['sh', '-c', 'echo dirty > /tmp/dirty'] });
  await vm.release();
  await rejectsWith(vm.exec({ argv: ['true'] }), 'pool');
  await rejectsWith(vm.readFile('/tmp/dirty'), 'pool');
  const next = await pool.acquire();
  assert.equal((await next.exec({ argv: ['sh', '-c', 'cat /tmp/dirty 2>/dev/null; echo clean'] })).stdout.toString(), 'clean\n');
  await next.release();

  const reuse = await image.pool({ min: 1, max: 1, restoreOnRelease: false });
  try {
    const a = await reuse.acquire();
    await a.exec({ argv: ['sh', '-c', 'echo kept > /tmp/kept'] });
    await a.release();
    const b = await reuse.acquire();
    assert.equal((await b.exec({ argv: ['cat', '/tmp/kept'] })).stdout.toString(), 'kept\n');
    const c = reuse.counts();
    assert.deepEqual(c, { ready: 0, inUse: 1, restoring: 0 });
    await b.release();
  } finally {
    await reuse.shutdown();
  }
  await rejectsWith(reuse.acquire(), 'pool');

  // A VM still out when its pool shuts down is stopped by its release (with its forward).
  const late = await image.pool({ min: 1, max: 1 });
  const out = await late.acquire();
  const fwd = await out.exposeTcp({ guestPort: 8080 });
  await late.shutdown();
  await out.release();
  await rejectsWith(out.exec({ argv: ['true'] }), 'pool');
  await assert.rejects(get(`http://${fwd.address}/`));
});

test('network: the host answers a clone only where its pool egress rules allow', async () => {
  const server = net.createServer((s) => {
    s.once('data', () => s.end('HTTP/1.0 200 OK\r\n\r\nhello from node\n'));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const fetch = { argv: ['sh', '-c', `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc 10.0.2.2 ${port}`], timeoutMs: 30_000 };
  try {
    const open = await image.pool({ min: 0, max: 1, egress: [`allow=host:${port}`] });
    try {
      const vm = await open.acquire();
      const r = await vm.exec(fetch);
      assert.equal(r.exitCode, 0, r.stderr.toString());
      assert.match(r.stdout.toString(), /hello from node/);
      await vm.release();
    } finally {
      await open.shutdown();
    }
    // The image's own rules (the default): the host's loopback is refused at once.
    const vm = await pool.acquire();
    try {
      const r = await vm.exec(fetch);
      assert.notEqual(r.exitCode, 0);
      assert.match(r.stderr.toString(), /refused/);
    } finally {
      await vm.release();
    }
    await rejectsWith(image.pool({ egress: ['allow=nowhere'] }), 'args');
  } finally {
    server.close();
  }
});
