//! The real binary with the real passt, driven through a real vhost-user frontend
//! (`sm_vhost_user_common::testing`): ARP through passt, TCP to the host refused by the
//! default rules and let through by `allow=host:PORT`, a refused CIDR answered at once, and
//! the backend's end when passt dies.
//!
//! passt needs the host to have an interface with a default route; without one these tests
//! fail with a message saying so (they never skip).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sm_test_support::Program;
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend};
use sm_vhost_user_net::policy::checksum;

enum Net {}

impl Program for Net {
    const PATH: &'static str = env!("CARGO_BIN_EXE_sm-vhost-user-net");
}

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const RX: usize = 0;
const TX: usize = 1;
const RX_BUFFERS: u16 = 8;
const HDR: usize = 12;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn require_default_route() {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let has_default = routes
        .lines()
        .skip(1)
        .any(|l| l.split_whitespace().nth(1) == Some("00000000"));
    assert!(
        has_default,
        "this test needs a host interface with an IPv4 default route (passt: \"No external \
         routable interface for IPv4\" otherwise); /proc/net/route has none:\n{routes}"
    );
}

/// A backend with passt, a connected frontend, and rx buffers posted.
struct Guest {
    backend: sm_test_support::Backend<Net>,
    mem: GuestMemory,
    fe: TestFrontend,
    rx_buffers: Vec<u64>,
    tx_slot: u16,
}

impl Guest {
    fn start(dir: &Path, extra: &[&str]) -> Guest {
        Guest::start_with_rx(dir, extra, RX_BUFFERS)
    }

    /// As [`Guest::start`] with only `rx` rx buffers posted (slots `0..rx`).
    fn start_with_rx(dir: &Path, extra: &[&str], rx: u16) -> Guest {
        require_default_route();
        let mut args = vec!["--passt", "passt"];
        args.extend_from_slice(extra);
        let backend = sm_test_support::Backend::<Net>::start(dir, "net", &args);
        let mem = GuestMemory::new();
        let (mut fe, _) = TestFrontend::connect(&backend.socket, 2);
        fe.start(&mem, &[0, 0]);
        let mut rx_buffers: Vec<u64> = (0..rx)
            .map(|slot| fe.post(&mem, RX, slot, &[], 4096))
            .collect();
        rx_buffers.resize(usize::from(RX_BUFFERS), 0);
        Guest {
            backend,
            mem,
            fe,
            rx_buffers,
            tx_slot: 0,
        }
    }

    /// Sends `frame` on the tx queue and waits for the device to complete it.
    fn send(&mut self, frame: &[u8]) {
        let mut buf = vec![0u8; HDR];
        buf.extend_from_slice(frame);
        let slot = self.tx_slot;
        self.tx_slot = (self.tx_slot + 1) % 8;
        self.fe.post(&self.mem, TX, slot, &buf, 0);
        let (head, len) = self
            .fe
            .next_used(&self.mem, TX, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("tx not completed\n{}", self.backend.log()));
        assert_eq!(
            (head, len),
            (2 * slot, 0),
            "tx completes in order with length 0"
        );
    }

    /// The next frame the device delivers within `timeout` (its rx buffer posted again).
    fn recv(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let (head, len) = self.fe.next_used(&self.mem, RX, timeout)?;
        let slot = head / 2;
        let bytes = self
            .mem
            .read(self.rx_buffers[usize::from(slot)], len as usize);
        assert!(bytes.len() >= HDR + 14, "rx of {len} bytes");
        let mut hdr = [0u8; HDR];
        hdr[10] = 1;
        assert_eq!(&bytes[..HDR], &hdr, "virtio_net_hdr_v1 with num_buffers 1");
        self.fe.post(&self.mem, RX, slot, &[], 4096);
        Some(bytes[HDR..].to_vec())
    }

    /// The first frame delivered within `timeout` that `want` accepts.
    fn recv_matching(
        &mut self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = self.recv(left)?;
            if want(&frame) {
                return Some(frame);
            }
        }
    }
}

fn arp_request(target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&GUEST.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// A TCP SYN (with an MSS option) from the guest to `dst:dport`.
fn syn(dst_mac: [u8; 6], dst: Ipv4Addr, sport: u16, dport: u16, isn: u32) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&isn.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x60, SYN, 0xfa, 0xf0, 0, 0, 0, 0, 2, 4, 0x05, 0xb4]);
    let mut pseudo = GUEST.octets().to_vec();
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, tcp.len() as u8]);
    let sum = checksum(&[&pseudo, &tcp], 0);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&GUEST.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = checksum(&[&ip], 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

/// A TCP segment to the guest's `sport` from `src:dport`: (flags, seq, ack).
fn tcp_answer(frame: &[u8], src: Ipv4Addr, dport: u16, sport: u16) -> Option<(u8, u32, u32)> {
    if frame.len() < 54 || frame[12..14] != [0x08, 0x00] || frame[23] != 6 {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let tcp = &ip[ihl..];
    let ok = ip[12..16] == src.octets()
        && ip[16..20] == GUEST.octets()
        && tcp[0..2] == dport.to_be_bytes()
        && tcp[2..4] == sport.to_be_bytes();
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    ok.then(|| (tcp[13], be32(&tcp[4..8]), be32(&tcp[8..12])))
}

/// The gateway's MAC, learnt the way a guest does: ARP through passt.
fn gateway_mac(g: &mut Guest) -> [u8; 6] {
    g.send(&arp_request(GATEWAY));
    let reply = g
        .recv_matching(Duration::from_secs(5), |f| f[12..14] == [0x08, 0x06])
        .unwrap_or_else(|| panic!("no ARP reply from passt\n{}", g.backend.log()));
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&reply[28..32], &GATEWAY.octets(), "for the gateway");
    assert_eq!(&reply[32..38], &GUEST_MAC, "to the guest");
    assert_eq!(&reply[0..6], &GUEST_MAC);
    reply[22..28].try_into().unwrap()
}

#[test]
fn arp_for_the_gateway_is_answered_by_passt() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start(dir.path(), &[]);
    let mac = gateway_mac(&mut g);
    assert_ne!(mac, [0; 6]);
    assert_eq!(g.backend.stdout(), "", "stdout stays silent");
}

#[test]
fn the_host_is_refused_by_default_and_opened_by_port() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();

    // Default rules: `deny=host`, so the backend answers the SYN with a reset.
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start(dir.path(), &[]);
    let mac = gateway_mac(&mut g);
    g.send(&syn(mac, GATEWAY, 40001, port, 1000));
    let rst = g
        .recv_matching(Duration::from_secs(2), |f| {
            tcp_answer(f, GATEWAY, port, 40001).is_some()
        })
        .expect("no answer to a refused SYN");
    assert_eq!(
        tcp_answer(&rst, GATEWAY, port, 40001),
        Some((RST | ACK, 0, 1001))
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock,
        "a refused SYN reached the host"
    );
    drop(g);

    // `allow=host:PORT`: passt connects to the listener and the guest gets a SYN-ACK.
    let dir = tempfile::tempdir().unwrap();
    let rule = format!("allow=host:{port}");
    let mut g = Guest::start(dir.path(), &["--egress", &rule]);
    let mac = gateway_mac(&mut g);
    g.send(&syn(mac, GATEWAY, 40002, port, 5000));
    let synack = g
        .recv_matching(Duration::from_secs(5), |f| {
            tcp_answer(f, GATEWAY, port, 40002).is_some()
        })
        .unwrap_or_else(|| panic!("no SYN-ACK\n{}", g.backend.log()));
    let (flags, _, ack) = tcp_answer(&synack, GATEWAY, port, 40002).unwrap();
    assert_eq!(flags & (SYN | ACK | RST), SYN | ACK, "flags {flags:#x}");
    assert_eq!(ack, 5001);
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((_, peer)) => {
                assert!(peer.ip().is_loopback(), "{peer}");
                break;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(start.elapsed() < Duration::from_secs(5), "never accepted");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    // Another port of the host stays closed.
    g.send(&syn(mac, GATEWAY, 40003, port.wrapping_add(1), 7));
    let rst = g
        .recv_matching(Duration::from_secs(2), |f| {
            tcp_answer(f, GATEWAY, port.wrapping_add(1), 40003).is_some()
        })
        .expect("no reset for another host port");
    assert_eq!(rst[47] & RST, RST);
}

#[test]
fn a_denied_cidr_is_reset_within_100_ms() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start(dir.path(), &["--egress", "deny=198.51.100.0/24"]);
    let mac = gateway_mac(&mut g);
    let dst = Ipv4Addr::new(198, 51, 100, 7);
    for attempt in 0..3u16 {
        let sport = 41000 + attempt;
        let start = Instant::now();
        g.send(&syn(mac, dst, sport, 443, 77));
        let rst = g
            .recv_matching(Duration::from_millis(100), |f| {
                tcp_answer(f, dst, 443, sport).is_some()
            })
            .expect("no reset within 100 ms");
        let took = start.elapsed();
        assert!(took < Duration::from_millis(100), "{took:?}");
        assert_eq!(tcp_answer(&rst, dst, 443, sport), Some((RST | ACK, 0, 78)));
    }
}

#[test]
fn the_backend_ends_when_passt_dies() {
    let dir = tempfile::tempdir().unwrap();
    let g = Guest::start(dir.path(), &[]);
    let passt = child_named(g.backend.pid(), "passt").expect("passt, the backend's child");
    // SAFETY: kill with integers; `passt` is our backend's child.
    assert_eq!(unsafe { libc::kill(passt, libc::SIGKILL) }, 0);
    let start = Instant::now();
    while !g.backend.log().contains("passt exited") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{}",
            g.backend.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let Guest { backend, .. } = g;
    let log_path = backend.socket.with_file_name("net.log");
    let status = backend.stop();
    let log = std::fs::read_to_string(log_path).unwrap();
    assert_eq!(status.code(), Some(1), "{status:?} {:?}", status.signal());
    let line = "sm-vhost-user-net: passt exited (its socket closed)";
    assert_eq!(
        log.lines().filter(|l| l.contains("passt exited")).count(),
        1,
        "{log}"
    );
    assert!(log.lines().any(|l| l == line), "{log}");
}

/// The child of `pid` whose command name starts with `name`.
fn child_named(pid: i32, name: &str) -> Option<i32> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|c: &i32| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.starts_with(name))
        })
}

/// CPU time (user + system, in clock ticks) of every thread of `pid`.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn frames_wait_for_rx_buffers_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start_with_rx(dir.path(), &[], 0);
    // Three ARP requests: passt answers each, but the guest has posted no rx buffer.
    for _ in 0..3 {
        g.send(&arp_request(GATEWAY));
    }
    let server = child_named(g.backend.pid(), "sm-vhost").expect("the sandboxed server");
    std::thread::sleep(Duration::from_millis(100));
    let before = cpu_ticks(server);
    std::thread::sleep(Duration::from_millis(500));
    let spent = cpu_ticks(server) - before;
    assert!(
        spent <= 5,
        "the backend spun ({spent} ticks in 500 ms) without rx buffers"
    );
    assert_eq!(
        g.fe.used_idx(&g.mem, RX),
        0,
        "nothing delivered without a buffer"
    );
    // Buffers now: every reply arrives, none lost.
    for slot in 0..RX_BUFFERS {
        g.rx_buffers[usize::from(slot)] = g.fe.post(&g.mem, RX, slot, &[], 4096);
    }
    for i in 0..3 {
        let reply = g
            .recv_matching(Duration::from_secs(5), |f| f[12..14] == [0x08, 0x06])
            .unwrap_or_else(|| panic!("ARP reply {i} lost\n{}", g.backend.log()));
        assert_eq!(&reply[28..32], &GATEWAY.octets());
    }
}

#[test]
fn snapshot_state_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Guest::start(dir.path(), &[]);
    let bases = g.fe.stop();
    // Rx buffers are taken only when a frame comes: none was, so both bases are 0.
    assert_eq!(bases, [0, 0]);
    let (state, check) = g.fe.save();
    check.expect("CHECK_DEVICE_STATE after SAVE");
    let doc: serde_json::Value = serde_json::from_slice(&state).unwrap();
    assert_eq!(doc["format"], "sm-vhost-user-net");
    g.fe.load(&state).expect("LOAD of our own state");
    assert!(g.fe.load(b"{}").is_err(), "a foreign document is refused");
}
