//! Snapshot and restore over vhost-user (SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE), with the
//! real backend binary and real FUSE requests through real virtqueues: backend A serves
//! lookups and an open, its rings are stopped and its state saved; a fresh backend B loads
//! that state and serves the same node IDs and handle; A keeps serving after the SAVE.
//! Refused states: a path now behind an escaping symlink, garbage, a truncated document.

#[allow(unused_imports)] // The shared module re-exports what other test binaries use.
mod common;

use std::path::Path;

use common::{
    Backend, FUSE_GETATTR, FUSE_INIT, FUSE_LOOKUP, FUSE_OPEN, FUSE_OPENDIR, FUSE_READ, REQ,
};
use sm_test_support::s;
use sm_vhost_user_common::testing::{GuestMemory, TestFrontend, MEM_SIZE};
use vhost::vhost_user::message::VhostUserProtocolFeatures;

/// FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_DO_READDIRPLUS | FUSE_MAX_PAGES.
const INIT_FLAGS: u32 = 1 | (1 << 5) | (1 << 13) | (1 << 22);

/// A FUSE session over a [`TestFrontend`]'s request queue.
struct Fuse<'a> {
    fe: &'a mut TestFrontend,
    mem: &'a GuestMemory,
    unique: u64,
}

impl Fuse<'_> {
    /// Sends one request; returns (error, reply body).
    fn call(&mut self, opcode: u32, node: u64, body: &[u8]) -> (i32, Vec<u8>) {
        self.unique += 1;
        let mut req = Vec::new();
        req.extend_from_slice(&(40 + body.len() as u32).to_le_bytes());
        req.extend_from_slice(&opcode.to_le_bytes());
        req.extend_from_slice(&self.unique.to_le_bytes());
        req.extend_from_slice(&node.to_le_bytes());
        req.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
        req.extend_from_slice(body);
        let reply = self.fe.request(self.mem, REQ, &req, 8192);
        assert!(
            reply.len >= 16,
            "opcode {opcode}: reply of {} bytes",
            reply.len
        );
        let error = i32::from_le_bytes(reply.bytes[4..8].try_into().unwrap());
        let unique = u64::from_le_bytes(reply.bytes[8..16].try_into().unwrap());
        assert_eq!(unique, self.unique);
        (error, reply.bytes[16..].to_vec())
    }

    fn ok(&mut self, opcode: u32, node: u64, body: &[u8]) -> Vec<u8> {
        let (error, out) = self.call(opcode, node, body);
        assert_eq!(error, 0, "opcode {opcode} on node {node}: errno {}", -error);
        out
    }

    fn init(&mut self) {
        let mut body = Vec::new();
        for v in [7u32, 31, 0, INIT_FLAGS] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        self.ok(FUSE_INIT, 0, &body);
    }

    /// LOOKUP: the node ID.
    fn lookup(&mut self, parent: u64, name: &str) -> u64 {
        let body = [name.as_bytes(), b"\0"].concat();
        let out = self.ok(FUSE_LOOKUP, parent, &body);
        u64::from_le_bytes(out[0..8].try_into().unwrap())
    }

    /// GETATTR: (host inode number, size), or the errno.
    fn getattr(&mut self, node: u64) -> Result<(u64, u64), i32> {
        let (error, out) = self.call(FUSE_GETATTR, node, &[0u8; 16]);
        if error != 0 {
            return Err(-error);
        }
        let word = |at: usize| u64::from_le_bytes(out[at..at + 8].try_into().unwrap());
        Ok((word(16), word(24)))
    }

    /// OPEN (or OPENDIR) read-only: the handle.
    fn open(&mut self, node: u64, dir: bool) -> u64 {
        let op = if dir { FUSE_OPENDIR } else { FUSE_OPEN };
        let out = self.ok(op, node, &[0u8; 8]);
        u64::from_le_bytes(out[0..8].try_into().unwrap())
    }

    /// READ of up to `size` bytes at 0 through `handle`.
    fn read(&mut self, node: u64, handle: u64, size: u32) -> Result<Vec<u8>, i32> {
        let mut body = Vec::new();
        body.extend_from_slice(&handle.to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes());
        body.extend_from_slice(&size.to_le_bytes());
        body.extend_from_slice(&[0u8; 20]);
        let (error, out) = self.call(FUSE_READ, node, &body);
        if error != 0 {
            return Err(-error);
        }
        Ok(out)
    }
}

/// A backend on `shared` with `--symlinks deny`, sandboxed as in production.
fn start(dir: &Path, name: &str, shared: &Path) -> Backend {
    Backend::start(
        dir,
        name,
        &["--shared-dir", s(shared), "--symlinks", "deny"],
    )
}

/// What backend A left: the saved state, the ring bases, guest memory at the snapshot, and
/// the node IDs and handle the guest holds.
struct Saved {
    state: Vec<u8>,
    bases: Vec<u16>,
    memory: Vec<u8>,
    dir: u64,
    file: u64,
    handle: u64,
    dir_handle: u64,
}

const CONTENT: &[u8] = b"bytes the guest had open at the snapshot\n";

/// Backend A: INIT, LOOKUP d and d/f, OPEN f, OPENDIR d, a host rename of d/f to d/moved;
/// then GET_VRING_BASE and SAVE; then A serves on after its rings restart.
fn snapshot_a(dir: &Path, shared: &Path) -> Saved {
    let a = start(dir, "a", shared);
    let mem = GuestMemory::new();
    let (mut fe, offered) = TestFrontend::connect(&a.socket, 2);
    assert!(offered.contains(VhostUserProtocolFeatures::DEVICE_STATE));
    fe.start(&mem, &[0, 0]);
    let mut fuse = Fuse {
        fe: &mut fe,
        mem: &mem,
        unique: 0,
    };
    fuse.init();
    let d = fuse.lookup(1, "d");
    let f = fuse.lookup(d, "f");
    assert_eq!(fuse.lookup(d, "f"), f, "a second lookup, same node");
    let handle = fuse.open(f, false);
    let dir_handle = fuse.open(d, true);
    std::fs::rename(shared.join("d/f"), shared.join("d/moved")).unwrap();

    let bases = fe.stop();
    assert_eq!(bases[REQ], 6, "six requests taken from the request queue");
    let memory = mem.read(0, MEM_SIZE);
    let (state, check) = fe.save();
    check.unwrap_or_else(|e| panic!("CHECK after SAVE: {e}\n{}", a.log()));

    // A snapshot that leaves the source running: the same rings restart and serve.
    fe.start(&mem, &bases);
    let mut fuse = Fuse {
        fe: &mut fe,
        mem: &mem,
        unique: 100,
    };
    assert_eq!(fuse.read(f, handle, 4096).unwrap(), CONTENT);
    assert_eq!(fuse.lookup(d, "moved"), f);
    Saved {
        state,
        bases,
        memory,
        dir: d,
        file: f,
        handle,
        dir_handle,
    }
}

/// A fresh backend process loads A's state and serves A's node IDs and handles: GETATTR on
/// the saved nodes, READ through the saved handle (the file was renamed on the host after
/// the open; its new name was saved), and new nodes get IDs that never collide.
#[test]
fn a_fresh_backend_serves_the_saved_inodes_and_handles() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("d")).unwrap();
    std::fs::write(shared.join("d/f"), CONTENT).unwrap();
    std::fs::write(shared.join("g"), b"g").unwrap();
    let saved = snapshot_a(dir.path(), &shared);

    let doc: serde_json::Value = serde_json::from_slice(&saved.state).unwrap();
    let mut fields: Vec<_> = doc.as_object().unwrap().keys().cloned().collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "config",
            "format",
            "fuse_options",
            "handles",
            "inodes",
            "last_handle",
            "next_inode",
            "version"
        ]
    );
    assert_eq!(doc["format"], "sm-vhost-user-fs");
    let paths: Vec<_> = doc["inodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_u64().unwrap(),
                i["path"].clone(),
                i["lookups"].clone(),
            )
        })
        .collect();
    assert_eq!(
        paths,
        [
            (saved.dir, "d".into(), 1.into()),
            (saved.file, "d/moved".into(), 2.into())
        ]
    );

    let b = start(dir.path(), "b", &shared);
    let mem = GuestMemory::new();
    mem.write(0, &saved.memory);
    let (mut fe, _) = TestFrontend::connect(&b.socket, 2);
    fe.load(&saved.state)
        .unwrap_or_else(|e| panic!("LOAD: {e}\n{}", b.log()));
    fe.start(&mem, &saved.bases);
    let mut fuse = Fuse {
        fe: &mut fe,
        mem: &mem,
        unique: 200,
    };
    let host_ino =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(shared.join("d/moved")).unwrap());
    assert_eq!(
        fuse.getattr(saved.file),
        Ok((host_ino, CONTENT.len() as u64))
    );
    assert!(fuse.getattr(saved.dir).is_ok());
    assert_eq!(fuse.read(saved.file, saved.handle, 4096).unwrap(), CONTENT);
    // READDIR through the saved directory handle lists the directory.
    let mut body = Vec::new();
    body.extend_from_slice(&saved.dir_handle.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(&4096u32.to_le_bytes());
    body.extend_from_slice(&[0u8; 20]);
    let listing = fuse.ok(28, saved.dir, &body); // FUSE_READDIR
    assert!(
        listing.windows(5).any(|w| w == b"moved"),
        "READDIR through the saved handle"
    );
    let g = fuse.lookup(1, "g");
    assert!(g > saved.file, "new node {g} collides with the saved ones");
    assert_eq!(fuse.lookup(saved.dir, "moved"), saved.file);
    assert_eq!(fuse.getattr(9999), Err(libc::EBADF));
    assert_eq!(b.stdout(), "");
}

/// LOAD refuses, and CHECK_DEVICE_STATE reports failure, for a state whose directory was
/// replaced by a symlink leaving the share (`--symlinks deny`), for garbage and for a
/// truncated document; the log names the inode and the reason in one line.
#[test]
fn load_refuses_escaping_paths_and_bad_documents() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(shared.join("d")).unwrap();
    std::fs::write(shared.join("d/f"), CONTENT).unwrap();
    let saved = snapshot_a(dir.path(), &shared);

    let b = start(dir.path(), "b", &shared);
    let (mut fe, _) = TestFrontend::connect(&b.socket, 2);
    assert!(fe.load(b"{\"format\": garbage").is_err());
    assert!(fe.load(&saved.state[..saved.state.len() / 2]).is_err());
    let log = b.log();
    assert_eq!(
        log.matches("cannot load the device state: not an sm-vhost-user-fs state document")
            .count(),
        2,
        "{log}"
    );

    // d now leads outside the shared directory, to a tree holding the same names.
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::rename(shared.join("d"), outside.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.join("d"), shared.join("d")).unwrap();
    assert!(fe.load(&saved.state).is_err());
    let log = b.log();
    let line = log
        .lines()
        .find(|l| l.contains("inode ") && l.contains("cannot load"))
        .unwrap_or_else(|| panic!("no LOAD error in the log:\n{log}"));
    assert!(
        line.contains(&format!("inode {} (d)", saved.dir))
            && line.contains("symlink leaving the shared directory"),
        "{line}"
    );
}

/// With `--thread-pool-size`, requests run on worker threads after the queue thread took
/// them from the ring. GET_VRING_BASE right after a burst of large READs must still answer
/// only once each one it took is in the used ring: the saved index and the used index agree
/// every time, and the rings restart from it.
#[test]
fn ring_base_counts_only_completed_requests_with_a_thread_pool() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("big"), vec![7u8; 128 << 10]).unwrap();
    let a = Backend::start(
        dir.path(),
        "a",
        &["--shared-dir", s(&shared), "--thread-pool-size", "4"],
    );
    let mem = GuestMemory::new();
    let (mut fe, _) = TestFrontend::connect(&a.socket, 2);
    fe.start(&mem, &[0, 0]);
    let mut fuse = Fuse {
        fe: &mut fe,
        mem: &mem,
        unique: 0,
    };
    fuse.init();
    let big = fuse.lookup(1, "big");
    let handle = fuse.open(big, false);
    let start_idx = fe.used_idx(&mem, REQ);
    for round in 0..20u64 {
        let reads: Vec<Vec<u8>> = (0..8u64)
            .map(|i| {
                let mut req = Vec::new();
                req.extend_from_slice(&80u32.to_le_bytes());
                req.extend_from_slice(&FUSE_READ.to_le_bytes());
                req.extend_from_slice(&(1000 + round * 8 + i).to_le_bytes());
                req.extend_from_slice(&big.to_le_bytes());
                req.extend_from_slice(&[0u8; 16]);
                req.extend_from_slice(&handle.to_le_bytes());
                req.extend_from_slice(&0u64.to_le_bytes());
                req.extend_from_slice(&(64u32 << 10).to_le_bytes());
                req.extend_from_slice(&[0u8; 20]);
                req
            })
            .collect();
        fe.submit(&mem, REQ, &reads, (64 << 10) + 16);
        let stopped = fe.stop();
        let used = fe.used_idx(&mem, REQ);
        assert_eq!(
            used, stopped[REQ],
            "round {round}: GET_VRING_BASE answered {} with {used} requests completed",
            stopped[REQ]
        );
        // Whatever the backend had not taken yet is still in the ring: the restarted ring
        // takes it from the saved index at the next kick.
        fe.start(&mem, &stopped);
        fe.kick(REQ);
        let all = start_idx.wrapping_add(8 * (round as u16 + 1));
        let t = std::time::Instant::now();
        while fe.used_idx(&mem, REQ) != all {
            assert!(
                t.elapsed().as_secs() < 10,
                "round {round}: used {} of {all} (saved {stopped:?})",
                fe.used_idx(&mem, REQ)
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    assert_eq!(a.stdout(), "");
}
