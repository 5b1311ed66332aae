'use strict';
// Hello: bake an image once (cached by its inputs), take a VM from a pool, run a command.
const { Image } = require('..');
const { ref, snapshotsDir } = require('./_common');

async function main() {
  const img = await Image.build({
    ref, name: 'hello', memoryMib: 256, cmd: ['/bin/sh', '-c', 'sleep infinity'], snapshotsDir,
  });
  const pool = await img.pool({ min: 1, max: 2 });
  const vm = await pool.acquire();
  const r = await vm.exec({ argv: ['sh', '-c', 'echo hello from $(uname -n)'] });
  console.log(r.stdout.toString().trim(), `(exit ${r.exitCode})`);
  await vm.release();
  await pool.shutdown();
}

main().catch((e) => { console.error(`hello: ${e.code}: ${e.message}`); process.exit(1); });
