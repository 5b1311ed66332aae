//! [`Child`]: a command running in the guest, driven while it runs, in the manner of
//! `std::process::Child`: write its stdin, read its stdout and stderr, send it signals,
//! resize its terminal, and wait for how it ended.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::time::Duration;

use crate::client::{read_exec_frame, Agent, AgentError, ExecFrame};
use crate::frame::{write_chunk, write_frame, write_json, FrameError, Kind};
use crate::message::{Control, ExecRequest, ExitInfo, Request, WindowSize};

/// Output chunks buffered per stream before the reader waits for the caller to read.
const BUFFERED_CHUNKS: usize = 64;

/// A command started with [`Agent::spawn`]. Take `stdin`, `stdout` and `stderr` out to use
/// them (as with `std::process::Child`); output not taken by the time of
/// [`Child::wait`] is discarded.
#[derive(Debug)]
pub struct Child {
    /// Its stdin, when the request asked for one (`ExecRequest::stdin`) or it has a tty.
    pub stdin: Option<ChildStdin>,
    /// Its stdout (with a tty: everything the terminal shows).
    pub stdout: Option<ChildOutput>,
    /// Its stderr (empty with a tty).
    pub stderr: Option<ChildOutput>,
    control: ChildControl,
    ended: Receiver<Result<ExitInfo, AgentError>>,
    exit: Option<ExitInfo>,
}

/// Sends signals and window sizes to a running [`Child`], from any thread (a signal
/// handler's, say): [`Child::control`] hands out more.
#[derive(Debug)]
pub struct ChildControl {
    conn: UnixStream,
}

impl ChildControl {
    /// Sends signal number `signal` to the command.
    pub fn signal(&self, signal: i32) -> Result<(), AgentError> {
        Ok(write_json(
            &mut &self.conn,
            Kind::Control,
            &Control::Signal(signal),
        )?)
    }

    /// Resizes the command's terminal (it gets SIGWINCH); no effect without a tty.
    pub fn resize(&self, size: WindowSize) -> Result<(), AgentError> {
        Ok(write_json(
            &mut &self.conn,
            Kind::Control,
            &Control::Resize(size),
        )?)
    }
}

/// The write end of a [`Child`]'s stdin; dropping it (or [`ChildStdin::close`]) closes
/// the command's stdin.
#[derive(Debug)]
pub struct ChildStdin {
    conn: UnixStream,
    closed: bool,
}

impl ChildStdin {
    /// Closes the command's stdin (it reads end of file; with a tty, the EOF character).
    pub fn close(mut self) -> io::Result<()> {
        self.send_eof()
    }

    fn send_eof(&mut self) -> io::Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        write_frame(&mut self.conn, Kind::Stdin, &[]).map_err(io::Error::other)
    }
}

impl Write for ChildStdin {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_chunk(&mut self.conn, Kind::Stdin, buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for ChildStdin {
    fn drop(&mut self) {
        let _ = self.send_eof();
    }
}

/// The read end of a [`Child`]'s stdout or stderr; end of file once the command has ended
/// and everything it wrote has been read.
#[derive(Debug)]
pub struct ChildOutput {
    chunks: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    offset: usize,
}

impl Read for ChildOutput {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.offset == self.pending.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.pending = chunk;
                    self.offset = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.pending.len() - self.offset);
        buf[..n].copy_from_slice(&self.pending[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl Agent {
    /// Starts `req` and returns at once with a [`Child`] to drive it.
    pub fn spawn(&self, req: &ExecRequest) -> Result<Child, AgentError> {
        let conn = self.open(Some(&Request::Exec(req.clone())))?;
        let (out_tx, out_rx) = sync_channel(BUFFERED_CHUNKS);
        let (err_tx, err_rx) = sync_channel(BUFFERED_CHUNKS);
        let (end_tx, end_rx) = sync_channel(1);
        let reader = conn.try_clone().map_err(FrameError::Io)?;
        std::thread::Builder::new()
            .name("sm-agent-child".into())
            .spawn(move || {
                let ended = demux(reader, out_tx, err_tx);
                let _ = end_tx.send(ended);
            })
            .map_err(FrameError::Io)?;
        let stdin = if req.stdin || req.tty.is_some() {
            Some(ChildStdin {
                conn: conn.try_clone().map_err(FrameError::Io)?,
                closed: false,
            })
        } else {
            None
        };
        let output = |chunks| ChildOutput {
            chunks,
            pending: Vec::new(),
            offset: 0,
        };
        Ok(Child {
            stdin,
            stdout: Some(output(out_rx)),
            stderr: Some(output(err_rx)),
            control: ChildControl { conn },
            ended: end_rx,
            exit: None,
        })
    }
}

/// Routes the guest's frames to the output channels until the final response.
fn demux(
    mut conn: UnixStream,
    stdout: SyncSender<Vec<u8>>,
    stderr: SyncSender<Vec<u8>>,
) -> Result<ExitInfo, AgentError> {
    loop {
        // A stream whose reader is gone is drained and dropped, so the command never
        // stalls on output nobody reads.
        match read_exec_frame(&mut conn)? {
            ExecFrame::Stdout(b) => {
                let _ = stdout.send(b);
            }
            ExecFrame::Stderr(b) => {
                let _ = stderr.send(b);
            }
            ExecFrame::Exited(info) => return Ok(info),
        }
    }
}

impl Child {
    /// Another handle for signals and window sizes, for other threads.
    pub fn control(&self) -> Result<ChildControl, AgentError> {
        Ok(ChildControl {
            conn: self.control.conn.try_clone().map_err(FrameError::Io)?,
        })
    }

    /// Sends signal number `signal` to the command.
    pub fn signal(&self, signal: i32) -> Result<(), AgentError> {
        self.control.signal(signal)
    }

    /// Resizes the command's terminal.
    pub fn resize(&self, size: WindowSize) -> Result<(), AgentError> {
        self.control.resize(size)
    }

    /// Closes stdin if still open, discards output not taken, and waits for the end.
    pub fn wait(&mut self) -> Result<ExitInfo, AgentError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        drop(self.stdin.take());
        drop(self.stdout.take());
        drop(self.stderr.take());
        self.finish(self.ended.recv().ok())
    }

    /// How the command ended, if it has; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<ExitInfo>, AgentError> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        match self.ended.try_recv() {
            Ok(r) => self.finish(Some(r)).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => self.finish(None).map(Some),
        }
    }

    /// Waits up to `limit`; `None` if the command is still running then.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitInfo>, AgentError> {
        if let Some(exit) = self.exit {
            return Ok(Some(exit));
        }
        match self.ended.recv_timeout(limit) {
            Ok(r) => self.finish(Some(r)).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => self.finish(None).map(Some),
        }
    }

    /// Records the end (`None`: the reader thread is gone without one).
    fn finish(&mut self, r: Option<Result<ExitInfo, AgentError>>) -> Result<ExitInfo, AgentError> {
        let exit = r.unwrap_or_else(|| Err(FrameError::Closed.into()))?;
        self.exit = Some(exit);
        let _ = self.control.conn.shutdown(std::net::Shutdown::Both);
        Ok(exit)
    }
}
