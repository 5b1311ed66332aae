//! The agent: serves the host's requests (exec, files, TCP, reseed) on vsock port
//! [`sm_agent::AGENT_PORT`], one thread per connection, so any number run at once.

mod exec;
mod files;
mod random;
mod relay;
mod tcp;
mod tty;

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use sm_agent::frame::{read_frame, write_json, FrameError, Kind};
use sm_agent::message::{Hello, Request, Response};
use sm_agent::{AGENT_PORT, PROTOCOL_VERSION, READY_LINE, READY_PORT};

use crate::setup::{log_error, log_verbose};

/// Any CID: accept connections addressed to this guest.
const VMADDR_CID_ANY: u32 = u32::MAX;
/// The host's CID.
const VMADDR_CID_HOST: u32 = 2;
/// How many times the ready signal is tried.
const READY_TRIES: u32 = 3;

/// Starts the agent's listener thread if the guest has a vsock device.
pub fn start(verbose: bool) {
    let listener = match listen_vsock() {
        Ok(l) => l,
        Err(e) => {
            log_verbose(verbose, &format!("agent not started (no vsock?): {e}"));
            return;
        }
    };
    log_verbose(
        verbose,
        &format!("agent listening on vsock port {AGENT_PORT}"),
    );
    let spawned = std::thread::Builder::new()
        .name("agent".into())
        .spawn(move || {
            // A few tries: one lost connection must not leave the host waiting (it also
            // probes the agent's port). No vsock host at all (ENODEV) is not retried.
            for attempt in 1..=READY_TRIES {
                match signal_ready() {
                    Ok(()) => break,
                    Err(e) => {
                        log_verbose(
                            verbose,
                            &format!("agent: no host took the ready signal ({attempt}): {e}"),
                        );
                        if e.raw_os_error() == Some(libc::ENODEV) {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                }
            }
            serve(listener)
        });
    if let Err(e) = spawned {
        log_error(&format!("cannot start the agent thread: {e}"));
    }
}

/// A new vsock stream socket (close-on-exec).
fn vsock_socket() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn listen_vsock() -> nix::Result<OwnedFd> {
    let fd = vsock_socket()?;
    bind(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_ANY, AGENT_PORT))?;
    listen(&fd, Backlog::new(128)?)?;
    Ok(fd)
}

/// Tells the host the agent listens (a connection to its [`READY_PORT`] carrying one line).
fn signal_ready() -> std::io::Result<()> {
    let fd = vsock_socket()?;
    nix::sys::socket::connect(fd.as_raw_fd(), &VsockAddr::new(VMADDR_CID_HOST, READY_PORT))?;
    let mut conn = File::from(fd);
    std::io::Write::write_all(&mut conn, READY_LINE)
}

fn serve(listener: OwnedFd) {
    loop {
        // Close-on-exec: a command must not inherit other requests' connections (a
        // daemon holding one would keep its peer from ever seeing the end).
        match accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(fd) => {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                let conn = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
                let _ = std::thread::Builder::new()
                    .name("agent-conn".into())
                    .spawn(move || handle(conn));
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => {}
            Err(e) => {
                log_error(&format!("agent: accept: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// One connection: the Hello exchange, then one request.
fn handle(mut conn: File) {
    if let Err(e) = handshake_and_serve(&mut conn) {
        // The peer went away or broke the protocol; tell it if it still listens.
        let _ = write_json(&mut conn, Kind::Done, &Response::Failed(e.to_string()));
    }
}

fn handshake_and_serve(conn: &mut File) -> Result<(), FrameError> {
    let hello = read_frame(conn)?;
    let theirs: Hello = if hello.kind == Kind::Hello {
        hello.json()?
    } else {
        return reply_failed(conn, "expected Hello as the first frame");
    };
    if theirs.version != PROTOCOL_VERSION {
        return reply_failed(
            conn,
            &format!(
                "agent speaks protocol version {PROTOCOL_VERSION}, the host {}",
                theirs.version
            ),
        );
    }
    write_json(
        conn,
        Kind::Hello,
        &Hello {
            version: PROTOCOL_VERSION,
        },
    )?;
    let req = read_frame(conn)?;
    if req.kind != Kind::Request {
        return reply_failed(conn, "expected a Request after Hello");
    }
    let response = match req.json::<Request>()? {
        Request::Exec(e) => exec::run(conn, e),
        Request::WriteFile {
            path,
            mode,
            size,
            create_parents,
        } => files::write(conn, &path, mode, size, create_parents),
        Request::ReadFile { path, max_bytes } => files::read(conn, &path, max_bytes),
        Request::ConnectTcp { port } => return tcp::connect(conn, port),
        Request::Reseed { seed } => random::reseed(&seed),
    };
    write_json(conn, Kind::Done, &response)
}

fn reply_failed(conn: &mut File, why: &str) -> Result<(), FrameError> {
    write_json(conn, Kind::Done, &Response::Failed(why.to_owned()))
}
