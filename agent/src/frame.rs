//! Framing: a little-endian `u32` body length, a one-byte kind, then the body. A peer may
//! announce at most [`MAX_FRAME`] bytes, so nothing it sends makes the reader allocate
//! without bound; control bodies are JSON, data bodies raw bytes.

use std::io::{self, Read, Write};

/// Largest body a frame may carry.
pub const MAX_FRAME: u32 = 1 << 20;
/// Largest data chunk a sender puts in one frame.
pub const DATA_CHUNK: usize = 256 << 10;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// JSON [`crate::message::Hello`], first frame each way.
    Hello = 0,
    /// JSON [`crate::message::Request`], host to guest.
    Request = 1,
    /// Bytes for the command's stdin; an empty body closes it.
    Stdin = 2,
    /// Bytes the command wrote to stdout.
    Stdout = 3,
    /// Bytes the command wrote to stderr.
    Stderr = 4,
    /// File contents (write_file, read_file).
    Data = 5,
    /// JSON [`crate::message::Control`] for a running command (signal, close stdin).
    Control = 6,
    /// JSON [`crate::message::Response`]: the request's outcome, last frame from the guest.
    Done = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0 => Kind::Hello,
            1 => Kind::Request,
            2 => Kind::Stdin,
            3 => Kind::Stdout,
            4 => Kind::Stderr,
            5 => Kind::Data,
            6 => Kind::Control,
            7 => Kind::Done,
            _ => return None,
        })
    }
}

/// Errors reading or writing frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("agent connection: {0}")]
    Io(#[from] io::Error),
    /// The peer announced a body larger than [`MAX_FRAME`].
    #[error("agent frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(u32),
    /// An unknown kind byte.
    #[error("agent frame of unknown kind {0}")]
    UnknownKind(u8),
    /// A control body that is not the expected JSON.
    #[error("malformed agent message: {0}")]
    Json(#[from] serde_json::Error),
    /// The peer closed the connection between frames.
    #[error("the agent connection closed")]
    Closed,
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// What the body is.
    pub kind: Kind,
    /// The body.
    pub body: Vec<u8>,
}

/// Writes the start of `buf` (at most [`DATA_CHUNK`] bytes) as one frame of `kind`; the
/// `io::Write::write` of the byte streams carried in frames (stdin, tunnels).
pub fn write_chunk(w: &mut impl Write, kind: Kind, buf: &[u8]) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let n = buf.len().min(DATA_CHUNK);
    write_frame(w, kind, &buf[..n]).map_err(io::Error::other)?;
    Ok(n)
}

/// Writes one frame (header and body in one write where the body is small).
pub fn write_frame(w: &mut impl Write, kind: Kind, body: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(body);
    w.write_all(&buf)?;
    Ok(())
}

/// Writes a frame whose body is `msg` as JSON.
pub fn write_json<T: serde::Serialize>(
    w: &mut impl Write,
    kind: Kind,
    msg: &T,
) -> Result<(), FrameError> {
    write_frame(w, kind, &serde_json::to_vec(msg)?)
}

/// Reads one frame; [`FrameError::Closed`] on a clean end of stream before a header.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, FrameError> {
    let mut header = [0u8; 5];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let kind = Kind::from_u8(header[4]).ok_or(FrameError::UnknownKind(header[4]))?;
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    Ok(Frame { kind, body })
}

/// Takes the first whole frame off the front of `buf` (bytes read from a non-blocking
/// connection), or `None` until more arrive; the same limits as [`read_frame`].
pub fn take_frame(buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let kind = Kind::from_u8(header[4]).ok_or(FrameError::UnknownKind(header[4]))?;
    let end = 5 + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let body = buf[5..end].to_vec();
    buf.drain(..end);
    Ok(Some(Frame { kind, body }))
}

impl Frame {
    /// The body parsed as JSON `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, FrameError> {
        Ok(serde_json::from_slice(&self.body)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Stdout, b"hello").unwrap();
        write_frame(&mut buf, Kind::Stdin, b"").unwrap();
        let mut r = &buf[..];
        let f = read_frame(&mut r).unwrap();
        assert_eq!((f.kind, f.body.as_slice()), (Kind::Stdout, &b"hello"[..]));
        let f = read_frame(&mut r).unwrap();
        assert_eq!((f.kind, f.body.len()), (Kind::Stdin, 0));
        assert!(matches!(read_frame(&mut r), Err(FrameError::Closed)));
    }

    #[test]
    fn frames_are_taken_from_a_buffer_as_they_complete() {
        let mut wire = Vec::new();
        write_frame(&mut wire, Kind::Stdout, b"abc").unwrap();
        write_frame(&mut wire, Kind::Done, b"{}").unwrap();
        let mut buf = Vec::new();
        for (i, b) in wire.iter().enumerate() {
            buf.push(*b);
            let got = take_frame(&mut buf).unwrap();
            match i {
                7 => assert_eq!(got.unwrap().body, b"abc"),
                14 => assert_eq!(got.unwrap().kind, Kind::Done),
                _ => assert!(got.is_none(), "nothing whole at byte {i}"),
            }
        }
        assert!(buf.is_empty());
        let mut huge = (MAX_FRAME + 1).to_le_bytes().to_vec();
        huge.push(3);
        assert!(matches!(
            take_frame(&mut huge),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        let mut buf = u32::MAX.to_le_bytes().to_vec();
        buf.push(Kind::Data as u8);
        assert!(matches!(
            read_frame(&mut &buf[..]),
            Err(FrameError::TooLarge(u32::MAX))
        ));
    }

    #[test]
    fn unknown_kinds_and_truncation_are_errors() {
        let mut buf = 0u32.to_le_bytes().to_vec();
        buf.push(99);
        assert!(matches!(
            read_frame(&mut &buf[..]),
            Err(FrameError::UnknownKind(99))
        ));
        let mut buf = 10u32.to_le_bytes().to_vec();
        buf.extend([Kind::Data as u8, 1, 2]);
        assert!(matches!(read_frame(&mut &buf[..]), Err(FrameError::Io(_))));
        assert!(matches!(
            read_frame(&mut &[1u8, 0][..]),
            Err(FrameError::Io(_))
        ));
    }
}
