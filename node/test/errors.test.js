'use strict';
// Errors reject with an Error whose message is sm's one line and whose code says what
// failed: args, image, boot, exec (a failed warm-up), pool, timeout, snapshot, io.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { Image } = require('..');
const { build, data, snapshotsDir, rejectsWith } = require('./_image');

test('args: bad options are refused before anything starts', async () => {
  await rejectsWith(Image.build({}), 'args');
  await rejectsWith(Image.build({ name: 'x', mounts: [{ hostPath: data }] }), 'args');
  await rejectsWith(Image.build({ name: 'x', listenerRequired: true }), 'args');
  await rejectsWith(Image.build({ name: 'x', warmup: 42 }), 'args');
  await rejectsWith(Image.build({ name: 'x', network: 'bridge' }), 'args');
  await rejectsWith(Image.build({ name: 'x', egress: ['allow=nowhere'] }), 'args');
  await rejectsWith(Image.build({ name: 'x', dns: 'not-an-address' }), 'args');
  await rejectsWith(Image.build({ name: 'x', network: 'none', egress: ['deny=any'] }), 'args');
});

test('image: an image that cannot be read', async () => {
  const e = await rejectsWith(
    Image.build({ name: 'noimage', ref: `oci-layout:${path.join(data, 'no-such-layout')}`, snapshotsDir }),
    'image',
  );
  assert.match(e.message, /no-such-layout/);
});

test('snapshot: a directory that is not a snapshot', async () => {
  const e = await rejectsWith(Image.fromSnapshot(path.join(data, 'nothing-here')), 'snapshot');
  assert.match(e.message, /nothing-here/);
});

test('boot: a workload that ends before the snapshot', async () => {
  const e = await rejectsWith(Image.build({ name: 'ends', cmd: ['true'], memoryMib: 256, snapshotsDir }), 'boot');
  assert.match(e.message, /a workload must keep running/);
});

test('exec: a warm-up that throws fails the bake with its message', async () => {
  const e = await rejectsWith(
    Image.build({
      name: 'badwarmup', memoryMib: 256, snapshotsDir,
      warmup: async (vm) => {
        const r = await vm.exec({ argv: ['sh', '-c', 'exit 3'] });
        throw new Error(`npm ci exited ${r.exitCode}`);
      },
    }),
    'exec',
  );
  assert.match(e.message, /warm-up/);
  assert.match(e.message, /npm ci exited 3/);
  assert.ok(!fs.existsSync(path.join(snapshotsDir, 'badwarmup', 'snapshot')), 'a failed bake stores nothing');
});

test('pool and timeout: bad pool options, an acquire beyond max, a shut-down pool', async () => {
  const image = await build();
  await rejectsWith(image.pool({ min: 3, max: 2 }), 'pool');
  const pool = await image.pool({ min: 1, max: 1, acquireTimeoutMs: 1500 });
  // The acquire timeout is the pool's: let its one VM be restored first.
  for (let i = 0; i < 600 && pool.counts().ready < 1; i++) await new Promise((r) => setTimeout(r, 200));
  const vm = await pool.acquire();
  const t = Date.now();
  const e = await rejectsWith(pool.acquire(), 'timeout');
  assert.ok(Date.now() - t >= 1400, `gave up after ${Date.now() - t} ms`);
  assert.match(e.message, /max 1/);
  await vm.release();
  await pool.shutdown();
  await rejectsWith(pool.acquire(), 'pool');
});
