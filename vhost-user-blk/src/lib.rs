//! sm-vhost-user-blk serves one raw image file to a guest as a virtio-blk device over
//! vhost-user. The frontend (sm-vmm, QEMU, any vhost-user VMM) maps guest memory into this
//! process and hands over the queues; every block request is then handled here, in a
//! sandboxed process, without the VMM on the data path.
//!
//! [`image`] owns the file (size rules, the one-writer lock, positioned I/O), [`request`]
//! turns one untrusted descriptor chain into one checked operation, [`config`] is what the
//! device advertises, [`backend`] is the vhost-user device and its queue loop, and [`serve`]
//! binds the socket and serves frontends; [`state`] is what a snapshot carries over.

pub mod backend;
pub mod cli;
pub mod config;
pub mod image;
pub mod request;
pub mod serve;
pub mod state;
