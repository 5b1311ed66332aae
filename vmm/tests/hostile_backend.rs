//! A hostile vhost-user backend against the real sm-vmm binary. sm-vmm connects to every
//! backend and reads its features, config and shared memory regions before the guest boots,
//! so each case here runs the real `sm-vmm` against a backend (written below, speaking the
//! protocol over a Unix socket) that lies, stalls or hangs up at one step, and checks what a
//! user sees: sm-vmm stops within a bounded time with one `sm-vmm:` line naming the socket,
//! never a panic or a signal; or, where the VM may go on without the bad part (map requests
//! the frontend refuses), it goes on and a signal stops it cleanly.
//! Needs /dev/kvm and the installed kernel and initramfs: without them the tests fail.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    BackendReq, FrontendReq, VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures,
    VhostUserShMemConfig,
};
use vm_memory::ByteValued;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const SM_VMM: &str = env!("CARGO_BIN_EXE_sm-vmm");
const VERSION_1: u64 = 1 << 32;
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Header flags: version 1, reply, need reply.
const V1: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;
/// How long sm-vmm may take to give up on a backend (its setup deadline is 10 s).
const BOUND: Duration = Duration::from_secs(30);

/// What the hostile backend does with one request.
enum Act {
    /// Answers as an honest backend would.
    Honest,
    /// Sends these bytes instead.
    Raw(Vec<u8>),
    /// Never answers (but keeps the connection open).
    Silent,
    /// Hangs up.
    Close,
}

fn header(request: u32, flags: u32, size: u32) -> Vec<u8> {
    [request, flags, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn reply(request: u32, body: &[u8]) -> Vec<u8> {
    [
        header(request, V1 | REPLY, body.len() as u32),
        body.to_vec(),
    ]
    .concat()
}

fn u64_reply(request: FrontendReq, v: u64) -> Vec<u8> {
    reply(request as u32, &v.to_le_bytes())
}

/// A `VhostUserShMemConfig` reply body with `nregions` and these sizes.
fn shmem_config(nregions: u32, sizes: &[u64]) -> Vec<u8> {
    VhostUserShMemConfig::new(nregions, sizes)
        .as_slice()
        .to_vec()
}

/// The backend's side of one received request.
struct Request {
    code: u32,
    flags: u32,
    body: Vec<u8>,
    fd: Option<OwnedFd>,
}

/// Reads one message with its file descriptor, if any; `None` at EOF.
fn recv(conn: &UnixStream) -> Option<Request> {
    let mut hdr = [0u8; 12];
    let (n, fd) = conn.recv_with_fd(&mut hdr).ok()?;
    if n == 0 {
        return None;
    }
    (&*conn).read_exact(&mut hdr[n..]).ok()?;
    let word = |i: usize| u32::from_le_bytes(hdr[i * 4..i * 4 + 4].try_into().unwrap());
    let mut body = vec![0u8; word(2) as usize];
    (&*conn).read_exact(&mut body).ok()?;
    Some(Request {
        code: word(0),
        flags: word(1),
        body,
        fd: fd.map(OwnedFd::from),
    })
}

/// What the honest backend would answer to `req` (`None`: nothing).
fn honest(req: &Request, protocol: u64, shmem: &[u64], queues: u64) -> Option<Vec<u8>> {
    let code = req.code;
    Some(match code {
        c if c == FrontendReq::GET_FEATURES as u32 => {
            u64_reply(FrontendReq::GET_FEATURES, VERSION_1 | PROTOCOL_FEATURES)
        }
        c if c == FrontendReq::GET_PROTOCOL_FEATURES as u32 => {
            u64_reply(FrontendReq::GET_PROTOCOL_FEATURES, protocol)
        }
        c if c == FrontendReq::GET_QUEUE_NUM as u32 => {
            u64_reply(FrontendReq::GET_QUEUE_NUM, queues)
        }
        // The config space asked for, all zeros (body: offset, size, flags).
        c if c == FrontendReq::GET_CONFIG as u32 => {
            let size = u32::from_le_bytes(req.body[4..8].try_into().unwrap()) as usize;
            let mut body = req.body[..12].to_vec();
            body.resize(12 + size, 0);
            reply(code, &body)
        }
        c if c == FrontendReq::GET_SHMEM_CONFIG as u32 => {
            reply(code, &shmem_config(shmem.len() as u32, shmem))
        }
        _ if req.flags & NEED_REPLY != 0 => reply(code, &0u64.to_le_bytes()),
        _ => return None,
    })
}

/// What the backend does with the backend-request channel sm-vmm hands it, before it
/// acknowledges SET_BACKEND_REQ_FD (sm-vmm already serves the channel then).
type OnChannel = Box<dyn FnOnce(UnixStream) + Send>;

/// A hostile backend on `socket`: honest except where `act` says otherwise for a request
/// code.
struct Backend {
    socket: PathBuf,
    protocol: u64,
    shmem: Vec<u64>,
    act: Box<dyn Fn(u32) -> Act + Send>,
    on_channel: Option<OnChannel>,
}

impl Backend {
    fn new(dir: &Path, protocol: VhostUserProtocolFeatures) -> Backend {
        Backend {
            socket: dir.join("backend.sock"),
            protocol: protocol.bits(),
            shmem: vec![],
            act: Box::new(|_| Act::Honest),
            on_channel: None,
        }
    }

    fn blk(dir: &Path) -> Backend {
        use VhostUserProtocolFeatures as P;
        Backend::new(dir, P::MQ | P::REPLY_ACK | P::CONFIG)
    }

    /// A virtio-fs backend with these shared memory regions.
    fn fs(dir: &Path, shmem: &[u64]) -> Backend {
        use VhostUserProtocolFeatures as P;
        let mut b = Backend::new(dir, P::MQ | P::REPLY_ACK | P::SHMEM | P::BACKEND_REQ);
        b.shmem = shmem.to_vec();
        b
    }

    fn acting(mut self, act: impl Fn(u32) -> Act + Send + 'static) -> Backend {
        self.act = Box::new(act);
        self
    }

    fn on_channel(mut self, f: impl FnOnce(UnixStream) + Send + 'static) -> Backend {
        self.on_channel = Some(Box::new(f));
        self
    }

    /// Listens, then serves one connection in a thread; says (on the receiver) whether
    /// sm-vmm sent a backend-request channel.
    fn start(mut self) -> mpsc::Receiver<bool> {
        let listener = UnixListener::bind(&self.socket).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((conn, _)) = listener.accept() else {
                return;
            };
            let mut channel = false;
            while let Some(mut req) = recv(&conn) {
                if req.code == FrontendReq::SET_BACKEND_REQ_FD as u32 {
                    channel = true;
                    if let (Some(fd), Some(f)) = (req.fd.take(), self.on_channel.take()) {
                        f(UnixStream::from(fd));
                    }
                }
                let answer = match (self.act)(req.code) {
                    Act::Honest => honest(&req, self.protocol, &self.shmem, 1),
                    Act::Raw(bytes) => Some(bytes),
                    Act::Silent => {
                        // Hold the connection open, answering nothing, until sm-vmm goes.
                        while recv(&conn).is_some() {}
                        return;
                    }
                    Act::Close => return,
                };
                if let Some(a) = answer {
                    if (&conn).write_all(&a).is_err() {
                        break;
                    }
                }
            }
            let _ = tx.send(channel);
        });
        rx
    }
}

/// Fails loudly without what sm-vmm needs to get as far as its backends.
fn require_host() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "hostile_backend needs /dev/kvm (sm-vmm creates a real VM before it connects)"
    );
    for f in [
        sm_vmm::config::default_kernel(),
        sm_vmm::config::default_initrd(),
    ] {
        assert!(
            f.exists(),
            "hostile_backend needs {} (scripts/build.sh installs it)",
            f.display()
        );
    }
}

fn sm_vmm(device: &str, socket: &Path) -> Child {
    require_host();
    let arg = match device {
        "fs" => format!("--fs-socket=work={}", socket.display()),
        _ => format!("--blk-socket={}", socket.display()),
    };
    Command::new(SM_VMM)
        .args([&arg, "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sm-vmm")
}

/// Waits at most `limit` for `child`; kills it (and fails) past that.
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "sm-vmm still running after {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// sm-vmm failed cleanly: a non-zero exit (no signal, no panic) and one `sm-vmm:` line
/// naming the socket and containing every one of `words`.
fn assert_clean_refusal(out: &Output, socket: &Path, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), None, "killed by a signal: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    assert!(stderr.starts_with("sm-vmm: "), "{stderr}");
    assert!(stderr.contains(&socket.display().to_string()), "{stderr}");
    for w in words {
        assert!(stderr.contains(w), "{w:?} missing from: {stderr}");
    }
}

/// Runs sm-vmm as `device` against `backend`, expecting a clean refusal with `words`.
fn refused(device: &str, backend: Backend, words: &[&str]) {
    let socket = backend.socket.clone();
    let _channel = backend.start();
    let out = wait_bounded(sm_vmm(device, &socket), BOUND);
    assert_clean_refusal(&out, &socket, words);
}

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn absurd_shared_memory_region_sizes_are_refused() {
    let gib = 1u64 << 30;
    for (sizes, nregions, words) in [
        (vec![u64::MAX], 1, &["region 0", "0xffffffffffffffff"][..]),
        (vec![u64::MAX - 4095], 1, &["region 0"]),
        (vec![1 << 62], 1, &["region 0"]),
        (vec![gib + 1], 1, &["region 0", "4 KiB pages"]),
        (vec![gib, 4096 * 3 + 7], 2, &["region 1"]),
        // Page-aligned and within the crate's cap, but beyond the guest's address space.
        (vec![1 << 51; 4], 4, &["physical address space"]),
        (vec![4096; 256], 256, &["256 shared memory regions"]),
        (vec![4096; 8], 1000, &["1000 shared memory regions"]),
    ] {
        let d = dir();
        let mut b = Backend::fs(d.path(), &sizes);
        let reply = shmem_config(nregions, &sizes);
        b = b.acting(move |code| match code {
            c if c == FrontendReq::GET_SHMEM_CONFIG as u32 => {
                Act::Raw([header(c, V1 | REPLY, reply.len() as u32), reply.clone()].concat())
            }
            _ => Act::Honest,
        });
        refused("fs", b, words);
    }
}

#[test]
fn feature_replies_of_the_wrong_size_or_flags_are_refused() {
    let features = (VERSION_1 | PROTOCOL_FEATURES).to_le_bytes();
    let get = FrontendReq::GET_FEATURES as u32;
    let proto = FrontendReq::GET_PROTOCOL_FEATURES as u32;
    for (code, bytes, step) in [
        // Not marked as a reply.
        (
            get,
            [header(get, V1, 8), features.to_vec()].concat(),
            "GET_FEATURES",
        ),
        // A reply to another request.
        (
            get,
            [header(proto, V1 | REPLY, 8), features.to_vec()].concat(),
            "GET_FEATURES",
        ),
        // Version 2.
        (
            get,
            [header(get, 2 | REPLY, 8), features.to_vec()].concat(),
            "GET_FEATURES",
        ),
        // Four bytes, then nothing.
        (
            get,
            [header(get, V1 | REPLY, 4), vec![0; 4]].concat(),
            "GET_FEATURES",
        ),
        // Sixteen bytes announced and sent: the frontend takes eight, and the rest is no
        // valid answer to the next request.
        (
            proto,
            [header(proto, V1 | REPLY, 16), vec![0xff; 16]].concat(),
            "invalid message",
        ),
        // Features without VERSION_1.
        (
            get,
            reply(get, &PROTOCOL_FEATURES.to_le_bytes()),
            "VERSION_1",
        ),
    ] {
        let d = dir();
        let b = Backend::blk(d.path()).acting(move |c| match c == code {
            true => Act::Raw(bytes.clone()),
            false => Act::Honest,
        });
        refused("blk", b, &[step]);
    }
}

#[test]
fn config_replies_shorter_or_longer_than_asked_are_refused() {
    let code = FrontendReq::GET_CONFIG as u32;
    // sm-vmm asks for the 60-byte virtio-blk config at offset 0 (WRITABLE flag).
    let body = |size: u32, payload: usize| {
        let mut b = [0u32, size, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        b.resize(12 + payload, 0);
        reply(code, &b)
    };
    for bytes in [
        body(60, 30),
        body(30, 30),
        body(60, 100),
        body(100, 100),
        body(0, 60),
    ] {
        let d = dir();
        let b = Backend::blk(d.path()).acting(move |c| match c == code {
            true => Act::Raw(bytes.clone()),
            false => Act::Honest,
        });
        refused("blk", b, &["GET_CONFIG"]);
    }
}

#[test]
fn a_backend_that_stops_answering_or_hangs_up_mid_setup_is_refused_in_time() {
    let steps = [
        (FrontendReq::GET_FEATURES, "GET_FEATURES"),
        (FrontendReq::GET_PROTOCOL_FEATURES, "GET_PROTOCOL_FEATURES"),
        (FrontendReq::GET_QUEUE_NUM, "GET_QUEUE_NUM"),
        (FrontendReq::GET_CONFIG, "GET_CONFIG"),
    ];
    let mut silent = vec![];
    for (req, step) in steps {
        for close in [false, true] {
            let d = dir();
            let b = Backend::blk(d.path()).acting(move |c| match c == req as u32 {
                true if close => Act::Close,
                true => Act::Silent,
                false => Act::Honest,
            });
            let socket = b.socket.clone();
            let _channel = b.start();
            let t = Instant::now();
            let out = wait_bounded(sm_vmm("blk", &socket), BOUND);
            let words: &[&str] = if close {
                &[step, "closed the connection"]
            } else {
                &[step, "within 10 s"]
            };
            assert_clean_refusal(&out, &socket, words);
            if !close {
                silent.push(t.elapsed());
            }
            drop(d);
        }
    }
    // The silent cases end at the setup deadline, not earlier by accident.
    assert!(
        silent.iter().all(|t| *t >= Duration::from_secs(9)),
        "{silent:?}"
    );
}

#[test]
fn a_backend_that_accepts_and_says_nothing_is_refused_in_time() {
    let d = dir();
    let b = Backend::blk(d.path()).acting(|_| Act::Silent);
    refused("blk", b, &["within 10 s"]);
    // A backend that never reads its backend-request channel set-up either.
    let d = dir();
    let b = Backend::fs(d.path(), &[1 << 30]).acting(|c| match c {
        c if c == FrontendReq::SET_BACKEND_REQ_FD as u32 => Act::Silent,
        _ => Act::Honest,
    });
    refused("fs", b, &["SET_BACKEND_REQ_FD", "within 10 s"]);
}

/// Sends SHMEM_MAP of `fd` at `shm_offset` in region 0 on the backend-request channel; the
/// frontend's answer (0: mapped), or `None` if it closed the channel instead.
fn shmem_map(channel: &UnixStream, shm_offset: u64, len: u64, fd: i32, flags: u64) -> Option<u64> {
    let msg = VhostUserMMap {
        shm_offset,
        len,
        flags,
        ..Default::default()
    };
    let data = [
        header(BackendReq::SHMEM_MAP as u32, V1 | NEED_REPLY, 40),
        msg.as_slice().to_vec(),
    ]
    .concat();
    channel.send_with_fds(&[&data[..]], &[fd]).ok()?;
    let mut answer = [0u8; 20];
    (&*channel).read_exact(&mut answer).ok()?;
    Some(u64::from_le_bytes(answer[12..].try_into().unwrap()))
}

/// sm-vmm got past its backends' setup: on a PVM host it then refuses plainly (its guest
/// cannot boot there), elsewhere the guest runs `true`.
fn assert_got_past_setup(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), None, "{stderr}");
    if sm_vmm::kvm::is_pvm_only(Path::new("/sys/module")) {
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("/dev/kvm is PVM"), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
}

#[test]
fn a_zero_size_region_is_no_region() {
    let d = dir();
    let b = Backend::fs(d.path(), &[0]);
    let socket = b.socket.clone();
    let channel = b.start();
    let out = wait_bounded(sm_vmm("fs", &socket), Duration::from_secs(120));
    assert_got_past_setup(&out);
    let sent = channel
        .recv_timeout(BOUND)
        .expect("the backend saw sm-vmm go");
    assert!(!sent, "a backend-request channel for no region");
}

#[test]
fn dax_map_requests_outside_the_window_or_of_non_files_are_refused_and_the_vm_goes_on() {
    let d = dir();
    let window = 1u64 << 30;
    let (answers_tx, answers) = mpsc::channel();
    let dir_path = d.path().to_path_buf();
    let b = Backend::fs(d.path(), &[window]).on_channel(move |channel| {
        channel.set_read_timeout(Some(BOUND)).unwrap();
        let file = tempfile::tempfile().unwrap();
        file.set_len(1 << 20).unwrap();
        let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
        let dirfd = std::fs::File::open(&dir_path).unwrap();
        let f = file.as_raw_fd();
        let page = 4096;
        let writable = VhostUserMMapFlags::WRITABLE.bits();
        let mut got = vec![];
        // A good map first, so the refusals below are not the channel being dead.
        got.push(("a good map", shmem_map(&channel, 0, page, f, writable)));
        for (what, offset, len, fd) in [
            ("past the window", window, page, f),
            ("straddling the end", window - page, 2 * page, f),
            ("unaligned", 1, page, f),
            ("a pipe", 0, page, pipe_r.as_raw_fd()),
            ("a directory", 0, page, dirfd.as_raw_fd()),
            ("huge", 0, !(page - 1), f),
            // Offset plus length overflowing: the protocol layer refuses the message
            // itself and sm-vmm closes the channel (no answer), the VM going on.
            ("overflowing", u64::MAX - page + 1, 2 * page, f),
        ] {
            got.push((what, shmem_map(&channel, offset, len, fd, 0)));
        }
        answers_tx.send(got).unwrap();
    });
    let socket = b.socket.clone();
    let _channel = b.start();
    let out = wait_bounded(sm_vmm("fs", &socket), Duration::from_secs(120));
    let got = answers.recv_timeout(BOUND).expect("no map answers");
    assert_eq!(got[0].1, Some(0), "a good map");
    for (what, answer) in &got[1..got.len() - 1] {
        assert!(matches!(answer, Some(n) if *n != 0), "{what}: {answer:?}");
    }
    let overflow = got.last().unwrap().1;
    assert!(overflow.is_none_or(|n| n != 0), "{overflow:?}");
    assert_got_past_setup(&out);
}
