'use strict';
// 8 VMs driven at once from one process: acquired together, each running commands and
// moving files concurrently, while the event loop keeps turning (nothing blocks it).
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { build } = require('./_image');

test('8 VMs at once from one process, the event loop never blocked', async () => {
  const image = await build();
  const pool = await image.pool({ min: 8, max: 8, restoreOnRelease: true, acquireTimeoutMs: 300_000 });
  // The event loop's longest pause while the VMs work, and of it the longest time the JS
  // thread slept (blocked) rather than ran or waited for a CPU: eight VMs starting on a
  // slow machine can keep the thread off the CPU for seconds without anything blocking it.
  let last = Date.now();
  let lastOnCpu = onCpuOrQueuedMs();
  let worst = 0;
  let worstBlocked = 0;
  const ticker = setInterval(() => {
    const now = Date.now();
    const onCpu = onCpuOrQueuedMs();
    worst = Math.max(worst, now - last);
    worstBlocked = Math.max(worstBlocked, now - last - (onCpu - lastOnCpu));
    last = now;
    lastOnCpu = onCpu;
  }, 20);
  try {
    const vms = await Promise.all(Array.from({ length: 8 }, () => pool.acquire()));
    const t = Date.now();
    const results = await Promise.all(vms.map(async (vm, i) => {
      await vm.writeFile(`/tmp/in-${i}`, `vm ${i}\n`);
      const r = await vm.exec({ argv: ['sh', '-c', `sleep 2; cat /tmp/in-${i}; ls /tmp | grep -c '^in-'`], timeoutMs: 120_000 });
      const child = await vm.spawn({ argv: ['sh', '-c', `echo spawned ${i}`] });
      const spawned = (await child.readStdout()).toString();
      await child.wait();
      return { out: r.stdout.toString(), spawned };
    }));
    const elapsed = Date.now() - t;
    results.forEach((r, i) => {
      assert.equal(r.out, `vm ${i}\n1\n`, 'each VM sees only its own file');
      assert.equal(r.spawned, `spawned ${i}\n`);
    });
    // Eight `sleep 2`s overlapped rather than ran one after another.
    assert.ok(elapsed < 16_000, `8 concurrent execs of sleep 2 took ${elapsed} ms`);
    console.log(`8 VMs: concurrent exec round ${elapsed} ms; longest event-loop pause ${worst} ms, of it blocked ${Math.round(worstBlocked)} ms`);
    await Promise.all(vms.map((vm) => vm.release()));
  } finally {
    clearInterval(ticker);
    await pool.shutdown();
  }
  // A blocking call here would sleep for a whole exec (over 2 s): the timer's own 20 ms and
  // clock granularity are the rest.
  assert.ok(worstBlocked < 1000, `the event loop was blocked for ${Math.round(worstBlocked)} ms (paused ${worst} ms)`);
});

/** The JS thread's time on a CPU plus its time waiting for one, in ms (its schedstat). */
function onCpuOrQueuedMs() {
  const [run, wait] = fs.readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ').map(Number);
  return (run + wait) / 1e6;
}
