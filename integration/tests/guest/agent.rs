//! The guest agent over vsock: sm-vmm's generic vhost-user frontend with rust-vmm's
//! vhost-device-vsock as the backend, the sm-agent client on the host, sm-init's agent in
//! the guest.

use crate::common::*;
use sm_agent::client::{Agent, AgentError, ReadySignal};
use sm_agent::message::ExecRequest;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A booted guest with a vsock backend; powers off when dropped (its stdin closes).
struct RunningVm {
    vm: Option<Child>,
    _vsock: Backend,
    agent: Agent,
    _dir: tempfile::TempDir,
}

impl RunningVm {
    fn boot(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vsock.sock");
        let uds = dir.path().join("vm.vsock");
        let mut cmd = Command::new("vhost-device-vsock");
        cmd.args(["--guest-cid", "3", "--socket"])
            .arg(&socket)
            .arg("--uds-path")
            .arg(&uds);
        let vsock = Backend::start(cmd, &socket);
        let ready = ReadySignal::bind(&uds).unwrap();
        let vm = sm_vmm()
            .args(["--vsock-socket", vsock.socket_str()])
            .args(extra)
            .args(["--", "sh", "-c", "cat >/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A hang fails the test (the test VM freezing is caught sooner, by sm-testvm).
        let agent = Agent::new(&uds).with_io_timeout(Duration::from_secs(120));
        let mut running = RunningVm {
            vm: Some(vm),
            _vsock: vsock,
            agent,
            _dir: dir,
        };
        if let Err(e) = ready.wait(Duration::from_secs(90)) {
            let out = running.stop();
            panic!("{e}; sm-vmm stderr: {}", stderr(&out));
        }
        running
    }

    fn exec(&self, argv: &[&str]) -> sm_agent::client::ExecOutput {
        self.agent.exec(&request(argv), None).unwrap_or_else(|e| {
            // Whether the guest sat halted (the nested emulation's stall) or was busy.
            let stalled = guests_stalled(std::process::id());
            panic!(
                "exec {argv:?}: {e} (guest stalled: {stalled})\n{}",
                processes()
            )
        })
    }

    fn stop(&mut self) -> std::process::Output {
        let mut vm = self.vm.take().expect("running");
        drop(vm.stdin.take());
        wait_with_timeout(vm, Duration::from_secs(60))
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            let _ = vm.kill();
            let _ = vm.wait();
        }
    }
}

fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn exec_keeps_streams_apart_and_reports_how_commands_end() {
    let mut vm = RunningVm::boot(&[]);
    let out = vm.exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit.code),
        (&b"out\n"[..], &b"err\n"[..], Some(3))
    );
    let out = vm.exec(&["sh", "-c", "kill -TERM $$"]);
    assert_eq!((out.exit.code, out.exit.signal), (None, Some(15)));

    // Environment, working directory and user.
    let mut req = request(&["sh", "-c", "echo $GREETING; pwd; id -u; id -g"]);
    req.env = Some(vec![("GREETING".into(), "hello there".into())]);
    req.cwd = Some("/tmp".into());
    req.uid = Some(1000);
    req.gid = Some(100);
    let out = vm.agent.exec(&req, None).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello there\n/tmp\n1000\n100\n"
    );

    // A command inherits nothing but its three streams (no agent connection): ls sees
    // those and the directory it is listing.
    let out = vm.exec(&["ls", "/proc/self/fd"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n1\n2\n3\n");

    // A missing program is a clear error, and the agent keeps serving. Many times over: the
    // failed spawn reaps its own child while PID 1 reaps everything, and losing that race
    // once used to take PID 1 down.
    for i in 0..40 {
        match vm.agent.exec(&request(&["/no/such/program"]), None) {
            Err(AgentError::Remote(why)) => {
                assert!(why.contains("cannot run '/no/such/program'"), "{why}")
            }
            other => panic!("attempt {i}: expected a remote error, got {other:?}"),
        }
    }

    // A timeout kills the command (and its process group) and says so.
    let mut req = request(&["sh", "-c", "sleep 60 & sleep 60"]);
    req.timeout_ms = Some(500);
    let started = Instant::now();
    let out = vm.agent.exec(&req, None).unwrap();
    assert!(out.exit.timed_out, "{out:?}");
    assert_eq!(out.exit.signal, Some(9));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(out.exit.duration_us >= 500_000);

    let out = vm.stop();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn exec_carries_bytes_stdin_big_output_and_concurrency() {
    let mut vm = RunningVm::boot(&["--vcpus", "2"]);
    // All 256 byte values, through a file written by the agent and cat.
    let bytes: Vec<u8> = (0..=255u8).collect();
    vm.agent.write_file("/tmp/bytes", &bytes, 0o644).unwrap();
    let out = vm.exec(&["cat", "/tmp/bytes"]);
    assert_eq!(out.stdout, bytes);

    // stdin streams through cat, 4 MiB both ways.
    let input: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let out = vm.agent.exec(&request(&["cat"]), Some(&input)).unwrap();
    assert_eq!(out.exit.code, Some(0));
    assert!(
        out.stdout == input,
        "stdin came back changed ({} bytes)",
        out.stdout.len()
    );

    // 100 MiB of output arrives whole while stderr keeps flowing (no deadlock).
    let mut sink = CountingSink::default();
    let mut err = Vec::new();
    let req = request(&[
        "sh",
        "-c",
        "dd if=/dev/zero bs=1M count=100 2>/dev/null; echo done >&2",
    ]);
    let exit = vm
        .agent
        .exec_streaming(&req, None, &mut sink, &mut err)
        .unwrap();
    assert_eq!(
        (exit.code, sink.0, err.as_slice()),
        (Some(0), 100 << 20, &b"done\n"[..])
    );

    // 20 execs at once.
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let agent = vm.agent.clone();
            std::thread::spawn(move || {
                let req = request(&["sh", "-c", "sleep 0.2; echo $0", &format!("exec-{i}")]);
                agent.exec(&req, None).map(|o| o.stdout)
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap().unwrap();
        assert_eq!(String::from_utf8_lossy(&out), format!("exec-{i}\n"));
    }
    let out = vm.stop();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[derive(Default)]
struct CountingSink(usize);

impl Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        assert!(b.iter().all(|c| *c == 0));
        self.0 += b.len();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn files_round_trip_atomically_with_a_size_cap() {
    use sha2::Digest;
    let mut vm = RunningVm::boot(&[]);
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 13 / 7) as u8).collect();
    let n = vm
        .agent
        .write_file("/srv/new/dir/blob.bin", &data, 0o640)
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let out = vm.exec(&[
        "sh",
        "-c",
        "stat -c %a /srv/new/dir/blob.bin; sha256sum /srv/new/dir/blob.bin; ls -a /srv/new/dir",
    ]);
    let sum: String = sha2::Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("640\n{sum}  /srv/new/dir/blob.bin\n.\n..\nblob.bin\n"),
        "mode, contents, and no temp file left"
    );
    let back = vm
        .agent
        .read_file("/srv/new/dir/blob.bin", 10 << 20)
        .unwrap();
    assert!(back == data, "read_file returned other bytes");
    match vm.agent.read_file("/srv/new/dir/blob.bin", 1000) {
        Err(AgentError::Remote(why)) => {
            assert!(
                why.contains("5000000 bytes, over the 1000-byte cap"),
                "{why}"
            )
        }
        other => panic!("expected the cap to refuse, got {other:?}"),
    }
    match vm.agent.read_file("/nonexistent", 1000) {
        Err(AgentError::Remote(why)) => assert!(why.contains("No such file"), "{why}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let out = vm.stop();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn a_guest_tcp_port_is_reachable_with_half_close() {
    let mut vm = RunningVm::boot(&[]);
    vm.agent
        .write_file("/srv/www/index.html", b"hello from the guest\n", 0o644)
        .unwrap();
    let out = vm.exec(&["httpd", "-p", "127.0.0.1:8080", "-h", "/srv/www"]);
    assert_eq!(
        out.exit.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetch = |agent: &Agent| {
        let mut s = agent.connect_tcp(8080).unwrap();
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n").unwrap();
        s.shutdown_write().unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        resp
    };
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let agent = vm.agent.clone();
            std::thread::spawn(move || fetch(&agent))
        })
        .collect();
    for h in handles {
        let resp = h.join().unwrap();
        assert!(
            resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
            "{resp}"
        );
        assert!(resp.ends_with("hello from the guest\n"), "{resp}");
    }
    match vm.agent.connect_tcp(8081) {
        Err(AgentError::Remote(why)) => assert!(why.contains("guest port 8081"), "{why}"),
        other => panic!("expected a refused connection, got {other:?}"),
    }
    let out = vm.stop();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
}

#[test]
fn a_cid_the_backend_does_not_serve_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vsock.sock");
    let mut cmd = Command::new("vhost-device-vsock");
    cmd.args(["--guest-cid", "7", "--socket"])
        .arg(&socket)
        .arg("--uds-path")
        .arg(dir.path().join("vm.vsock"));
    let vsock = Backend::start(cmd, &socket);
    let out = boot(
        &["--vsock-socket", vsock.socket_str(), "--cid", "9"],
        &["true"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("sm-vmm: vsock backend at") && err.contains("serves guest CID 7, not 9"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Reads `r` until what was read contains `needle` (or it ends); returns all of it.
fn read_until(r: &mut impl Read, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        match r.read(&mut buf).unwrap() {
            0 => break,
            n => seen.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_spawned_child_is_driven_while_it_runs_and_gets_a_sized_tty() {
    let vm = RunningVm::boot(&[]);

    // Streams flow while the command runs: an echo comes back before stdin closes.
    let mut req = request(&["cat"]);
    req.stdin = true;
    let mut child = vm.agent.spawn(&req).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"first line\n").unwrap();
    assert_eq!(read_until(&mut stdout, "\n"), "first line\n");
    assert_eq!(child.try_wait().unwrap(), None, "cat ended with stdin open");
    stdin.close().unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!((rest.as_str(), child.wait().unwrap().code), ("", Some(0)));

    // A signal from the host ends it, and wait says which.
    let mut child = vm.agent.spawn(&request(&["sleep", "60"])).unwrap();
    assert_eq!(
        child.wait_timeout(Duration::from_millis(300)).unwrap(),
        None
    );
    child.signal(15).unwrap();
    let exit = child.wait_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(exit.map(|e| (e.code, e.signal)), Some((None, Some(15))));

    // A tty of the asked size, its controlling terminal, and a resize while it runs.
    let mut req = request(&["sh", "-c", "tty; stty size; read x; stty size"]);
    req.tty = Some(sm_agent::message::WindowSize { rows: 24, cols: 80 });
    let mut child = vm.agent.spawn(&req).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let first = read_until(&mut stdout, "24 80");
    assert!(first.starts_with("/dev/pts/"), "{first:?}");
    assert!(first.contains("\r\n24 80"), "{first:?}");
    child
        .resize(sm_agent::message::WindowSize {
            rows: 50,
            cols: 132,
        })
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("50 132"), "{rest:?}");
    assert_eq!(child.wait().unwrap().code, Some(0));
    let mut errors = String::new();
    stderr.read_to_string(&mut errors).unwrap();
    assert_eq!(errors, "", "a tty's output all comes as stdout");
}
