'use strict';
// Files and snapshots: write a file into a VM and read it back, save the running VM as a
// snapshot, then start a new pool from that snapshot: its VMs see the file at once.
const path = require('node:path');
const { Image } = require('..');
const { ref, snapshotsDir, scratch } = require('./_common');

async function main() {
  const img = await Image.build({ ref, name: 'hello', memoryMib: 256, cmd: ['/bin/sh', '-c', 'sleep infinity'], snapshotsDir });
  const pool = await img.pool({ min: 1, max: 1, restoreOnRelease: true });
  const vm = await pool.acquire();
  await vm.writeFile('/tmp/state/notes.txt', 'written from Node.js\n');
  const back = await vm.readFile('/tmp/state/notes.txt', 'utf8');
  console.log(`read back: ${back.trim()}`);
  const dir = path.join(scratch('files-snapshot'), 'snap');
  await vm.snapshot(dir); // the VM runs on
  await vm.release();
  await pool.shutdown();

  const saved = await Image.fromSnapshot(dir);
  const pool2 = await saved.pool({ min: 1, max: 1 });
  const clone = await pool2.acquire();
  const r = await clone.exec({ argv: ['cat', '/tmp/state/notes.txt'] });
  console.log(`in a clone of the snapshot: ${r.stdout.toString().trim()}`);
  if (r.stdout.toString() !== back) throw new Error('the clone does not have the file');
  await clone.release();
  await pool2.shutdown();
}

main().catch((e) => { console.error(`files-snapshot: ${e.code}: ${e.message}`); process.exit(1); });
