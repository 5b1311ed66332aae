//! TCP forwarding: connects to a port on the guest's loopback and carries the bytes as data
//! frames, an empty one marking end of stream in that direction. Half-close travels as
//! that marker because the hybrid-vsock backend turns a host-side EOF into a full shutdown.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Shutdown, TcpStream};

use sm_agent::frame::{read_frame, write_frame, write_json, FrameError, Kind, DATA_CHUNK};
use sm_agent::message::Response;

/// Answers `Connected` (or why not) and relays until both directions have ended.
pub fn connect(conn: &mut File, port: u16) -> Result<(), FrameError> {
    let tcp = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(t) => t,
        Err(e) => {
            let why = format!("connecting to guest port {port}: {e}");
            return write_json(conn, Kind::Done, &Response::Failed(why));
        }
    };
    write_json(conn, Kind::Done, &Response::Connected)?;
    let mut to_guest = tcp.try_clone()?;
    let mut from_host = conn.try_clone()?;
    let up = std::thread::spawn(move || {
        while let Ok(f) = read_frame(&mut from_host) {
            if f.kind != Kind::Data || f.body.is_empty() {
                break;
            }
            if io::Write::write_all(&mut to_guest, &f.body).is_err() {
                break;
            }
        }
        let _ = to_guest.shutdown(Shutdown::Write);
    });
    let mut from_guest = tcp;
    let mut buf = vec![0u8; DATA_CHUNK];
    loop {
        let n = match from_guest.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        // An empty frame tells the host this direction ended.
        if write_frame(conn, Kind::Data, &buf[..n]).is_err() || n == 0 {
            break;
        }
    }
    let _ = up.join();
    Ok(())
}
