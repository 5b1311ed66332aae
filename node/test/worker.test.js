'use strict';
// Calls the event loop drives (exec, acquire) and the loop's owner going away: a worker
// thread terminated with an exec in flight takes its calls with it, while the process and
// its other VMs go on; a release asked for during an exec waits for it.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { Worker } = require('node:worker_threads');
const { build } = require('./_image');

const WORKER = `
  const { parentPort, workerData } = require('node:worker_threads');
  const { Image } = require(workerData.pkg);
  (async () => {
    const img = await Image.fromSnapshot(workerData.snapshot);
    const pool = await img.pool({ min: 1, max: 1, acquireTimeoutMs: 300_000 });
    const vm = await pool.acquire();
    parentPort.postMessage('exec started');
    await vm.exec({ argv: ['sleep', '60'] });
    parentPort.postMessage('exec ended');
  })().catch((e) => parentPort.postMessage('failed: ' + e.message));
`;

test('a worker thread terminated mid-exec leaves the process and its other VMs working', async () => {
  const image = await build();
  const w = new Worker(WORKER, { eval: true, workerData: { pkg: require.resolve('..'), snapshot: image.snapshot } });
  const said = [];
  const exited = new Promise((resolve) => w.on('exit', resolve));
  await new Promise((resolve, reject) => {
    w.on('message', (m) => { said.push(m); if (m === 'exec started') resolve(); else reject(new Error(m)); });
    w.on('error', reject);
  });
  // Let the exec get going in the guest, then pull the worker's loop from under it.
  await new Promise((r) => setTimeout(r, 1000));
  await w.terminate();
  assert.equal(await exited, 1, 'terminated');
  assert.deepEqual(said, ['exec started'], 'the exec did not end on its own');

  const pool = await image.pool({ min: 1, max: 1, restoreOnRelease: false, acquireTimeoutMs: 300_000 });
  try {
    const vm = await pool.acquire();
    const r = await vm.exec({ argv: ['echo', 'still here'] });
    assert.equal(r.stdout.toString(), 'still here\n');
    // A release asked for while an exec is in flight waits for it; the exec's output is whole.
    const running = vm.exec({ argv: ['sh', '-c', 'sleep 1; echo finished'] });
    const released = vm.release();
    const [out] = await Promise.all([running, released]);
    assert.equal(out.stdout.toString(), 'finished\n');
    await assert.rejects(vm.exec({ argv: ['true'] }), (e) => e.code === 'pool');
  } finally {
    await pool.shutdown();
  }
});
