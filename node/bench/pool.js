'use strict';
// Pool cycles from JS: acquire -> exec `true` -> release, in a pool of one VM handed out
// again as left (restoreOnRelease: false). Prints one JSON line: { n, p50, p99, samples }
// in ms. SM_BENCH_SNAPSHOT: the snapshot to pool from (else a bake of the guest's root);
// SM_BENCH_CYCLES: how many (default 200). With SM_BENCH_STEPPED=1 it runs one cycle per
// line `cycle` read on stdin and prints its times (ms: total, acquire, exec, release) and what
// the JS thread used meanwhile (CPU ms, ms waiting for a CPU, sleeps, preemptions) as one
// line once the VM is parked again, until stdin ends:
// integration/tests/guest/node.rs (node::binding_overhead, run by hand) alternates these
// with the same cycles through Rust, so that the machine's drift falls on both alike.
const fs = require('node:fs');
const { Image } = require('..');

async function main() {
  const cycles = Number(process.env.SM_BENCH_CYCLES || 200);
  const img = process.env.SM_BENCH_SNAPSHOT
    ? await Image.fromSnapshot(process.env.SM_BENCH_SNAPSHOT)
    : await Image.build({ name: 'bench', memoryMib: 256, cmd: ['sleep', '100000'] });
  const pool = await img.pool({ min: 1, max: 1, restoreOnRelease: false, acquireTimeoutMs: 300_000 });
  // Times one cycle: [total, acquire, exec, release] in ms.
  const steps = async () => {
    const t0 = process.hrtime.bigint();
    const vm = await pool.acquire();
    const t1 = process.hrtime.bigint();
    const r = await vm.exec({ argv: ['true'] });
    if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
    const t2 = process.hrtime.bigint();
    await vm.release();
    const t3 = process.hrtime.bigint();
    return [t3 - t0, t1 - t0, t2 - t1, t3 - t2].map((d) => Number(d) / 1e6);
  };
  const cycle = async () => (await steps())[0];
  // What the JS thread used: CPU and waiting-for-a-CPU ms (schedstat), sleeps and
  // preemptions (status), as the Rust side's `thread_use`.
  const threadUse = () => {
    const [run, wait] = fs.readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ').map(Number);
    const status = fs.readFileSync('/proc/thread-self/status', 'utf8');
    const count = (name) => Number((status.match(new RegExp(`^${name}:\\s+(\\d+)`, 'm')) || [])[1]);
    return [run / 1e6, wait / 1e6, count('voluntary_ctxt_switches'), count('nonvoluntary_ctxt_switches')];
  };
  if (process.env.SM_BENCH_STEPPED) {
    const lines = require('readline').createInterface({ input: process.stdin });
    for await (const line of lines) {
      if (line !== 'cycle') break;
      const before = threadUse();
      const times = await steps();
      const used = threadUse().map((n, i) => n - before[i]);
      // The pause the release started finishes before the next cycle (either side's).
      const parked = ({ ready, inUse, restoring }) => ready === 1 && inUse === 0 && restoring === 0;
      while (!parked(pool.counts())) await new Promise((r) => setTimeout(r, 1));
      console.log([...times, ...used].map((n) => n.toFixed(4)).join(' '));
    }
    await pool.shutdown();
    return;
  }
  for (let i = 0; i < 10; i++) await cycle();
  const samples = [];
  for (let i = 0; i < cycles; i++) samples.push(await cycle());
  await pool.shutdown();
  const sorted = [...samples].sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  console.log(JSON.stringify({ n: samples.length, p50: q(0.5), p99: q(0.99), samples }));
}

main().catch((e) => { console.error(`bench: ${e.code}: ${e.message}`); process.exit(1); });
