'use strict';
// Pool cycles from JS: acquire -> exec `true` -> release, in a pool of one VM handed out
// again as left (restoreOnRelease: false). Prints one JSON line: { n, p50, p99, samples }
// in ms. SM_BENCH_SNAPSHOT: the snapshot to pool from (else a bake of the guest's root);
// SM_BENCH_CYCLES: how many (default 200). integration/tests/guest/node.rs
// (node::binding_overhead, run by hand) compares these with the same through Rust.
const { Image } = require('..');

async function main() {
  const cycles = Number(process.env.SM_BENCH_CYCLES || 200);
  const img = process.env.SM_BENCH_SNAPSHOT
    ? await Image.fromSnapshot(process.env.SM_BENCH_SNAPSHOT)
    : await Image.build({ name: 'bench', memoryMib: 256, cmd: ['sleep', '100000'] });
  const pool = await img.pool({ min: 1, max: 1, restoreOnRelease: false, acquireTimeoutMs: 300_000 });
  const cycle = async () => {
    const t = process.hrtime.bigint();
    const vm = await pool.acquire();
    const r = await vm.exec({ argv: ['true'] });
    if (r.exitCode !== 0) throw new Error(`true exited ${r.exitCode}`);
    await vm.release();
    return Number(process.hrtime.bigint() - t) / 1e6;
  };
  for (let i = 0; i < 10; i++) await cycle();
  const samples = [];
  for (let i = 0; i < cycles; i++) samples.push(await cycle());
  await pool.shutdown();
  const sorted = [...samples].sort((a, b) => a - b);
  const q = (p) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
  console.log(JSON.stringify({ n: samples.length, p50: q(0.5), p99: q(0.99), samples }));
}

main().catch((e) => { console.error(`bench: ${e.code}: ${e.message}`); process.exit(1); });
