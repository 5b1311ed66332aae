//! Watches a running test VM until QEMU exits: boot timeout, a dead virtiofsd, stop signals,
//! and a stalled test VM (the nested emulation has been seen to livelock).

use crate::signals::{Event, Signals};
use crate::virtiofsd::Virtiofsd;
use crate::vm::Vm;
use crate::{Context, Error, Options, Result};
use nix::sys::signal::Signal;
use std::fs;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

/// How long QEMU may keep running after a virtiofsd died.
const FSD_GRACE: Duration = Duration::from_secs(3);

/// How QEMU's run ended.
pub enum End {
    /// QEMU exited.
    Exited(ExitStatus),
    /// A stop signal arrived; QEMU is still running.
    Stopped(Signal),
    /// The command wrote nothing, or the heartbeat stopped, for this long; QEMU is still
    /// running.
    Stalled(Stall, Duration),
}

/// What showed the test VM stalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// The command wrote nothing to stdout or stderr.
    Silent,
    /// The test VM's heartbeat stopped: its userspace stopped running.
    Frozen,
}

/// The test VM's heartbeat file, and when its content last changed.
struct Heartbeat {
    last: Option<(Vec<u8>, Instant)>,
}

impl Heartbeat {
    /// How long since the heartbeat last changed (`None` before the first beat).
    fn silence(&mut self, file: &std::path::Path) -> Option<Duration> {
        if let Ok(beat) = fs::read(file) {
            if !beat.is_empty() && self.last.as_ref().is_none_or(|(b, _)| *b != beat) {
                self.last = Some((beat, Instant::now()));
            }
        }
        self.last.as_ref().map(|(_, at)| at.elapsed())
    }
}

/// Watches a running test VM: boot timeout, dead virtiofsd, stop signals.
pub struct Watch<'a> {
    /// The file the guest creates when it starts the command.
    pub started: PathBuf,
    /// The file the guest rewrites every 2 s while it runs.
    pub alive: PathBuf,
    /// When the runner started.
    pub launched: (Instant, SystemTime),
    /// The run's options (verbosity, boot timeout).
    pub opts: &'a Options,
}

impl Watch<'_> {
    /// Waits until QEMU exits or a stop signal arrives.
    pub fn until_exit(
        &self,
        signals: &Signals,
        vm: &mut Vm,
        fsds: &mut [Virtiofsd],
    ) -> Result<End> {
        let mut started = false;
        let mut fsd_died: Option<(Instant, Error)> = None;
        let mut heartbeat = Heartbeat { last: None };
        loop {
            if let Some(status) = vm
                .child
                .try_wait()
                .context(|| "waiting for qemu".to_string())?
            {
                return Ok(End::Exited(status));
            }
            if !started {
                started = self.check_started()?;
                if started {
                    // Silence counts from the command's start: a slow boot is not a stall.
                    vm.activity.touch();
                }
            }
            if fsd_died.is_none() {
                fsd_died = fsds
                    .iter_mut()
                    .find_map(|f| f.has_exited().then(|| (Instant::now(), f.died())));
            }
            if let Some((when, err)) = &fsd_died {
                if when.elapsed() > FSD_GRACE {
                    return Err(err.clone());
                }
            }
            if started && vm.activity.idle() > self.opts.stall_timeout {
                return Ok(End::Stalled(Stall::Silent, vm.activity.idle()));
            }
            if let Some(silence) = heartbeat.silence(&self.alive) {
                if silence > self.opts.freeze_timeout {
                    return Ok(End::Stalled(Stall::Frozen, silence));
                }
            }
            let poll = if !started || fsd_died.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(1)
            };
            if let Event::Stop(sig) = signals.wait(Some(poll))? {
                return Ok(End::Stopped(sig));
            }
        }
    }

    /// Whether the guest has started the command; fails once the boot timeout passes.
    fn check_started(&self) -> Result<bool> {
        if let Ok(meta) = fs::metadata(&self.started) {
            if self.opts.verbose {
                let at = meta.modified().ok();
                let secs = at.and_then(|t| t.duration_since(self.launched.1).ok());
                let secs = secs.unwrap_or(self.launched.0.elapsed()).as_secs_f64();
                eprintln!("sm-testvm: command started {secs:.2} s after launch");
            }
            return Ok(true);
        }
        if self.launched.0.elapsed() > self.opts.boot_timeout {
            return Err(Error::new(format!(
                "the test VM did not start the command within {} s (rerun with --verbose)",
                self.opts.boot_timeout.as_secs()
            )));
        }
        Ok(false)
    }
}
