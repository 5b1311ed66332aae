//! The egress policy: `--egress` rules, and the judgement of one frame the guest sent.
//!
//! Rules are `allow=SPEC` or `deny=SPEC`; SPEC is `host`, `any`, a CIDR (`10.1.2.0/24`,
//! `::/0`) or a bare address (`/32`, `/128`), optionally followed by `:PORT` or `:LO-HI`
//! (`[2001:db8::/32]:443` for IPv6). The built-in rules `allow=any deny=host` come first,
//! then the user's; the **last matching rule wins**. A rule with ports matches only TCP and
//! UDP packets (first fragments) whose destination port is in the range.
//!
//! `host` is every address that reaches the host itself: the gateway (passt maps it to the
//! host's 127.0.0.1), 127.0.0.0/8, ::1 and the host's own interface addresses
//! ([`host_addresses`], read before the sandbox).
//!
//! Always allowed, whatever the rules: ARP, IPv6 neighbour and router discovery (the
//! link's own plumbing), DHCP (UDP 68 -> 67) and DNS (UDP or TCP port 53) to the
//! dns-forward address.
//!
//! [`check`] is a pure function of the policy and the frame's bytes: whatever the guest
//! sends, it returns a [`Verdict`] and never panics. A refused packet is answered at once
//! with a frame for the guest: a TCP segment (without RST) gets a RST+ACK from its
//! destination, so `connect()` fails with ECONNREFUSED; any other IPv4 packet gets ICMP
//! destination unreachable, code 13 (administratively prohibited), quoting its header and
//! 8 bytes; IPv6 gets ICMPv6 destination unreachable, code 1 (administratively prohibited).
//! Nothing answers a TCP RST, an ICMP error, a non-first fragment, or a packet from or to
//! a broadcast or multicast address.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// A rule that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Neither `allow=` nor `deny=`.
    #[error("egress rule {0:?}: expected allow=SPEC or deny=SPEC")]
    Action(String),
    /// The destination or the ports are wrong.
    #[error("egress rule {rule:?}: {why}")]
    Spec {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        why: String,
    },
}

/// What a rule does with the packets it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Pass the packet on to passt.
    Allow,
    /// Refuse it.
    Deny,
}

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// The network of `addr` with `len` leading bits; `None` if `len` is too long.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Prefix { addr, len })
    }

    /// Whether `ip` is in the network (never across address families).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Prefix, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("prefix length {l:?} is not 0 to {max}"))?,
        };
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Every address.
    Any,
    /// Every address that reaches the host itself.
    Host,
    /// One network.
    Cidr(Prefix),
}

/// One `--egress` rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// Allow or deny.
    pub action: Action,
    /// The destinations it matches.
    pub dest: Dest,
    /// The destination ports it matches (inclusive); `None` for every packet.
    pub ports: Option<(u16, u16)>,
}

impl EgressRule {
    /// Whether the rule matches a packet to `dst`, with destination port `port` when it
    /// has one, given what counts as the host.
    fn matches(&self, dst: IpAddr, port: Option<u16>, is_host: impl Fn(IpAddr) -> bool) -> bool {
        let dest = match self.dest {
            Dest::Any => true,
            Dest::Host => is_host(dst),
            Dest::Cidr(p) => p.contains(dst),
        };
        dest && match (self.ports, port) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => (lo..=hi).contains(&p),
            (Some(_), None) => false,
        }
    }
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("port {p:?} is not 0 to 65535"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((lo, hi)) => (port(lo)?, port(hi)?),
        None => (port(s)?, port(s)?),
    };
    if lo > hi {
        return Err(format!("port range {s:?} is empty"));
    }
    Ok((lo, hi))
}

fn parse_dest(s: &str) -> Result<Dest, String> {
    match s {
        "any" => Ok(Dest::Any),
        "host" => Ok(Dest::Host),
        _ => s.parse().map(Dest::Cidr),
    }
}

impl FromStr for EgressRule {
    type Err = RuleError;

    fn from_str(rule: &str) -> Result<EgressRule, RuleError> {
        let (action, spec) = match rule.split_once('=') {
            Some(("allow", spec)) => (Action::Allow, spec),
            Some(("deny", spec)) => (Action::Deny, spec),
            _ => return Err(RuleError::Action(rule.to_owned())),
        };
        let bad = |why: String| RuleError::Spec {
            rule: rule.to_owned(),
            why,
        };
        let (dest, ports) = if let Some(rest) = spec.strip_prefix('[') {
            let (inner, after) = rest
                .split_once(']')
                .ok_or_else(|| bad("missing ']'".into()))?;
            let ports = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad(format!("expected :PORT after ']', not {after:?}")))?,
                ),
            };
            let dest = parse_dest(inner).map_err(&bad)?;
            if !matches!(dest, Dest::Cidr(p) if p.addr.is_ipv6()) {
                return Err(bad("only IPv6 addresses go in brackets".into()));
            }
            (dest, ports)
        } else if spec.matches(':').count() > 1 {
            // An IPv6 address without a port.
            (parse_dest(spec).map_err(&bad)?, None)
        } else {
            let (dest, ports) = match spec.split_once(':') {
                Some((d, p)) => (d, Some(p)),
                None => (spec, None),
            };
            (parse_dest(dest).map_err(&bad)?, ports)
        };
        let ports = ports.map(parse_ports).transpose().map_err(bad)?;
        Ok(EgressRule {
            action,
            dest,
            ports,
        })
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        let dest = match self.dest {
            Dest::Any => "any".to_owned(),
            Dest::Host => "host".to_owned(),
            Dest::Cidr(p) if p.addr.is_ipv6() && self.ports.is_some() => format!("[{p}]"),
            Dest::Cidr(p) => p.to_string(),
        };
        write!(f, "{action}={dest}")?;
        match self.ports {
            None => Ok(()),
            Some((lo, hi)) if lo == hi => write!(f, ":{lo}"),
            Some((lo, hi)) => write!(f, ":{lo}-{hi}"),
        }
    }
}

/// The rules that come before the user's: `allow=any`, then `deny=host`.
pub const DEFAULT_RULES: [EgressRule; 2] = [
    EgressRule {
        action: Action::Allow,
        dest: Dest::Any,
        ports: None,
    },
    EgressRule {
        action: Action::Deny,
        dest: Dest::Host,
        ports: None,
    },
];

/// Everything [`check`] decides with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<EgressRule>,
    host: Vec<IpAddr>,
    dns_forward: Ipv4Addr,
}

impl Policy {
    /// The defaults then `user` rules; `host_addrs` are the host's own addresses (the gateway
    /// is added to them), `dns_forward` the address DNS is always allowed to.
    pub fn new(
        user: &[EgressRule],
        gateway: Ipv4Addr,
        dns_forward: Ipv4Addr,
        host_addrs: &[IpAddr],
    ) -> Policy {
        let mut host = vec![IpAddr::V4(gateway)];
        host.extend(host_addrs.iter().map(|a| a.to_canonical()));
        Policy {
            rules: DEFAULT_RULES.iter().chain(user).copied().collect(),
            host,
            dns_forward,
        }
    }

    /// Whether `ip` reaches the host itself.
    pub fn is_host(&self, ip: IpAddr) -> bool {
        ip.to_canonical().is_loopback() || self.host.contains(&ip.to_canonical())
    }

    /// The action of the last rule matching a packet to `dst` (with `port`, if it has one).
    pub fn decide(&self, dst: IpAddr, port: Option<u16>) -> Action {
        let dst = dst.to_canonical();
        self.rules
            .iter()
            .rev()
            .find(|r| r.matches(dst, port, |a| self.is_host(a)))
            .map_or(Action::Allow, |r| r.action)
    }
}

/// What to do with one frame from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it to passt.
    Allow,
    /// Refused; the frame to give the guest in answer, if any.
    Deny(Option<Vec<u8>>),
    /// Dropped silently: malformed, or not ARP, IPv4 or IPv6.
    Drop(&'static str),
}

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IPV6: u16 = 0x86dd;
const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// IPv6's minimum MTU, which bounds an ICMPv6 error.
const IPV6_MIN_MTU: usize = 1280;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The transport header as far as the policy and the answer need it.
#[derive(Clone, Copy, Debug)]
enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
        data_len: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 with its type.
    Icmp {
        kind: u8,
    },
    /// A non-first fragment, or a protocol without ports: the address decides.
    Other,
}

impl Transport {
    fn parse(proto: u8, l4: &[u8]) -> Result<Transport, &'static str> {
        Ok(match proto {
            PROTO_TCP => {
                if l4.len() < 20 {
                    return Err("short TCP header");
                }
                let doff = usize::from(l4[12] >> 4) * 4;
                if doff < 20 || doff > l4.len() {
                    return Err("bad TCP data offset");
                }
                Transport::Tcp {
                    sport: be16(l4, 0),
                    dport: be16(l4, 2),
                    seq: be32(l4, 4),
                    ack: be32(l4, 8),
                    flags: l4[13],
                    data_len: (l4.len() - doff) as u32,
                }
            }
            PROTO_UDP => {
                if l4.len() < 8 {
                    return Err("short UDP header");
                }
                Transport::Udp {
                    sport: be16(l4, 0),
                    dport: be16(l4, 2),
                }
            }
            PROTO_ICMP | PROTO_ICMPV6 => {
                if l4.len() < 4 {
                    return Err("short ICMP header");
                }
                Transport::Icmp { kind: l4[0] }
            }
            _ => Transport::Other,
        })
    }

    fn dport(&self) -> Option<u16> {
        match *self {
            Transport::Tcp { dport, .. } | Transport::Udp { dport, .. } => Some(dport),
            _ => None,
        }
    }
}

/// One parsed IP packet of a frame.
struct Packet<'a> {
    frame: &'a [u8],
    /// The IP packet (header and payload, without link padding).
    ip: &'a [u8],
    src: IpAddr,
    dst: IpAddr,
    transport: Transport,
    /// A non-first fragment.
    fragment: bool,
}

fn parse_ipv4(frame: &[u8]) -> Result<Packet<'_>, &'static str> {
    let ip = &frame[ETH_HLEN..];
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err("bad IPv4 header");
    }
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(be16(ip, 2));
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err("bad IPv4 lengths");
    }
    let ip = &ip[..total];
    let fragment = be16(ip, 6) & 0x1fff != 0;
    let transport = if fragment {
        Transport::Other
    } else {
        Transport::parse(ip[9], &ip[ihl..])?
    };
    let addr = |at: usize| IpAddr::V4(Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]));
    Ok(Packet {
        frame,
        ip,
        src: addr(12),
        dst: addr(16),
        transport,
        fragment,
    })
}

fn parse_ipv6(frame: &[u8]) -> Result<Packet<'_>, &'static str> {
    let ip = &frame[ETH_HLEN..];
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Err("bad IPv6 header");
    }
    let total = 40 + usize::from(be16(ip, 4));
    if total > ip.len() {
        return Err("bad IPv6 payload length");
    }
    let ip = &ip[..total];
    let addr = |at: usize| {
        let b: [u8; 16] = ip[at..at + 16].try_into().unwrap_or([0; 16]);
        IpAddr::V6(Ipv6Addr::from(b))
    };
    Ok(Packet {
        frame,
        ip,
        src: addr(8),
        dst: addr(24),
        transport: Transport::parse(ip[6], &ip[40..])?,
        fragment: false,
    })
}

/// Judges one Ethernet frame the guest sent.
pub fn check(policy: &Policy, frame: &[u8]) -> Verdict {
    if frame.len() < ETH_HLEN {
        return Verdict::Drop("short Ethernet frame");
    }
    let packet = match be16(frame, 12) {
        ETH_P_ARP => return Verdict::Allow,
        ETH_P_IP => parse_ipv4(frame),
        ETH_P_IPV6 => parse_ipv6(frame),
        _ => return Verdict::Drop("not ARP, IPv4 or IPv6"),
    };
    let p = match packet {
        Ok(p) => p,
        Err(why) => return Verdict::Drop(why),
    };
    if always_allowed(policy, &p) {
        return Verdict::Allow;
    }
    match policy.decide(p.dst, p.transport.dport()) {
        Action::Allow => Verdict::Allow,
        Action::Deny => Verdict::Deny(refusal(&p)),
    }
}

/// ARP aside: neighbour discovery, DHCP and DNS to the dns-forward address.
fn always_allowed(policy: &Policy, p: &Packet<'_>) -> bool {
    match p.transport {
        Transport::Udp {
            sport: 68,
            dport: 67,
        } => p.dst.is_ipv4(),
        Transport::Udp { dport: 53, .. } | Transport::Tcp { dport: 53, .. } => {
            p.dst == IpAddr::V4(policy.dns_forward)
        }
        // Router and neighbour solicitations and advertisements.
        Transport::Icmp { kind: 133..=136 } => p.dst.is_ipv6(),
        _ => false,
    }
}

fn unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

/// The frame answering a refused packet, when one is due.
fn refusal(p: &Packet<'_>) -> Option<Vec<u8>> {
    let guest_mac_unicast = p.frame[6] & 1 == 0;
    if !guest_mac_unicast || !unicast(p.src) || !unicast(p.dst) || p.fragment {
        return None;
    }
    match p.transport {
        Transport::Tcp { flags, .. } if flags & TCP_RST != 0 => None,
        Transport::Tcp { .. } => Some(tcp_reset(p)),
        Transport::Icmp { kind } if p.dst.is_ipv4() && matches!(kind, 3 | 4 | 5 | 11 | 12) => None,
        Transport::Icmp { kind } if p.dst.is_ipv6() && kind < 128 => None,
        _ => Some(unreachable(p)),
    }
}

/// The Ethernet header of an answer: back to the guest's MAC from the one it sent to.
fn answer_eth(p: &Packet<'_>, ethertype: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&p.frame[6..12]);
    out.extend_from_slice(&p.frame[0..6]);
    out.extend_from_slice(&ethertype.to_be_bytes());
    out
}

/// Appends an IP header from `src` to `dst` carrying `len` bytes of protocol `proto`.
fn push_ip_header(out: &mut Vec<u8>, src: IpAddr, dst: IpAddr, proto: u8, len: usize) {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let start = out.len();
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&((20 + len) as u16).to_be_bytes());
            out.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let sum = checksum(&[&out[start..]], 0);
            out[start + 10..start + 12].copy_from_slice(&sum.to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
            out.extend_from_slice(&[proto, 64]);
            out.extend_from_slice(&ip_octets(src));
            out.extend_from_slice(&ip_octets(dst));
        }
    }
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The one's-complement sum of the pseudo-header for `len` bytes of `proto`.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut ph = ip_octets(src);
    ph.extend_from_slice(&ip_octets(dst));
    if src.is_ipv4() {
        ph.extend_from_slice(&[0, proto]);
        ph.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        ph.extend_from_slice(&(len as u32).to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, proto]);
    }
    sum16(&ph, 0)
}

fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// The Internet checksum of `parts` (each of even length but the last) plus `acc`.
pub fn checksum(parts: &[&[u8]], mut acc: u64) -> u16 {
    for part in parts {
        acc = sum16(part, acc);
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// A RST+ACK from the refused segment's destination that the guest's TCP takes as the
/// answer to it (a refused connect() gets ECONNREFUSED).
fn tcp_reset(p: &Packet<'_>) -> Vec<u8> {
    let Transport::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        data_len,
    } = p.transport
    else {
        return Vec::new();
    };
    let seq_out = if flags & TCP_ACK != 0 { ack } else { 0 };
    let consumed = data_len + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&seq_out.to_be_bytes());
    tcp.extend_from_slice(&seq.wrapping_add(consumed).to_be_bytes());
    tcp.extend_from_slice(&[0x50, TCP_RST | TCP_ACK, 0, 0, 0, 0, 0, 0]);
    let sum = checksum(
        &[&tcp],
        pseudo_header_sum(p.dst, p.src, PROTO_TCP, tcp.len()),
    );
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let ethertype = if p.dst.is_ipv4() {
        ETH_P_IP
    } else {
        ETH_P_IPV6
    };
    let mut out = answer_eth(p, ethertype);
    push_ip_header(&mut out, p.dst, p.src, PROTO_TCP, tcp.len());
    out.extend_from_slice(&tcp);
    out
}

/// ICMP destination unreachable, administratively prohibited (IPv4 type 3 code 13, quoting
/// the header and 8 bytes; IPv6 type 1 code 1, quoting what fits in the minimum MTU).
fn unreachable(p: &Packet<'_>) -> Vec<u8> {
    let (ethertype, proto, kind, code, quote) = if p.dst.is_ipv4() {
        let ihl = usize::from(p.ip[0] & 0xf) * 4;
        let quote = &p.ip[..p.ip.len().min(ihl + 8)];
        (ETH_P_IP, PROTO_ICMP, 3, 13, quote)
    } else {
        let quote = &p.ip[..p.ip.len().min(IPV6_MIN_MTU - 48)];
        (ETH_P_IPV6, PROTO_ICMPV6, 1, 1, quote)
    };
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let acc = if proto == PROTO_ICMPV6 {
        pseudo_header_sum(p.dst, p.src, proto, icmp.len())
    } else {
        0
    };
    let sum = checksum(&[&icmp], acc);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut out = answer_eth(p, ethertype);
    push_ip_header(&mut out, p.dst, p.src, proto, icmp.len());
    out.extend_from_slice(&icmp);
    out
}

/// The host's own interface addresses (getifaddrs), for `host`. Read before the sandbox.
pub fn host_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head into `head`; the result is checked.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points to a sockaddr whose family says its type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated, once; nothing refers to it any more.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
