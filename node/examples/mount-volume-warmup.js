'use strict';
// A mount for the source plus a volume for node_modules, filled once by a warm-up: the bake
// runs the warm-up (an async function given the VM) and snapshots the filled volume; every
// VM of the pool starts with it, and writes to its own copy.
const fs = require('node:fs');
const path = require('node:path');
const { Image } = require('..');
const { ref, snapshotsDir, scratch } = require('./_common');

async function main() {
  const project = scratch('mount-volume-warmup');
  fs.writeFileSync(path.join(project, 'package.json'), '{"name": "demo", "dependencies": {"left-pad": "1"}}\n');
  const img = await Image.build({
    ref, name: 'demo', memoryMib: 256, snapshotsDir,
    cmd: ['/bin/sh', '-c', 'sleep infinity'],
    mounts: [{ hostPath: project, guestTag: 'workspace', guestPath: '/work/src', symlinks: 'opaque' }],
    volumes: [{ hostPath: path.join(project, '..', `nm-${process.pid}.img`), guestPath: '/work/node_modules', sizeMib: 64 }],
    warmup: async (vm) => {
      // Stands in for `npm ci`: read the manifest from the mount, fill the volume.
      const manifest = JSON.parse((await vm.readFile('/work/src/package.json')).toString());
      for (const dep of Object.keys(manifest.dependencies)) {
        await vm.writeFile(`/work/node_modules/${dep}/index.js`, 'module.exports = (s, n) => s.padStart(n);\n');
      }
      await vm.exec({ argv: ['sh', '-c', 'echo warm > /work/node_modules/x'] });
    },
    warmupTag: 'v1',
  });
  console.log(`baked ${img.snapshot}${img.wasCached ? ' (cached)' : ''}`);
  const pool = await img.pool({ min: 1, max: 4, restoreOnRelease: true });
  const vm = await pool.acquire();
  const r = await vm.exec({ argv: ['sh', '-c', 'cat /work/node_modules/x; ls /work/node_modules/left-pad'], timeoutMs: 10_000 });
  console.log(r.stdout.toString().trim(), r.exitCode);
  if (!r.stdout.toString().startsWith('warm\n')) throw new Error('the volume is not warm');
  await vm.release();
  await pool.shutdown();
}

main().catch((e) => { console.error(`mount-volume-warmup: ${e.code}: ${e.message}`); process.exit(1); });
