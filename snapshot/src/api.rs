//! A client for sm-vmm's control API (`--api-socket PATH`): one HTTP/1.1 request per
//! connection on the Unix socket, a JSON body, and the status and `{"error": "..."}` of the
//! answer turned into a [`ApiClientError`]. What `sm-snapshot create` and `sm snapshot` use.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::task::Poll;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Largest answer head (status line and headers) read.
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer body read.
const MAX_BODY: usize = 1 << 20;
/// How long a pause, resume, shutdown or status may take.
const SHORT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a snapshot may take (it copies guest RAM and every included file).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Why a request to sm-vmm's API failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    /// Nothing answers on the socket.
    #[error("{0}: cannot connect to sm-vmm's API: {1}")]
    Connect(PathBuf, std::io::Error),
    /// Sending the request or reading the answer failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The answer is not HTTP/1.x as expected.
    #[error("{0}: not an HTTP answer: {1}")]
    BadAnswer(PathBuf, String),
    /// sm-vmm refused or failed the request (its one-line message).
    #[error("{message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// sm-vmm's error message (or the status line's reason when the body has none).
        message: String,
    },
}

/// One file copied into a snapshot (`PUT /vm/snapshot`'s `include`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Include {
    /// Its plain file name in the snapshot directory.
    pub name: String,
    /// The host file to copy (absolute).
    pub path: PathBuf,
}

/// The body of `PUT /vm/snapshot`.
#[derive(Serialize)]
struct SnapshotRequest<'a> {
    destination: &'a Path,
    include: &'a [Include],
}

/// An answer: its status and body.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body (empty for 204).
    pub body: Vec<u8>,
}

/// sm-vmm's control API at one socket.
#[derive(Clone, Debug)]
pub struct ApiClient {
    socket: PathBuf,
}

impl ApiClient {
    /// The API served on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
        }
    }

    /// The socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /vm`: the VM's status as JSON.
    pub fn status(&self) -> Result<serde_json::Value, ApiClientError> {
        let a = self.checked("GET", "/vm", None, SHORT_TIMEOUT)?;
        serde_json::from_slice(&a.body)
            .map_err(|e| ApiClientError::BadAnswer(self.socket.clone(), e.to_string()))
    }

    /// `PUT /vm/pause`.
    pub fn pause(&self) -> Result<(), ApiClientError> {
        self.checked("PUT", "/vm/pause", None, SHORT_TIMEOUT)
            .map(drop)
    }

    /// `PUT /vm/resume`.
    pub fn resume(&self) -> Result<(), ApiClientError> {
        self.checked("PUT", "/vm/resume", None, SHORT_TIMEOUT)
            .map(drop)
    }

    /// `PUT /vm/shutdown`: the VM powers off and sm-vmm exits.
    pub fn shutdown(&self) -> Result<(), ApiClientError> {
        self.checked("PUT", "/vm/shutdown", None, SHORT_TIMEOUT)
            .map(drop)
    }

    /// `PUT /vm/snapshot`: the paused VM saved to the new directory `destination`, with
    /// each of `include` copied into it.
    pub fn snapshot(&self, destination: &Path, include: &[Include]) -> Result<(), ApiClientError> {
        let body = serde_json::to_vec(&SnapshotRequest {
            destination,
            include,
        })
        .map_err(|e| ApiClientError::BadAnswer(self.socket.clone(), e.to_string()))?;
        self.checked("PUT", "/vm/snapshot", Some(&body), SNAPSHOT_TIMEOUT)
            .map(drop)
    }

    /// The whole coordinated snapshot: pause, snapshot into `destination` with `include`,
    /// then resume (or, with `stop`, shut the VM down). A failed snapshot resumes the VM
    /// and is reported as what failed.
    pub fn pause_snapshot_resume(
        &self,
        destination: &Path,
        include: &[Include],
        stop: bool,
    ) -> Result<(), ApiClientError> {
        self.pause()?;
        if let Err(e) = self.snapshot(destination, include) {
            let _ = self.resume();
            return Err(e);
        }
        if stop {
            self.shutdown()
        } else {
            self.resume()
        }
    }

    /// Sends one request and fails on any status but 2xx, with sm-vmm's message.
    fn checked(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Answer, ApiClientError> {
        let a = self.request(method, path, body, timeout)?;
        check(method, path, a)
    }

    /// Sends `method path` with an optional JSON body and reads the whole answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Answer, ApiClientError> {
        let io = |e| ApiClientError::Io(self.socket.clone(), e);
        let mut s = UnixStream::connect(&self.socket)
            .map_err(|e| ApiClientError::Connect(self.socket.clone(), e))?;
        s.set_read_timeout(Some(timeout)).map_err(io)?;
        s.set_write_timeout(Some(SHORT_TIMEOUT)).map_err(io)?;
        s.write_all(&request_bytes(method, path, body))
            .map_err(io)?;
        read_answer(&mut s).map_err(|e| self.answer_error(e))
    }

    /// Starts `PUT /vm/resume` on a non-blocking connection and returns at once; the
    /// caller's event loop drives it (see [`ApiExchange`]).
    pub fn start_resume(&self) -> Result<ApiExchange, ApiClientError> {
        let conn = UnixStream::connect(&self.socket)
            .map_err(|e| ApiClientError::Connect(self.socket.clone(), e))?;
        conn.set_nonblocking(true)
            .map_err(|e| ApiClientError::Io(self.socket.clone(), e))?;
        let mut ex = ApiExchange {
            client: self.clone(),
            conn,
            method: "PUT",
            path: "/vm/resume",
            output: request_bytes("PUT", "/vm/resume", None),
            sent: 0,
            input: Vec::new(),
            closed: false,
            deadline: Instant::now() + SHORT_TIMEOUT,
        };
        ex.flush()?;
        Ok(ex)
    }

    fn answer_error(&self, e: AnswerError) -> ApiClientError {
        match e {
            AnswerError::Io(e) => ApiClientError::Io(self.socket.clone(), e),
            AnswerError::Bad(why) => ApiClientError::BadAnswer(self.socket.clone(), why),
        }
    }
}

/// The bytes of `method path` with an optional JSON body.
fn request_bytes(method: &str, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let body = body.unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() || method == "PUT" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// `a` if its status is 2xx, else sm-vmm's message as the error.
fn check(method: &str, path: &str, a: Answer) -> Result<Answer, ApiClientError> {
    if (200..300).contains(&a.status) {
        return Ok(a);
    }
    let message = serde_json::from_slice::<serde_json::Value>(&a.body)
        .ok()
        .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            format!(
                "{method} {path}: HTTP {} {}",
                a.status,
                String::from_utf8_lossy(&a.body).trim()
            )
        });
    Err(ApiClientError::Refused {
        status: a.status,
        message: sm_launch::one_line(&message),
    })
}

/// One request on a non-blocking connection, for an event loop to drive: poll
/// [`ApiExchange::fd`] (for writing too while [`ApiExchange::wants_write`]) and call
/// [`ApiExchange::advance`] when it is ready or [`ApiExchange::deadline`] passes.
pub struct ApiExchange {
    client: ApiClient,
    conn: UnixStream,
    method: &'static str,
    path: &'static str,
    output: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    closed: bool,
    deadline: Instant,
}

impl ApiExchange {
    /// The connection to poll.
    pub fn fd(&self) -> RawFd {
        self.conn.as_raw_fd()
    }

    /// Whether request bytes wait to be sent.
    pub fn wants_write(&self) -> bool {
        self.sent < self.output.len()
    }

    /// When the request fails if unanswered.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Sends and reads what the connection takes now: `Ready` with the (2xx) answer or
    /// the failure once the answer is whole.
    pub fn advance(&mut self) -> Poll<Result<Answer, ApiClientError>> {
        let step = self.flush().and_then(|()| self.fill());
        if let Err(e) = step {
            return Poll::Ready(Err(e));
        }
        let mut reader = Buffered {
            bytes: &self.input,
            closed: self.closed,
        };
        match read_answer(&mut reader) {
            Err(AnswerError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= self.deadline {
                    let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
                    return Poll::Ready(Err(ApiClientError::Io(self.client.socket.clone(), late)));
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(self.client.answer_error(e))),
            Ok(a) => Poll::Ready(check(self.method, self.path, a)),
        }
    }

    fn flush(&mut self) -> Result<(), ApiClientError> {
        while self.wants_write() {
            match self.conn.write(&self.output[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ApiClientError::Io(self.client.socket.clone(), e)),
            }
        }
        Ok(())
    }

    fn fill(&mut self) -> Result<(), ApiClientError> {
        let mut chunk = [0u8; 4096];
        while !self.closed {
            match self.conn.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) if self.input.len() + n > MAX_HEAD + MAX_BODY => {
                    let e = "the answer is too long".to_owned();
                    return Err(ApiClientError::BadAnswer(self.client.socket.clone(), e));
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ApiClientError::Io(self.client.socket.clone(), e)),
            }
        }
        Ok(())
    }
}

/// The bytes read so far as a reader: `WouldBlock` past them until the peer has closed,
/// so that [`read_answer`] parses a partial answer as "more to come".
struct Buffered<'a> {
    bytes: &'a [u8],
    closed: bool,
}

impl Read for Buffered<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.bytes.is_empty() && !self.closed {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        self.bytes.read(buf)
    }
}

/// Why an answer could not be read.
enum AnswerError {
    Io(std::io::Error),
    Bad(String),
}

/// Reads one HTTP/1.x answer: head, then a `Content-Length` body (or up to EOF).
fn read_answer(s: &mut impl Read) -> Result<Answer, AnswerError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (status, head_len, length) = loop {
        let n = s.read(&mut chunk).map_err(AnswerError::Io)?;
        if n == 0 {
            return Err(AnswerError::Bad(if buf.is_empty() {
                "the connection closed without an answer".into()
            } else {
                "the connection closed inside the answer's head".into()
            }));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = resp.code.ok_or(AnswerError::Bad("no status".into()))?;
                let length = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| {
                        std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .ok_or(AnswerError::Bad("a bad Content-Length".into()))
                    })
                    .transpose()?;
                break (status, len, length);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(AnswerError::Bad("the answer's head is too long".into()))
            }
            Err(e) => return Err(AnswerError::Bad(e.to_string())),
        }
    };
    let mut body = buf.split_off(head_len);
    let want = match length {
        Some(l) if l > MAX_BODY => return Err(AnswerError::Bad("the body is too long".into())),
        Some(l) => l,
        None if status == 204 || status == 304 => 0,
        None => MAX_BODY,
    };
    while body.len() < want {
        let n = s.read(&mut chunk).map_err(AnswerError::Io)?;
        if n == 0 {
            if length.is_some() {
                return Err(AnswerError::Bad(
                    "the connection closed inside the body".into(),
                ));
            }
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(want);
    Ok(Answer { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A server on a real Unix socket answering one connection with `answer`; gives back
    /// the request line, the headers and the body it received.
    /// What [`serve_once`]'s server received: request line, headers, body.
    type Received = std::thread::JoinHandle<(String, String, Vec<u8>)>;

    fn serve_once(answer: &'static str) -> (tempfile::TempDir, PathBuf, Received) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut headers = String::new();
            let mut length = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                headers.push_str(&h);
            }
            let mut body = vec![0; length];
            r.read_exact(&mut body).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            (line, headers, body)
        });
        (dir, sock, t)
    }

    /// A server answering one connection per entry of `answers`, in order; gives back the
    /// request lines.
    fn serve_each(
        answers: Vec<&'static str>,
    ) -> (
        tempfile::TempDir,
        PathBuf,
        std::thread::JoinHandle<Vec<String>>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let l = UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let mut lines = vec![];
            for answer in answers {
                let (s, _) = l.accept().unwrap();
                let mut r = std::io::BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut length = 0;
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                (&s).write_all(answer.as_bytes()).unwrap();
                lines.push(line.trim_end().to_owned());
            }
            lines
        });
        (dir, sock, t)
    }

    const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\n\r\n";

    #[test]
    fn a_failed_snapshot_resumes_the_vm_and_reports_why() {
        let refused = "HTTP/1.1 400 Bad Request\r\n\r\n{\"error\": \"/s: the destination exists\"}";
        let (_d, sock, t) = serve_each(vec![NO_CONTENT, refused, NO_CONTENT]);
        let e = ApiClient::new(&sock)
            .pause_snapshot_resume(Path::new("/s"), &[], false)
            .unwrap_err();
        assert_eq!(e.to_string(), "/s: the destination exists");
        assert_eq!(
            t.join().unwrap(),
            [
                "PUT /vm/pause HTTP/1.1",
                "PUT /vm/snapshot HTTP/1.1",
                "PUT /vm/resume HTTP/1.1"
            ]
        );
    }

    #[test]
    fn a_snapshot_with_stop_shuts_the_vm_down_instead_of_resuming() {
        let (_d, sock, t) = serve_each(vec![NO_CONTENT; 3]);
        ApiClient::new(&sock)
            .pause_snapshot_resume(Path::new("/s"), &[], true)
            .unwrap();
        assert_eq!(
            t.join().unwrap(),
            [
                "PUT /vm/pause HTTP/1.1",
                "PUT /vm/snapshot HTTP/1.1",
                "PUT /vm/shutdown HTTP/1.1"
            ]
        );
    }

    #[test]
    fn a_pause_is_a_put_and_204_is_success() {
        let (_d, sock, t) = serve_once("HTTP/1.1 204 No Content\r\n\r\n");
        ApiClient::new(&sock).pause().unwrap();
        let (line, headers, body) = t.join().unwrap();
        assert_eq!(line, "PUT /vm/pause HTTP/1.1\r\n");
        assert!(headers.to_ascii_lowercase().contains("content-length: 0"));
        assert!(body.is_empty());
    }

    #[test]
    fn a_snapshot_sends_its_destination_and_includes_as_json() {
        let (_d, sock, t) = serve_once("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        let inc = [Include {
            name: "volume-vdb.img".into(),
            path: "/var/c.img".into(),
        }];
        ApiClient::new(&sock)
            .snapshot(Path::new("/snaps/s1"), &inc)
            .unwrap();
        let (line, _, body) = t.join().unwrap();
        assert_eq!(line, "PUT /vm/snapshot HTTP/1.1\r\n");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"destination": "/snaps/s1",
                "include": [{"name": "volume-vdb.img", "path": "/var/c.img"}]})
        );
    }

    /// sm-vmm's refusal of a resume of a running VM.
    const NOT_PAUSED: &str = concat!(
        "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: 33\r\n\r\n",
        r#"{"error": "the VM is not paused"}"#
    );

    #[test]
    fn an_error_answer_becomes_its_one_line_message_and_status() {
        let (_d, sock, t) = serve_once(NOT_PAUSED);
        let e = ApiClient::new(&sock).resume().unwrap_err();
        t.join().unwrap();
        assert_eq!(e.to_string(), "the VM is not paused");
        assert!(matches!(e, ApiClientError::Refused { status: 409, .. }));
    }

    /// Drives `ex` as an event loop would: poll(2) on its socket until it is ready.
    fn drive(mut ex: ApiExchange) -> Result<Answer, ApiClientError> {
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
            let ms = ex
                .deadline()
                .saturating_duration_since(Instant::now())
                .as_millis();
            // SAFETY: one valid pollfd, for the call's duration.
            unsafe { libc::poll(&mut pfd, 1, ms.min(60_000) as i32 + 1) };
        }
    }

    #[test]
    fn a_resume_driven_by_an_event_loop_sends_the_request_and_reads_the_answer() {
        let (_d, sock, t) = serve_once("HTTP/1.1 204 No Content\r\n\r\n");
        let ex = ApiClient::new(&sock).start_resume().unwrap();
        assert_eq!(drive(ex).unwrap().status, 204);
        let (line, headers, _) = t.join().unwrap();
        assert_eq!(line, "PUT /vm/resume HTTP/1.1\r\n");
        assert!(headers.to_ascii_lowercase().contains("content-length: 0"));

        let (_d, sock, t) = serve_once(NOT_PAUSED);
        let e = drive(ApiClient::new(&sock).start_resume().unwrap()).unwrap_err();
        t.join().unwrap();
        assert_eq!(e.to_string(), "the VM is not paused");

        // A server that closes without answering: an error, not a hang.
        let (_d, sock, t) = serve_once("");
        let e = drive(ApiClient::new(&sock).start_resume().unwrap()).unwrap_err();
        t.join().unwrap();
        assert!(e.to_string().contains("closed without an answer"), "{e}");
    }

    #[test]
    fn the_status_is_parsed_json() {
        let (_d, sock, t) = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{\"state\":\"Running\"}",
        );
        let v = ApiClient::new(&sock).status().unwrap();
        let (line, _, _) = t.join().unwrap();
        assert_eq!(line, "GET /vm HTTP/1.1\r\n");
        assert_eq!(v["state"], "Running");
    }

    #[test]
    fn no_server_and_garbage_are_errors_that_name_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        let e = ApiClient::new(&sock).pause().unwrap_err();
        assert!(matches!(e, ApiClientError::Connect(..)), "{e}");
        assert!(e.to_string().contains("none.sock"), "{e}");
        let (_d, sock, t) = serve_once("nonsense\r\n\r\n");
        let e = ApiClient::new(&sock).pause().unwrap_err();
        t.join().unwrap();
        assert!(matches!(e, ApiClientError::BadAnswer(..)), "{e}");
        let (_d, sock, t) = serve_once("HTTP/1.1 500 Internal Server Error\r\n\r\n");
        let e = ApiClient::new(&sock).shutdown().unwrap_err();
        t.join().unwrap();
        assert!(e.to_string().contains("HTTP 500"), "{e}");
    }
}
