'use strict';
// Streaming spawn: start a command, feed its stdin and read its output as it comes, then
// wait for its end. child.stdout / child.stdin are also Node streams.
const { Image } = require('..');
const { ref, snapshotsDir } = require('./_common');

async function main() {
  const img = await Image.build({ ref, name: 'hello', memoryMib: 256, cmd: ['/bin/sh', '-c', 'sleep infinity'], snapshotsDir });
  const pool = await img.pool({ min: 1, max: 1 });
  const vm = await pool.acquire();

  // Ticks as they come: each line arrives while the command still runs.
  const ticker = await vm.spawn({ argv: ['sh', '-c', 'for i in 1 2 3; do echo tick $i; sleep 0.3; done; echo done >&2'] });
  for (let chunk; (chunk = await ticker.readStdout()) !== null;) {
    process.stdout.write(`stdout: ${chunk}`);
  }
  console.log(`stderr: ${(await ticker.readStderr()).toString().trim()}`);
  console.log('ticker ended:', await ticker.wait());

  // A filter fed through stdin, read as a stream.
  const upper = await vm.spawn({ argv: ['tr', 'a-z', 'A-Z'] });
  await upper.writeStdin('streamed through a microVM\n');
  await upper.closeStdin();
  let out = '';
  for await (const chunk of upper.stdout) out += chunk;
  console.log(`tr: ${out.trim()}`, await upper.wait());

  // A long runner stopped with a signal.
  const sleeper = await vm.spawn({ argv: ['sleep', '60'] });
  await sleeper.kill('SIGTERM');
  console.log('sleeper:', await sleeper.wait());

  await vm.release();
  await pool.shutdown();
}

main().catch((e) => { console.error(`spawn-stream: ${e.code}: ${e.message}`); process.exit(1); });
