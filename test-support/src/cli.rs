//! Talking to a backend's vhost-user socket without a VMM: raw messages, and a frontend
//! that sends garbage.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{Backend, Program};

/// A vhost-user message header: request, flags (version 1), payload size.
pub fn header(request: u32, size: u32) -> Vec<u8> {
    [request, 1, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

/// Sends VHOST_USER_GET_FEATURES and returns the feature bits.
pub fn get_features(sock: &Path) -> u64 {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(&header(1, 0)).unwrap();
    let mut reply = [0u8; 20];
    c.read_exact(&mut reply).unwrap();
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}

/// Sends malformed messages on fresh connections and asserts the same sandboxed process
/// goes on serving, and that connections which come and go leak no descriptors; returns
/// the feature bits a well-formed request got afterwards.
pub fn survives_garbage<P: Program>(b: &Backend<P>) -> u64 {
    let pid = b.sandboxed_pid().unwrap();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    // Let the first connection's state settle, then count descriptors.
    drop(UnixStream::connect(&b.socket).unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let fds_before = fds();
    // An unknown request, a huge payload size, a truncated header, a bogus memory table.
    for msg in [
        header(9999, 0),
        header(1, u32::MAX),
        vec![1, 2, 3],
        [header(5, 8), vec![0xff; 8]].concat(),
    ] {
        let mut c = UnixStream::connect(&b.socket).unwrap();
        let _ = c.write_all(&msg);
        drop(c);
        std::thread::sleep(Duration::from_millis(50));
    }
    // Still the same sandboxed process, and it answers a well-formed request.
    assert_eq!(b.sandboxed_pid(), Some(pid), "{}", b.log());
    let features = get_features(&b.socket);
    // Connections come and go without leaking descriptors.
    for _ in 0..10 {
        drop(UnixStream::connect(&b.socket).unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fds(), fds_before, "descriptors leaked across connections");
    features
}
