//! Property-based fuzzing of the agent protocol in both directions (issue 17): arbitrary
//! bytes, oversized and truncated frames, unknown kinds, bad UTF-8 and JSON through
//! `read_frame` and the message types, and a hostile guest answering the host-side client
//! over a real Unix socket. The properties: no panic, no hang, the right error, the host
//! never buffers more than the protocol's limits allow, and the client serves the next
//! request.
//!
//! Cases per property come from `PROPTEST_CASES` (small by default); `scripts/fuzz
//! agent-frames 10m` and `scripts/fuzz agent-client 10m` run them for longer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Sender};
use std::sync::Mutex;
use std::task::Poll;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sm_agent::client::{Agent, AgentError, ExecOutput};
use sm_agent::exchange::ExecExchange;
use sm_agent::frame::{read_frame, write_frame, Frame, FrameError, Kind, MAX_FRAME};
use sm_agent::message::{Control, ExecRequest, ExitInfo, Hello, Request, Response, WindowSize};
use sm_agent::PROTOCOL_VERSION;
use sm_test_support::fuzz::config;

// ---------------------------------------------------------------------------------------
// Allocation accounting: the largest single allocation made by the current thread while
// tracking is on, so a test can prove a length prefix does not make the reader allocate it.

struct Tracking;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the bookkeeping only
// touches const-initialised thread-locals (no allocation, no destructor).
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed through unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout (all allocations go there).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    TRACK.with(|t| t.set(true));
    let r = f();
    TRACK.with(|t| t.set(false));
    (r, LARGEST.with(|l| l.get()))
}

// ---------------------------------------------------------------------------------------
// Strategies.

/// A kind byte: mostly the eight known kinds, sometimes anything.
fn kind_byte() -> impl Strategy<Value = u8> {
    prop_oneof![4 => 0u8..=7, 1 => any::<u8>()]
}

/// A length prefix: small, at the limit, just over it, or anything up to 4 GiB.
fn length() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..64,
        1 => Just(MAX_FRAME),
        1 => Just(MAX_FRAME + 1),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
}

/// A body: raw bytes, bad UTF-8, valid JSON of the wrong shape, or a message.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::collection::vec(any::<u8>(), 0..48),
        1 => Just(vec![0xff, 0xfe, b'"', 0xc3, 0x28]),
        1 => Just(br#"{"Exited":{"code":1}}"#.to_vec()),
        1 => Just(br#"{"Read":{"bytes":18446744073709551615}}"#.to_vec()),
        1 => Just(br#"{"Failed":"\ud800"}"#.to_vec()),
        1 => Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
        2 => response().prop_map(|r| serde_json::to_vec(&r).unwrap()),
        1 => request().prop_map(|r| serde_json::to_vec(&r).unwrap()),
    ]
}

fn exit_info() -> impl Strategy<Value = ExitInfo> {
    (
        any::<Option<i32>>(),
        any::<Option<i32>>(),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(code, signal, timed_out, duration_us)| ExitInfo {
            code,
            signal,
            timed_out,
            duration_us,
        })
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        exit_info().prop_map(Response::Exited),
        prop_oneof![Just(0u64), 0u64..64, Just(u64::MAX)]
            .prop_map(|bytes| Response::Written { bytes }),
        prop_oneof![Just(0u64), 0u64..64, Just(u64::MAX)]
            .prop_map(|bytes| Response::Read { bytes }),
        Just(Response::Connected),
        Just(Response::Reseeded),
        ".{0,20}".prop_map(Response::Failed),
    ]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (
            proptest::collection::vec(".{0,8}", 0..3),
            any::<Option<u32>>(),
            any::<Option<u64>>(),
            any::<bool>(),
            any::<Option<(u16, u16)>>()
        )
            .prop_map(
                |(argv, uid, timeout_ms, stdin, tty)| Request::Exec(ExecRequest {
                    argv,
                    uid,
                    timeout_ms,
                    stdin,
                    tty: tty.map(|(rows, cols)| WindowSize { rows, cols }),
                    ..ExecRequest::default()
                })
            ),
        (".{0,12}", any::<u32>(), any::<u64>(), any::<bool>()).prop_map(
            |(path, mode, size, create_parents)| Request::WriteFile {
                path,
                mode,
                size,
                create_parents
            }
        ),
        (".{0,12}", any::<u64>())
            .prop_map(|(path, max_bytes)| Request::ReadFile { path, max_bytes }),
        any::<u16>().prop_map(|port| Request::ConnectTcp { port }),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|seed| Request::Reseed { seed }),
    ]
}

/// One piece of what a hostile peer sends.
#[derive(Clone, Debug)]
enum Piece {
    /// A well-formed frame of a known kind.
    Frame(u8, Vec<u8>),
    /// A header announcing `len` bytes, followed by `body` (possibly fewer or more).
    Header(u32, u8, Vec<u8>),
    /// Raw bytes.
    Raw(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => (kind_byte(), body()).prop_map(|(k, b)| Piece::Frame(k, b)),
        2 => (length(), kind_byte(), proptest::collection::vec(any::<u8>(), 0..32))
            .prop_map(|(l, k, b)| Piece::Header(l, k, b)),
        1 => proptest::collection::vec(any::<u8>(), 0..16).prop_map(Piece::Raw),
    ]
}

fn encode(pieces: &[Piece]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in pieces {
        match p {
            Piece::Frame(k, b) => {
                out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                out.push(*k);
                out.extend_from_slice(b);
            }
            Piece::Header(l, k, b) => {
                out.extend_from_slice(&l.to_le_bytes());
                out.push(*k);
                out.extend_from_slice(b);
            }
            Piece::Raw(b) => out.extend_from_slice(b),
        }
    }
    out
}

/// A reader that hands out its bytes in the given chunk sizes, with `Interrupted` errors
/// in between (what a socket under signals does).
struct Choppy<'a> {
    data: &'a [u8],
    chunks: Vec<usize>,
    next: usize,
    interrupt: bool,
}

impl Read for Choppy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt && self.next % 3 == 1 {
            self.next += 1;
            return Err(io::ErrorKind::Interrupted.into());
        }
        let want = self
            .chunks
            .get(self.next % self.chunks.len().max(1))
            .copied()
            .unwrap_or(7);
        self.next += 1;
        let n = want.max(1).min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// What `read_frame` must make of `bytes`: the reference decoder.
fn expected_frame(bytes: &[u8]) -> Result<(Kind, usize), &'static str> {
    if bytes.is_empty() {
        return Err("closed");
    }
    if bytes.len() < 5 {
        return Err("io");
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap());
    if len > MAX_FRAME {
        return Err("too large");
    }
    let kind = match bytes[4] {
        0 => Kind::Hello,
        1 => Kind::Request,
        2 => Kind::Stdin,
        3 => Kind::Stdout,
        4 => Kind::Stderr,
        5 => Kind::Data,
        6 => Kind::Control,
        7 => Kind::Done,
        _ => return Err("unknown kind"),
    };
    if bytes.len() - 5 < len as usize {
        return Err("io");
    }
    Ok((kind, len as usize))
}

fn class(e: &FrameError) -> &'static str {
    match e {
        FrameError::Closed => "closed",
        FrameError::Io(_) => "io",
        FrameError::TooLarge(_) => "too large",
        FrameError::UnknownKind(_) => "unknown kind",
        FrameError::Json(_) => "json",
    }
}

// ---------------------------------------------------------------------------------------
// Target `agent-frames`: the framing and the messages, both directions (the guest's agent
// reads host frames with the same `read_frame` and parses them as Hello, Request, Control).

proptest! {
    #![proptest_config(config(1000))]

    /// Arbitrary bytes, read frame after frame in random chunkings: each result is exactly
    /// what the reference decoder says, the reader consumes exactly one frame, and no
    /// allocation exceeds the frame limit (a 4 GiB prefix allocates nothing).
    #[test]
    fn read_frame_decodes_any_bytes_as_the_reference_does(
        pieces in proptest::collection::vec(piece(), 0..6),
        chunks in proptest::collection::vec(1usize..13, 1..5),
    ) {
        let bytes = encode(&pieces);
        let mut rest = &bytes[..];
        let mut r = Choppy { data: &bytes, chunks, next: 0, interrupt: false };
        loop {
            let want = expected_frame(rest);
            let (got, largest) = largest_allocation(|| read_frame(&mut r));
            prop_assert!(largest <= MAX_FRAME as usize, "allocated {largest} bytes");
            match (want, got) {
                (Ok((kind, len)), Ok(f)) => {
                    prop_assert_eq!(f.kind, kind);
                    prop_assert_eq!(&f.body[..], &rest[5..5 + len]);
                    prop_assert!(largest <= len.max(64), "frame of {len} allocated {largest}");
                    rest = &rest[5 + len..];
                    prop_assert_eq!(r.data.len(), rest.len(), "read past the frame");
                }
                (Err(want), Err(e)) => {
                    prop_assert_eq!(want, class(&e));
                    prop_assert!(!e.to_string().contains('\n'));
                    if let FrameError::TooLarge(n) = e {
                        prop_assert!(n > MAX_FRAME);
                        prop_assert!(largest < 1024, "refused frame allocated {largest}");
                    }
                    break;
                }
                (want, got) => prop_assert!(false, "expected {want:?}, got {got:?}"),
            }
        }
    }

    /// Any body through every message type's parser: an error or a value, never a panic,
    /// and a value that parsed serialises back to something that parses to the same value.
    #[test]
    fn message_parsers_take_any_body(body in body()) {
        let f = Frame { kind: Kind::Data, body };
        if let Ok(v) = f.json::<Request>() {
            let again: Request = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
            prop_assert_eq!(again, v);
        }
        if let Ok(v) = f.json::<Response>() {
            let again: Response = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
            prop_assert_eq!(again, v);
        }
        if let Ok(v) = f.json::<Control>() {
            let again: Control = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
            prop_assert_eq!(again, v);
        }
        let _ = f.json::<Hello>();
        if let Ok(Response::Exited(info)) = f.json::<Response>() {
            let _ = info.shell_code();
        }
        if let Err(e) = f.json::<Response>() {
            prop_assert!(matches!(e, FrameError::Json(_)));
        }
    }

    /// Every request the host can send survives a frame and comes out equal.
    #[test]
    fn requests_round_trip_through_frames(req in request(), ctl in any::<i32>()) {
        let mut buf = Vec::new();
        sm_agent::frame::write_json(&mut buf, Kind::Request, &req).unwrap();
        sm_agent::frame::write_json(&mut buf, Kind::Control, &Control::Signal(ctl)).unwrap();
        let mut r = &buf[..];
        prop_assert_eq!(read_frame(&mut r).unwrap().json::<Request>().unwrap(), req);
        prop_assert_eq!(read_frame(&mut r).unwrap().json::<Control>().unwrap(), Control::Signal(ctl));
        prop_assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }
}

#[test]
fn a_4_gib_length_prefix_is_refused_without_allocating() {
    let mut buf = u32::MAX.to_le_bytes().to_vec();
    buf.push(Kind::Stdout as u8);
    let (r, largest) = largest_allocation(|| read_frame(&mut &buf[..]));
    assert!(matches!(r, Err(FrameError::TooLarge(u32::MAX))), "{r:?}");
    assert!(largest < 1024, "allocated {largest} bytes");
    // (The accounting works: a real 4000-byte frame is seen allocating its body.)
    let mut ok = 4000u32.to_le_bytes().to_vec();
    ok.push(Kind::Stdout as u8);
    ok.extend([0u8; 4000]);
    let (r, largest) = largest_allocation(|| read_frame(&mut &ok[..]));
    assert_eq!(r.unwrap().body.len(), 4000);
    assert!(largest >= 4000, "{largest}");
    // The writer refuses to produce one too.
    let big = vec![0u8; MAX_FRAME as usize + 1];
    assert!(matches!(
        write_frame(&mut io::sink(), Kind::Data, &big),
        Err(FrameError::TooLarge(_))
    ));
}

// ---------------------------------------------------------------------------------------
// Target `agent-client`: a hostile guest behind a real Unix socket (the vsock backend's
// CONNECT handshake, then the agent's frames) answering the host-side client.

/// What the fake guest does with the next connection.
#[derive(Clone)]
struct Script {
    /// The answer to `CONNECT <port>\n`.
    handshake: Vec<u8>,
    /// Everything sent after reading the host's Hello and request.
    reply: Vec<u8>,
    /// Keep the connection open (sending nothing more) instead of closing it.
    hold: bool,
}

/// A fake vsock backend + guest agent that plays the newest script to every connection: the
/// client tries a CONNECT that is closed unanswered again, and meets the same guest then.
struct Guest {
    uds: PathBuf,
    scripts: Sender<Script>,
    _dir: tempfile::TempDir,
}

impl Guest {
    fn start() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        let (tx, rx) = channel::<Script>();
        std::thread::spawn(move || {
            let mut current: Option<Script> = None;
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { return };
                // A new case sends its script before it connects; a retry finds none.
                match rx.try_recv() {
                    Ok(script) => current = Some(script),
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                }
                if current.is_none() {
                    let Ok(script) = rx.recv() else { return };
                    current = Some(script);
                }
                serve(&mut s, current.clone().expect("set above"));
            }
        });
        Guest {
            uds,
            scripts: tx,
            _dir: dir,
        }
    }

    fn agent(&self) -> Agent {
        Agent::new(&self.uds).with_io_timeout(Duration::from_secs(2))
    }

    fn play(&self, handshake: &[u8], reply: Vec<u8>, hold: bool) {
        self.scripts
            .send(Script {
                handshake: handshake.to_vec(),
                reply,
                hold,
            })
            .unwrap();
    }
}

fn serve(s: &mut UnixStream, script: Script) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 1];
    let mut line = Vec::new();
    while s.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    assert!(line.starts_with(b"CONNECT "), "{line:?}");
    let _ = s.write_all(&script.handshake);
    if script.handshake.starts_with(b"OK ") {
        // The host's Hello and its request, sent in one write.
        let hello = read_frame(s);
        assert!(
            matches!(
                hello,
                Ok(Frame {
                    kind: Kind::Hello,
                    ..
                })
            ),
            "{hello:?}"
        );
        let _ = read_frame(s);
    }
    let _ = s.write_all(&script.reply);
    if script.hold {
        // A guest that goes quiet: the host's io timeout must end the request.
        std::thread::sleep(Duration::from_secs(3));
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    // Take whatever the host still sends (write_file data) until it hangs up.
    let _ = io::copy(s, &mut io::sink());
}

fn hello_frame() -> Vec<u8> {
    let mut out = Vec::new();
    sm_agent::frame::write_json(
        &mut out,
        Kind::Hello,
        &Hello {
            version: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    out
}

fn frame_bytes(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    write_frame(&mut out, kind, body).unwrap();
    out
}

/// The frames of `bytes` up to the first error (the reference reading of a reply).
fn frames_of(bytes: &[u8]) -> (Vec<Frame>, Option<&'static str>) {
    let mut r = bytes;
    let mut out = Vec::new();
    loop {
        match read_frame(&mut r) {
            Ok(f) => out.push(f),
            Err(e) => return (out, Some(class(&e)).filter(|c| *c != "closed")),
        }
    }
}

/// The one guest shared by the client properties (one socket, scripts in order).
static GUEST: Mutex<Option<Guest>> = Mutex::new(None);

fn with_guest<T>(f: impl FnOnce(&Guest) -> T) -> T {
    let mut g = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    f(g.get_or_insert_with(Guest::start))
}

/// The host still works after a hostile exchange: a well-behaved exec answers.
fn serves_next_request(g: &Guest) -> Result<(), TestCaseError> {
    let mut reply = hello_frame();
    reply.extend(frame_bytes(Kind::Stdout, b"fine"));
    reply.extend(frame_bytes(
        Kind::Done,
        &serde_json::to_vec(&Response::Exited(ExitInfo {
            code: Some(0),
            signal: None,
            timed_out: false,
            duration_us: 1,
        }))
        .unwrap(),
    ));
    g.play(b"OK 1\n", reply, false);
    let out = g.agent().exec(&ExecRequest::default(), None);
    prop_assert!(matches!(&out, Ok(o) if o.stdout == b"fine"), "{out:?}");
    Ok(())
}

/// Which client call a case makes.
#[derive(Clone, Copy, Debug)]
enum Op {
    Exec,
    ReadFile(u64),
    WriteFile(usize),
    Reseed,
    ConnectTcp,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Exec),
        3 => prop_oneof![0u64..64, Just(u64::MAX)].prop_map(Op::ReadFile),
        1 => (0usize..600_000).prop_map(Op::WriteFile),
        1 => Just(Op::Reseed),
        1 => Just(Op::ConnectTcp),
    ]
}

fn handshake() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => Just(b"OK 1\n".to_vec()),
        1 => Just(b"ERR no such port\n".to_vec()),
        1 => Just(vec![b'O'; 100]),
        1 => proptest::collection::vec(any::<u8>(), 0..10),
    ]
}

proptest! {
    #![proptest_config(config(200))]

    /// A hostile guest's reply to each kind of request: the client returns (never panics or
    /// hangs past its io timeout), an `Ok` is only what the guest's frames actually said,
    /// an error is one line, and the next request on the same socket succeeds.
    #[test]
    fn the_client_survives_any_guest_reply(
        op in op(),
        shake in handshake(),
        with_hello in prop::bool::weighted(0.85),
        pieces in proptest::collection::vec(piece(), 0..6),
    ) {
        let mut reply = if with_hello { hello_frame() } else { Vec::new() };
        reply.extend(encode(&pieces));
        let (frames, _) = frames_of(&reply);
        let start = Instant::now();
        with_guest(|g| {
            g.play(&shake, reply.clone(), false);
            let agent = g.agent();
            let ok_handshake = shake.starts_with(b"OK ") && shake.contains(&b'\n') && with_hello;
            let result: Result<String, AgentError> = match op {
                Op::Exec => agent.exec(&ExecRequest::default(), None).map(|o| {
                    // What the guest sent before its Done must be what exec collected.
                    let mut out = Vec::new();
                    let mut err = Vec::new();
                    for f in frames.iter().skip(1) {
                        match f.kind {
                            Kind::Stdout => out.extend_from_slice(&f.body),
                            Kind::Stderr => err.extend_from_slice(&f.body),
                            _ => break,
                        }
                    }
                    assert_eq!((o.stdout, o.stderr), (out, err));
                    "exited".into()
                }),
                Op::ReadFile(max) => agent.read_file("/f", max).map(|data| {
                    assert!(data.len() as u64 <= max, "{} bytes over a cap of {max}", data.len());
                    let sent: Vec<u8> = frames
                        .iter()
                        .skip(1)
                        .take_while(|f| f.kind == Kind::Data)
                        .flat_map(|f| f.body.clone())
                        .collect();
                    assert_eq!(data, sent);
                    "read".into()
                }),
                Op::WriteFile(n) => agent.write_file("/f", &vec![7u8; n], 0o644).map(|b| b.to_string()),
                Op::Reseed => agent.reseed(&[1u8; 64]).map(|()| "reseeded".into()),
                Op::ConnectTcp => agent.connect_tcp(80).and_then(|mut t| {
                    let mut sink = Vec::new();
                    t.read_to_end(&mut sink).map_err(|e| AgentError::Protocol(e.to_string()))?;
                    Ok(format!("{} bytes", sink.len()))
                }),
            };
            match &result {
                Ok(_) => prop_assert!(ok_handshake, "success on a bad handshake: {result:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    prop_assert!(!msg.contains('\n'), "multi-line error: {msg}");
                    if !ok_handshake {
                        prop_assert!(
                            matches!(e, AgentError::Handshake(_) | AgentError::Frame(_)),
                            "bad handshake gave {e:?}"
                        );
                    }
                }
            }
            prop_assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
            serves_next_request(g)
        })?;
    }
}

/// Drives `ex` as an event loop would: poll(2) on its socket until it is ready or its
/// deadline passes.
fn drive(mut ex: ExecExchange) -> Result<ExecOutput, AgentError> {
    loop {
        if let Poll::Ready(r) = ex.advance() {
            return r;
        }
        let out = if ex.wants_write() { libc::POLLOUT } else { 0 };
        let mut pfd = libc::pollfd {
            fd: ex.fd(),
            events: libc::POLLIN | out,
            revents: 0,
        };
        let ms = ex.deadline().map_or(-1, |d| {
            d.saturating_duration_since(Instant::now()).as_millis() as i32 + 1
        });
        // SAFETY: one valid pollfd, for the call's duration.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

proptest! {
    #![proptest_config(config(100))]

    /// An exec driven by an event loop (`start_exec`, what the Node binding uses) ends as the
    /// blocking one does on the same guest reply: the same output, or an error of one line;
    /// never a hang. Stdin, when given, is sent with the request.
    #[test]
    fn an_exec_driven_by_an_event_loop_ends_as_a_blocking_one(
        shake in handshake(),
        with_hello in prop::bool::weighted(0.85),
        pieces in proptest::collection::vec(piece(), 0..6),
        stdin in prop::option::of(proptest::collection::vec(any::<u8>(), 0..3000)),
    ) {
        let mut reply = if with_hello { hello_frame() } else { Vec::new() };
        reply.extend(encode(&pieces));
        let start = Instant::now();
        with_guest(|g| {
            g.play(&shake, reply.clone(), false);
            let blocking = g.agent().exec(&ExecRequest::default(), stdin.as_deref());
            g.play(&shake, reply.clone(), false);
            let looped = g
                .agent()
                .start_exec(&ExecRequest::default(), stdin.as_deref())
                .and_then(drive);
            match (&blocking, &looped) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                (Err(_), Err(e)) => {
                    prop_assert!(!e.to_string().contains('\n'), "multi-line error: {e}")
                }
                _ => prop_assert!(false, "blocking {blocking:?}, event loop {looped:?}"),
            }
            prop_assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
            serves_next_request(g)
        })?;
    }
}

#[test]
fn an_event_loop_exec_sends_stdin_and_collects_output() {
    let g = Guest::start();
    let mut reply = hello_frame();
    reply.extend(frame_bytes(Kind::Stdout, b"out"));
    reply.extend(frame_bytes(Kind::Stderr, b"err"));
    reply.extend(frame_bytes(
        Kind::Done,
        &serde_json::to_vec(&Response::Exited(ExitInfo {
            code: Some(3),
            signal: None,
            timed_out: false,
            duration_us: 1,
        }))
        .unwrap(),
    ));
    g.play(b"OK 1\n", reply, false);
    let out = drive(g.agent().start_exec(&ExecRequest::default(), None).unwrap()).unwrap();
    assert_eq!(
        (&out.stdout[..], &out.stderr[..]),
        (&b"out"[..], &b"err"[..])
    );
    assert_eq!(out.exit.code, Some(3));

    // Refused: the backend closes the CONNECT unanswered; safe to try again.
    g.play(b"", vec![], false);
    let mut ex = g.agent().start_exec(&ExecRequest::default(), None).unwrap();
    let r = loop {
        if let Poll::Ready(r) = ex.advance() {
            break r;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(matches!(r, Err(AgentError::Handshake(_))), "{r:?}");
    assert!(ex.refused());
}

#[test]
fn a_guest_that_goes_quiet_is_ended_by_the_io_timeout() {
    let g = Guest::start();
    let mut reply = hello_frame();
    // Half a frame, then silence.
    reply.extend_from_slice(&100u32.to_le_bytes());
    reply.extend_from_slice(&[Kind::Stdout as u8, 1, 2, 3]);
    g.play(b"OK 1\n", reply, true);
    let start = Instant::now();
    let r = Agent::new(&g.uds)
        .with_io_timeout(Duration::from_millis(300))
        .exec(&ExecRequest::default(), None);
    assert!(
        matches!(r, Err(AgentError::Frame(FrameError::Io(_)))),
        "{r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn read_file_refuses_data_past_its_cap_before_buffering_it() {
    let g = Guest::start();
    let mut reply = hello_frame();
    // A guest that streams data frames forever would be cut off at the cap.
    for _ in 0..8 {
        reply.extend(frame_bytes(Kind::Data, &[0u8; 4096]));
    }
    g.play(b"OK 1\n", reply, false);
    let r = g.agent().read_file("/f", 10_000);
    assert!(
        matches!(r, Err(AgentError::Protocol(ref m)) if m.contains("cap")),
        "{r:?}"
    );
}
