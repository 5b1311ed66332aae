//! sm-vmm's control API (`--api-socket PATH`): HTTP/1.1 with JSON bodies on a Unix socket,
//! as Firecracker and Cloud Hypervisor offer, so `curl --unix-socket PATH http://localhost/vm`
//! works. One thread answers one request per connection; a request that acts on the VM goes
//! to the VM's main loop ([`crate::vm::run`]) as an [`ApiCall`] and waits for its answer.
//!
//! | Request | Answer |
//! |---|---|
//! | `GET /vm` | 200, [`VmStatus`] (with each device's requests in flight) |
//! | `PUT /vm/pause` | 204; every vCPU out of KVM_RUN and parked (409 if already paused) |
//! | `PUT /vm/resume` | 204 (409 if not paused) |
//! | `PUT /vm/shutdown` | 204, then the VM powers off and sm-vmm exits |
//! | `PUT /vm/snapshot` `{"destination": "/abs/dir", "include": [{"name": "f", "path": "/abs/file"}]}` | 204; the paused VM, its backends' state and the `include` files (copied while the devices are stopped) saved to a new directory (409 if running, 400 for an existing destination or a device that cannot hand over its state) |
//!
//! Errors are `{"error": "one clear message"}` with a 4xx/5xx status.

use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::snapshot::{IncludeFile, SnapshotError};
use crate::vcpu::PauseError;

/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 16 * 1024;
/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request waits for the VM's main loop.
const VM_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors creating the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiSocketError {
    /// Something other than a socket is at the path.
    #[error("--api-socket {0}: not a socket (remove the file or choose another path)")]
    NotASocket(PathBuf),
    /// Another process answers on the socket.
    #[error("--api-socket {0}: in use by a running process")]
    InUse(PathBuf),
    /// Creating or listening on the socket failed.
    #[error("--api-socket {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

/// A request the API refuses or could not carry out; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is not HTTP/1.x as the API reads it, or its body is wrong.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body is longer than the API reads.
    #[error("the request body is longer than {MAX_BODY} bytes")]
    BodyTooLarge,
    /// No such resource.
    #[error("no resource {0} (the API serves /vm, /vm/pause, /vm/resume, /vm/snapshot and /vm/shutdown)")]
    NotFound(String),
    /// The resource exists but not with this method.
    #[error("{method} is not allowed on {path} (use {allowed})")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The one method the resource takes.
        allowed: &'static str,
    },
    /// Pausing or resuming failed.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// The VM's main loop did not answer (it is stopping).
    #[error("the VM did not answer (it is stopping)")]
    Unavailable,
    /// A snapshot was refused or failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

impl ApiError {
    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Pause(PauseError::AlreadyPaused | PauseError::NotPaused) => 409,
            ApiError::BodyTooLarge => 413,
            ApiError::Pause(PauseError::Timeout { .. }) => 500,
            ApiError::Unavailable => 503,
            ApiError::Snapshot(e) => e.status(),
        }
    }
}

/// What a well-formed request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /vm`.
    Status,
    /// `PUT /vm/pause`.
    Pause,
    /// `PUT /vm/resume`.
    Resume,
    /// `PUT /vm/shutdown`.
    Shutdown,
    /// `PUT /vm/snapshot`: save the paused VM into a new directory.
    Snapshot {
        /// The directory to create (absolute).
        destination: PathBuf,
        /// Host files to copy into it while the devices are stopped.
        include: Vec<IncludeFile>,
    },
}

/// The body of `PUT /vm/snapshot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    destination: PathBuf,
    #[serde(default)]
    include: Vec<IncludeFile>,
}

/// Whether the vCPUs run guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// The vCPUs run.
    Running,
    /// Every vCPU is parked outside KVM_RUN.
    Paused,
}

/// The body of `GET /vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStatus {
    /// Running or paused.
    pub state: VmState,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Milliseconds since sm-vmm started the VM.
    pub uptime_ms: u64,
    /// sm-vmm's version.
    pub version: String,
    /// Each virtio device, in attach order.
    #[serde(default)]
    pub devices: Vec<DeviceStatus>,
}

/// One virtio device in `GET /vm`: what a planned backend restart waits on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// `block`, `fs`, `vsock`, `net` (or the virtio device ID).
    pub kind: String,
    /// The vhost-user socket of its backend.
    pub socket: Option<String>,
    /// Requests the guest made available that the device has not yet used, over every
    /// ready queue (0 once a paused VM's device is idle).
    pub in_flight: u32,
}

/// What the VM's main loop answers to an [`ApiCall`].
#[derive(Debug)]
pub enum Answer {
    /// The VM's status.
    Status(VmStatus),
    /// Done, nothing to report.
    Done,
}

/// A request for the VM's main loop, with where to send its answer.
#[derive(Debug)]
pub struct ApiCall {
    /// What is asked.
    pub request: Request,
    /// Where the answer goes (nobody waits for the answer to [`Request::Shutdown`]: its
    /// response is written first).
    pub reply: Sender<Result<Answer, ApiError>>,
}

/// Maps a request line and body to what it asks for; pure, so every refusal is testable.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<Request, ApiError> {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let (request, allowed) = match path {
        "/vm" => (Request::Status, "GET"),
        "/vm/pause" => (Request::Pause, "PUT"),
        "/vm/resume" => (Request::Resume, "PUT"),
        "/vm/shutdown" => (Request::Shutdown, "PUT"),
        "/vm/snapshot" => (
            Request::Snapshot {
                destination: PathBuf::new(),
                include: vec![],
            },
            "PUT",
        ),
        other => return Err(ApiError::NotFound(other.to_string())),
    };
    if method != allowed {
        return Err(ApiError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allowed,
        });
    }
    if let Request::Snapshot { .. } = request {
        let body: SnapshotBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "/vm/snapshot takes {{\"destination\": \"/absolute/dir\", \"include\": [{{\"name\": \"f\", \"path\": \"/abs\"}}]}}; {e}"
            ))
        })?;
        if !body.destination.is_absolute() {
            return Err(ApiError::BadRequest(format!(
                "/vm/snapshot: destination {} is not an absolute path",
                body.destination.display()
            )));
        }
        for file in &body.include {
            let plain = !file.name.is_empty()
                && !file.name.contains('/')
                && file.name != "."
                && file.name != "..";
            if !plain || !file.path.is_absolute() {
                return Err(ApiError::BadRequest(format!(
                    "/vm/snapshot: include entry {{\"name\": {:?}, \"path\": {:?}}} needs a plain file name and an absolute path",
                    file.name, file.path
                )));
            }
        }
        return Ok(Request::Snapshot {
            destination: body.destination,
            include: body.include,
        });
    }
    // The PUT actions take no arguments: an empty body or `{}`.
    if allowed == "PUT" && !body.iter().all(u8::is_ascii_whitespace) {
        let problem = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(fields)) if fields.is_empty() => None,
            Ok(other) => Some(format!("got {other}")),
            Err(e) => Some(format!("not JSON: {e}")),
        };
        if let Some(problem) = problem {
            return Err(ApiError::BadRequest(format!(
                "{path} takes no arguments (send no body or {{}}); {problem}"
            )));
        }
    }
    Ok(request)
}

/// One HTTP request as the API reads it.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `PUT`, ...
    pub method: String,
    /// The request target, e.g. `/vm/pause`.
    pub path: String,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

/// Reads one HTTP/1.x request (head parsed by `httparse`, body by `Content-Length`).
pub fn read_request(input: &mut impl Read) -> Result<HttpRequest, ApiError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut head = httparse::Request::new(&mut headers);
        let status = head
            .parse(&buf)
            .map_err(|e| ApiError::BadRequest(format!("not an HTTP request ({e})")))?;
        if let httparse::Status::Complete(len) = status {
            let method = head.method.unwrap_or_default().to_string();
            let path = head.path.unwrap_or_default().to_string();
            let mut body_len = 0usize;
            for h in head.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .ok_or_else(|| ApiError::BadRequest("bad Content-Length".into()))?;
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(ApiError::BadRequest(
                        "chunked bodies are not supported (send Content-Length)".into(),
                    ));
                }
            }
            if body_len > MAX_BODY {
                return Err(ApiError::BodyTooLarge);
            }
            let mut body = buf.split_off(len);
            while body.len() < body_len {
                let n = read_some(input, &mut chunk)?;
                if n == 0 {
                    return Err(ApiError::BadRequest(
                        "the body is shorter than its Content-Length".into(),
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(body_len);
            return Ok(HttpRequest { method, path, body });
        }
        if buf.len() >= MAX_HEAD {
            return Err(ApiError::BadRequest(format!(
                "the request head is longer than {MAX_HEAD} bytes"
            )));
        }
        let n = read_some(input, &mut chunk)?;
        if n == 0 {
            return Err(ApiError::BadRequest(
                "the connection closed before the request was complete".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn read_some(input: &mut impl Read, chunk: &mut [u8]) -> Result<usize, ApiError> {
    loop {
        match input.read(chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApiError::BadRequest(format!("reading the request: {e}"))),
            Ok(n) => return Ok(n),
        }
    }
}

/// An HTTP/1.1 response with an optional JSON body; the connection closes after it.
pub fn response(status: u16, json: Option<&str>) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut out = format!("HTTP/1.1 {status} {reason}\r\nConnection: close\r\n");
    match json {
        Some(body) => {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ));
        }
        None => out.push_str("\r\n"),
    }
    out.into_bytes()
}

/// The response for `error`: its status and `{"error": "..."}`.
pub fn error_response(error: &ApiError) -> Vec<u8> {
    let body = serde_json::json!({ "error": error.to_string() }).to_string();
    response(error.status(), Some(&body))
}

/// The bound API socket, before it serves.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    file: SocketFile,
}

impl ApiSocket {
    /// Listens on `path`, replacing a stale socket there; refuses any other file and a
    /// socket some process still answers on.
    pub fn bind(path: &Path) -> Result<ApiSocket, ApiSocketError> {
        let io = |e| ApiSocketError::Io(path.to_path_buf(), e);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                if UnixStream::connect(path).is_ok() {
                    return Err(ApiSocketError::InUse(path.to_path_buf()));
                }
                std::fs::remove_file(path).map_err(io)?;
            }
            Ok(_) => return Err(ApiSocketError::NotASocket(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(path).map_err(io)?;
        Ok(ApiSocket {
            listener,
            file: SocketFile(path.to_path_buf()),
        })
    }

    /// Serves requests on a thread of its own, handing each call to `to_vm`; the returned
    /// guard removes the socket file when dropped.
    pub fn serve(
        self,
        to_vm: impl Fn(ApiCall) + Send + 'static,
    ) -> Result<SocketFile, std::io::Error> {
        let ApiSocket { listener, file } = self;
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    match stream {
                        Ok(s) => serve_connection(s, &to_vm),
                        Err(e) => tracing::warn!("API socket: accept failed: {e}"),
                    }
                }
            })?;
        Ok(file)
    }
}

/// Removes the API socket file when dropped (sm-vmm exiting, or never serving).
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Answers the one request on `stream`.
fn serve_connection(mut stream: UnixStream, to_vm: &dyn Fn(ApiCall)) {
    let _ = stream.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(CLIENT_TIMEOUT));
    let request = read_request(&mut stream).and_then(|r| route(&r.method, &r.path, &r.body));
    let (reply, answer) = mpsc::channel();
    let out = match request {
        Ok(Request::Shutdown) => {
            // Answered before the VM stops: sm-vmm exits right after.
            let _ = stream.write_all(&response(204, None));
            let _ = stream.shutdown(std::net::Shutdown::Both);
            to_vm(ApiCall {
                request: Request::Shutdown,
                reply,
            });
            return;
        }
        Ok(request) => {
            to_vm(ApiCall { request, reply });
            match answer.recv_timeout(VM_TIMEOUT) {
                Ok(Ok(Answer::Status(status))) => response(
                    200,
                    Some(&serde_json::to_string(&status).expect("status serializes")),
                ),
                Ok(Ok(Answer::Done)) => response(204, None),
                Ok(Err(e)) => error_response(&e),
                Err(_) => error_response(&ApiError::Unavailable),
            }
        }
        Err(e) => error_response(&e),
    };
    let _ = stream.write_all(&out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(r: Result<Request, ApiError>) -> u16 {
        r.map(|_| 200).unwrap_or_else(|e| e.status())
    }

    #[test]
    fn each_resource_takes_its_one_method() {
        assert_eq!(route("GET", "/vm", b"").unwrap(), Request::Status);
        assert_eq!(route("PUT", "/vm/pause", b"").unwrap(), Request::Pause);
        assert_eq!(route("PUT", "/vm/resume", b"{}").unwrap(), Request::Resume);
        assert_eq!(
            route("PUT", "/vm/shutdown", b" {} \n").unwrap(),
            Request::Shutdown
        );
        assert_eq!(route("GET", "/vm?x=1", b"").unwrap(), Request::Status);
        assert_eq!(status_of(route("PUT", "/vm", b"")), 405);
        assert_eq!(status_of(route("GET", "/vm/pause", b"")), 405);
        assert_eq!(status_of(route("DELETE", "/vm/shutdown", b"")), 405);
        let e = route("POST", "/vm/pause", b"").unwrap_err();
        assert_eq!(e.to_string(), "POST is not allowed on /vm/pause (use PUT)");
    }

    #[test]
    fn snapshot_includes_plain_names_of_absolute_paths() {
        let body =
            br#"{"destination": "/s", "include": [{"name": "vol.img", "path": "/v/a.img"}]}"#;
        assert_eq!(
            route("PUT", "/vm/snapshot", body).unwrap(),
            Request::Snapshot {
                destination: "/s".into(),
                include: vec![IncludeFile {
                    name: "vol.img".into(),
                    path: "/v/a.img".into()
                }],
            }
        );
        for bad in [
            &br#"{"destination": "/s", "include": [{"name": "../x", "path": "/v"}]}"#[..],
            br#"{"destination": "/s", "include": [{"name": "x", "path": "rel"}]}"#,
            br#"{"destination": "/s", "include": [{"name": "", "path": "/v"}]}"#,
            br#"{"destination": "/s", "include": [{"path": "/v"}]}"#,
        ] {
            assert_eq!(status_of(route("PUT", "/vm/snapshot", bad)), 400);
        }
    }

    #[test]
    fn snapshot_takes_an_absolute_destination() {
        assert_eq!(
            route("PUT", "/vm/snapshot", br#"{"destination": "/s/a"}"#).unwrap(),
            Request::Snapshot {
                destination: "/s/a".into(),
                include: vec![],
            }
        );
        for body in [&b""[..], b"{}", br#"{"destination": "rel"}"#, b"{"] {
            assert_eq!(
                status_of(route("PUT", "/vm/snapshot", body)),
                400,
                "{body:?}"
            );
        }
        assert_eq!(status_of(route("GET", "/vm/snapshot", b"")), 405);
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in ["/", "/vm/", "/vm/snapshots", "/machine", "vm"] {
            let e = route("GET", path, b"").unwrap_err();
            assert_eq!(e.status(), 404, "{path}");
            assert!(e.to_string().contains(path), "{e}");
        }
    }

    #[test]
    fn a_body_with_arguments_or_not_json_is_400() {
        for body in [&b"nonsense"[..], b"{\"x\":1}", b"[]", b"{"] {
            let e = route("PUT", "/vm/pause", body).unwrap_err();
            assert_eq!(e.status(), 400, "{body:?}");
            assert!(e
                .to_string()
                .starts_with("bad request: /vm/pause takes no arguments"));
        }
    }

    #[test]
    fn pause_conflicts_are_409_and_timeouts_500() {
        assert_eq!(ApiError::from(PauseError::AlreadyPaused).status(), 409);
        assert_eq!(ApiError::from(PauseError::NotPaused).status(), 409);
        let t = ApiError::from(PauseError::Timeout {
            parked: 1,
            running: 2,
        });
        assert_eq!(t.status(), 500);
    }

    #[test]
    fn requests_are_read_with_their_body() {
        let raw = b"PUT /vm/pause HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";
        let r = read_request(&mut &raw[..]).unwrap();
        assert_eq!(
            r,
            HttpRequest {
                method: "PUT".into(),
                path: "/vm/pause".into(),
                body: b"{}".to_vec()
            }
        );
        let r = read_request(&mut &b"GET /vm HTTP/1.1\r\n\r\n"[..]).unwrap();
        assert_eq!((r.method.as_str(), r.body.len()), ("GET", 0));
    }

    #[test]
    fn malformed_requests_are_400_or_413() {
        let cases: [(&[u8], u16); 6] = [
            (b"hello\r\n\r\n", 400),
            (b"GET /vm HTTP/1.1\r\nHost: x", 400),
            (b"PUT /vm/pause HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (
                b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 9\r\n\r\n{}",
                400,
            ),
            (
                b"PUT /vm/pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (
                b"PUT /vm/pause HTTP/1.1\r\nContent-Length: 999999\r\n\r\n",
                413,
            ),
        ];
        for (raw, status) in cases {
            let e = read_request(&mut &raw[..]).unwrap_err();
            assert_eq!(e.status(), status, "{}", String::from_utf8_lossy(raw));
        }
        let endless = vec![b'a'; MAX_HEAD + 10];
        let mut input = (&b"GET /"[..]).chain(&endless[..]);
        let e = read_request(&mut input).unwrap_err();
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn errors_are_json_with_one_message() {
        let out = error_response(&ApiError::NotFound("/x".into()));
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "no resource /x (the API serves /vm, /vm/pause, /vm/resume, /vm/snapshot and /vm/shutdown)"})
        );
        assert_eq!(
            response(204, None),
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn status_serializes_with_lowercase_state() {
        let s = VmStatus {
            state: VmState::Paused,
            vcpus: 2,
            memory_mib: 512,
            uptime_ms: 1500,
            version: "0.1.0".into(),
            devices: vec![DeviceStatus {
                kind: "fs".into(),
                socket: Some("/r/fs-0.sock".into()),
                in_flight: 1,
            }],
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "paused", "vcpus": 2, "memory_mib": 512, "uptime_ms": 1500, "version": "0.1.0",
                "devices": [{"kind": "fs", "socket": "/r/fs-0.sock", "in_flight": 1}]})
        );
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        let live = ApiSocket::bind(&path).expect("stale socket replaced");
        let e = ApiSocket::bind(&path).unwrap_err();
        assert!(matches!(e, ApiSocketError::InUse(_)), "{e}");
        drop(live);
        let file = dir.path().join("file");
        std::fs::write(&file, "keep").unwrap();
        let e = ApiSocket::bind(&file).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--api-socket {}: not a socket (remove the file or choose another path)",
                file.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep");
    }
}
