'use strict';
// Shared by the examples: which image to bake, and where snapshots and scratch files go.
// In a project, `require('@sm/microvm')` instead of `require('..')`.
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

module.exports = {
  // A registry reference, `oci-layout:DIR` or `oci-archive:FILE`; unset: the guest's own
  // minimal root (busybox), as sm's guest tests use.
  ref: process.env.SM_EXAMPLE_REF || undefined,
  // The snapshot store of the examples (default: sm's own, in sm's home).
  snapshotsDir: process.env.SM_EXAMPLE_SNAPSHOTS || path.join(os.tmpdir(), 'sm-node-examples', 'snapshots'),
  /** A fresh scratch directory. */
  scratch(name) {
    const d = path.join(os.tmpdir(), 'sm-node-examples', `${name}-${process.pid}`);
    fs.rmSync(d, { recursive: true, force: true });
    fs.mkdirSync(d, { recursive: true });
    return d;
  },
};
