//! An exec driven by its caller's event loop instead of a blocked thread: the connection
//! is non-blocking and [`ExecExchange::advance`] takes the protocol as far as the bytes at
//! hand allow. An event loop (Node's, in the binding) polls [`ExecExchange::fd`] and calls
//! `advance` when it is ready or [`ExecExchange::deadline`] passes, so that a call costs
//! no thread switch; the handshake and limits are [`Agent::exec`]'s.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::task::Poll;
use std::time::Instant;

use crate::client::{
    check_connect_ok, check_hello, done, greeting, no_connect_line, Agent, AgentError, ExecOutput,
    HANDSHAKE_TIMEOUT, MAX_CONNECT_LINE,
};
use crate::frame::{take_frame, write_frame, FrameError, Kind, DATA_CHUNK};
use crate::message::{ExecRequest, Request, Response};

/// Where an exchange is in the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `CONNECT` sent; waiting for the vsock backend's `OK` line.
    Connecting,
    /// Our Hello and the request sent; waiting for the agent's Hello.
    Greeting,
    /// The command runs; output frames until its exit.
    Running,
}

/// One exec on a non-blocking connection (see the module doc).
pub struct ExecExchange {
    conn: UnixStream,
    /// The vsock port asked for (named in a refusal).
    port: u32,
    step: Step,
    /// The Hello, request and stdin frames, sent once the backend says `OK`.
    request: Vec<u8>,
    /// Bytes read and not yet parsed.
    input: Vec<u8>,
    /// Bytes to send, and how many of them are sent.
    output: Vec<u8>,
    sent: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// When the step in progress fails for lack of an answer.
    deadline: Option<Instant>,
    io_timeout: Option<std::time::Duration>,
    /// The backend closed before anything reached the agent: safe to try again.
    refused: bool,
}

impl Agent {
    /// Starts running `req` with `stdin` (none: `/dev/null`) on a non-blocking connection
    /// and returns at once; the caller's event loop drives it (see [`ExecExchange`]).
    pub fn start_exec(
        &self,
        req: &ExecRequest,
        stdin: Option<&[u8]>,
    ) -> Result<ExecExchange, AgentError> {
        let name = self.socket().display().to_string();
        let conn = UnixStream::connect(self.socket()).map_err(|e| AgentError::Connect(name, e))?;
        conn.set_nonblocking(true).map_err(FrameError::Io)?;
        let mut req = req.clone();
        req.stdin = stdin.is_some();
        let mut request = greeting(Some(&Request::Exec(req)))?;
        if let Some(data) = stdin {
            for chunk in data.chunks(DATA_CHUNK) {
                write_frame(&mut request, Kind::Stdin, chunk)?;
            }
            write_frame(&mut request, Kind::Stdin, &[])?;
        }
        let mut ex = ExecExchange {
            conn,
            port: self.port(),
            step: Step::Connecting,
            request,
            input: Vec::new(),
            output: format!("CONNECT {}\n", self.port()).into_bytes(),
            sent: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
            deadline: Some(Instant::now() + HANDSHAKE_TIMEOUT),
            io_timeout: self.io_timeout(),
            refused: false,
        };
        ex.flush()?;
        Ok(ex)
    }
}

impl ExecExchange {
    /// The connection to poll: for reading always, for writing while [`Self::wants_write`].
    pub fn fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }

    /// Whether bytes wait to be sent (poll for writability too).
    pub fn wants_write(&self) -> bool {
        self.sent < self.output.len()
    }

    /// When [`Self::advance`] must run even if the connection stays quiet: it then fails
    /// the exchange for lack of an answer.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the exchange failed before anything reached the agent (the vsock backend
    /// closed the connection unanswered, as a restored guest can): trying again is safe.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// Sends and reads what the connection takes now and parses what arrived: `Ready` with
    /// the command's output once it exits, or with the failure.
    pub fn advance(&mut self) -> Poll<Result<ExecOutput, AgentError>> {
        let done = match self.pump() {
            Ok(Some(out)) => Ok(out),
            Ok(None) => return Poll::Pending,
            Err(e) => Err(e),
        };
        // Hung up now, as the blocking exec does, not when the caller's loop gets to closing
        // the socket: the guest's agent ends the connection before anything else runs there.
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        Poll::Ready(done)
    }

    fn pump(&mut self) -> Result<Option<ExecOutput>, AgentError> {
        let io = self.flush().and_then(|()| self.fill());
        let closed = match io {
            Ok(closed) => closed,
            // Reset before the backend's OK: refused, as a close is (see `refused`).
            Err(e) if self.step == Step::Connecting => {
                self.refused = true;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Some(out) = self.parse()? {
            return Ok(Some(out));
        }
        if closed {
            return Err(match self.step {
                Step::Connecting => {
                    self.refused = true;
                    no_connect_line(&self.input)
                }
                _ if self.input.is_empty() => FrameError::Closed.into(),
                _ => FrameError::Io(io::ErrorKind::UnexpectedEof.into()).into(),
            });
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(match self.step {
                Step::Running => FrameError::Io(io::ErrorKind::TimedOut.into()).into(),
                _ => AgentError::Handshake(format!(
                    "no answer within {HANDSHAKE_TIMEOUT:?} (step {:?})",
                    self.step
                )),
            });
        }
        self.flush()?;
        Ok(None)
    }

    /// Writes queued bytes until the socket would block. A peer that closed its end
    /// (a refused request) ends the sending; its answer is still read.
    fn flush(&mut self) -> Result<(), AgentError> {
        while self.wants_write() {
            match self.conn.write(&self.output[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.sent = self.output.len(),
                Err(e) => return Err(FrameError::Io(e).into()),
            }
        }
        if !self.wants_write() {
            self.output.clear();
            self.sent = 0;
        }
        Ok(())
    }

    /// Reads what is there; true once the peer has closed.
    fn fill(&mut self) -> Result<bool, AgentError> {
        let mut buf = [0u8; 64 << 10];
        loop {
            match self.conn.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    if let (Step::Running, Some(limit)) = (self.step, self.io_timeout) {
                        self.deadline = Some(Instant::now() + limit);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e).into()),
            }
        }
    }

    /// Takes the protocol as far as the input goes.
    fn parse(&mut self) -> Result<Option<ExecOutput>, AgentError> {
        loop {
            match self.step {
                Step::Connecting => {
                    let window = &self.input[..self.input.len().min(MAX_CONNECT_LINE)];
                    let Some(end) = window.iter().position(|b| *b == b'\n') else {
                        if window.len() == MAX_CONNECT_LINE {
                            return Err(no_connect_line(window));
                        }
                        return Ok(None);
                    };
                    let line: Vec<u8> = self.input.drain(..=end).collect();
                    check_connect_ok(&String::from_utf8_lossy(&line[..end]), self.port)?;
                    self.step = Step::Greeting;
                    self.output.append(&mut self.request);
                }
                Step::Greeting => {
                    let Some(hello) = take_frame(&mut self.input)? else {
                        return Ok(None);
                    };
                    check_hello(&hello)?;
                    self.step = Step::Running;
                    self.deadline = self.io_timeout.map(|t| Instant::now() + t);
                }
                Step::Running => {
                    let Some(f) = take_frame(&mut self.input)? else {
                        return Ok(None);
                    };
                    let (into, name) = match f.kind {
                        Kind::Stdout => (&mut self.stdout, "stdout"),
                        Kind::Stderr => (&mut self.stderr, "stderr"),
                        Kind::Done => {
                            return match done(f.json()?)? {
                                Response::Exited(exit) => Ok(Some(ExecOutput {
                                    stdout: std::mem::take(&mut self.stdout),
                                    stderr: std::mem::take(&mut self.stderr),
                                    exit,
                                })),
                                other => {
                                    Err(AgentError::Protocol(format!("exec answered {other:?}")))
                                }
                            }
                        }
                        k => return Err(AgentError::Protocol(format!("unexpected {k:?} frame"))),
                    };
                    if into.len() + f.body.len() > crate::client::MAX_COLLECTED_OUTPUT {
                        return Err(AgentError::OutputTooLarge(name));
                    }
                    into.extend_from_slice(&f.body);
                }
            }
        }
    }
}
