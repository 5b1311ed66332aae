//! write_file (temp file in the same directory, fsync, rename: readers never see a partial
//! file) and read_file (refused past the host's size cap).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use sm_agent::frame::{read_frame, write_frame, Kind, DATA_CHUNK};
use sm_agent::message::Response;

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Receives `size` bytes of data frames into `path`.
pub fn write(conn: &mut File, path: &str, mode: u32, size: u64, parents: bool) -> Response {
    let path = Path::new(path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Response::Failed(format!("write_file: {} is not a file path", path.display()));
    };
    if !path.is_absolute() {
        return Response::Failed(format!("write_file: {} is not absolute", path.display()));
    }
    if parents {
        if let Err(e) = fs::create_dir_all(dir) {
            return Response::Failed(format!("write_file: creating {}: {e}", dir.display()));
        }
    }
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let temp = dir.join(format!(
        ".{}.sm-{}-{seq}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = receive(conn, &temp, mode, size).and_then(|()| {
        fs::rename(&temp, path).map_err(|e| format!("renaming into {}: {e}", path.display()))
    });
    match result {
        Ok(()) => Response::Written { bytes: size },
        Err(e) => {
            let _ = fs::remove_file(&temp);
            Response::Failed(format!("write_file {}: {e}", path.display()))
        }
    }
}

fn receive(conn: &mut File, temp: &Path, mode: u32, size: u64) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o7777)
        .open(temp)
        .map_err(|e| e.to_string())?;
    let mut got = 0u64;
    while got < size {
        let frame = read_frame(conn).map_err(|e| e.to_string())?;
        if frame.kind != Kind::Data {
            return Err(format!("expected data, got a {:?} frame", frame.kind));
        }
        got += frame.body.len() as u64;
        if got > size {
            return Err(format!(
                "the host sent more than the announced {size} bytes"
            ));
        }
        f.write_all(&frame.body).map_err(|e| e.to_string())?;
    }
    // umask may have narrowed the mode; the host asked for exactly this.
    f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
        .and_then(|()| f.sync_all())
        .map_err(|e| e.to_string())
}

/// Sends the regular file at `path` as data frames if it is at most `max_bytes` long.
pub fn read(conn: &mut File, path: &str, max_bytes: u64) -> Response {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => return Response::Failed(format!("read_file {path}: {e}")),
    };
    let size = match f.metadata() {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => return Response::Failed(format!("read_file {path}: not a regular file")),
        Err(e) => return Response::Failed(format!("read_file {path}: {e}")),
    };
    if size > max_bytes {
        return Response::Failed(format!(
            "read_file {path}: the file is {size} bytes, over the {max_bytes}-byte cap"
        ));
    }
    let mut buf = vec![0u8; DATA_CHUNK];
    let mut sent = 0u64;
    // Never more than the size checked above, even if the file grows meanwhile.
    while sent < size {
        let want = (size - sent).min(DATA_CHUNK as u64) as usize;
        match f.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                if write_frame(conn, Kind::Data, &buf[..n]).is_err() {
                    return Response::Failed("the host went away".into());
                }
                sent += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Response::Failed(format!("read_file {path}: {e}")),
        }
    }
    Response::Read { bytes: sent }
}
