'use strict';
// A listener: the workload is an HTTP server; the bake waits until it listens
// (listenerRequired) before it snapshots, so every clone serves at once. exposeTcp forwards
// a host port to it.
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { Image } = require('..');
const { ref, snapshotsDir, scratch } = require('./_common');

function get(url) {
  return new Promise((resolve, reject) => {
    http.get(url, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    }).on('error', reject);
  });
}

async function main() {
  const page = path.join(scratch('listener'), 'index.html');
  fs.writeFileSync(page, 'hello over HTTP from a microVM\n');
  const img = await Image.build({
    ref, name: 'listener', memoryMib: 256, snapshotsDir,
    extraFiles: [{ hostPath: page, guestPath: '/www/index.html' }],
    cmd: ['httpd', '-f', '-p', '8080', '-h', '/www'],
    listenerRequired: true, guestPort: 8080,
  });
  const pool = await img.pool({ min: 1, max: 1 });
  const vm = await pool.acquire();
  const fwd = await vm.exposeTcp({ guestPort: 8080, hostPort: 0 }); // 0: any free port
  const r = await get(`http://${fwd.address}/index.html`);
  console.log(`GET http://${fwd.address}/index.html -> ${r.status}: ${r.body.trim()}`);
  if (r.status !== 200) throw new Error(`status ${r.status}`);
  await fwd.close();
  await vm.release();
  await pool.shutdown();
}

main().catch((e) => { console.error(`listener: ${e.code}: ${e.message}`); process.exit(1); });
