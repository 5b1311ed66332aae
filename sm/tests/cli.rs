//! The `sm` command as a user runs it: pull / images / rmi against a real registry, basic
//! auth from a docker config, an interrupted pull that resumes, concurrent pulls into one
//! cache, and one clear error line for bad input.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sm_test_support::oci::*;

/// `sm ARGS` with its home (the image store is `HOME/oci`) at `home`.
fn sm(home: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sm"));
    c.args(args)
        .env("SM_HOME", home)
        .env("DOCKER_CONFIG", home.join("no-docker-config"));
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
    let blobs = |c: &Path| {
        std::fs::read_dir(c.join("oci/blobs/sha256"))
            .unwrap()
            .count()
    };
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
    let partial = cache.join(format!("oci/blobs/sha256/{}.partial", &layer[7..]));

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
    assert!(!cache
        .join(format!("oci/blobs/sha256/{}", &layer[7..]))
        .exists());

    let o = run(&mut sm(&cache, &["pull", &r]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!partial.exists());
    let blob = std::fs::read(cache.join(format!("oci/blobs/sha256/{}", &layer[7..]))).unwrap();
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
    let names: Vec<String> = std::fs::read_dir(cache.join("oci/blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".partial")), "{names:?}");
    assert_eq!(names.len(), 3, "manifest, config, layer: {names:?}");
}

#[test]
fn plain_http_only_for_loopback_or_insecure() {
    let Some(ip) = host_ip() else {
        sm_test_support::skip_or_fail("this host has no non-loopback IPv4 address");
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
        "SM_HOME={} DOCKER_CONFIG={} {} pull {r}",
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

/// The row of `sm images` (run with home `home`) whose reference is `reference`.
fn images_row(home: &Path, reference: &str) -> Option<String> {
    let o = run(&mut sm(home, &["images"]));
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(reference))
        .map(str::to_string)
}

/// The file `path` in the root image sm built for `manifest` (`sha256:...`).
fn file_in_root_image(home: &Path, manifest: &str, path: &str) -> Vec<u8> {
    let img = home.join(format!("oci/rootfs/{}.erofs", &manifest[7..]));
    assert!(img.is_file(), "no root image {}", img.display());
    std::fs::read(erofs_view(&img).path().join(path)).unwrap()
}

/// `sm run IMAGE -- true` that stops right after choosing and building its image: the
/// runtime directory is under a regular file, so the VM cannot start (no guest is booted;
/// what the guest would see is the root image, checked by the caller).
fn run_until_the_vm(home: &Path, image: &str, extra: &[&str]) -> Output {
    let not_a_dir = home.with_file_name("runtime-is-a-file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let mut args = vec!["run"];
    args.extend(extra);
    args.extend([image, "--", "true"]);
    run(sm(home, &args).env("XDG_RUNTIME_DIR", &not_a_dir))
}

#[test]
fn sm_run_reads_a_rebuilt_layout_again() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let dir = work.path().join("layout");
    let image = format!("oci-layout:{}:v1", dir.display());
    let key = image.clone();

    let o = run_until_the_vm(&home, &image, &["--pull", "never"]);
    assert_one_line_error(&o, "is not in the image store (pull policy: never)");
    let o = run_until_the_vm(&home, &image, &["--pull", "sometimes"]);
    assert_one_line_error(
        &o,
        "\"sometimes\" is not a pull policy (always, missing, never)",
    );

    let (_, first) = versioned_layout(&dir, "1\n");
    let o = run_until_the_vm(&home, &image, &[]);
    assert_one_line_error(&o, "runtime-is-a-file");
    assert!(images_row(&home, &key).unwrap().contains(&first[7..19]));
    assert_eq!(file_in_root_image(&home, &first, "version"), b"1\n");

    // Rebuilt at the same path and tag: the next `sm run` uses the new image.
    let (_, second) = versioned_layout(&dir, "2\n");
    let o = run_until_the_vm(&home, &image, &["--pull", "never"]);
    assert_one_line_error(&o, "runtime-is-a-file");
    assert!(images_row(&home, &key).unwrap().contains(&first[7..19]));
    let o = run_until_the_vm(&home, &image, &[]);
    assert_one_line_error(&o, "runtime-is-a-file");
    let row = images_row(&home, &key).unwrap();
    assert!(row.contains(&second[7..19]), "still the first image: {row}");
    assert_eq!(file_in_root_image(&home, &second, "version"), b"2\n");
}

#[test]
fn an_image_whose_unpack_was_refused_is_listed_as_unusable() {
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let (l, m) = symlink_escape_layout(&work.path().join("layout"));
    let image = format!("oci-layout:{}:v1", l.dir.display());
    let (_, fine) = versioned_layout(&work.path().join("fine"), "1\n");
    let fine_image = format!("oci-layout:{}:v1", work.path().join("fine").display());

    let o = run_until_the_vm(&home, &image, &[]);
    let why = "unsafe layer entry \"etc/pwned-by-sm-test\" refused: path goes through a symlink";
    assert_one_line_error(&o, why);
    assert!(!Path::new("/etc/pwned-by-sm-test").exists());
    run_until_the_vm(&home, &fine_image, &[]);

    let row = images_row(&home, &image).expect("the refused image is listed");
    assert!(
        row.contains(&m["digest"].as_str().unwrap()[7..19])
            && row.contains("  unusable: layer 2 (sha256:")
            && row.ends_with(why),
        "{row}"
    );
    let row = images_row(&home, &fine_image).unwrap();
    assert!(
        row.contains(&fine[7..19]) && !row.contains("unusable"),
        "{row}"
    );
}

#[test]
fn sm_home_and_root_move_the_store() {
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let (l, digest) = versioned_layout(&work.path().join("layout"), "1\n");
    let image = format!("oci-layout:{}:v1", l.dir.display());
    let refs = |home: &Path| {
        std::fs::read_dir(home.join("oci/refs"))
            .map(|d| d.count())
            .unwrap_or(0)
    };

    let o = run(&mut sm(&a, &["pull", &image]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), digest);
    assert_eq!((refs(&a), refs(&b)), (1, 0));
    // --root, before or after the subcommand, wins over SM_HOME.
    let b_flag = b.to_str().unwrap();
    let o = run(&mut sm(&a, &["--root", b_flag, "pull", &image]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!((refs(&a), refs(&b)), (1, 1));
    let o = run(&mut sm(&a, &["rmi", &image, "--root", b_flag]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!((refs(&a), refs(&b)), (1, 0));
    assert!(images_row(&a, &image).is_some());
}

/// `sm ARGS` as an unprivileged user (nobody, through setpriv, when the tests run as root)
/// with only `env` and PATH in its environment.
fn sm_as_user(env: &[(&str, &Path)], args: &[&str]) -> Output {
    let sm = env!("CARGO_BIN_EXE_sm");
    let mut c = if nix::unistd::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--", sm]);
        c
    } else {
        Command::new(sm)
    };
    c.args(args).env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

#[test]
fn a_user_gets_a_store_of_their_own_or_one_line_why_not() {
    let work = tempfile::tempdir().unwrap();
    let root = nix::unistd::geteuid().is_root();
    let user_home = work.path().join("user");
    std::fs::create_dir(&user_home).unwrap();
    if root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&user_home, Some(65534), Some(65534)).unwrap();
    }

    // Not root: ~/.local/share/sm, or $XDG_DATA_HOME/sm.
    let o = sm_as_user(&[("HOME", &user_home)], &["images"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(user_home.join(".local/share/sm/oci/refs").is_dir());
    let data = user_home.join("data");
    let o = sm_as_user(
        &[("HOME", &user_home), ("XDG_DATA_HOME", &data)],
        &["images"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(data.join("sm/oci/refs").is_dir());

    // A store the user may not write: one line that says which and what to do.
    let theirs = work.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    if !root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    for store in [theirs.clone(), theirs.join("sub")] {
        for args in [&["images"][..], &["pull", "oci-layout:/nowhere:v1"]] {
            let o = sm_as_user(&[("HOME", &user_home), ("SM_HOME", &store)], args);
            assert_one_line_error(
                &o,
                &format!(
                    "cannot use the image store {}: permission denied (set SM_HOME or --root)",
                    store.display()
                ),
            );
        }
    }
    // A complete store that belongs to someone else.
    let made = work.path().join("made");
    assert!(run(&mut sm(&made, &["images"])).status.success());
    if !root {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(made.join("oci"), std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let o = sm_as_user(&[("HOME", &user_home), ("SM_HOME", &made)], &["images"]);
    assert_one_line_error(
        &o,
        &format!(
            "cannot use the image store {}: permission denied (set SM_HOME or --root)",
            made.display()
        ),
    );
    // A path that cannot be a directory.
    let file = work.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let o = run(&mut sm(&file.join("sm"), &["images"]));
    assert_one_line_error(
        &o,
        &format!(
            "cannot use the image store {}: not a directory (set SM_HOME or --root)",
            file.join("sm").display()
        ),
    );
}
