//! The README's examples, run exactly as written: every command line of every block marked
//! `<!-- readme-test: run -->` goes through `bash -e -c` with the README's own text, in a
//! directory and `$HOME` that hold what the examples name (`~/my-app`, `./site`,
//! `./build/oci`, a registry at 127.0.0.1:5000 with `busybox:latest`). [`EXAMPLES`] says
//! how each line runs and what its output must show; a README line without an entry, or an
//! entry without its line, fails the test, so an edited example is run or the test fails.

pub mod parse;

use crate::common::*;
use parse::CommandLine;
use sm_test_support::process::{signal_and_wait, wait_listening};
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What a line's stdout must be.
enum Stdout {
    /// Exactly this.
    Is(&'static str),
    /// Starts with this.
    StartsWith(&'static str),
    /// Contains each of these.
    Contains(&'static [&'static str]),
}

/// How the test runs one README line.
enum How {
    /// Runs to completion with the exit status the line's comment claims (`exits N`, else
    /// 0) and this stdout; then `after` (a shell command, run in the same place) prints
    /// `after_prints`, for effects the README promises on the host.
    Runs {
        stdout: Stdout,
        after: Option<(&'static str, &'static str)>,
    },
    /// A server the reader leaves running (`... &`): ready once `socket` exists; stopped
    /// before the next server starts (the alternatives share a socket) and at the end.
    Server { socket: &'static str },
    /// Serves until Ctrl-C: the line's comment is the command that shows it serving, and
    /// prints `shows`; then SIGINT, and it exits 130 having stopped everything.
    ServesUntilCtrlC { shows: &'static str },
    /// The interactive console: `input` is typed, `shows` appears, Ctrl-A x quits (exit 0).
    Console {
        input: &'static str,
        shows: &'static str,
    },
    /// Boots the test VM itself, so it runs on the host, not in here: tests/host.rs
    /// `readme_sm_testvm_examples_run_as_written`.
    OnHost,
}

/// The page `./site` serves.
const SITE_PAGE: &str = "served from ./site\n";

/// Every README example line (the command, without its comment) and how it runs.
const EXAMPLES: &[(&str, How)] = &[
    (
        "sm run -- uname -a",
        How::Runs {
            stdout: Stdout::StartsWith("Linux "),
            after: None,
        },
    ),
    (
        "sm run --mount ~/my-app:/work --volume ~/cache.img:/work/node_modules:size=1G -w /work -- \\\n  sh -c 'ls; echo ok > node_modules/x'",
        How::Runs {
            stdout: Stdout::Contains(&["node_modules\n", "package.json\n"]),
            // The volume is kept on the host, with what the guest wrote.
            after: Some(("stat -c %s ~/cache.img; debugfs -R 'cat /x' ~/cache.img 2>/dev/null", "1073741824\nok\n")),
        },
    ),
    (
        "sm run -p 8080:80 --mount ./site:/srv:ro -- httpd -f -p 80 -h /srv",
        How::ServesUntilCtrlC { shows: SITE_PAGE },
    ),
    (
        "sm run -d --name web -p 8080:80 --mount ./site:/srv:ro -- httpd -f -p 80 -h /srv",
        How::Runs {
            stdout: Stdout::Is("web\n"),
            after: Some(("curl -s 127.0.0.1:8080", SITE_PAGE)),
        },
    ),
    (
        "sm exec web -- ps ; sm ps ; sm stop web",
        How::Runs {
            stdout: Stdout::Contains(&["httpd -f -p 80 -h /srv", "\nweb "]),
            after: Some(("sm ps | grep -c '^web ' || true", "0\n")),
        },
    ),
    (
        "sm pull 127.0.0.1:5000/busybox:latest ; sm images ; sm rmi 127.0.0.1:5000/busybox:latest",
        How::Runs {
            stdout: Stdout::Contains(&["127.0.0.1:5000/busybox:latest"]),
            after: Some(("sm images | grep -c busybox || true", "0\n")),
        },
    ),
    (
        "sm run oci-layout:./build/oci:app",
        How::Runs {
            stdout: Stdout::Is("hello from the image\n"),
            after: None,
        },
    ),
    (
        "sm-vmm -- uname -a",
        How::Runs {
            stdout: Stdout::StartsWith("Linux "),
            after: None,
        },
    ),
    (
        "sm-vmm --vcpus 2 --mem 512 -- sh -c 'nproc; exit 3'",
        How::Runs {
            stdout: Stdout::Is("2\n"),
            after: None,
        },
    ),
    (
        "sm-vmm",
        How::Console {
            input: "echo shell-$((6*7))\n",
            shows: "shell-42",
        },
    ),
    ("sm-testvm -- sm-vmm -- uname -a", How::OnHost),
    (
        "mkfs.ext4 -q vol.img 1G",
        How::Runs {
            stdout: Stdout::Contains(&[]),
            after: Some(("stat -c %s vol.img", "1073741824\n")),
        },
    ),
    (
        "sm-vhost-user-blk --socket /run/vol.sock --file vol.img --size-mib 1024",
        How::Server {
            socket: "/run/vol.sock",
        },
    ),
    (
        "sm-vmm --blk-socket /run/vol.sock -- sh -c 'mount -t ext4 /dev/vda /mnt && echo kept > /mnt/x'",
        How::Runs {
            stdout: Stdout::Is(""),
            after: None,
        },
    ),
    (
        "qemu-storage-daemon --blockdev file,filename=vol.img,node-name=d \\\n  --export type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=/run/vol.sock,writable=on",
        How::Server {
            socket: "/run/vol.sock",
        },
    ),
    (
        "sm-vmm --blk-socket /run/vol.sock -- sh -c 'mount -t ext4 /dev/vda /mnt && cat /mnt/x'",
        How::Runs {
            stdout: Stdout::Is("kept\n"),
            after: None,
        },
    ),
    (
        "virtiofsd --socket-path /run/src.sock --shared-dir ~/my-app",
        How::Server {
            socket: "/run/src.sock",
        },
    ),
    (
        "sm-vmm --fs-socket workspace=/run/src.sock -- sh -c 'mount -t virtiofs workspace /mnt && ls /mnt'",
        How::Runs {
            stdout: Stdout::Contains(&["package.json"]),
            after: None,
        },
    ),
    (
        "sm-vhost-user-fs --socket /run/src.sock --shared-dir ~/my-app --symlinks opaque --dax-window-mib 1024",
        How::Server {
            socket: "/run/src.sock",
        },
    ),
    (
        "sm-vmm --fs-socket workspace=/run/src.sock -- sh -c 'mount -t virtiofs -o dax=always workspace /mnt && ls /mnt'",
        How::Runs {
            stdout: Stdout::Contains(&["package.json"]),
            after: None,
        },
    ),
];

/// The README's command lines of blocks marked to run, each checked against [`EXAMPLES`]:
/// fails on a command block with no marker, a line with no entry, an entry with no line.
fn readme_examples() -> Vec<(CommandLine, &'static How)> {
    let readme = std::fs::read_to_string(parse::readme_path()).unwrap();
    let (examples, problems) = examples_in(&readme);
    assert!(
        problems.is_empty(),
        "README examples not covered:\n{}",
        problems.join("\n")
    );
    assert!(
        !examples.is_empty(),
        "README.md has no block marked {}",
        parse::RUN_MARKER
    );
    examples
}

/// The example lines of `readme` with how each runs, and every way it is not covered.
fn examples_in(readme: &str) -> (Vec<(CommandLine, &'static How)>, Vec<String>) {
    let mut lines = vec![];
    let mut problems = vec![];
    for block in parse::fenced_blocks(readme) {
        match block.marker.as_deref() {
            Some(parse::RUN_MARKER) => lines.extend(parse::command_lines(&block)),
            Some(m) if m.starts_with(parse::NOT_RUN_MARKER) => {
                let why = m[parse::NOT_RUN_MARKER.len()..]
                    .trim_end_matches("-->")
                    .trim();
                if why.is_empty() {
                    problems.push(format!(
                        "README.md:{}: a not-run marker must say why",
                        block.first_line
                    ));
                }
            }
            _ if parse::is_command_block(&block) => problems.push(format!(
                "README.md:{}: a block of commands without `{}` or `{} WHY -->` before it",
                block.first_line,
                parse::RUN_MARKER,
                parse::NOT_RUN_MARKER
            )),
            _ => {}
        }
    }
    let mut examples = vec![];
    for line in &lines {
        match EXAMPLES.iter().find(|(command, _)| *command == line.command) {
            Some((_, how)) => examples.push((line.clone(), how)),
            None => problems.push(format!(
                "README.md:{}: no entry in EXAMPLES (integration/tests/guest/readme.rs) says how to run {:?}",
                line.line, line.command
            )),
        }
    }
    for (command, how) in EXAMPLES {
        if !lines.iter().any(|l| l.command == *command) {
            problems.push(format!(
                "EXAMPLES has {command:?}, which README.md no longer shows"
            ));
        }
        let on_host = command.starts_with("sm-testvm ");
        if on_host != matches!(how, How::OnHost) {
            problems.push(format!("{command:?}: only sm-testvm lines run on the host"));
        }
    }
    (examples, problems)
}

#[test]
fn every_readme_command_line_has_a_way_to_run() {
    readme_examples();
}

/// The check above catches an edited example, an unmarked command block and a not-run
/// marker without a reason (shown on edited copies of the real README).
#[test]
fn an_edited_or_unmarked_readme_example_is_caught() {
    let readme = std::fs::read_to_string(parse::readme_path()).unwrap();
    let problems = |edited: String| {
        assert_ne!(edited, readme, "the edit must change the README");
        examples_in(&edited).1.join("\n")
    };
    let edited = problems(readme.replace("nproc; exit 3'", "nproc; exit 4'"));
    assert!(edited.contains("no entry in EXAMPLES"), "{edited}");
    assert!(edited.contains("README.md no longer shows"), "{edited}");
    let unmarked = problems(readme.replace(&format!("{}\n", parse::RUN_MARKER), ""));
    assert!(
        unmarked.contains("a block of commands without"),
        "{unmarked}"
    );
    let no_reason = problems(readme.replacen(
        "<!-- readme-test: not run: it is the test suite; CI runs it (.ci/run) -->",
        "<!-- readme-test: not run: -->",
        1,
    ));
    assert!(no_reason.contains("must say why"), "{no_reason}");
}

/// The project's binaries the README's examples use, each installed by `scripts/setup`.
#[test]
fn setup_installs_every_binary_the_readme_uses() {
    let setup = parse::readme_path().with_file_name("scripts/setup");
    let setup = std::fs::read_to_string(setup).unwrap();
    let install = setup
        .lines()
        .find(|l| l.starts_with("install ") && l.contains("target/release/"))
        .expect("scripts/setup installs from target/release");
    let missing: Vec<String> = readme_examples()
        .iter()
        .flat_map(|(line, _)| {
            line.command
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|word| word == "sm" || (word.starts_with("sm-") && !word.contains('=')))
        .filter(|binary| {
            !install
                .split(|c: char| c == '{' || c == '}' || c == ',' || c == '/' || c.is_whitespace())
                .any(|w| w == binary)
        })
        .collect();
    assert!(
        missing.is_empty(),
        "scripts/setup does not install {missing:?}: {install}"
    );
}

/// Where the examples run: `$HOME` with `~/my-app`, a working directory with `./site` and
/// `./build/oci`, sm's own directories, a registry at 127.0.0.1:5000, and the servers the
/// examples leave running; everything is stopped on drop.
struct Place {
    dir: tempfile::TempDir,
    registry: Option<Child>,
    servers: Vec<Server>,
}

/// A server a `... &` example line left running.
struct Server {
    line: CommandLine,
    socket: String,
    child: Child,
}

impl Place {
    fn new() -> Place {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir_all(home.join("my-app")).unwrap();
        std::fs::write(home.join("my-app/package.json"), "{}\n").unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("site")).unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(work.join("site/index.html"), SITE_PAGE).unwrap();
        write_busybox_layout(&work.join("build/oci"), "app");
        let mut place = Place {
            dir,
            registry: None,
            servers: vec![],
        };
        place.start_registry();
        place
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// `bash -e -c LINE` as a reader's shell would run it, with the workspace's binaries
    /// first on PATH (where `scripts/setup` installs them).
    fn shell(&self, line: &str) -> Command {
        let path = format!(
            "{}:{}",
            sm_integration::bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = Command::new("bash");
        cmd.args(["-e", "-o", "pipefail", "-c", line])
            .current_dir(self.work())
            .env("PATH", path)
            .env("HOME", self.home())
            .env("SM_HOME", self.dir.path().join("sm-home"))
            .env("XDG_RUNTIME_DIR", self.dir.path().join("run"))
            .stdin(Stdio::null());
        cmd
    }

    /// A registry at 127.0.0.1:5000 (where the README pulls from) holding `busybox:latest`.
    fn start_registry(&mut self) {
        let root = self.dir.path().join("registry");
        let config = root.join("config.yml");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n",
                root.join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry (scripts/install-deps.sh installs it)");
        self.registry = Some(child);
        let layout = self.dir.path().join("busybox-layout");
        write_busybox_layout(&layout, "latest");
        let start = Instant::now();
        loop {
            let out = Command::new("skopeo")
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(format!("oci:{}:latest", layout.display()))
                .arg("docker://127.0.0.1:5000/busybox:latest")
                .output()
                .expect("skopeo (scripts/install-deps.sh installs it)");
            if out.status.success() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "pushing busybox:latest to the registry at 127.0.0.1:5000 failed: {}",
                stderr(&out)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts a `... &` line and waits for its socket, after stopping the servers before it.
    fn start_server(&mut self, line: &CommandLine, socket: &str) {
        self.stop_servers();
        let log = self.dir.path().join(format!("server-{}.log", line.line));
        let mut child = self
            .shell(&format!("exec {}", line.command))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_listening(
            &mut child,
            &format!("README.md:{}: {:?}", line.line, line.command),
            Path::new(socket),
            Duration::from_secs(30),
            || true,
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        self.servers.push(Server {
            line: line.clone(),
            socket: socket.to_string(),
            child,
        });
    }

    /// Starts the running server afresh (`start_server` keeps one at a time): an example
    /// run again after a stall needs it as it was before its first run, which may have
    /// ended it (virtiofsd exits when its frontend goes).
    fn restart_server(&mut self) {
        if let Some(server) = self.servers.last() {
            let (line, socket) = (server.line.clone(), server.socket.clone());
            self.start_server(&line, &socket);
        }
    }

    /// Stops the servers the examples left running (SIGTERM, then SIGKILL after 10 s).
    fn stop_servers(&mut self) {
        for server in self.servers.drain(..) {
            stop(server.child);
            let _ = std::fs::remove_file(server.socket);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // A failed example may leave the detached VM running.
        let _ = self.shell("sm stop web").output();
        self.stop_servers();
        if let Some(registry) = self.registry.take() {
            stop(registry);
        }
    }
}

fn stop(mut child: Child) {
    signal_and_wait(&mut child, libc::SIGTERM, Duration::from_secs(10));
}

/// An OCI layout at `dir` with one image tagged `tag`: the host's static busybox, whose
/// Cmd prints `hello from the image`.
fn write_busybox_layout(dir: &Path, tag: &str) {
    use sm_test_support::oci::{busybox, layer_tar, Compression, Entry, Layout};
    let mut entries = vec![Entry::File("bin/busybox".into(), busybox(), 0o755, 0, 0)];
    for applet in ["bin/sh", "bin/echo", "bin/ls", "bin/cat"] {
        entries.push(Entry::Symlink(applet, "busybox"));
    }
    let mut layout = Layout::new(dir);
    let config = serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["echo", "hello from the image"]});
    let image = layout.image("amd64", &[(layer_tar(&entries), Compression::Gzip)], config);
    layout.tag(&image, tag);
}

/// How long one example may take (nested guests boot in seconds; pulls run under TCG).
const LIMIT: Duration = Duration::from_secs(180);

fn check_stdout(line: &CommandLine, out: &str, expected: &Stdout) {
    let ok = match expected {
        Stdout::Is(s) => out == *s,
        Stdout::StartsWith(s) => out.starts_with(s),
        Stdout::Contains(all) => all.iter().all(|s| out.contains(s)),
    };
    assert!(
        ok,
        "README.md:{}: {:?} printed {out:?}, not what the README shows",
        line.line, line.command
    );
}

fn runs(place: &mut Place, line: &CommandLine, stdout: &Stdout, after: Option<(&str, &str)>) {
    let mut first = true;
    let out = run_retrying_stall(
        || {
            if !std::mem::take(&mut first) {
                place.restart_server();
            }
            place.shell(&line.command)
        },
        LIMIT,
    );
    assert_eq!(
        out.status.code(),
        Some(line.claimed_exit()),
        "README.md:{}: {:?} exited {}; stdout: {}; stderr: {}",
        line.line,
        line.command,
        out.status,
        self::stdout(&out),
        self::stderr(&out)
    );
    check_stdout(line, &self::stdout(&out), stdout);
    if let Some((check, prints)) = after {
        let out = run_with_timeout(&mut place.shell(check), LIMIT);
        assert_eq!(
            self::stdout(&out),
            prints,
            "README.md:{}: after {:?}, {check:?} (stderr: {})",
            line.line,
            line.command,
            self::stderr(&out)
        );
    }
}

fn serves_until_ctrl_c(place: &Place, line: &CommandLine, shows: &str) {
    let probe = line
        .comment
        .as_deref()
        .expect("the line's comment says how to see it serving");
    let child = place
        .shell(&format!("exec {}", line.command))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let out = run_with_timeout(&mut place.shell(probe), LIMIT);
        if out.status.success() && stdout(&out) == shows {
            break;
        }
        if start.elapsed() > LIMIT {
            stop(child);
            panic!(
                "README.md:{}: {probe:?} never printed {shows:?} while {:?} ran (last: {})",
                line.line,
                line.command,
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(130),
        "README.md:{}: Ctrl-C: {}",
        line.line,
        stderr(&out)
    );
}

fn console(place: &Place, line: &CommandLine, input: &str, shows: &str) {
    let mut child = place
        .shell(&format!("exec {}", line.command))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _deadline = kill_after(child.id(), LIMIT);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    while !seen.contains(shows) {
        let mut l = String::new();
        let n = reader.read_line(&mut l).unwrap();
        seen += &l;
        assert!(
            n > 0,
            "README.md:{}: the console never showed {shows:?}: {seen}",
            line.line
        );
    }
    // Ctrl-A x, as the README says.
    stdin.write_all(b"\x01x").unwrap();
    drop(stdin);
    let _ = reader.read_to_end(&mut vec![]);
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(line.claimed_exit()),
        "README.md:{}: Ctrl-A x",
        line.line
    );
}

#[test]
fn readme_examples_run_as_written() {
    require_kvm();
    let examples = readme_examples();
    let mut place = Place::new();
    for (line, how) in &examples {
        let start = Instant::now();
        match how {
            How::Runs { stdout, after } => runs(&mut place, line, stdout, *after),
            How::Server { socket } => place.start_server(line, socket),
            How::ServesUntilCtrlC { shows } => serves_until_ctrl_c(&place, line, shows),
            How::Console { input, shows } => console(&place, line, input, shows),
            How::OnHost => {}
        }
        eprintln!(
            "README.md:{}: {:.1} s: {}",
            line.line,
            start.elapsed().as_secs_f64(),
            line.command
        );
    }
}
