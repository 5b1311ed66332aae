//! Interop with QEMU as the vhost-user frontend: the project's guest (kernel + sm-init
//! initramfs) boots in TCG under `-M microvm` with a `vhost-user-fs-device`, mounts the share
//! and exercises it; results are checked inside the guest and on the host. One boot per
//! policy, each running many checks. QEMU must be installed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{proc_status, run_guest, sha256_file, wait_for, Backend, GuestRun};
use sm_test_support::assert_own_namespaces;

/// Prints `KEY=ok` when the command succeeds, `KEY=fail` when it does not.
const PRELUDE: &str = r#"
echo booted=yes
t() { k=$1; shift; if "$@" >/dev/null 2>&1; then echo "$k=ok"; else echo "$k=fail"; fi; }
mount -t virtiofs share /mnt || { echo mount=fail; exit 1; }
cd /mnt
"#;

/// A scratch directory holding `shared/` (the share) and `outside/` (what must stay out
/// of reach), with host-planted symlinks of every escaping kind.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let (shared, outside) = (dir.path().join("shared"), dir.path().join("outside"));
        std::fs::create_dir_all(shared.join("packages/x")).unwrap();
        std::fs::create_dir_all(shared.join("hnm/node_modules")).unwrap();
        std::fs::create_dir_all(shared.join("hnm/packages/y")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret.txt"), b"host secret\n").unwrap();
        std::fs::write(shared.join("hello.txt"), b"hello from the host\n").unwrap();
        std::fs::write(shared.join("hnm/packages/y/index.js"), b"host-npm\n").unwrap();
        std::fs::write(shared.join("packages/x/index.js"), b"module.exports=1\n").unwrap();
        let big: Vec<u8> = (0..3u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(shared.join("big.bin"), big).unwrap();
        let link = |target: &str, name: &str| {
            std::os::unix::fs::symlink(target, shared.join(name)).unwrap()
        };
        link("../packages/y", "hnm/node_modules/y");
        link("packages", "inner");
        link("/etc", "escape_abs");
        link("../outside", "escape_rel");
        link(outside.to_str().unwrap(), "mid");
        link("../..", "packages/up");
        Tree { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn shared(&self) -> PathBuf {
        self.dir.path().join("shared")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Starts the backend on this tree with `args` added.
    fn backend(&self, args: &[&str]) -> Backend {
        let shared = self.shared();
        let mut all = vec!["--shared-dir", shared.to_str().unwrap()];
        all.extend_from_slice(args);
        Backend::start(self.path(), "fs", &all)
    }

    /// Asserts nothing outside the share changed: same file, same single entry.
    fn assert_outside_untouched(&self) {
        let entries: Vec<_> = std::fs::read_dir(self.outside()).unwrap().collect();
        assert_eq!(entries.len(), 1, "something appeared outside: {entries:?}");
        assert_eq!(
            std::fs::read(self.outside().join("secret.txt")).unwrap(),
            b"host secret\n"
        );
    }
}

/// Asserts every `(key, value)` the guest printed.
fn expect(run: &GuestRun, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        assert_eq!(run.value(k), *v, "{k}: {run}");
    }
}

/// The escape corpus: under `deny` LOOKUP refuses each escaping host symlink; under
/// `opaque` each is a symlink the guest's kernel resolves in the guest (`escape_abs -> /etc`
/// reaches the guest's one-line `/etc/passwd`). The host secret must never show up.
const ESCAPES: &str = r#"
t escape_abs cat escape_abs/passwd
echo abs_passwd_lines=$(cat escape_abs/passwd 2>/dev/null | wc -l)
echo link_abs=$(readlink escape_abs)
echo link_rel=$(readlink escape_rel)
t escape_rel cat escape_rel/secret.txt
t mid cat mid/secret.txt
t up ls packages/up/
t up_mid cat packages/up/outside/secret.txt
echo hidden=$(ls -a | grep -c -e escape -e mid)
t hard_out ln /etc/passwd hard_out
t inner cat inner/x/index.js
echo secret_seen=$(cat escape_rel/secret.txt mid/secret.txt 2>/dev/null | grep -c secret)
"#;

/// What [`ESCAPES`] prints under `deny`: every escaping host symlink is hidden.
const ESCAPES_HIDDEN: &[(&str, &str)] = &[
    ("escape_abs", "fail"),
    ("abs_passwd_lines", "0"),
    ("link_abs", ""),
    ("link_rel", ""),
    ("escape_rel", "fail"),
    ("mid", "fail"),
    ("up", "fail"),
    ("up_mid", "fail"),
    ("hidden", "0"),
    ("hard_out", "fail"),
    ("inner", "ok"),
    ("secret_seen", "0"),
];

/// What [`ESCAPES`] prints under `opaque`: every symlink is shown with its bytes and resolved
/// in the guest (`up -> ../..` is the guest's `/`), never followed on the host.
const ESCAPES_SHOWN: &[(&str, &str)] = &[
    ("escape_abs", "ok"),
    ("abs_passwd_lines", "1"),
    ("link_abs", "/etc"),
    ("link_rel", "../outside"),
    ("escape_rel", "fail"),
    ("mid", "fail"),
    ("up", "ok"),
    ("up_mid", "fail"),
    ("hidden", "3"),
    ("hard_out", "fail"),
    ("inner", "ok"),
    ("secret_seen", "0"),
];

#[test]
fn opaque_share_serves_posix_and_npm_and_contains_escapes() {
    let tree = Tree::new();
    let backend = tree.backend(&[]);

    // The serving process: confined before any frontend has connected.
    let pid = backend.sandboxed_pid().expect("sandboxed serving process");
    let status = proc_status(pid);
    for line in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapBnd:\t0000000000000000"] {
        assert!(status.contains(line), "missing {line:?} in\n{status}");
    }
    // Running as root, it keeps exactly CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, FSETID.
    // SAFETY: geteuid cannot fail.
    let expected_caps = if unsafe { libc::geteuid() } == 0 {
        "000000000000001f"
    } else {
        "0000000000000000"
    };
    for set in ["CapEff", "CapPrm"] {
        let line = format!("{set}:\t{expected_caps}");
        assert!(status.contains(&line), "missing {line:?} in\n{status}");
    }
    assert_own_namespaces(pid);
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert_eq!(
        mounts.lines().count(),
        3,
        "root, share and /proc only:\n{mounts}"
    );

    let script = format!(
        r#"{PRELUDE}
echo hello=$(cat hello.txt)
echo big=$(sha256sum big.bin | cut -d' ' -f1)
printf 'one\n' > f; printf 'two\n' >> f; echo append=$(cat f | tr '\n' ,)
truncate -s 3 f; echo truncated=$(cat f)
dd if=/dev/urandom of=g bs=4k count=100 2>/dev/null; echo gsum=$(sha256sum g | cut -d' ' -f1)
dd if=/dev/zero of=g bs=1 count=5 seek=10 conv=notrunc 2>/dev/null; echo gsum2=$(sha256sum g | cut -d' ' -f1)
mv f f2; echo renamed=$(cat f2); t oldname test -e f
mkdir -p d/e; echo x > d/e/y; echo listing=$(ls d/e); rm d/e/y; rmdir d/e; echo left=$(ls d | wc -l)
t rmdir_nonempty rmdir ws_missing
chmod 640 f2; echo mode=$(stat -c %a f2)
(umask 0; mkdir m777; : > f666); echo umask0_dir=$(stat -c %a m777); echo umask0_file=$(stat -c %a f666)
ln f2 hard; echo nlink=$(stat -c %h f2); echo hard=$(cat hard)
rm hard; echo nlink_after=$(stat -c %h f2)
echo readdir=$(ls | tr '\n' ,)
mkdir -p ws/packages/x ws/node_modules; echo 'module.exports=1' > ws/packages/x/index.js
ln -s ../packages/x ws/node_modules/x
echo npm=$(cat ws/node_modules/x/index.js)
echo npm_link=$(readlink ws/node_modules/x)
echo hostnpm=$(cat hnm/node_modules/y/index.js)
ln -s 'odd target/./with  spaces/../x' odd; echo "odd=$(readlink odd)"
ln -s /etc/passwd evil; t evil_read cat evil; echo evil_link=$(readlink evil)
ln -s ../../../../../../etc/shadow climb
t climb_lookup stat climb
t climb_read cat climb
echo climb_link=$(readlink climb)
t mknod_fifo mkfifo fifo
t exchange mv -T ws/packages ws/pk
{ESCAPES}
t statfs stat -f /mnt
t fsync dd if=/dev/zero of=synced bs=4k count=2 conv=fsync
echo synced=$(stat -c %s synced)
echo alive=$(cat hello.txt)
cd /; umount /mnt; echo umount=ok
"#
    );
    let run = run_guest(tree.path(), &backend.socket, &script);
    assert_eq!(run.status, 0, "{run}");
    let shared = tree.shared();
    expect(
        &run,
        &[
            ("hello", "hello from the host"),
            ("big", &sha256_file(&shared.join("big.bin"))),
            ("append", "one,two,"),
            ("truncated", "one"),
            ("gsum2", &sha256_file(&shared.join("g"))),
            ("renamed", "one"),
            ("oldname", "fail"),
            ("listing", "y"),
            ("left", "0"),
            ("mode", "640"),
            // The guest's umask alone applies, not the backend's own.
            ("umask0_dir", "777"),
            ("umask0_file", "666"),
            ("nlink", "2"),
            ("hard", "one"),
            ("nlink_after", "1"),
            ("npm", "module.exports=1"),
            ("npm_link", "../packages/x"),
            ("hostnpm", "host-npm"),
            ("odd", "odd target/./with  spaces/../x"),
            // The guest's own /etc/passwd, through a symlink the guest made.
            ("evil_read", "ok"),
            ("evil_link", "/etc/passwd"),
            // A symlink like any other; the guest has no /etc/shadow to resolve it to.
            ("climb_lookup", "ok"),
            ("climb_read", "fail"),
            ("climb_link", "../../../../../../etc/shadow"),
            ("mknod_fifo", "ok"),
            ("exchange", "ok"),
            ("statfs", "ok"),
            ("fsync", "ok"),
            ("synced", "8192"),
            ("alive", "hello from the host"),
            ("umount", "ok"),
        ],
    );
    expect(&run, ESCAPES_SHOWN);
    assert_ne!(run.value("gsum"), run.value("gsum2"), "{run}");
    // Host side: what the guest wrote is there, symlink targets stored byte for byte.
    assert_eq!(std::fs::read(shared.join("f2")).unwrap(), b"one");
    assert_eq!(
        std::fs::metadata(shared.join("f2"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(
        std::fs::read_link(shared.join("evil")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        std::fs::read_link(shared.join("ws/node_modules/x")).unwrap(),
        Path::new("../packages/x")
    );
    assert_eq!(
        std::fs::read_link(shared.join("odd")).unwrap(),
        Path::new("odd target/./with  spaces/../x")
    );
    tree.assert_outside_untouched();
    // Every request above ran on queue worker threads under a filter narrower than the
    // process's (no accepting, no threads), and everything still worked.
    let log = backend.log();
    assert!(
        log.contains("queue worker thread") && log.contains("narrowed to"),
        "{log}"
    );

    backend.assert_stops_cleanly(pid);
}

#[test]
fn deny_policy_refuses_new_links_and_escapes() {
    let tree = Tree::new();
    let backend = tree.backend(&["--symlinks", "deny", "--thread-pool-size", "4"]);
    let script = format!(
        r#"{PRELUDE}
t symlink ln -s hello.txt s
echo symlink_err=$(ln -s hello.txt s2 2>&1 | grep -c 'not permitted')
t hardlink ln hello.txt h
t write sh -c 'echo x > w'
echo hostnpm=$(cat hnm/node_modules/y/index.js)
{ESCAPES}
echo alive=$(cat hello.txt)
"#
    );
    let run = run_guest(tree.path(), &backend.socket, &script);
    assert_eq!(run.status, 0, "{run}");
    expect(
        &run,
        &[
            ("symlink", "fail"),
            ("symlink_err", "1"),
            ("hardlink", "fail"),
            ("write", "ok"),
            ("hostnpm", "host-npm"),
            ("alive", "hello from the host"),
        ],
    );
    expect(&run, ESCAPES_HIDDEN);
    let shared = tree.shared();
    for name in ["s", "s2", "h"] {
        assert!(
            std::fs::symlink_metadata(shared.join(name)).is_err(),
            "{name} was created"
        );
    }
    tree.assert_outside_untouched();
}

/// `follow` inside the namespace sandbox: symlinks are followed on the host, out of the
/// share included (a toolchain, `~/.cache`: what `follow` is for), but the backend stays
/// sandboxed: the host's tree is read-only to it, so nothing outside the share changes.
#[test]
fn follow_policy_follows_out_of_the_share_read_only_within_the_sandbox() {
    let tree = Tree::new();
    let backend = tree.backend(&["--symlinks", "follow"]);
    let pid = backend.sandboxed_pid().expect("sandboxed serving process");
    let status = proc_status(pid);
    for line in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapBnd:\t0000000000000000"] {
        assert!(status.contains(line), "missing {line:?} in\n{status}");
    }
    assert_own_namespaces(pid);
    let script = format!(
        r#"{PRELUDE}
t symlink ln -s hello.txt s
echo s=$(cat s)
echo inner_kind=$(stat -c %F inner)
echo hostnpm_kind=$(stat -c %F hnm/node_modules/y)
echo secret=$(cat escape_rel/secret.txt)
echo mid=$(cat mid/secret.txt)
echo listed=$(ls mid)
t write_out sh -c 'echo x > mid/new'
t append_out sh -c 'echo x >> escape_rel/secret.txt'
t rm_out rm mid/secret.txt
t mkdir_out mkdir escape_rel/d
t write_in sh -c 'echo y > inner/new'
echo alive=$(cat hello.txt)
"#
    );
    let run = run_guest(tree.path(), &backend.socket, &script);
    assert_eq!(run.status, 0, "{run}");
    expect(
        &run,
        &[
            ("symlink", "ok"),
            ("s", "hello from the host"),
            ("inner_kind", "directory"),
            ("hostnpm_kind", "directory"),
            ("secret", "host secret"),
            ("mid", "host secret"),
            ("listed", "secret.txt"),
            ("write_out", "fail"),
            ("append_out", "fail"),
            ("rm_out", "fail"),
            ("mkdir_out", "fail"),
            ("write_in", "ok"),
            ("alive", "hello from the host"),
        ],
    );
    assert_eq!(
        std::fs::read(tree.shared().join("packages/new")).unwrap(),
        b"y\n"
    );
    tree.assert_outside_untouched();
}

#[test]
fn read_only_long_cached_share_refuses_every_change() {
    let tree = Tree::new();
    let before = sha256_file(&tree.shared().join("hello.txt"));
    let backend = tree.backend(&["--read-only", "--cache", "always"]);
    let script = format!(
        r#"{PRELUDE}
echo hello=$(cat hello.txt)
echo err=$( (echo x > new) 2>&1 | grep -c 'Read-only file system')
t create sh -c 'echo x > new'
t append sh -c 'echo x >> hello.txt'
t truncate truncate -s 0 hello.txt
t mkdir mkdir dd
t rm rm hello.txt
t rmdir rmdir packages/x
t chmod chmod 600 hello.txt
t symlink ln -s a b
t link ln hello.txt h
t mv mv hello.txt moved
t mkfifo mkfifo fifo
t touch touch hello.txt
echo big=$(sha256sum big.bin | cut -d' ' -f1)
{ESCAPES}
"#
    );
    let run = run_guest(tree.path(), &backend.socket, &script);
    assert_eq!(run.status, 0, "{run}");
    let mut pairs = vec![("hello", "hello from the host"), ("err", "1")];
    for k in [
        "create", "append", "truncate", "mkdir", "rm", "rmdir", "chmod", "symlink", "link", "mv",
        "mkfifo", "touch",
    ] {
        pairs.push((k, "fail"));
    }
    let big = sha256_file(&tree.shared().join("big.bin"));
    pairs.push(("big", &big));
    pairs.extend(ESCAPES_SHOWN);
    expect(&run, &pairs);
    assert_eq!(sha256_file(&tree.shared().join("hello.txt")), before);
    let names: Vec<_> = std::fs::read_dir(tree.shared())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for n in ["new", "dd", "b", "h", "moved", "fifo"] {
        assert!(!names.iter().any(|x| x == n), "{n} created: {names:?}");
    }
}

/// Host edits (rewrite, delete, create) made while the guest loops reading show up in the
/// guest within about a second, without a remount.
#[test]
fn host_edits_reach_the_guest_within_a_second() {
    let tree = Tree::new();
    let shared = tree.shared();
    std::fs::write(shared.join("live.txt"), b"old\n").unwrap();
    std::fs::write(shared.join("gone.txt"), b"bye\n").unwrap();
    let backend = tree.backend(&[]);
    let script = format!(
        r#"{PRELUDE}
echo first=$(cat live.txt)
test -e gone.txt && echo gone_before=present
touch ready
i=0
while [ $i -lt 400 ]; do
  if [ "$(cat live.txt)" = "new content" ] && [ ! -e gone.txt ] && [ -e born.txt ]; then
    touch seen; echo seen=yes; break
  fi
  usleep 20000; i=$((i+1))
done
echo born=$(cat born.txt)
"#
    );
    let (dir, socket) = (tree.path().to_owned(), backend.socket.clone());
    let guest = std::thread::spawn(move || run_guest(&dir, &socket, &script));
    // No deadline of its own: the guest may first wait for a QEMU slot other tests hold, and
    // `run_guest` bounds the boot itself. A guest that ends without getting ready says why.
    while !shared.join("ready").exists() {
        if guest.is_finished() {
            let run = guest.join().unwrap();
            panic!("the guest ended before it was ready: {run}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the guest cache the old state for a while, then change it under its feet.
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(shared.join("live.txt"), b"new content\n").unwrap();
    std::fs::remove_file(shared.join("gone.txt")).unwrap();
    std::fs::write(shared.join("born.txt"), b"newborn\n").unwrap();
    let t0 = Instant::now();
    wait_for("the guest to see the edits", 20, || {
        shared.join("seen").exists().then_some(())
    });
    let took = t0.elapsed();
    let run = guest.join().unwrap();
    assert_eq!(run.status, 0, "{run}");
    expect(
        &run,
        &[
            ("first", "old"),
            ("gone_before", "present"),
            ("seen", "yes"),
            ("born", "newborn"),
        ],
    );
    eprintln!("host edits seen by the guest after {took:?}");
    assert!(
        took < Duration::from_millis(1500),
        "host edits took {took:?} to reach the guest"
    );
}

/// The chroot sandbox (no namespaces) with `--cache never` (direct I/O, no timeouts).
#[test]
fn chroot_sandbox_and_uncached_share() {
    let tree = Tree::new();
    let backend = tree.backend(&[
        "--sandbox",
        "chroot",
        "--cache",
        "never",
        "--thread-pool-size",
        "2",
    ]);
    let pid = backend.pid();
    wait_for("seccomp", 10, || {
        proc_status(pid).contains("Seccomp:\t2").then_some(())
    });
    let script = format!(
        r#"{PRELUDE}
echo big=$(sha256sum big.bin | cut -d' ' -f1)
dd if=/dev/urandom of=g bs=64k count=20 2>/dev/null; echo gsum=$(sha256sum g | cut -d' ' -f1)
ln g g2; echo nlink=$(stat -c %h g)
mkdir -p ws/packages/x ws/node_modules; echo m > ws/packages/x/index.js
ln -s ../packages/x ws/node_modules/x; echo npm=$(cat ws/node_modules/x/index.js)
{ESCAPES}
"#
    );
    let run = run_guest(tree.path(), &backend.socket, &script);
    assert_eq!(run.status, 0, "{run}");
    let shared = tree.shared();
    expect(
        &run,
        &[
            ("big", &sha256_file(&shared.join("big.bin"))),
            ("gsum", &sha256_file(&shared.join("g"))),
            ("nlink", "2"),
            ("npm", "m"),
        ],
    );
    expect(&run, ESCAPES_SHOWN);
    tree.assert_outside_untouched();
    // The requests ran on the pool's threads, each under its own narrower filter.
    let log = backend.log();
    assert!(
        log.contains("queue worker thread fs-worker-0 narrowed to")
            && log.contains("queue worker thread fs-worker-1 narrowed to"),
        "{log}"
    );
}

/// Started by an unprivileged user, the backend sandboxes itself in a user namespace, keeps
/// no capabilities, and still serves its own files.
#[test]
fn unprivileged_backend_serves() {
    if !sm_test_support::require(
        sm_test_support::is_root() && Path::new("/usr/bin/setpriv").exists(),
        "root and setpriv (util-linux), to switch to an unprivileged user",
    ) {
        return;
    }
    let tree = Tree::new();
    let nobody = 65534;
    std::fs::set_permissions(tree.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    for entry in walk(&tree.shared()) {
        std::os::unix::fs::lchown(&entry, Some(nobody), Some(nobody)).unwrap();
    }
    let shared = tree.shared();
    let backend = Backend::start_wrapped(
        tree.path(),
        "fs",
        &["--shared-dir", shared.to_str().unwrap()],
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ],
    );
    let pid = backend.sandboxed_pid().expect("sandboxed serving process");
    let status = proc_status(pid);
    for line in ["Seccomp:\t2", "NoNewPrivs:\t1", "CapEff:\t0000000000000000"] {
        assert!(status.contains(line), "missing {line:?} in\n{status}");
    }
    let user_ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
    assert_ne!(user_ns, std::fs::read_link("/proc/self/ns/user").unwrap());
    let script = format!(
        r#"{PRELUDE}
echo hello=$(cat hello.txt)
echo w > new; echo new=$(cat new)
ln -s packages/x ws_link; echo npm=$(cat ws_link/index.js)
{ESCAPES}
"#
    );
    let run = run_guest(tree.path(), &backend.socket, &script);
    assert_eq!(run.status, 0, "{run}");
    expect(
        &run,
        &[
            ("hello", "hello from the host"),
            ("new", "w"),
            ("npm", "module.exports=1"),
            ("escape_rel", "fail"),
            ("mid", "fail"),
            ("secret_seen", "0"),
        ],
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(shared.join("new")).unwrap().uid(), nobody);
    tree.assert_outside_untouched();
}

/// Every path below `dir`, `dir` included, not following symlinks.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `follow` without a sandbox (trusted single tenant): host symlinks are really followed on
/// the host, out of the share included; that is what the policy promises, and why it is
/// only for trusted guests.
#[test]
fn follow_without_sandbox_follows_out_of_the_share() {
    let tree = Tree::new();
    let backend = tree.backend(&["--symlinks", "follow", "--sandbox", "none"]);
    let script = format!(
        r#"{PRELUDE}
echo secret=$(cat escape_rel/secret.txt)
echo mid=$(cat mid/secret.txt)
"#
    );
    let run = run_guest(tree.path(), &backend.socket, &script);
    assert_eq!(run.status, 0, "{run}");
    expect(&run, &[("secret", "host secret"), ("mid", "host secret")]);
    assert!(backend.log().contains("NOT SANDBOXED"));
}

/// A guest cannot plant privilege on the host: as root in the guest it makes a file, gives
/// it to root and sets setuid and setgid, and appends to a setuid file the host made; on the
/// host neither keeps a bit. With `--allow-setuid` (trusted guests) the bits it set stay.
#[test]
fn setuid_bits_from_the_guest_never_reach_the_host_unless_allowed() {
    for allow in [false, true] {
        let tree = Tree::new();
        let planted = tree.shared().join("planted");
        std::fs::write(&planted, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let args: &[&str] = if allow { &["--allow-setuid"] } else { &[] };
        let backend = tree.backend(args);
        let script = format!(
            r#"{PRELUDE}
printf '#!/bin/sh\nid\n' > prog
t chown chown 0:0 prog
t chmod chmod 6755 prog
t append sh -c 'echo id >> planted'
echo alive=$(cat hello.txt)
"#
        );
        let run = run_guest(tree.path(), &backend.socket, &script);
        assert_eq!(run.status, 0, "{run}");
        expect(
            &run,
            &[
                ("chown", "ok"),
                ("chmod", "ok"),
                ("append", "ok"),
                ("alive", "hello from the host"),
            ],
        );
        let mode = |name: &str| {
            let m = std::fs::metadata(tree.shared().join(name)).unwrap();
            m.permissions().mode() & 0o7777
        };
        let (prog, planted) = (mode("prog"), mode("planted"));
        if allow {
            assert_eq!(prog, 0o6755, "--allow-setuid keeps what the guest set");
        } else {
            assert_eq!(
                prog, 0o755,
                "a guest-set setuid/setgid bit reached the host"
            );
            assert_eq!(
                planted, 0o755,
                "a guest write kept the host file's setuid bit"
            );
        }
        tree.assert_outside_untouched();
    }
}
