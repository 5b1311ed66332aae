//! sm-vhost-user-net gives a guest a virtio-net device over vhost-user whose other side is
//! passt, the unprivileged user-mode network stack: passt runs as a child of this process on
//! a socket pair (QEMU's stream protocol) and turns the guest's frames into ordinary host
//! sockets. This backend is the egress policy point: every frame the guest sends is checked
//! against the `--egress` rules before passt sees it, and a refused one is answered at once
//! (a TCP reset, or an ICMP "administratively prohibited") so the guest fails fast.
//!
//! [`policy`] parses the rules and judges one untrusted frame (a pure function), [`passt`]
//! starts passt and frames its stream, [`backend`] is the vhost-user device and its queue
//! loop, [`serve`] serves frontends, [`state`] is what a snapshot carries, [`cli`] is the
//! flags.

use std::net::Ipv4Addr;

pub mod backend;
pub mod cli;
pub mod passt;
pub mod policy;
pub mod serve;
pub mod state;

/// The guest's IPv4 address (what passt assigns over DHCP).
pub const DEFAULT_GUEST_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The guest network's prefix length.
pub const DEFAULT_PREFIX_LEN: u8 = 24;
/// The gateway address; passt maps it to the host's loopback.
pub const DEFAULT_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// The address the guest sends DNS queries to; passt forwards them to the host's resolver.
pub const DEFAULT_DNS_FORWARD: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
/// The link MTU passt announces to the guest.
pub const DEFAULT_MTU: u16 = 1500;
