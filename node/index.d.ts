// Types of @sm/microvm (hand-written; checked against index.js and src/lib.rs).
/// <reference types="node" />
import type { Readable, Writable } from 'node:stream';

/** What failed: every rejection is an `Error` with one of these as `code`. */
export type ErrorCode = 'args' | 'image' | 'boot' | 'timeout' | 'exec' | 'pool' | 'snapshot' | 'io';

/** The error every call rejects with: `message` is sm's one line. */
export interface SmError extends Error {
  code: ErrorCode;
  /** Output of a command that timed out (`code: 'timeout'` from `vm.exec`). */
  stdout?: Buffer;
  stderr?: Buffer;
}

export type Env = Record<string, string> | Array<[string, string]> | string[];

export interface Mount {
  /** The host directory (made absolute). */
  hostPath: string;
  /** Where the guest sees it (absolute). Default: `/mnt/<guestTag>`. */
  guestPath?: string;
  /** The share's name; without `guestPath` it is mounted at `/mnt/<guestTag>`. */
  guestTag?: string;
  /** `opaque` (default: links kept verbatim both ways, as npm makes them), `deny` or `follow`. */
  symlinks?: 'opaque' | 'deny' | 'follow';
  readOnly?: boolean;
}

export interface Volume {
  /** The host image file: created sparse and formatted ext4 if missing, kept after. */
  hostPath: string;
  /** Where the guest mounts it (absolute). */
  guestPath: string;
  /** Size of a new volume in MiB (default 1024). */
  sizeMib?: number;
}

export interface ExtraFile {
  hostPath: string;
  guestPath: string;
  /** Permission bits (default 0o644). */
  mode?: number;
}

export interface BuildOptions {
  /** A registry reference, `oci-layout:DIR`, `oci-archive:FILE` or `docker-archive:FILE`;
   * none: the guest's own minimal root (busybox). */
  ref?: string;
  /** The snapshot's name in the store. */
  name: string;
  /** Guest memory in MiB (default 256). */
  memoryMib?: number;
  /** Virtual CPUs (default 1). */
  vcpus?: number;
  /** The workload (a string runs under `/bin/sh -c`): it keeps running in the snapshot and
   * in every clone; none: the guest idles. */
  cmd?: string[] | string;
  /** Environment for the workload, the warm-up's shell and later commands. */
  env?: Env;
  /** Working directory (default: the image's). */
  cwd?: string;
  mounts?: Mount[];
  volumes?: Volume[];
  /** Host files copied into the guest before the warm-up (their contents are part of the cache key). */
  extraFiles?: ExtraFile[];
  /** Kernel command-line parameters after sm's own. */
  extraKernelArgs?: string | string[];
  /** Run after the workload started: an async function given the VM (the bake awaits its
   * promise; a rejection fails the bake with code `exec`), or a shell command line. */
  warmup?: ((vm: Vm) => Promise<void> | void) | string;
  /** Bump to bake again with otherwise unchanged inputs (a warm-up function is not hashed). */
  warmupTag?: string;
  /** Wait until the workload listens on `guestPort` before the warm-up and the snapshot. */
  listenerRequired?: boolean;
  /** The guest's network during the warm-up and in every clone: `"user"` (default:
   * outbound through passt, the host's loopback denied) or `"none"` (loopback only). */
  network?: "user" | "none";
  /** Egress rules as for `sm run --egress`, in order, after the defaults `allow=any`
   * `deny=host`; the last matching rule wins (`"allow=host:8080"`, `"deny=10.0.0.0/8"`). */
  egress?: string[];
  /** The host resolver the guest's DNS queries go to (default: the host's). */
  dns?: string;
  guestPort?: number;
  /** Where snapshots go (default: the store in sm's home). */
  snapshotsDir?: string;
}

export interface PoolOptions {
  /** VMs kept restored and paused, ready to hand out (default 1). */
  min?: number;
  /** VMs at most at once, ready, handed out or being restored (default 4). */
  max?: number;
  /** A released VM is replaced by a fresh clone (default true); else it is handed out again as left. */
  restoreOnRelease?: boolean;
  /** Ready VMs above `min` unused this long are stopped (default 300000). */
  idleTimeoutMs?: number;
  /** How long `acquire()` waits for a VM (default 60000), then rejects with code `timeout`. */
  acquireTimeoutMs?: number;
  /** The clones' egress rules, replacing the image's (default: the image's): a warm-up
   * fetches dependencies, the clones reach only what they need. */
  egress?: string[];
}

export interface ExecOptions {
  argv: string[];
  /** Replaces the default environment except `PATH` (kept unless set). */
  env?: Env;
  cwd?: string;
  /** Bytes for stdin (exec only; spawn has `writeStdin`). */
  stdin?: string | Buffer | Uint8Array;
  /** Kill the command (SIGKILL to its process group) after this: exec rejects with code `timeout`. */
  timeoutMs?: number;
}

export interface ExecResult {
  stdout: Buffer;
  stderr: Buffer;
  /** As a shell reports it: 128 + N after signal N. */
  exitCode: number;
  signal?: number | null;
}

export interface ExitStatus {
  exitCode: number;
  signal?: number | null;
  timedOut: boolean;
}

export interface Forwarder {
  /** `127.0.0.1:PORT`. */
  readonly address: string;
  readonly host: string;
  readonly port: number;
  /** Stops accepting (open connections finish on their own). */
  close(): Promise<void>;
}

export declare class Child {
  private constructor();
  writeStdin(data: string | Buffer | Uint8Array): Promise<void>;
  closeStdin(): Promise<void>;
  /** The next bytes (up to `maxBytes`, default 64 KiB), or `null` at the end. */
  readStdout(maxBytes?: number): Promise<Buffer | null>;
  readStderr(maxBytes?: number): Promise<Buffer | null>;
  /** A signal name or number (default SIGTERM). */
  kill(signal?: NodeJS.Signals | number): Promise<void>;
  /** The end (stdin is closed first if still open). */
  wait(): Promise<ExitStatus>;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly stdin: Writable;
}

export declare class Vm {
  private constructor();
  exec(options: ExecOptions | string[]): Promise<ExecResult>;
  spawn(options: ExecOptions | string[]): Promise<Child>;
  /** Atomically; parent directories are created. */
  writeFile(path: string, data: string | Buffer | Uint8Array, mode?: number): Promise<void>;
  readFile(path: string): Promise<Buffer>;
  readFile(path: string, encoding: BufferEncoding): Promise<string>;
  readFile(path: string, options: { encoding?: BufferEncoding; maxBytes?: number }): Promise<Buffer | string>;
  /** Host 127.0.0.1:`hostPort` (0 or none: any free port) to guest `guestPort`. */
  exposeTcp(options: { guestPort: number; hostPort?: number } | number): Promise<Forwarder>;
  /** Saves the running VM into the new directory `dir` (it runs on); `Image.fromSnapshot(dir)` pools from it. */
  snapshot(dir: string): Promise<void>;
  /** Gives it back to its pool (returns at once); its forwarders close, later calls reject with code `pool`. */
  release(): Promise<void>;
}

export declare class Pool {
  private constructor();
  acquire(): Promise<Vm>;
  counts(): { ready: number; inUse: number; restoring: number };
  /** Stops every VM of the pool (handed-out ones as they are released). */
  shutdown(): Promise<void>;
}

export declare class Image {
  private constructor();
  /** Bakes (boot, workload, warm-up, snapshot), or finds the snapshot an identical bake made. */
  static build(options: BuildOptions): Promise<Image>;
  /** A snapshot directory (`vm.snapshot`, `sm snapshot` or a bake wrote it), verified. */
  static fromSnapshot(dir: string): Promise<Image>;
  readonly snapshot: string;
  /** The build was a cache hit: nothing booted. */
  readonly wasCached: boolean;
  pool(options?: PoolOptions): Promise<Pool>;
}

export declare const version: string;
