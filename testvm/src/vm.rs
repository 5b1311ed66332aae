//! The running QEMU of one test VM and the threads relaying its output ports.

use crate::process::supervise;
use crate::qemu::{self, kernel_cmdline, Console};
use crate::relay::{self, Activity, Sink};
use crate::tools::Tools;
use crate::virtiofsd::Virtiofsd;
use crate::{Context, Options, Result};
use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

/// The running QEMU and the threads relaying its serial ports; killed when dropped.
pub struct Vm {
    /// The QEMU process.
    pub child: Child,
    relays: Vec<JoinHandle<()>>,
    /// QEMU's stderr (unless --verbose, where it is the runner's).
    pub log: PathBuf,
    /// The L1 kernel console (unless --verbose, where it goes to the runner's stderr).
    pub console_log: Option<PathBuf>,
    /// When the command last wrote to its stdout or stderr.
    pub activity: Activity,
    /// QEMU's QMP socket.
    pub monitor: PathBuf,
}

impl Vm {
    /// Starts QEMU for `opts` on the sockets of `fsds`, relaying its output ports.
    pub fn start(
        tools: &Tools,
        opts: &Options,
        fsds: &[Virtiofsd],
        nonce: &str,
        run_dir: &Path,
    ) -> Result<Self> {
        let pipe = || pipe2(OFlag::O_CLOEXEC).context(|| "creating a pipe".to_string());
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let console = if opts.verbose { Some(pipe()?) } else { None };
        let (tick_host, tick_qemu) =
            UnixStream::pair().context(|| "creating a socket pair".to_string())?;
        let console_log = run_dir.join("console.log");
        let cfg = qemu::Config {
            cpus: opts.cpus,
            mem_mib: opts.mem_mib,
            append: kernel_cmdline(nonce, opts.verbose),
            fs: fsds
                .iter()
                .map(|f| (f.tag.clone(), f.socket.clone()))
                .collect(),
            stdout_fd: out_w.as_raw_fd(),
            stderr_fd: err_w.as_raw_fd(),
            tick_fd: tick_qemu.as_raw_fd(),
            monitor: run_dir.join("qmp.sock"),
            console: match &console {
                Some((_, w)) => Console::Pipe(w.as_raw_fd()),
                None => Console::File(console_log.clone()),
            },
        };
        let mut cmd = qemu::command(tools, &cfg);
        let log = run_dir.join("qemu.log");
        let stderr = if opts.verbose {
            Stdio::inherit()
        } else {
            File::create(&log)
                .context(|| format!("creating {}", log.display()))?
                .into()
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut keep = vec![cfg.stdout_fd, cfg.stderr_fd, cfg.tick_fd];
        if let Console::Pipe(fd) = cfg.console {
            keep.push(fd);
        }
        supervise(&mut cmd, &keep);
        let child = cmd
            .spawn()
            .context(|| format!("starting {}", tools.qemu.display()))?;
        // Only QEMU may hold these ends, so the relays see end of file (and the tick thread
        // a broken connection) when it exits.
        drop((out_w, err_w, tick_qemu));
        crate::tick::spawn(tick_host).context(|| "starting the tick thread".to_string())?;
        let activity = Activity::new();
        let mut readers = vec![
            (out_r, Sink::Stdout, activity.clone()),
            (err_r, Sink::Stderr, activity.clone()),
        ];
        let verbose = console.is_some();
        // The console is not the command's output: it does not count as activity.
        readers.extend(console.map(|(r, _)| (r, Sink::Stderr, Activity::new())));
        let mut vm = Vm {
            child,
            relays: Vec::new(),
            log,
            console_log: (!verbose).then_some(console_log),
            activity,
            monitor: cfg.monitor.clone(),
        };
        for (fd, sink, activity) in readers {
            let relay = relay::spawn(fd, sink, activity)
                .context(|| "starting a relay thread".to_string())?;
            vm.relays.push(relay);
        }
        Ok(vm)
    }

    /// Waits for the relays to drain what QEMU wrote.
    pub fn finish(&mut self) {
        for r in self.relays.drain(..) {
            let _ = r.join();
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        self.finish();
    }
}
