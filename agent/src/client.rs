//! The host side: reaches `sm-init`'s agent through the Unix socket of a hybrid-vsock
//! backend (vhost-device-vsock: write `CONNECT <port>\n`, read `OK <n>\n`), one connection
//! per request.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::frame::{
    read_frame, write_chunk, write_frame, write_json, Frame, FrameError, Kind, DATA_CHUNK,
};
use crate::message::{ExecRequest, ExitInfo, Hello, Request, Response, SEED_BYTES};
use crate::{AGENT_PORT, PROTOCOL_VERSION, READY_LINE, READY_PORT};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The vsock backend's socket refused or is missing.
    #[error("cannot reach the guest agent through {0}: {1}")]
    Connect(String, io::Error),
    /// The vsock backend or the agent answered the handshake with something else.
    #[error("guest agent handshake failed: {0}")]
    Handshake(String),
    /// A framing error on an established connection.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The agent ran the request and it failed (one line from the guest).
    #[error("in the guest: {0}")]
    Remote(String),
    /// The agent answered out of protocol.
    #[error("guest agent protocol error: {0}")]
    Protocol(String),
    /// The agent did not come up in time; the last attempt's error.
    #[error("the guest agent did not answer within {0:?} (last: {1})")]
    NotReady(Duration, String),
    /// A collected command wrote more than [`MAX_COLLECTED_OUTPUT`] bytes to one stream.
    #[error("the command wrote more than {limit} MiB to {0}; stream its output instead", limit = MAX_COLLECTED_OUTPUT >> 20)]
    OutputTooLarge(&'static str),
}

/// The most [`Agent::exec`] collects of one stream: the guest is untrusted, and a command
/// that writes without end must not take the host's memory with it.
pub const MAX_COLLECTED_OUTPUT: usize = 256 << 20;

/// A buffer that refuses to grow past [`MAX_COLLECTED_OUTPUT`].
struct Collected {
    buf: Vec<u8>,
    full: bool,
}

impl Write for Collected {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_COLLECTED_OUTPUT {
            self.full = true;
            return Err(io::Error::other("collected output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How long the vsock backend and the agent may take to answer a new connection.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a CONNECT the vsock backend closes unanswered is tried again.
const CONNECT_REFUSED_RETRIES: u32 = 2;

/// The collected result of [`Agent::exec`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOutput {
    /// Everything the command wrote to stdout.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub exit: ExitInfo,
}

/// The agent of one guest, reached through a hybrid-vsock Unix socket.
#[derive(Clone, Debug)]
pub struct Agent {
    uds: PathBuf,
    port: u32,
    io_timeout: Option<Duration>,
}

impl Agent {
    /// The agent behind the vsock backend's Unix socket `uds`, on [`AGENT_PORT`].
    pub fn new(uds: impl Into<PathBuf>) -> Self {
        Agent {
            uds: uds.into(),
            port: AGENT_PORT,
            io_timeout: None,
        }
    }

    /// Fails any request on which the guest sends nothing for `limit` (by default a
    /// request waits as long as its command runs).
    pub fn with_io_timeout(mut self, limit: Duration) -> Self {
        self.io_timeout = Some(limit);
        self
    }

    /// The vsock backend's Unix socket.
    pub fn socket(&self) -> &Path {
        &self.uds
    }

    /// The vsock port the agent is reached on.
    pub(crate) fn port(&self) -> u32 {
        self.port
    }

    /// See [`Agent::with_io_timeout`].
    pub(crate) fn io_timeout(&self) -> Option<Duration> {
        self.io_timeout
    }

    /// Waits until the agent of an already running guest answers a handshake, up to
    /// `limit`. For a guest that is booting, use [`ReadySignal`] instead.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), AgentError> {
        let start = Instant::now();
        loop {
            match self.open(None) {
                Ok(_) => return Ok(()),
                Err(_) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(AgentError::NotReady(limit, e.to_string())),
            }
        }
    }

    /// A new connection past the vsock and agent handshakes, with `req` (if any) sent
    /// right behind our Hello: one round trip fewer, and the agent still reads the Hello
    /// first (a version it refuses is answered before the request is looked at).
    pub(crate) fn open(&self, req: Option<&Request>) -> Result<UnixStream, AgentError> {
        let mut refused = 0;
        let start = Instant::now();
        let (mut s, line) = loop {
            let name = self.uds.display().to_string();
            let mut s = UnixStream::connect(&self.uds).map_err(|e| AgentError::Connect(name, e))?;
            // A guest still booting leaves CONNECT unanswered: bound the handshake.
            s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
                .map_err(FrameError::Io)?;
            s.write_all(format!("CONNECT {}\n", self.port).as_bytes())
                .map_err(FrameError::Io)?;
            match read_line(&mut s) {
                Ok(line) => break (s, line),
                // Refused (closed or reset) before anything reached the agent, so safe to try again: a
                // restored guest resets its connections when it processes the vsock reset
                // event, and can refuse a new one that reuses the port of one it still had.
                Err(AgentError::Handshake(_)) | Err(AgentError::Frame(FrameError::Io(_)))
                    if refused < CONNECT_REFUSED_RETRIES && !timed_out(start) =>
                {
                    refused += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        };
        check_connect_ok(&line, self.port)?;
        s.write_all(&greeting(req)?).map_err(FrameError::Io)?;
        check_hello(&read_frame(&mut s)?)?;
        s.set_read_timeout(self.io_timeout)
            .map_err(FrameError::Io)?;
        Ok(s)
    }

    /// Runs a command to completion and collects its output (at most
    /// [`MAX_COLLECTED_OUTPUT`] bytes of each stream); `stdin` (if any) is sent and closed.
    pub fn exec(&self, req: &ExecRequest, stdin: Option<&[u8]>) -> Result<ExecOutput, AgentError> {
        let collected = || Collected {
            buf: Vec::new(),
            full: false,
        };
        let (mut out, mut err) = (collected(), collected());
        let mut req = req.clone();
        req.stdin = stdin.is_some();
        let input = stdin.map(|b| Box::new(io::Cursor::new(b.to_vec())) as Box<dyn Read + Send>);
        let exit = match self.exec_streaming(&req, input, &mut out, &mut err) {
            Err(_) if out.full => return Err(AgentError::OutputTooLarge("stdout")),
            Err(_) if err.full => return Err(AgentError::OutputTooLarge("stderr")),
            r => r?,
        };
        Ok(ExecOutput {
            stdout: out.buf,
            stderr: err.buf,
            exit,
        })
    }

    /// Runs a command, copying `stdin` to it (when `req.stdin`) and its output to `stdout`
    /// and `stderr` as it arrives.
    pub fn exec_streaming(
        &self,
        req: &ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitInfo, AgentError> {
        let mut s = self.open(Some(&Request::Exec(req.clone())))?;
        let feeder = match (req.stdin, stdin) {
            (true, Some(input)) => {
                let w = s.try_clone().map_err(FrameError::Io)?;
                Some(std::thread::spawn(move || feed(input, w)))
            }
            _ => None,
        };
        let result = loop {
            match read_exec_frame(&mut s) {
                Ok(ExecFrame::Stdout(b)) => stdout.write_all(&b).map_err(FrameError::Io)?,
                Ok(ExecFrame::Stderr(b)) => stderr.write_all(&b).map_err(FrameError::Io)?,
                Ok(ExecFrame::Exited(info)) => break Ok(info),
                Err(e) => break Err(e),
            }
        };
        let _ = s.shutdown(std::net::Shutdown::Both);
        // Not joined: the feeder may sit in a read of a terminal; its next write fails.
        drop(feeder);
        result
    }

    /// Writes `data` to `path` in the guest atomically with permission bits `mode`,
    /// creating missing parent directories.
    pub fn write_file(&self, path: &str, data: &[u8], mode: u32) -> Result<u64, AgentError> {
        let req = Request::WriteFile {
            path: path.to_owned(),
            mode,
            size: data.len() as u64,
            create_parents: true,
        };
        let mut s = self.open(Some(&req))?;
        for chunk in data.chunks(DATA_CHUNK) {
            write_frame(&mut s, Kind::Data, chunk)?;
        }
        let f = read_frame(&mut s)?;
        match (f.kind, done(f.json()?)?) {
            (Kind::Done, Response::Written { bytes }) => Ok(bytes),
            (k, r) => Err(AgentError::Protocol(format!(
                "write_file answered {k:?} {r:?}"
            ))),
        }
    }

    /// Reads the file at `path` in the guest; files over `max_bytes` are refused.
    pub fn read_file(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>, AgentError> {
        let req = Request::ReadFile {
            path: path.to_owned(),
            max_bytes,
        };
        let mut s = self.open(Some(&req))?;
        let mut data = Vec::new();
        loop {
            let f = read_frame(&mut s)?;
            match f.kind {
                Kind::Data if (data.len() + f.body.len()) as u64 <= max_bytes => {
                    data.extend_from_slice(&f.body)
                }
                Kind::Data => {
                    return Err(AgentError::Protocol(format!(
                        "agent sent more than the {max_bytes}-byte cap"
                    )))
                }
                Kind::Done => {
                    return match done(f.json()?)? {
                        Response::Read { bytes } if bytes == data.len() as u64 => Ok(data),
                        r => Err(AgentError::Protocol(format!(
                            "read_file got {} bytes, answered {r:?}",
                            data.len()
                        ))),
                    }
                }
                k => return Err(AgentError::Protocol(format!("unexpected {k:?} frame"))),
            }
        }
    }

    /// Mixes `seed` (see [`crate::fresh_seed`]) into the guest kernel's entropy pool and
    /// reseeds its CRNG; once this returns `Ok`, every random read in the guest
    /// (getrandom, `/dev/urandom`, `/proc/sys/kernel/random/uuid`) comes from a new key.
    /// Call it on each clone restored from a snapshot, with a seed of its own.
    pub fn reseed(&self, seed: &[u8; SEED_BYTES]) -> Result<(), AgentError> {
        let req = Request::Reseed {
            seed: seed.to_vec(),
        };
        let mut s = self.open(Some(&req))?;
        let f = read_frame(&mut s)?;
        match (f.kind, done(f.json()?)?) {
            (Kind::Done, Response::Reseeded) => Ok(()),
            (k, r) => Err(AgentError::Protocol(format!("reseed answered {k:?} {r:?}"))),
        }
    }

    /// A byte stream to TCP `port` on the guest's loopback.
    pub fn connect_tcp(&self, port: u16) -> Result<TcpTunnel, AgentError> {
        let mut s = self.open(Some(&Request::ConnectTcp { port }))?;
        let f = read_frame(&mut s)?;
        match (f.kind, done(f.json()?)?) {
            (Kind::Done, Response::Connected) => Ok(TcpTunnel {
                conn: s,
                pending: Vec::new(),
                read_closed: false,
            }),
            (k, r) => Err(AgentError::Protocol(format!(
                "connect answered {k:?} {r:?}"
            ))),
        }
    }
}

/// What a running exec sends: output, then how it ended.
pub(crate) enum ExecFrame {
    /// Bytes the command wrote to stdout (or its terminal).
    Stdout(Vec<u8>),
    /// Bytes the command wrote to stderr.
    Stderr(Vec<u8>),
    /// The command ended.
    Exited(ExitInfo),
}

/// Reads the next frame of an exec's connection.
pub(crate) fn read_exec_frame(conn: &mut UnixStream) -> Result<ExecFrame, AgentError> {
    let f = read_frame(conn)?;
    match f.kind {
        Kind::Stdout => Ok(ExecFrame::Stdout(f.body)),
        Kind::Stderr => Ok(ExecFrame::Stderr(f.body)),
        Kind::Done => match done(f.json()?)? {
            Response::Exited(info) => Ok(ExecFrame::Exited(info)),
            other => Err(AgentError::Protocol(format!("exec answered {other:?}"))),
        },
        k => Err(AgentError::Protocol(format!("unexpected {k:?} frame"))),
    }
}

/// The most bytes the vsock backend's answer to CONNECT may take, newline included.
pub(crate) const MAX_CONNECT_LINE: usize = 64;

/// The vsock backend's answer to CONNECT (without its newline): `OK <port>`, or the error.
pub(crate) fn check_connect_ok(line: &str, port: u32) -> Result<(), AgentError> {
    if line.starts_with("OK ") {
        return Ok(());
    }
    Err(AgentError::Handshake(format!(
        "vsock backend answered {line:?} to CONNECT {port}"
    )))
}

/// The backend hung up, or sent [`MAX_CONNECT_LINE`] bytes, without a line (`got`).
pub(crate) fn no_connect_line(got: &[u8]) -> AgentError {
    AgentError::Handshake(format!(
        "vsock backend closed or sent no line (got {:?}; is the guest agent listening?)",
        String::from_utf8_lossy(got)
    ))
}

/// What a connection sends once the backend said `OK`: our Hello and `req` (if any), one
/// write, so the agent reads the Hello first and the request takes no extra round trip.
pub(crate) fn greeting(req: Option<&Request>) -> Result<Vec<u8>, FrameError> {
    let mut first = Vec::new();
    let hello = Hello {
        version: PROTOCOL_VERSION,
    };
    write_json(&mut first, Kind::Hello, &hello)?;
    if let Some(req) = req {
        write_json(&mut first, Kind::Request, req)?;
    }
    Ok(first)
}

/// The agent's first frame: its Hello of our version, or why it refused the connection.
pub(crate) fn check_hello(hello: &Frame) -> Result<(), AgentError> {
    if hello.kind == Kind::Done {
        if let Ok(Response::Failed(why)) = hello.json() {
            return Err(AgentError::Handshake(why));
        }
    }
    if hello.kind != Kind::Hello {
        return Err(AgentError::Handshake(format!(
            "expected Hello, got {:?}",
            hello.kind
        )));
    }
    let theirs: Hello = hello.json()?;
    if theirs.version != PROTOCOL_VERSION {
        return Err(AgentError::Handshake(format!(
            "agent speaks version {}, this host {PROTOCOL_VERSION}",
            theirs.version
        )));
    }
    Ok(())
}

/// A `Failed` response as an error.
pub(crate) fn done(r: Response) -> Result<Response, AgentError> {
    match r {
        Response::Failed(why) => Err(AgentError::Remote(why)),
        r => Ok(r),
    }
}

/// Copies `input` to the connection as stdin frames, then closes stdin.
fn feed(mut input: Box<dyn Read + Send>, mut w: UnixStream) {
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if write_frame(&mut w, Kind::Stdin, &buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = write_frame(&mut w, Kind::Stdin, &[]);
}

/// Whether a handshake begun at `start` has used up its time (a read that timed out is not
/// a refusal worth trying again).
fn timed_out(start: Instant) -> bool {
    start.elapsed() >= HANDSHAKE_TIMEOUT
}

/// Reads the backend's one-line answer to CONNECT (at most [`MAX_CONNECT_LINE`] bytes).
fn read_line(s: &mut UnixStream) -> Result<String, AgentError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_CONNECT_LINE {
        match s.read(&mut b).map_err(FrameError::Io)? {
            0 => break,
            _ if b[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            _ => line.push(b[0]),
        }
    }
    Err(no_connect_line(&line))
}

/// The host end of the agent's "I am listening" connection. Bind it before the guest boots,
/// then [`ReadySignal::wait`]; the socket file is removed when dropped.
#[derive(Debug)]
pub struct ReadySignal {
    listener: UnixListener,
    path: PathBuf,
}

impl ReadySignal {
    /// Listens at `<uds>_<READY_PORT>`, where the vsock backend delivers the agent's
    /// connection to the host.
    pub fn bind(uds: &Path) -> Result<Self, AgentError> {
        let mut name = uds.as_os_str().to_owned();
        name.push(format!("_{READY_PORT}"));
        let path = PathBuf::from(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| AgentError::Connect(path.display().to_string(), e))?;
        Ok(ReadySignal { listener, path })
    }

    /// Waits up to `limit` for the agent to report that it listens.
    pub fn wait(&self, limit: Duration) -> Result<(), AgentError> {
        let start = Instant::now();
        loop {
            match self.listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(FrameError::Io)?;
                    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT))
                        .map_err(FrameError::Io)?;
                    let mut line = vec![0u8; READY_LINE.len()];
                    if s.read_exact(&mut line).is_ok() && line == READY_LINE {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(AgentError::Connect(self.path.display().to_string(), e)),
            }
            if start.elapsed() > limit {
                return Err(AgentError::NotReady(limit, "no ready signal".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ReadySignal {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A TCP connection to a guest port, carried as data frames over the agent connection:
/// [`Read`] and [`Write`] as for a socket, [`TcpTunnel::shutdown_write`] for half-close.
#[derive(Debug)]
pub struct TcpTunnel {
    conn: UnixStream,
    pending: Vec<u8>,
    read_closed: bool,
}

impl TcpTunnel {
    /// Ends the host-to-guest direction (the guest side sees end of file).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        write_frame(&mut self.conn, Kind::Data, &[]).map_err(io::Error::other)
    }

    /// Relays between `tcp` and the guest port in both directions, honouring half-close,
    /// until both directions have ended.
    pub fn splice(self, tcp: std::net::TcpStream) -> io::Result<()> {
        let mut to_guest = TcpTunnel {
            conn: self.conn.try_clone()?,
            pending: Vec::new(),
            read_closed: false,
        };
        let mut from_host = tcp.try_clone()?;
        let up = std::thread::spawn(move || {
            let _ = io::copy(&mut from_host, &mut to_guest);
            let _ = to_guest.shutdown_write();
        });
        let mut from_guest = self;
        let mut to_host = tcp;
        let down = io::copy(&mut from_guest, &mut to_host);
        let _ = to_host.shutdown(std::net::Shutdown::Write);
        let _ = up.join();
        down.map(|_| ())
    }
}

impl Read for TcpTunnel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() && !self.read_closed {
            let f = read_frame(&mut self.conn).map_err(io::Error::other)?;
            if f.kind != Kind::Data {
                return Err(io::Error::other(format!("unexpected {:?} frame", f.kind)));
            }
            self.read_closed = f.body.is_empty();
            self.pending = f.body;
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        Ok(n)
    }
}

impl Write for TcpTunnel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_chunk(&mut self.conn, Kind::Data, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_output_stops_at_its_limit() {
        let mut c = Collected {
            buf: Vec::new(),
            full: false,
        };
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..(MAX_COLLECTED_OUTPUT >> 20) {
            c.write_all(&chunk).unwrap();
        }
        assert!(!c.full);
        assert!(c.write_all(b"x").is_err());
        assert!(c.full);
        assert_eq!(c.buf.len(), MAX_COLLECTED_OUTPUT);
    }
}
