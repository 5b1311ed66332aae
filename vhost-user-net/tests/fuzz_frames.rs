//! Fuzzing the policy point with what a hostile guest can send: any bytes, and valid IPv4 and
//! IPv6 TCP/UDP frames with fields and lengths mutated. `check` never panics, and a refusal's
//! answer is a well-formed frame back to the sender: addressed to its MAC, IPv4 with a valid
//! header checksum or IPv6, and no larger than a link frame. `scripts/fuzz net-frames`.

use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;
use sm_vhost_user_net::policy::{check, EgressRule, Policy, Verdict};

const GUEST_MAC: [u8; 6] = [0x02, 0x73, 0x6d, 0, 0, 1];

fn policy() -> Policy {
    let rules: Vec<EgressRule> = ["deny=10.0.0.0/8", "allow=host:80", "deny=[::/0]:22"]
        .iter()
        .map(|r| r.parse().unwrap())
        .collect();
    Policy::new(
        &rules,
        Ipv4Addr::new(10, 0, 2, 2),
        Ipv4Addr::new(10, 0, 2, 3),
        &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
    )
}

/// Ethernet header from the guest.
fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x9a, 0x55, 0x9a, 0x55, 0x9a, 0x55];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A TCP or UDP frame over IPv4 or IPv6 to `dst` (the last byte of each address varies).
fn frame(v6: bool, tcp: bool, dst: u8, port: u16, payload: &[u8]) -> Vec<u8> {
    let l4_len = if tcp { 20 } else { 8 } + payload.len();
    let proto = if tcp { 6 } else { 17 };
    let mut f;
    if v6 {
        f = ethernet(0x86dd);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4_len as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15]);
        f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, dst]);
    } else {
        f = ethernet(0x0800);
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0, 10, 0, 2, 15, 10, 0, 2, dst]);
    }
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    if tcp {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend_from_slice(payload);
    f
}

/// The one's-complement sum of `bytes` folded to 16 bits (0xffff for a valid checksum).
fn ones_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Checks a refusal's answer to `frame`.
fn assert_answer_well_formed(frame: &[u8], answer: &[u8]) {
    assert!(
        answer.len() >= 14 + 20 && answer.len() <= 14 + 1500,
        "{}",
        answer.len()
    );
    assert_eq!(
        &answer[..6],
        &frame[6..12],
        "the answer goes back to the sender"
    );
    match u16::from_be_bytes([answer[12], answer[13]]) {
        0x0800 => {
            let ihl = usize::from(answer[14] & 0xf) * 4;
            assert_eq!(
                ones_sum(&answer[14..14 + ihl]),
                0xffff,
                "IPv4 header checksum"
            );
        }
        0x86dd => assert_eq!(answer[14] >> 4, 6),
        other => panic!("answer of ethertype {other:#x}"),
    }
}

proptest! {
    #[test]
    fn any_bytes_are_judged_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
        if let Verdict::Deny(Some(answer)) = check(&policy(), &bytes) {
            assert_answer_well_formed(&bytes, &answer);
        }
    }

    #[test]
    fn mutated_frames_are_judged_without_panic(
        v6 in any::<bool>(),
        tcp in any::<bool>(),
        dst in any::<u8>(),
        port in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
    ) {
        let mut f = frame(v6, tcp, dst, port, &payload);
        for (at, byte) in edits {
            let at = at % f.len();
            f[at] = byte;
        }
        f.truncate(cut % (f.len() + 1) + if cut % 3 == 0 { f.len() } else { 0 });
        if let Verdict::Deny(Some(answer)) = check(&policy(), &f) {
            assert_answer_well_formed(&f, &answer);
        }
    }

    #[test]
    fn unmutated_frames_get_the_rules_verdict(
        tcp in any::<bool>(),
        dst in any::<u8>(),
        port in any::<u16>(),
    ) {
        // 10.0.2.x is inside the denied 10.0.0.0/8, except the DNS forwarder on port 53 and
        // the gateway (the host) on port 80.
        let f = frame(false, tcp, dst, port, b"x");
        let allowed = (dst == 3 && port == 53) || (dst == 2 && port == 80);
        match check(&policy(), &f) {
            Verdict::Allow => prop_assert!(allowed, "10.0.2.{dst}:{port} allowed"),
            Verdict::Deny(answer) => {
                prop_assert!(!allowed, "10.0.2.{dst}:{port} refused");
                let answer = answer.expect("a refusal is answered");
                assert_answer_well_formed(&f, &answer);
                prop_assert_eq!(&answer[..6], &GUEST_MAC[..]);
            }
            Verdict::Drop(why) => prop_assert!(false, "dropped: {why}"),
        }
    }
}
