//! sm-vhost-user-net's flags as a type: the binary parses them, and `sm` builds the backend's
//! command line from a value of it ([`sm_launch::CommandLine`]).

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Parser, ValueEnum};
use sm_launch::{ArgWriter, CommandLine};
use sm_vhost_user_common::startup::ListenArgs;

use crate::policy::EgressRule;
use crate::{DEFAULT_DNS_FORWARD, DEFAULT_GATEWAY, DEFAULT_GUEST_ADDRESS, DEFAULT_MTU};

/// Serve a virtio-net device over vhost-user; passt carries the allowed traffic.
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(name = "sm-vhost-user-net", version)]
pub struct NetArgs {
    /// vhost-user socket to listen on (created; a stale socket is replaced). Exactly one of
    /// --socket, --fd and socket activation (LISTEN_FDS) gives the socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Serve on this inherited listening socket instead of binding one (virtiofsd's flag).
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,
    /// An egress rule, `allow=SPEC` or `deny=SPEC` (repeatable; the last matching rule
    /// wins, after the defaults `allow=any deny=host`). SPEC is `host`, `any`, a CIDR or an
    /// address, with an optional `:PORT` or `:LO-HI` (`[v6/len]:PORT` for IPv6).
    #[arg(long, value_name = "RULE")]
    pub egress: Vec<EgressRule>,
    /// The passt executable.
    #[arg(long, value_name = "PATH", default_value = "passt")]
    pub passt: PathBuf,
    /// The guest's IPv4 address and prefix length.
    #[arg(long, value_name = "ADDR/LEN", default_value_t = GuestAddress::default())]
    pub guest_address: GuestAddress,
    /// The gateway address the guest sees (passt maps it to the host's loopback).
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_GATEWAY)]
    pub gateway: Ipv4Addr,
    /// The address the guest sends DNS queries to (always allowed on port 53).
    #[arg(long, value_name = "ADDR", default_value_t = DEFAULT_DNS_FORWARD)]
    pub dns_forward: Ipv4Addr,
    /// The host-side resolver passt forwards the guest's DNS queries to (passt's `--dns-host`)
    /// [default: the nameservers passt reads from the host's /etc/resolv.conf].
    #[arg(long, value_name = "ADDR")]
    pub dns: Option<IpAddr>,
    /// The link MTU announced to the guest.
    #[arg(long, default_value_t = DEFAULT_MTU, value_parser = clap::value_parser!(u16).range(576..=65520))]
    pub mtu: u16,
    /// Process isolation: `namespace` (default) or `none` (debugging only).
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,
}

/// The `--sandbox` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SandboxMode {
    /// Namespaces, empty root, no capabilities, Landlock, seccomp.
    Namespace,
    /// No isolation at all.
    None,
}

/// An IPv4 address with its network's prefix length (`10.0.2.15/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestAddress {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length (1 to 30).
    pub prefix_len: u8,
}

impl Default for GuestAddress {
    fn default() -> GuestAddress {
        GuestAddress {
            addr: DEFAULT_GUEST_ADDRESS,
            prefix_len: crate::DEFAULT_PREFIX_LEN,
        }
    }
}

impl FromStr for GuestAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<GuestAddress, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected ADDR/LEN, e.g. 10.0.2.15/24"))?;
        let addr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 address"))?;
        let prefix_len = len
            .parse()
            .ok()
            .filter(|l| (1..=30).contains(l))
            .ok_or_else(|| format!("{len:?}: the prefix length must be 1 to 30"))?;
        Ok(GuestAddress { addr, prefix_len })
    }
}

impl fmt::Display for GuestAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl NetArgs {
    /// Flags serving on `socket`, everything else at its default.
    pub fn new(socket: impl Into<PathBuf>) -> NetArgs {
        NetArgs {
            socket: Some(socket.into()),
            fd: None,
            egress: Vec::new(),
            passt: "passt".into(),
            guest_address: GuestAddress::default(),
            gateway: DEFAULT_GATEWAY,
            dns_forward: DEFAULT_DNS_FORWARD,
            dns: None,
            mtu: DEFAULT_MTU,
            sandbox: SandboxMode::Namespace,
        }
    }
}

impl ListenArgs for NetArgs {
    fn socket(&self) -> Option<&std::path::Path> {
        self.socket.as_deref()
    }

    fn fd(&self) -> Option<i32> {
        self.fd
    }
}

impl CommandLine for NetArgs {
    fn to_args(&self) -> Vec<OsString> {
        let NetArgs {
            socket,
            fd,
            egress,
            passt,
            guest_address,
            gateway,
            dns_forward,
            dns,
            mtu,
            sandbox,
        } = self;
        ArgWriter::new::<NetArgs>()
            .option("socket", socket.as_ref())
            .option("fd", fd.map(|f| f.to_string()))
            .values("egress", egress.iter().map(|r| r.to_string()))
            .value("passt", passt)
            .value("guest_address", guest_address.to_string())
            .value("gateway", gateway.to_string())
            .value("dns_forward", dns_forward.to_string())
            .option("dns", dns.map(|d| d.to_string()))
            .value("mtu", mtu.to_string())
            .choice("sandbox", sandbox)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip() {
        let mut a = NetArgs::new("/r/net.sock");
        sm_launch::assert_round_trip(&a);
        a.egress = vec![
            "deny=0.0.0.0/0".parse().unwrap(),
            "allow=10.1.2.0/24:443".parse().unwrap(),
            "allow=[2001:db8::/32]:1000-2000".parse().unwrap(),
            "allow=host:8080".parse().unwrap(),
        ];
        a.passt = "/usr/bin/passt".into();
        a.guest_address = "192.168.7.2/16".parse().unwrap();
        a.gateway = Ipv4Addr::new(192, 168, 0, 1);
        a.dns_forward = Ipv4Addr::new(192, 168, 0, 3);
        a.dns = Some("1.1.1.1".parse().unwrap());
        a.mtu = 9000;
        a.sandbox = SandboxMode::None;
        sm_launch::assert_round_trip(&a);
        a.socket = None;
        a.fd = Some(3);
        sm_launch::assert_round_trip(&a);
    }

    #[test]
    fn defaults() {
        let a = NetArgs::try_parse_from(["sm-vhost-user-net", "--socket", "/s"]).unwrap();
        assert_eq!(a, NetArgs::new("/s"));
        assert_eq!(a.guest_address.to_string(), "10.0.2.15/24");
    }

    #[test]
    fn bad_values() {
        for bad in [
            &["--egress", "permit=any"][..],
            &["--egress", "allow=10.0.0.0/33"],
            &["--guest-address", "10.0.2.15"],
            &["--guest-address", "10.0.2.15/31"],
            &["--mtu", "100"],
        ] {
            let args = ["sm-vhost-user-net", "--socket", "/s"].iter().chain(bad);
            assert!(NetArgs::try_parse_from(args).is_err(), "{bad:?} accepted");
        }
    }
}
