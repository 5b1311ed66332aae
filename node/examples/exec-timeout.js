'use strict';
// exec with a timeout: the command is killed when it runs too long, and exec rejects with
// code 'timeout' (whatever it printed before is on the error).
const { Image } = require('..');
const { ref, snapshotsDir } = require('./_common');

async function main() {
  const img = await Image.build({ ref, name: 'hello', memoryMib: 256, cmd: ['/bin/sh', '-c', 'sleep infinity'], snapshotsDir });
  const pool = await img.pool({ min: 1, max: 1 });
  const vm = await pool.acquire();
  const quick = await vm.exec({ argv: ['sh', '-c', 'echo quick; exit 3'], timeoutMs: 10_000 });
  console.log(`quick: ${quick.stdout.toString().trim()} exit ${quick.exitCode}`);
  const t = Date.now();
  try {
    await vm.exec({ argv: ['sh', '-c', 'echo started; sleep 30'], timeoutMs: 1_000 });
    throw new Error('the slow command was not stopped');
  } catch (e) {
    if (e.code !== 'timeout') throw e;
    console.log(`slow: ${e.code} after ${Date.now() - t} ms: ${e.message}; it printed ${JSON.stringify(e.stdout.toString())}`);
  }
  await vm.release();
  await pool.shutdown();
}

main().catch((e) => { console.error(`exec-timeout: ${e.code}: ${e.message}`); process.exit(1); });
