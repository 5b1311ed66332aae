//! The `sm` command as a user runs it: pull / images / rmi against a real registry, basic
//! auth from a docker config, an interrupted pull that resumes, concurrent pulls into one
//! cache, and one clear error line for bad input.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sm_test_support::oci::*;

fn sm(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sm"));
    c.args(args)
        .env("SM_OCI_DIR", cache)
        .env("DOCKER_CONFIG", cache.join("no-docker-config"));
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts failure with exactly one `sm: ...` line on stderr containing `needle`.
fn assert_one_line_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {e}"
    );
    assert_eq!(e.lines().count(), 1, "want one error line, got: {e}");
    assert!(
        e.starts_with("sm: ") && e.contains(needle),
        "want {needle:?} in: {e}"
    );
}

#[test]
fn bad_input_gives_one_clear_line() {
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path();
    assert_one_line_error(
        &run(&mut sm(c, &["pull", "Alpine"])),
        "repository name must be lowercase",
    );
    assert_one_line_error(
        &run(&mut sm(c, &["pull", "alpine@sha256:1234"])),
        "invalid image reference",
    );
    assert_one_line_error(
        &run(&mut sm(c, &["pull", "--platform", "linux", "alpine"])),
        "invalid platform",
    );
    assert_one_line_error(
        &run(&mut sm(c, &["pull", "oci-layout:/nonexistent/layout:v1"])),
        "/nonexistent/layout/index.json",
    );
    assert_one_line_error(
        &run(&mut sm(c, &["rmi", "never/pulled"])),
        "no such image: docker.io/never/pulled:latest",
    );
    assert_one_line_error(&run(&mut sm(c, &["frobnicate"])), "unrecognized subcommand");
    assert_one_line_error(&run(&mut sm(c, &["pull"])), "required");
    // A registry that is not there: a connection error, not a panic.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_one_line_error(
        &run(&mut sm(c, &["pull", &format!("127.0.0.1:{port}/x:1")])),
        &format!("127.0.0.1:{port}"),
    );
}

#[test]
fn pull_images_rmi() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let l = write_test_layout(&work.path().join("layout"));
    reg.push(&l.dir, "v1", "test/img", None);
    reg.push(&l.dir, "multi", "test/multi", None);
    let cache = work.path().join("cache");
    let v1 = format!("{}/test/img:v1", reg.addr);
    let multi = format!("{}/test/multi:multi", reg.addr);

    let o = run(&mut sm(&cache, &["pull", &v1]));
    assert!(o.status.success(), "{}", stderr(&o));
    let digest = stdout(&o).trim().to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    assert_eq!(
        stderr(&o),
        "",
        "no progress output when stderr is not a terminal"
    );
    let o = run(&mut sm(
        &cache,
        &["pull", "--platform", "linux/arm64", &multi],
    ));
    assert!(o.status.success(), "{}", stderr(&o));
    let arm_digest = stdout(&o).trim().to_string();
    assert_ne!(arm_digest, digest);

    let o = run(&mut sm(&cache, &["images"]));
    let table = stdout(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[0].starts_with("REFERENCE")
            && lines[0].contains("DIGEST")
            && lines[0].contains("SIZE")
    );
    let row = lines.iter().find(|l| l.starts_with(&v1)).expect("v1 row");
    assert!(row.contains(&digest[7..19]) && row.contains("MB"), "{row}");

    // Removing one image keeps the other's blobs; removing the last empties the cache.
    let blobs = |c: &Path| std::fs::read_dir(c.join("blobs/sha256")).unwrap().count();
    let before = blobs(&cache);
    let o = run(&mut sm(&cache, &["rmi", &v1]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(blobs(&cache) < before && blobs(&cache) > 0);
    assert!(!stdout(&run(&mut sm(&cache, &["images"]))).contains(&v1));
    assert!(run(&mut sm(&cache, &["rmi", &multi])).status.success());
    assert_eq!(blobs(&cache), 0);
    assert_eq!(
        stdout(&run(&mut sm(&cache, &["images"]))).lines().count(),
        1
    );
}

#[test]
fn basic_auth_from_docker_config() {
    let reg = Registry::start(Some(("alice", "s3cret")));
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let m = l.image(
        "amd64",
        &[(
            layer_tar(&[Entry::File("secret".into(), b"s".to_vec(), 0o600, 0, 0)]),
            Compression::Gzip,
        )],
        serde_json::json!({}),
    );
    l.tag(&m, "v1");
    reg.push(&l.dir, "v1", "private/img", Some(("alice", "s3cret")));
    let cache = work.path().join("cache");
    let r = format!("{}/private/img:v1", reg.addr);

    let o = run(&mut sm(&cache, &["pull", &r]));
    assert!(!o.status.success());
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    let write_cfg = |dir: &Path, user: &str, pass: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let cfg = serde_json::json!({"auths": {reg.addr.clone(): {"auth": auth}}});
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    };
    let bad = work.path().join("bad-docker");
    write_cfg(&bad, "alice", "wrong");
    let o = run(sm(&cache, &["pull", &r]).env("DOCKER_CONFIG", &bad));
    assert!(!o.status.success());
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    let good = work.path().join("docker");
    write_cfg(&good, "alice", "s3cret");
    let o = run(sm(&cache, &["pull", &r]).env("DOCKER_CONFIG", &good));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), m["digest"].as_str().unwrap());
}

/// 50 MB of incompressible bytes as a plain-tar layer.
fn big_layout(dir: &Path) -> (Layout, String, u64) {
    let mut l = Layout::new(dir);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let big: Vec<u8> = (0..50_000_000 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let layer = layer_tar(&[Entry::File("big".into(), big, 0o644, 0, 0)]);
    let size = layer.len() as u64;
    let m = l.image(
        "amd64",
        &[(layer, Compression::None)],
        serde_json::json!({}),
    );
    l.tag(&m, "v1");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.blob_path(m["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer_digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    (l, layer_digest, size)
}

#[test]
fn interrupted_pull_resumes_with_range_request() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (l, layer, size) = big_layout(&work.path().join("layout"));
    reg.push(&l.dir, "v1", "big/img", None);
    let cache = work.path().join("cache");
    let r = format!("{}/big/img:v1", reg.addr);
    let partial = cache.join(format!("blobs/sha256/{}.partial", &layer[7..]));

    let mut child = sm(&cache, &["pull", &r])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let killed_at = loop {
        let have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have >= 1 << 20 {
            // SIGKILL (std's kill): the pull gets no chance to clean up.
            child.kill().unwrap();
            break have;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "pull finished before it could be interrupted"
        );
        assert!(Instant::now() < deadline, "download never started");
        std::thread::sleep(Duration::from_millis(1));
    };
    child.wait().unwrap();
    let left = std::fs::metadata(&partial).unwrap().len();
    assert!(left >= killed_at && left < size, "partial {left} of {size}");
    assert!(!cache.join(format!("blobs/sha256/{}", &layer[7..])).exists());

    let o = run(&mut sm(&cache, &["pull", &r]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!partial.exists());
    let blob = std::fs::read(cache.join(format!("blobs/sha256/{}", &layer[7..]))).unwrap();
    assert_eq!(digest(&blob), layer);
    let log = std::fs::read_to_string(&reg.log).unwrap()
        + &std::fs::read_to_string(reg.log.with_file_name("registry.err")).unwrap();
    assert!(
        log.contains(" 206 "),
        "the resumed download must be a Range request (206 in the access log)"
    );
}

#[test]
fn concurrent_cli_pulls_into_one_cache() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (l, _, _) = big_layout(&work.path().join("layout"));
    reg.push(&l.dir, "v1", "big/img", None);
    let cache = work.path().join("cache");
    let r = format!("{}/big/img:v1", reg.addr);
    let children: Vec<_> = (0..3)
        .map(|_| {
            sm(&cache, &["pull", &r])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &outs {
        assert!(o.status.success(), "{}", stderr(o));
        assert_eq!(stdout(o), stdout(&outs[0]));
    }
    let names: Vec<String> = std::fs::read_dir(cache.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    assert_eq!(names.len(), 3, "manifest, config, layer: {names:?}");
}

#[test]
fn plain_http_only_for_loopback_or_insecure() {
    let Some(ip) = host_ip() else {
        eprintln!("skipped: this host has no non-loopback IPv4 address");
        return;
    };
    let reg = Registry::start_at(&ip, None);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let m = l.image(
        "amd64",
        &[(
            layer_tar(&[Entry::File("f".into(), b"f".to_vec(), 0o644, 0, 0)]),
            Compression::Gzip,
        )],
        serde_json::json!({}),
    );
    l.tag(&m, "v1");
    reg.push(&l.dir, "v1", "plain/img", None);
    let cache = work.path().join("cache");
    let r = format!("{}/plain/img:v1", reg.addr);
    // HTTPS is required for a non-loopback registry...
    let o = run(&mut sm(&cache, &["pull", &r]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("https://{}", reg.addr)),
        "{}",
        stderr(&o)
    );
    assert_eq!(stderr(&o).lines().count(), 1);
    // ...unless the user says --insecure.
    let o = run(&mut sm(&cache, &["pull", "--insecure", &r]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), m["digest"].as_str().unwrap());
}

#[test]
fn progress_bars_only_on_a_terminal() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let (l, _, _) = big_layout(&work.path().join("layout"));
    reg.push(&l.dir, "v1", "big/img", None);
    let cache = work.path().join("cache");
    let r = format!("{}/big/img:v1", reg.addr);
    // `script` gives the pull a pseudo-terminal as stdout and stderr.
    let inner = format!(
        "SM_OCI_DIR={} DOCKER_CONFIG={} {} pull {r}",
        cache.display(),
        cache.join("none").display(),
        env!("CARGO_BIN_EXE_sm")
    );
    let o = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    assert!(o.status.success(), "{}", stdout(&o));
    let tty = stdout(&o);
    assert!(
        tty.contains("MiB") && tty.contains("[="),
        "no progress bar on a terminal: {tty:?}"
    );
    assert!(tty.contains("sha256:"));
}
