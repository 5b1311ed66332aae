//! sm-vhost-user-common holds the runtime code that sm's vhost-user backends
//! (sm-vhost-user-blk, sm-vhost-user-fs) share instead of copying: what a process does from
//! `main` until it serves ([`startup`]: inherited descriptors, one-line flag errors, logging),
//! binding or taking over the socket and serving frontends one connection at a time
//! ([`serve`]), systemd's readiness, status and watchdog notifications ([`notify`]), and the
//! device glue every backend needs ([`queue`]: guest memory and vring types, per-connection
//! queue state with the EVENT_IDX drain loop, queue event dispatch, and the workaround for
//! the exit eventfds vhost-user-backend 0.22 leaks; a vring that makes GET_VRING_BASE wait
//! for the requests still running), device state transfer for snapshots ([`state`]) and the
//! versioned document each backend's state is written as ([`document`]).
//!
//! Device behaviour (features, config space, what a request does) stays in each backend.

#![warn(missing_docs)]

pub mod document;
pub mod notify;
pub mod queue;
pub mod serve;
pub mod startup;
pub mod state;
#[cfg(feature = "testing")]
pub mod testing;
