//! passt, the user-mode network stack on the other side of the device: started as a child
//! before the sandbox, on one end of a `socketpair(AF_UNIX, SOCK_STREAM)`, as
//!
//! ```text
//! passt -f -q --fd N -4 -a ADDR -n PREFIX -g GW --dns-forward DNSFWD [--dns-host DNS] -m MTU
//! ```
//!
//! It dies with this process (`PR_SET_PDEATHSIG`), writes its messages to our stderr, and
//! speaks QEMU's stream protocol: each frame is a 4-byte big-endian length, then the
//! Ethernet frame, in both directions. passt needs the host to have an interface with a
//! default route ("No external routable interface for IPv4" otherwise).

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest frame either side may send: a 64 KiB IP packet and its Ethernet header.
pub const MAX_FRAME: usize = 65535 + 14;

/// Errors starting or talking to passt.
#[derive(Debug, thiserror::Error)]
pub enum PasstError {
    /// The socket pair could not be made.
    #[error("cannot make passt's socket pair: {0}")]
    SocketPair(io::Error),
    /// passt could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// passt sent a length that no frame has: the stream is out of step.
    #[error("passt sent a frame length of {0} bytes")]
    BadLength(usize),
    /// passt closed its end of the socket pair.
    #[error("passt exited (its socket closed)")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("passt socket: {0}")]
    Io(#[from] io::Error),
}

/// How passt is run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasstConfig {
    /// The passt executable.
    pub program: PathBuf,
    /// The guest's address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The gateway the guest sees.
    pub gateway: Ipv4Addr,
    /// The address the guest sends DNS to.
    pub dns_forward: Ipv4Addr,
    /// The host-side resolver for forwarded DNS (else passt reads /etc/resolv.conf).
    pub dns: Option<IpAddr>,
    /// The MTU passt announces.
    pub mtu: u16,
}

impl PasstConfig {
    /// passt's arguments with the tap connection on descriptor `fd`.
    pub fn args(&self, fd: RawFd) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "-f".into(),
            "-q".into(),
            "--fd".into(),
            fd.to_string().into(),
            "-4".into(),
            "-a".into(),
            self.address.to_string().into(),
            "-n".into(),
            self.prefix_len.to_string().into(),
            "-g".into(),
            self.gateway.to_string().into(),
            "--dns-forward".into(),
            self.dns_forward.to_string().into(),
        ];
        if let Some(dns) = self.dns {
            args.extend(["--dns-host".into(), dns.to_string().into()]);
        }
        args.extend(["-m".into(), self.mtu.to_string().into()]);
        args
    }
}

/// A running passt and our end of its socket.
pub struct Passt {
    /// The child (never waited for: it dies with this process).
    pub child: Child,
    /// Our end of the socket pair (blocking; reads use `MSG_DONTWAIT`).
    pub stream: UnixStream,
}

/// Starts passt as `config` says.
pub fn spawn(config: &PasstConfig) -> Result<Passt, PasstError> {
    let (ours, theirs) = UnixStream::pair().map_err(PasstError::SocketPair)?;
    let fd = theirs.as_raw_fd();
    let stderr = io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(PasstError::SocketPair)?;
    let mut cmd = Command::new(&config.program);
    cmd.args(config.args(fd))
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr));
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // (prctl, getppid, fcntl, _exit, and those of `clear_signal_mask`) on integers and a set
    // on its own stack; it allocates nothing.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1); // The parent died before the prctl.
            }
            // The child's end survives exec.
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // passt unblocks nothing: a mask inherited from whoever started this backend
            // would keep it from seeing SIGTERM.
            sm_launch::clear_signal_mask()
        });
    }
    let child = cmd.spawn().map_err(|source| PasstError::Spawn {
        program: config.program.clone(),
        source,
    })?;
    drop(theirs);
    Ok(Passt {
        child,
        stream: ours,
    })
}

/// Ends the backend because passt is gone or out of step: one line on stderr (and to the
/// service manager), exit status 1. The guest's network cannot work without passt, and a
/// supervisor restarts the backend with a fresh one.
pub fn gone(err: &PasstError) -> ! {
    // The queue thread and the watcher may both see the end: one line, one exit. (A second
    // concurrent exit would pause(2), which seccomp does not allow.)
    static ENDING: AtomicBool = AtomicBool::new(false);
    if ENDING.swap(true, Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
    let line = format!("sm-vhost-user-net: {err}");
    sm_vhost_user_common::notify::stopping(&line);
    eprintln!("{line}");
    std::process::exit(1);
}

/// Writes one frame to passt (blocking), length first.
pub fn write_frame(mut stream: &UnixStream, frame: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + frame.len());
    buf.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    buf.extend_from_slice(frame);
    stream.write_all(&buf)
}

/// Splits passt's stream into frames: bytes come in, whole frames come out.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    /// The receive buffer, kept across reads (every rx event reads into it).
    chunk: Vec<u8>,
}

/// How much one read takes from passt's socket.
const READ_CHUNK: usize = 64 * 1024;

impl Deframer {
    /// An empty stream.
    pub fn new() -> Deframer {
        Deframer::default()
    }

    /// Adds `bytes` and returns each frame now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, PasstError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= 4 {
            let len = u32::from_be_bytes([
                self.buf[at],
                self.buf[at + 1],
                self.buf[at + 2],
                self.buf[at + 3],
            ]) as usize;
            if !(14..=MAX_FRAME).contains(&len) {
                return Err(PasstError::BadLength(len));
            }
            if self.buf.len() - at - 4 < len {
                break;
            }
            frames.push(self.buf[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        self.buf.drain(..at);
        Ok(frames)
    }

    /// Reads what passt has sent without waiting, until the socket is empty or at least one
    /// frame is complete: the frames completed, or an empty list when nothing more is there
    /// (`WouldBlock`). EOF is [`PasstError::Closed`]. Reading on past a partial frame
    /// matters: the socket is polled edge-triggered, so bytes left behind would wait for
    /// passt's next write.
    pub fn read_from(&mut self, stream: &UnixStream) -> Result<Vec<Vec<u8>>, PasstError> {
        let mut chunk = std::mem::take(&mut self.chunk);
        chunk.resize(READ_CHUNK, 0);
        let result = loop {
            // SAFETY: recv writes at most `chunk.len()` bytes into `chunk`.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => break Err(PasstError::Closed),
                n if n > 0 => match self.push(&chunk[..n as usize]) {
                    Ok(frames) if frames.is_empty() => {}
                    other => break other,
                },
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => break Ok(Vec::new()),
                        _ => break Err(PasstError::Io(e)),
                    }
                }
            }
        };
        self.chunk = chunk;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let mut c = PasstConfig {
            program: "passt".into(),
            address: crate::DEFAULT_GUEST_ADDRESS,
            prefix_len: 24,
            gateway: crate::DEFAULT_GATEWAY,
            dns_forward: crate::DEFAULT_DNS_FORWARD,
            dns: None,
            mtu: 1500,
        };
        let line = |c: &PasstConfig| {
            c.args(5)
                .iter()
                .map(|a| a.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            line(&c),
            "-f -q --fd 5 -4 -a 10.0.2.15 -n 24 -g 10.0.2.2 --dns-forward 10.0.2.3 -m 1500"
        );
        c.dns = Some("1.1.1.1".parse().unwrap());
        assert!(line(&c).ends_with("--dns-forward 10.0.2.3 --dns-host 1.1.1.1 -m 1500"));
    }

    #[test]
    fn frames_split_anywhere() {
        let mut stream = Vec::new();
        for len in [14usize, 60, 1514] {
            stream.extend_from_slice(&(len as u32).to_be_bytes());
            stream.extend(std::iter::repeat_n(len as u8, len));
        }
        for cut in [1, 3, 4, 5, 17, 100, stream.len()] {
            let mut d = Deframer::new();
            let mut frames = Vec::new();
            for piece in stream.chunks(cut) {
                frames.extend(d.push(piece).unwrap());
            }
            let lens: Vec<usize> = frames.iter().map(|f| f.len()).collect();
            assert_eq!(lens, [14, 60, 1514], "cut {cut}");
            assert!(frames[2].iter().all(|&b| b == 1514u16 as u8));
        }
        let mut d = Deframer::new();
        assert!(matches!(
            d.push(&[0, 1, 0, 14]),
            Err(PasstError::BadLength(65550))
        ));
        assert!(Deframer::new().push(&[0, 0, 0, 3]).is_err());
    }

    #[test]
    fn reads_without_waiting() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut d = Deframer::new();
        assert!(d.read_from(&a).unwrap().is_empty());
        write_frame(&b, &[7u8; 20]).unwrap();
        assert_eq!(d.read_from(&a).unwrap(), vec![vec![7u8; 20]]);
        drop(b);
        assert!(matches!(d.read_from(&a), Err(PasstError::Closed)));
    }
}
