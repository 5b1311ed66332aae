'use strict';
// The image the tests share: the guest's own minimal root (as sm's guest tests bake it), a
// workload, a 16 MiB volume filled by a warm-up written in JS. Baked once per snapshot store:
// every test file after the first gets the cached snapshot.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { Image } = require('..');

const data = process.env.SM_NODE_TEST_DATA || fs.mkdtempSync(path.join(os.tmpdir(), 'sm-node-test-'));
const snapshotsDir = process.env.SM_EXAMPLE_SNAPSHOTS || path.join(data, 'snapshots');

/** What the warm-up saw, for the test that checks it (this process's bake only). */
const warmup = { vm: null, calls: 0 };

function build() {
  return Image.build({
    ref: process.env.SM_EXAMPLE_REF || undefined,
    name: 'nodetest',
    memoryMib: 256,
    cmd: ['sleep', '100000'],
    env: { GREETING: 'hi' },
    volumes: [{ hostPath: path.join(data, 'cache.img'), guestPath: '/cache', sizeMib: 16 }],
    warmup: async (vm) => {
      warmup.calls += 1;
      warmup.vm = vm;
      await vm.writeFile('/cache/from-writefile', 'written by the warm-up\n');
      const r = await vm.exec({ argv: ['sh', '-c', 'for i in $(seq 1 20); do echo $i > /cache/f$i; done; echo ok'] });
      if (r.exitCode !== 0 || r.stdout.toString() !== 'ok\n') throw new Error(`warm-up exec: ${r.exitCode}`);
      // The bake waits for this promise: a slow warm-up still lands in the snapshot.
      await new Promise((resolve) => setTimeout(resolve, 300));
      await vm.exec({ argv: ['sh', '-c', 'echo late > /cache/late'] });
    },
    warmupTag: 'v1',
    snapshotsDir,
  });
}

/** Asserts `promise` rejects with an Error of `code`; returns the error. */
async function rejectsWith(promise, code) {
  try {
    await promise;
  } catch (e) {
    if (!(e instanceof Error)) throw new Error(`rejected with a non-Error: ${e}`);
    if (e.code !== code) throw new Error(`want code ${code}, got ${e.code}: ${e.message}`);
    if (e.message.includes('\n')) throw new Error(`not one line: ${JSON.stringify(e.message)}`);
    return e;
  }
  throw new Error(`resolved; want a rejection with code ${code}`);
}

module.exports = { build, warmup, data, snapshotsDir, rejectsWith };
