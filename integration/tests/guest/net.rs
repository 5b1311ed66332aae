//! The guest's network through sm-vhost-user-net and passt: the host's loopback only when a
//! rule allows it, refusals at once, DNS through the host's resolver, a large download intact,
//! `--net none`, and the backend in its sandbox.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::common::*;
use crate::run::{assert_nothing_left, processes_mentioning, run_sm, sm};

/// Size of the download checked end to end.
const BIG: usize = 100 << 20;
/// What `GET /` answers.
const GREETING: &str = "hello from the host\n";

/// Deterministic bytes that do not compress: a xorshift stream.
fn big_body() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut body = Vec::with_capacity(BIG);
    while body.len() < BIG {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.extend_from_slice(&x.to_le_bytes());
    }
    body
}

/// A server on the host's 127.0.0.1: `GET /` gets an HTTP/1.0 answer, `GET /big` the
/// [`big_body`] bytes alone (no header, so the guest can hash what arrives); returns its port.
fn http_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let big = std::sync::Arc::new(big_body());
        for conn in listener.incoming().flatten() {
            let big = big.clone();
            std::thread::spawn(move || {
                // The whole request is read before answering: closing a socket with unread
                // bytes sends a reset, which throws away what is still unsent.
                let mut reader = BufReader::new(&conn);
                let mut first = String::new();
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line.trim() != "" {
                    if first.is_empty() {
                        first = line.clone();
                    }
                    line.clear();
                }
                let mut w = &conn;
                let _ = if first.starts_with("GET /big ") {
                    w.write_all(&big)
                } else {
                    write!(
                        w,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{GREETING}",
                        GREETING.len()
                    )
                };
                // Half-close, then wait for the client to finish reading and close.
                let _ = conn.shutdown(std::net::Shutdown::Write);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            });
        }
    });
    port
}

/// A DNS server on the host's 127.0.0.1:53 answering `sm-test.example. A 10.0.2.2` and
/// NXDOMAIN for everything else.
fn dns_server() {
    let sock = UdpSocket::bind("127.0.0.1:53").expect("binding 127.0.0.1:53 for the test resolver");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            // The question: labels from offset 12 up to the root label, then type and class.
            let mut end = 12;
            while end < n && q[end] != 0 {
                end += 1 + q[end] as usize;
            }
            if end + 5 > n {
                continue;
            }
            let name = &q[12..=end];
            let qtype = u16::from_be_bytes([q[end + 1], q[end + 2]]);
            let ours = name == b"\x07sm-test\x07example\x00";
            let mut r = q[..2].to_vec();
            let answer = ours && qtype == 1;
            r.extend_from_slice(&[0x81, if ours { 0x80 } else { 0x83 }, 0, 1, 0]);
            r.push(u8::from(answer));
            r.extend_from_slice(&[0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end + 5]);
            if answer {
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 2, 2]);
            }
            let _ = sock.send_to(&r, peer);
        }
    });
}

/// Runs `script` in a guest under `sm run FLAGS --`.
fn guest(runtime: &Path, flags: &[&str], script: &str) -> std::process::Output {
    let mut cmd = sm(runtime);
    cmd.arg("run").args(flags).args(["--", "sh", "-c", script]);
    run_sm(&mut cmd, runtime)
}

/// `printf REQUEST | nc HOST PORT` in the guest (busybox's nc; the initramfs's static
/// busybox wget crashes in glibc's resolver code).
fn request(host: &str, port: u16, path: &str) -> String {
    format!("printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' | nc {host} {port}")
}

/// Shell that asks `host:port` for `/` and prints `ok` and the body's last line, or
/// `failed`, the time it took in hundredths of a second and nc's error (`failed 3 nc: ...`).
fn fetch(host: &str, port: u16) -> String {
    format!(
        "t0=$(awk '{{print int($1 * 100)}}' /proc/uptime); \
         if out=$({} 2>&1); then echo \"ok $(echo \"$out\" | tail -n 1)\"; \
         else t1=$(awk '{{print int($1 * 100)}}' /proc/uptime); \
         echo \"failed $((t1 - t0)) $(echo $out)\"; fi",
        request(host, port, "/")
    )
}

/// Asserts a [`fetch`] line is a refusal that came within a second.
fn assert_refused_at_once(line: &str) {
    let mut words = line.splitn(3, ' ');
    assert_eq!(words.next(), Some("failed"), "{line}");
    let hundredths: u64 = words.next().unwrap().parse().unwrap();
    assert!(hundredths < 100, "refusal took {hundredths}0 ms: {line}");
    assert!(words.next().unwrap().contains("refused"), "{line}");
}

#[test]
fn the_hosts_loopback_answers_only_when_a_rule_allows_it() {
    let runtime = tempfile::tempdir().unwrap();
    let port = http_server();
    let host = fetch("10.0.2.2", port);
    // 192.0.2.77 is allowed by default but answers nothing (the test VM's uplink is a dummy),
    // so it is only asked for under a rule that refuses it.
    let script = format!("{host}; {}", fetch("192.0.2.77", 80));

    let out = guest(runtime.path(), &[], &host);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<_> = text.lines().collect();
    assert_refused_at_once(lines[0]);

    let allow = format!("allow=host:{port}");
    let out = guest(runtime.path(), &["--egress", &allow], &host);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out).lines().next(), Some("ok hello from the host"));

    // A broad deny, then a narrow allow: the last matching rule wins.
    let out = guest(
        runtime.path(),
        &["--egress", "deny=0.0.0.0/0", "--egress", &allow],
        &script,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines[0], "ok hello from the host");
    assert_refused_at_once(lines[1]);

    // Another port of the host stays closed.
    let other = format!("allow=host:{}", port.wrapping_add(1).max(1));
    let out = guest(runtime.path(), &["--egress", &other], &host);
    assert_refused_at_once(stdout(&out).lines().next().unwrap());
    assert_nothing_left(runtime.path());
}

#[test]
fn names_resolve_through_the_resolver_on_the_hosts_loopback_and_100_mib_arrive_intact() {
    let runtime = tempfile::tempdir().unwrap();
    dns_server();
    let port = http_server();
    let want = format!("{:x}", Sha256::digest(big_body()));
    let allow = format!("allow=host:{port}");
    // nc's stdin stays open until the server closes: passt (2025-05) resets a connection
    // the guest half-closed while the host still had data queued, truncating it.
    let script = format!(
        "cat /etc/resolv.conf; nslookup sm-test.example; mkfifo /tmp/req; \
         nc 10.0.2.2 {port} < /tmp/req > /tmp/big & nc=$!; exec 3> /tmp/req; \
         printf 'GET /big HTTP/1.0\\r\\n\\r\\n' >&3; wait $nc; exec 3>&-; \
         echo \"size $(wc -c < /tmp/big)\"; sha256sum < /tmp/big"
    );
    let out = guest(
        runtime.path(),
        &["--dns", "127.0.0.1", "--egress", &allow],
        &script,
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("nameserver 10.0.2.3"), "{text}");
    assert!(
        text.contains("10.0.2.2"),
        "no answer from the test resolver: {text}"
    );
    assert!(text.contains(&format!("size {BIG}\n")), "{text}");
    assert!(
        text.lines().last().unwrap_or("").starts_with(&want),
        "sha256 of the download differs from {want}: {text}"
    );
}

#[test]
fn net_none_gives_the_guest_no_interface_but_loopback() {
    let runtime = tempfile::tempdir().unwrap();
    let out = guest(runtime.path(), &["--net", "none"], "ls /sys/class/net");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "lo\n");
    let out = guest(
        runtime.path(),
        &[],
        "ls /sys/class/net; ip route; ip link show eth0",
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("eth0\nlo\n"), "{text}");
    assert!(text.contains("default via 10.0.2.2 dev eth0"), "{text}");
    assert!(text.contains("link/ether 02:73:6d:00:00:01"), "{text}");
    assert_nothing_left(runtime.path());
}

/// A process's `/proc/PID/status` field.
fn status_field(pid: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// The sandboxed process of a backend `program`: the one whose parent is the same program
/// (the sandbox's supervisor, which stays outside the namespaces).
fn sandboxed(program: &str) -> Vec<String> {
    let all = pids_of(program, "");
    all.iter()
        .filter(|p| all.contains(&status_field(p, "PPid:")))
        .cloned()
        .collect()
}

/// PIDs of processes whose command line starts with `program` and mentions `needle`.
fn pids_of(program: &str, needle: &str) -> Vec<String> {
    let mut pids = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let first = cmd.split(' ').next().unwrap_or("");
        if first.ends_with(program) && cmd.contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn the_net_backend_is_sandboxed_like_the_others() {
    let runtime = tempfile::tempdir().unwrap();
    let vol = format!("{}/v.img:/data:size=16M", runtime.path().display());
    let mut cmd = sm(runtime.path());
    cmd.args([
        "run", "--detach", "--name", "n", "--volume", &vol, "--", "sleep", "600",
    ]);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(180));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let dir = runtime.path().join("sm").to_string_lossy().to_string();
    let net = sandboxed("sm-vhost-user-net");
    let blk = sandboxed("sm-vhost-user-blk");
    let mut passt = vec![];
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(net.len(), 1, "{:?}", processes_mentioning(&dir));
        assert_eq!(blk.len(), 1, "{:?}", processes_mentioning(&dir));
        let (net, blk) = (&net[0], &blk[0]);
        for field in ["Seccomp:", "NoNewPrivs:", "CapEff:"] {
            assert_eq!(
                status_field(net, field),
                status_field(blk, field),
                "{field}"
            );
        }
        assert_eq!(status_field(net, "Seccomp:"), "2");
        let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
        for kind in ["net", "mnt", "pid", "ipc", "uts"] {
            assert_ne!(
                ns(net, kind),
                ns("self", kind),
                "{kind} namespace is the host's"
            );
        }
        // The network stack is passt, a child of the backend, dropped to nobody.
        passt = pids_of("passt", "--fd");
        let outside = status_field(net, "PPid:");
        passt.retain(|p| status_field(p, "PPid:") == outside);
        assert_eq!(passt.len(), 1, "{:?}", processes_mentioning("passt"));
        assert_ne!(
            status_field(&passt[0], "Uid:"),
            status_field("self", "Uid:")
        );
    }));
    let out = run_with_timeout(
        sm(runtime.path()).args(["stop", "n"]),
        Duration::from_secs(90),
    );
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_nothing_left(runtime.path());
    for p in passt {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "passt {p} outlived its VM"
        );
    }
}

#[test]
fn a_warm_up_fetches_over_the_network_and_each_clone_takes_the_rules_it_is_given() {
    let runtime = tempfile::tempdir().unwrap();
    let rt = runtime.path();
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("snapshots");
    let store = store.to_str().unwrap();
    let port = http_server();
    let allow = format!("allow=host:{port}");
    // The bake's warm-up reaches the host (its rule), and what it fetched is baked in.
    let warmup = format!("{} > /tmp/fetched", request("10.0.2.2", port, "/"));
    let mut cmd = sm(rt);
    cmd.args(["bake", "--name", "fetcher", "--snapshots-dir", store])
        .args(["--mem", "256", "--egress", &allow, "--warmup", &warmup]);
    let out = run_sm(&mut cmd, rt);
    assert!(out.status.success(), "bake: {}", stderr(&out));

    let clone = |flags: &[&str]| {
        let script = format!("tail -n 1 /tmp/fetched; {}", fetch("10.0.2.2", port));
        let mut cmd = sm(rt);
        cmd.args(["run", "--snapshot", "fetcher", "--snapshots-dir", store])
            .args(flags)
            .args(["--", "sh", "-c", &script]);
        let out = run_sm(&mut cmd, rt);
        assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
        stdout(&out)
    };
    // A clone keeps the bake's network and rules: the host still answers.
    let kept = clone(&[]);
    let lines: Vec<&str> = kept.lines().collect();
    assert_eq!(lines.first(), Some(&GREETING.trim_end()), "{kept}");
    assert_eq!(
        lines.get(1),
        Some(&format!("ok {}", GREETING.trim_end()).as_str())
    );
    // A clone given its own rules is locked down at once, its baked file still there.
    let locked = clone(&["--egress", "deny=any"]);
    let lines: Vec<&str> = locked.lines().collect();
    assert_eq!(lines.first(), Some(&GREETING.trim_end()), "{locked}");
    assert_refused_at_once(lines.get(1).expect("a fetch line"));

    // --net cannot be changed on a clone (the device is part of the snapshot).
    let mut cmd = sm(rt);
    cmd.args([
        "run",
        "--snapshot",
        "fetcher",
        "--snapshots-dir",
        store,
        "--net",
        "none",
    ])
    .args(["--", "true"]);
    let out = run_sm(&mut cmd, rt);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--net"), "{}", stderr(&out));
    assert_nothing_left(rt);
}

#[test]
fn a_killed_net_backend_is_replaced_and_the_guest_connects_again() {
    let runtime = tempfile::tempdir().unwrap();
    let rt = runtime.path();
    let port = http_server();
    let allow = format!("allow=host:{port}");
    let mut cmd = sm(rt);
    cmd.args(["run", "-d", "--name", "n", "--egress", &allow, "--"])
        .args(["sleep", "100000"]);
    let out = run_sm(&mut cmd, rt);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let fetch_in_guest = || {
        // A few tries: the guest's first SYN after the restart may meet the old link's end.
        let script = format!(
            "for i in 1 2 3 4 5; do line=$({}); case $line in ok*) break;; esac; sleep 1; done; \
             echo \"$line\"",
            fetch("10.0.2.2", port)
        );
        let mut cmd = sm(rt);
        cmd.args(["exec", "n", "--", "sh", "-c", &script]);
        let out = run_with_timeout(&mut cmd, Duration::from_secs(120));
        stdout(&out).trim().to_owned()
    };
    assert_eq!(fetch_in_guest(), format!("ok {}", GREETING.trim_end()));

    // Its command line has the socket as a descriptor; this test's rule names it.
    let backend = || crate::restart::pid_of(&["sm-vhost-user-net", &allow]);
    let pid = backend().expect("the net backend runs");
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the net backend's group");
    wait_until(Duration::from_secs(60), "the net backend's restart", || {
        backend().is_some_and(|p| p != pid)
    });
    // A new backend and a new passt behind the same device: new connections work.
    assert_eq!(fetch_in_guest(), format!("ok {}", GREETING.trim_end()));
    let out = run_with_timeout(sm(rt).arg("ps"), Duration::from_secs(30));
    let ps = stdout(&out);
    assert!(
        ps.lines()
            .any(|l| l.contains("net") && l.contains("running") && l.contains("restarts 1")),
        "sm ps shows the net backend running after one restart:\n{ps}"
    );
    let out = run_with_timeout(sm(rt).args(["stop", "n"]), Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(backend().is_none(), "no net backend left");
    assert!(
        processes_mentioning("passt").is_empty(),
        "no passt left: {:?}",
        processes_mentioning("passt")
    );
}
