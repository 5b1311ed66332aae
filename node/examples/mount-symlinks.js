'use strict';
// A mounted workspace with npm-style symlinks: the host project directory is live in the
// guest; with symlinks: 'opaque' (the default) links are kept verbatim both ways, so a
// `node_modules/x -> ../packages/x` made by npm in the guest is the same link on the host,
// and the guest cannot follow a link out of the share.
const fs = require('node:fs');
const path = require('node:path');
const { Image } = require('..');
const { ref, snapshotsDir, scratch } = require('./_common');

async function main() {
  const project = scratch('mount-symlinks');
  fs.mkdirSync(path.join(project, 'packages', 'x'), { recursive: true });
  fs.writeFileSync(path.join(project, 'packages', 'x', 'index.js'), 'module.exports = 42;\n');
  const img = await Image.build({
    ref, name: 'workspace', memoryMib: 256, snapshotsDir,
    cmd: ['/bin/sh', '-c', 'sleep infinity'],
    mounts: [{ hostPath: project, guestTag: 'workspace', guestPath: '/work', symlinks: 'opaque' }],
  });
  const pool = await img.pool({ min: 1, max: 1 });
  const vm = await pool.acquire();
  // What npm does for a workspace package: a relative link in node_modules.
  const r = await vm.exec({
    argv: ['sh', '-c', 'mkdir -p node_modules && ln -sfn ../packages/x node_modules/x && cat node_modules/x/index.js && readlink node_modules/x'],
    cwd: '/work',
  });
  if (r.exitCode !== 0) throw new Error(`exit ${r.exitCode}: ${r.stderr}`);
  console.log(`guest: ${r.stdout.toString().trim().replace('\n', ' | link: ')}`);
  const link = fs.readlinkSync(path.join(project, 'node_modules', 'x'));
  console.log(`host sees node_modules/x -> ${link}`);
  if (link !== '../packages/x') throw new Error(`the link on the host is ${link}`);
  // A link the host made is seen by the guest.
  fs.symlinkSync('packages/x/index.js', path.join(project, 'entry.js'));
  const seen = await vm.exec({ argv: ['sh', '-c', 'readlink /work/entry.js && cat /work/entry.js'] });
  console.log(`guest sees the host's link: ${seen.stdout.toString().trim().replace('\n', ' | ')}`);
  await vm.release();
  await pool.shutdown();
}

main().catch((e) => { console.error(`mount-symlinks: ${e.code}: ${e.message}`); process.exit(1); });
