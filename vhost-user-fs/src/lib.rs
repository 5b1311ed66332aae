//! sm-vhost-user-fs shares one host directory with a guest as a virtio-fs device over
//! vhost-user. The frontend (sm-vmm, QEMU, any vhost-user VMM) maps guest memory into this
//! sandboxed process and hands over the queues; each FUSE request is decoded by
//! `fuse-backend-rs` and carried out here by a file system of our own that enforces the
//! symlink policy, read-only mode and the shared directory's boundary on every host call.
//!
//! [`policy`] holds the rules as pure functions, [`sys`] the system call wrappers,
//! [`inode`] and [`handle`] the tables of host descriptors, [`journal`] their record for a
//! backend started after a crash, [`idmap`] guest/host ID translation, [`fs`] the FUSE operations,
//! [`watch`] notices host changes, [`config`] is what the device advertises, [`dax`] the
//! DAX window's map requests to the frontend, [`backend`] the vhost-user device and its
//! queue loop (with [`pool`] for `--thread-pool-size`),
//! [`confine`] enters the sandbox, and [`serve`] binds the socket and serves frontends.

#![warn(missing_docs)]

pub mod backend;
pub mod cli;
pub mod config;
pub mod confine;
pub mod dax;
pub mod fs;
pub mod handle;
pub mod idmap;
pub mod inode;
pub mod journal;
pub mod policy;
pub mod pool;
pub mod serve;
pub mod sys;
pub mod watch;
