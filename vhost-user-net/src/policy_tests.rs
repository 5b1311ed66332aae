//! The policy's rules, verdicts and answers, on real frames.

use super::*;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GW_MAC: [u8; 6] = [0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);
const GUEST6: &str = "fd00::15";

fn policy(rules: &[&str]) -> Policy {
    let rules: Vec<EgressRule> = rules.iter().map(|r| r.parse().unwrap()).collect();
    let host = ["192.0.2.2".parse().unwrap(), "2001:db8::2".parse().unwrap()];
    Policy::new(&rules, GATEWAY, DNS, &host)
}

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = GW_MAC.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A TCP header (with checksum over the pseudo-header) carrying `data`.
fn tcp(
    src: IpAddr,
    dst: IpAddr,
    ports: (u16, u16),
    seq_ack: (u32, u32),
    flags: u8,
    data: &[u8],
) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&ports.0.to_be_bytes());
    t.extend_from_slice(&ports.1.to_be_bytes());
    t.extend_from_slice(&seq_ack.0.to_be_bytes());
    t.extend_from_slice(&seq_ack.1.to_be_bytes());
    t.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    t.extend_from_slice(data);
    let sum = checksum(&[&t], pseudo_header_sum(src, dst, PROTO_TCP, t.len()));
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    t
}

fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(data);
    u
}

/// An IPv4 frame (options of `opts` bytes, fragment field `frag`) from the guest.
fn v4_frame(dst: Ipv4Addr, proto: u8, opts: usize, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(ETH_P_IP);
    let ihl = 20 + opts;
    let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
    ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34]);
    ip.extend_from_slice(&frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&GUEST.octets());
    ip.extend_from_slice(&dst.octets());
    ip.extend(std::iter::repeat_n(1u8, opts)); // NOPs
    let sum = checksum(&[&ip], 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

fn v4_tcp(dst: Ipv4Addr, dport: u16, seq_ack: (u32, u32), flags: u8, data: &[u8]) -> Vec<u8> {
    let t = tcp(
        GUEST.into(),
        dst.into(),
        (40000, dport),
        seq_ack,
        flags,
        data,
    );
    v4_frame(dst, PROTO_TCP, 0, 0x4000, &t)
}

fn v4_udp(dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    v4_frame(dst, PROTO_UDP, 0, 0, &udp(sport, dport, b"hello"))
}

fn v4_icmp(dst: Ipv4Addr, kind: u8) -> Vec<u8> {
    let mut icmp = vec![kind, 0, 0, 0, 0, 1, 0, 1, 0xaa, 0xbb];
    let sum = checksum(&[&icmp], 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    v4_frame(dst, PROTO_ICMP, 0, 0, &icmp)
}

fn v6_frame(dst: &str, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = eth(ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&GUEST6.parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&dst.parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(l4);
    f
}

fn v6_tcp(dst: &str, dport: u16, flags: u8) -> Vec<u8> {
    let (s, d) = (GUEST6.parse().unwrap(), dst.parse().unwrap());
    v6_frame(
        dst,
        PROTO_TCP,
        &tcp(s, d, (40000, dport), (7, 0), flags, b""),
    )
}

fn allowed(p: &Policy, f: &[u8]) -> bool {
    match check(p, f) {
        Verdict::Allow => true,
        Verdict::Deny(_) => false,
        Verdict::Drop(why) => panic!("dropped: {why}"),
    }
}

fn reply(p: &Policy, f: &[u8]) -> Option<Vec<u8>> {
    match check(p, f) {
        Verdict::Deny(r) => r,
        v => panic!("not denied: {v:?}"),
    }
}

#[test]
fn rules_parse_and_print() {
    for (text, printed) in [
        ("allow=any", "allow=any"),
        ("deny=host", "deny=host"),
        ("allow=host:8080", "allow=host:8080"),
        ("deny=0.0.0.0/0", "deny=0.0.0.0/0"),
        ("allow=10.1.2.0/24:443", "allow=10.1.2.0/24:443"),
        ("allow=10.1.2.3", "allow=10.1.2.3/32"),
        ("deny=::/0", "deny=::/0"),
        ("deny=2001:db8::1", "deny=2001:db8::1/128"),
        ("allow=[2001:db8::/32]:443", "allow=[2001:db8::/32]:443"),
        (
            "allow=[2001:db8::1]:1000-2000",
            "allow=[2001:db8::1/128]:1000-2000",
        ),
        ("allow=any:53", "allow=any:53"),
        ("allow=1.2.3.4:0-65535", "allow=1.2.3.4/32:0-65535"),
    ] {
        let rule: EgressRule = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(rule.to_string(), printed);
        assert_eq!(printed.parse::<EgressRule>().unwrap(), rule);
    }
    let r: EgressRule = "allow=[2001:db8::/32]:443".parse().unwrap();
    assert_eq!(r.ports, Some((443, 443)));
    assert_eq!(r.action, Action::Allow);
}

#[test]
fn bad_rules_are_one_clear_line() {
    for (bad, words) in [
        ("permit=any", "expected allow=SPEC or deny=SPEC"),
        ("any", "expected allow=SPEC or deny=SPEC"),
        ("allow=", "is not an IP address"),
        ("allow=example.com", "is not an IP address"),
        ("allow=10.0.0.0/33", "prefix length"),
        ("allow=::/129", "prefix length"),
        ("allow=10.0.0.1:70000", "port"),
        ("allow=10.0.0.1:443-80", "empty"),
        ("allow=10.0.0.1:", "port"),
        ("allow=[2001:db8::/32", "missing ']'"),
        ("allow=[2001:db8::/32]443", "expected :PORT"),
        ("allow=[10.0.0.1]:80", "only IPv6"),
        ("deny=host:x", "port"),
    ] {
        let e = bad.parse::<EgressRule>().unwrap_err().to_string();
        assert!(e.contains(words), "{bad}: {e}");
        assert!(e.contains(bad) || bad.is_empty(), "{bad}: {e}");
        assert_eq!(e.lines().count(), 1);
    }
}

#[test]
fn defaults_allow_the_world_and_deny_the_host() {
    let p = policy(&[]);
    let ext = Ipv4Addr::new(93, 184, 216, 34);
    assert!(allowed(&p, &v4_tcp(ext, 443, (1, 0), TCP_SYN, b"")));
    assert!(allowed(&p, &v4_udp(ext, 5000, 123)));
    assert!(allowed(&p, &v4_icmp(ext, 8)));
    for host in [
        GATEWAY,
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(127, 1, 2, 3),
        Ipv4Addr::new(192, 0, 2, 2),
    ] {
        assert!(
            !allowed(&p, &v4_tcp(host, 22, (1, 0), TCP_SYN, b"")),
            "{host}"
        );
        assert!(!allowed(&p, &v4_icmp(host, 8)), "{host}");
    }
    assert!(!allowed(&p, &v6_tcp("::1", 80, TCP_SYN)));
    assert!(!allowed(&p, &v6_tcp("2001:db8::2", 80, TCP_SYN)));
    assert!(allowed(&p, &v6_tcp("2001:db8::99", 80, TCP_SYN)));
}

#[test]
fn the_last_matching_rule_wins() {
    let p = policy(&["deny=0.0.0.0/0", "allow=10.1.2.0/24:443"]);
    let inside = Ipv4Addr::new(10, 1, 2, 5);
    assert!(allowed(&p, &v4_tcp(inside, 443, (1, 0), TCP_SYN, b"")));
    assert!(allowed(&p, &v4_udp(inside, 5000, 443)));
    assert!(!allowed(&p, &v4_tcp(inside, 80, (1, 0), TCP_SYN, b"")));
    assert!(!allowed(
        &p,
        &v4_tcp(Ipv4Addr::new(10, 9, 9, 9), 443, (1, 0), TCP_SYN, b"")
    ));
    // ICMP has no port: a port rule never matches it.
    assert!(!allowed(&p, &v4_icmp(inside, 8)));
    // IPv4 only: IPv6 still follows `allow=any`.
    assert!(allowed(&p, &v6_tcp("2001:db8::99", 80, TCP_SYN)));
    // Order matters: the allow first, then the deny, denies everything.
    let p = policy(&["allow=10.1.2.0/24:443", "deny=0.0.0.0/0"]);
    assert!(!allowed(&p, &v4_tcp(inside, 443, (1, 0), TCP_SYN, b"")));
}

#[test]
fn host_can_be_opened_by_port() {
    let p = policy(&["allow=host:8080-8081"]);
    assert!(allowed(&p, &v4_tcp(GATEWAY, 8080, (1, 0), TCP_SYN, b"")));
    assert!(allowed(&p, &v4_tcp(GATEWAY, 8081, (1, 0), TCP_SYN, b"")));
    assert!(!allowed(&p, &v4_tcp(GATEWAY, 8082, (1, 0), TCP_SYN, b"")));
    assert!(allowed(&p, &v6_tcp("::1", 8080, TCP_SYN)));
}

#[test]
fn arp_dhcp_dns_and_neighbour_discovery_are_always_allowed() {
    let p = policy(&["deny=any"]);
    let mut arp = eth(ETH_P_ARP);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0; 20]);
    assert!(allowed(&p, &arp));
    assert!(allowed(&p, &v4_udp(Ipv4Addr::BROADCAST, 68, 67)));
    assert!(allowed(&p, &v4_udp(DNS, 5353, 53)));
    assert!(allowed(&p, &v4_tcp(DNS, 53, (1, 0), TCP_SYN, b"")));
    // Port 53 elsewhere, or another port to the DNS address, is up to the rules.
    assert!(!allowed(&p, &v4_udp(Ipv4Addr::new(8, 8, 8, 8), 5353, 53)));
    assert!(!allowed(&p, &v4_udp(DNS, 5353, 54)));
    assert!(!allowed(&p, &v4_udp(DNS, 67, 68)));
    let ns = v6_frame("ff02::1:ff00:2", PROTO_ICMPV6, &[135, 0, 0, 0, 0, 0, 0, 0]);
    assert!(allowed(&p, &ns));
}

/// Checks an IPv4 answer's Ethernet and IP headers and returns its payload.
fn check_v4_answer(r: &[u8], from: Ipv4Addr, proto: u8) -> Vec<u8> {
    assert_eq!(&r[0..6], &GUEST_MAC, "to the guest's MAC");
    assert_eq!(&r[6..12], &GW_MAC, "from the MAC it sent to");
    assert_eq!(be16(r, 12), ETH_P_IP);
    let ip = &r[14..];
    assert_eq!(ip[0], 0x45);
    assert_eq!(usize::from(be16(ip, 2)), ip.len());
    assert_eq!(ip[9], proto);
    assert_eq!(checksum(&[&ip[..20]], 0), 0, "IPv4 header checksum");
    assert_eq!(&ip[12..16], &from.octets());
    assert_eq!(&ip[16..20], &GUEST.octets());
    ip[20..].to_vec()
}

#[test]
fn a_refused_syn_gets_a_reset_from_its_destination() {
    let p = policy(&[]);
    let r = reply(&p, &v4_tcp(GATEWAY, 8080, (1000, 0), TCP_SYN, b"")).unwrap();
    let t = check_v4_answer(&r, GATEWAY, PROTO_TCP);
    assert_eq!(t.len(), 20);
    assert_eq!(
        checksum(
            &[&t],
            pseudo_header_sum(GATEWAY.into(), GUEST.into(), PROTO_TCP, 20)
        ),
        0,
        "TCP checksum"
    );
    assert_eq!(be16(&t, 0), 8080);
    assert_eq!(be16(&t, 2), 40000);
    assert_eq!(be32(&t, 4), 0, "seq");
    assert_eq!(be32(&t, 8), 1001, "ack = the SYN's seq + 1");
    assert_eq!(t[12], 0x50);
    assert_eq!(t[13], TCP_RST | TCP_ACK);
}

#[test]
fn a_refused_segment_with_data_gets_an_in_window_reset() {
    let p = policy(&["deny=0.0.0.0/0"]);
    let dst = Ipv4Addr::new(198, 51, 100, 7);
    let f = v4_tcp(dst, 443, (5000, 9000), TCP_ACK | TCP_FIN, b"abcde");
    let t = check_v4_answer(&reply(&p, &f).unwrap(), dst, PROTO_TCP);
    assert_eq!(be32(&t, 4), 9000, "seq = the segment's ack");
    assert_eq!(be32(&t, 8), 5006, "ack = seq + 5 bytes + FIN");
    assert_eq!(
        checksum(
            &[&t],
            pseudo_header_sum(dst.into(), GUEST.into(), PROTO_TCP, 20)
        ),
        0
    );
    // Padding after the IP packet does not count as data.
    let mut padded = v4_tcp(dst, 443, (5000, 9000), TCP_ACK, b"");
    padded.extend_from_slice(&[0; 6]);
    let t = check_v4_answer(&reply(&p, &padded).unwrap(), dst, PROTO_TCP);
    assert_eq!(be32(&t, 8), 5000);
}

#[test]
fn a_reset_is_never_answered() {
    let p = policy(&[]);
    assert_eq!(reply(&p, &v4_tcp(GATEWAY, 80, (1, 2), TCP_RST, b"")), None);
    assert_eq!(
        reply(&p, &v4_tcp(GATEWAY, 80, (1, 2), TCP_RST | TCP_ACK, b"")),
        None
    );
}

#[test]
fn refused_udp_and_icmp_get_admin_prohibited() {
    let p = policy(&["deny=203.0.113.0/24"]);
    let dst = Ipv4Addr::new(203, 0, 113, 9);
    for (frame, proto) in [
        (v4_udp(dst, 5000, 9999), PROTO_UDP),
        (v4_icmp(dst, 8), PROTO_ICMP),
    ] {
        let icmp = check_v4_answer(&reply(&p, &frame).unwrap(), dst, PROTO_ICMP);
        assert_eq!(&icmp[..2], &[3, 13], "type 3 code 13");
        assert_eq!(checksum(&[&icmp], 0), 0, "ICMP checksum");
        assert_eq!(&icmp[8..], &frame[14..14 + 28], "IP header + 8 bytes");
        assert_eq!(icmp[8 + 9], proto);
    }
    // An ICMP error is not answered with another.
    assert_eq!(reply(&p, &v4_icmp(dst, 3)), None);
    // Nor a packet to a broadcast or multicast address, or from 0.0.0.0.
    let p = policy(&["deny=any"]);
    assert_eq!(reply(&p, &v4_udp(Ipv4Addr::BROADCAST, 5000, 9)), None);
    assert_eq!(
        reply(&p, &v4_udp(Ipv4Addr::new(224, 0, 0, 251), 5353, 5353)),
        None
    );
}

#[test]
fn options_are_skipped_and_quoted() {
    let p = policy(&["deny=0.0.0.0/0", "allow=10.1.2.0/24:443"]);
    let dst = Ipv4Addr::new(10, 1, 2, 5);
    let t = tcp(GUEST.into(), dst.into(), (40000, 443), (1, 0), TCP_SYN, b"");
    assert!(allowed(&p, &v4_frame(dst, PROTO_TCP, 8, 0, &t)));
    let u = udp(1, 80, b"xyz");
    let f = v4_frame(dst, PROTO_UDP, 8, 0, &u);
    let icmp = check_v4_answer(&reply(&p, &f).unwrap(), dst, PROTO_ICMP);
    assert_eq!(&icmp[8..], &f[14..14 + 28 + 8], "28-byte header + 8 bytes");
}

#[test]
fn non_first_fragments_are_judged_by_address_only() {
    let dst = Ipv4Addr::new(10, 1, 2, 5);
    // Bytes that look like ports to 443 but are the middle of a datagram.
    let piece = udp(1, 443, b"more");
    let frag = v4_frame(dst, PROTO_UDP, 0, 0x2000 | 185, &piece);
    let p = policy(&["deny=0.0.0.0/0", "allow=10.1.2.0/24:443"]);
    assert_eq!(reply(&p, &frag), None, "refused, silently");
    let p = policy(&["deny=0.0.0.0/0", "allow=10.1.2.0/24"]);
    assert!(allowed(&p, &frag));
    // A first fragment (MF set, offset 0) has its ports.
    let first = v4_frame(dst, PROTO_UDP, 0, 0x2000, &piece);
    let p = policy(&["deny=0.0.0.0/0", "allow=10.1.2.0/24:443"]);
    assert!(allowed(&p, &first));
}

#[test]
fn ipv6_refusals() {
    let p = policy(&[
        "deny=[2001:db8:bad::/48]:1-65535",
        "deny=2001:db8:dead::/48",
    ]);
    let src: IpAddr = GUEST6.parse().unwrap();
    let dst: IpAddr = "2001:db8:bad::1".parse().unwrap();
    let r = reply(&p, &v6_tcp("2001:db8:bad::1", 443, TCP_SYN)).unwrap();
    assert_eq!(&r[0..6], &GUEST_MAC);
    assert_eq!(be16(&r, 12), ETH_P_IPV6);
    let ip = &r[14..];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(usize::from(be16(ip, 4)), ip.len() - 40);
    assert_eq!(ip[6], PROTO_TCP);
    assert_eq!(&ip[8..24], &ip_octets(dst)[..]);
    assert_eq!(&ip[24..40], &ip_octets(src)[..]);
    let t = &ip[40..];
    assert_eq!(
        checksum(&[t], pseudo_header_sum(dst, src, PROTO_TCP, t.len())),
        0
    );
    assert_eq!(t[13], TCP_RST | TCP_ACK);
    assert_eq!(be32(t, 8), 8);

    let u = udp(5000, 53, b"q");
    let f = v6_frame("2001:db8:dead::1", PROTO_UDP, &u);
    let r = reply(&p, &f).unwrap();
    let ip = &r[14..];
    assert_eq!(ip[6], PROTO_ICMPV6);
    let icmp = &ip[40..];
    let dst: IpAddr = "2001:db8:dead::1".parse().unwrap();
    assert_eq!(&icmp[..2], &[1, 1], "type 1 code 1");
    assert_eq!(
        checksum(
            &[icmp],
            pseudo_header_sum(dst, src, PROTO_ICMPV6, icmp.len())
        ),
        0
    );
    assert_eq!(&icmp[8..], &f[14..], "the whole (small) packet quoted");

    // An extension header: the address alone decides (the port rule does not match).
    let hop = v6_frame("2001:db8:bad::1", 0, &[17, 0, 1, 4, 0, 0, 0, 0]);
    assert!(allowed(&p, &hop));
    let hop = v6_frame("2001:db8:dead::1", 0, &[17, 0, 1, 4, 0, 0, 0, 0]);
    assert!(reply(&p, &hop).is_some());
    // A big packet's quote stays within IPv6's minimum MTU.
    let big = v6_frame("2001:db8:dead::1", PROTO_UDP, &udp(1, 2, &[0; 3000]));
    let r = reply(&p, &big).unwrap();
    assert_eq!(r.len() - 14, IPV6_MIN_MTU);
}

#[test]
fn malformed_frames_are_dropped() {
    let p = policy(&[]);
    assert!(matches!(check(&p, &[]), Verdict::Drop(_)));
    assert!(matches!(check(&p, &eth(0x88cc)), Verdict::Drop(_)));
    // Every truncation of valid frames: dropped or judged, never a panic.
    let frames = [
        v4_tcp(GATEWAY, 80, (1, 0), TCP_SYN, b"data"),
        v4_udp(GATEWAY, 1, 2),
        v4_icmp(GATEWAY, 8),
        v6_tcp("::1", 80, TCP_SYN),
        v6_frame("::1", PROTO_UDP, &udp(1, 2, b"x")),
    ];
    for f in &frames {
        for n in 0..f.len() {
            let _ = check(&p, &f[..n]);
        }
    }
    // A header length beyond the packet, a total length beyond the frame, version lies.
    let mut f = v4_udp(GATEWAY, 1, 2);
    f[14] = 0x4f;
    assert!(matches!(check(&p, &f), Verdict::Drop(_)));
    let mut f = v4_udp(GATEWAY, 1, 2);
    f[16] = 0xff;
    assert!(matches!(check(&p, &f), Verdict::Drop(_)));
    let mut f = v4_udp(GATEWAY, 1, 2);
    f[14] = 0x65;
    assert!(matches!(check(&p, &f), Verdict::Drop(_)));
    let mut f = v4_tcp(GATEWAY, 80, (1, 0), TCP_SYN, b"");
    f[14 + 20 + 12] = 0xf0; // data offset 60 > segment
    assert!(matches!(check(&p, &f), Verdict::Drop(_)));
}

#[test]
fn random_bytes_never_panic() {
    let p = policy(&["deny=any", "allow=host:80"]);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let seeds = [
        v4_tcp(GATEWAY, 80, (1, 0), TCP_SYN, b"x"),
        v6_tcp("::1", 80, 0),
    ];
    for i in 0..20_000 {
        let mut f = seeds[i % 2].clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() as usize) % f.len();
            f[at] = next() as u8;
        }
        f.truncate((next() as usize) % (f.len() + 1));
        if let Verdict::Deny(Some(r)) = check(&p, &f) {
            assert!(r.len() >= 14 + 20);
        }
    }
}

#[test]
fn prefixes() {
    let p: Prefix = "10.1.2.0/24".parse().unwrap();
    assert!(p.contains("10.1.2.255".parse().unwrap()));
    assert!(!p.contains("10.1.3.0".parse().unwrap()));
    assert!(!p.contains("::1".parse().unwrap()));
    let all: Prefix = "0.0.0.0/0".parse().unwrap();
    assert!(all.contains("255.255.255.255".parse().unwrap()));
    let all6: Prefix = "::/0".parse().unwrap();
    assert!(all6.contains("2001:db8::1".parse().unwrap()));
    assert!(!all6.contains("1.2.3.4".parse().unwrap()));
    assert_eq!(Prefix::new("1.2.3.4".parse().unwrap(), 33), None);
    // IPv4-mapped IPv6 destinations are judged as IPv4.
    let pol = policy(&["deny=10.0.0.0/8"]);
    assert_eq!(
        pol.decide("::ffff:10.1.1.1".parse().unwrap(), None),
        Action::Deny
    );
}

#[test]
fn host_addresses_include_loopback() {
    let addrs = host_addresses().unwrap();
    assert!(
        addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
        "{addrs:?}"
    );
}
