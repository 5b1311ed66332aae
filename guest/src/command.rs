//! Running the command: the init configuration sm-vmm appended to the initramfs, the
//! serial ports set up as the command's stdio, and PID 1's wait loop that reaps orphans.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::sys::termios::{self, InputFlags, LocalFlags, OutputFlags, SetArg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::setup::{log_error, log_verbose};

/// The command's argv, one NUL-terminated argument after another (absent: interactive).
const ARGV_PATH: &str = "/sm/argv";
/// Extra environment, `KEY=VALUE` entries, NUL-terminated.
const ENV_PATH: &str = "/sm/env";
/// The console / stdin / stdout port.
const CONSOLE_TTY: &str = "/dev/ttyS0";
/// The stderr port.
const STDERR_TTY: &str = "/dev/ttyS1";
pub use sm_agent::DEFAULT_PATH;

/// What to run and with which environment.
pub struct Launch {
    argv: Option<Vec<OsString>>,
    env: Vec<(OsString, OsString)>,
}

fn split_nul(bytes: &[u8]) -> Vec<OsString> {
    let mut items: Vec<OsString> = bytes
        .split(|b| *b == 0)
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect();
    // Every entry is NUL-terminated: the split leaves an empty tail.
    if bytes.last() == Some(&0) || bytes.is_empty() {
        items.pop();
    }
    items
}

impl Launch {
    /// Reads `/sm/argv` and `/sm/env`.
    pub fn from_init_config() -> Result<Self, String> {
        let argv = match std::fs::read(ARGV_PATH) {
            Ok(bytes) => Some(split_nul(&bytes)).filter(|a| !a.is_empty()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {ARGV_PATH}: {e}")),
        };
        let env = std::fs::read(ENV_PATH)
            .map(|b| split_nul(&b))
            .unwrap_or_default();
        let env = env
            .into_iter()
            .filter_map(|kv| {
                let b = kv.as_bytes();
                let eq = b.iter().position(|c| *c == b'=')?;
                Some((
                    OsString::from_vec(b[..eq].to_vec()),
                    OsString::from_vec(b[eq + 1..].to_vec()),
                ))
            })
            .collect();
        Ok(Launch { argv, env })
    }

    /// Runs the command to completion and returns its exit status (128 + signal if killed).
    pub fn run(self, verbose: bool) -> u8 {
        let interactive = self.argv.is_none();
        log_verbose(verbose, "opening the serial ports");
        let (console, stderr) = match open_ttys(interactive) {
            Ok(t) => t,
            Err(e) => {
                log_error(&format!("cannot open the serial ports: {e}"));
                return crate::hostio::STATUS_INIT_FAILED;
            }
        };
        let mut cmd = match &self.argv {
            Some(argv) => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
            None => {
                let mut c = Command::new("/bin/sh");
                c.arg0("-sh");
                c
            }
        };
        cmd.env_clear()
            .env("PATH", DEFAULT_PATH)
            .env("HOME", "/root")
            .env("TERM", "linux")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/");
        let io = |f: &File| f.try_clone().map(Stdio::from);
        let stdio = (|| {
            Ok::<_, std::io::Error>((
                io(&console)?,
                io(&console)?,
                if interactive {
                    io(&console)?
                } else {
                    io(&stderr)?
                },
            ))
        })();
        let Ok((stdin, stdout, err_out)) = stdio else {
            log_error("cannot duplicate the serial port descriptors");
            return crate::hostio::STATUS_INIT_FAILED;
        };
        cmd.stdin(stdin).stdout(stdout).stderr(err_out);
        log_verbose(verbose, "serial ports configured; starting the command");
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
        // functions (setsid, ioctl) on descriptors the child already owns.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                // Make the console the controlling terminal, for job control and Ctrl-C.
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let name = self
                    .argv
                    .as_ref()
                    .map(|a| a[0].to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/bin/sh".into());
                let msg = format!("cannot run '{name}': {e}");
                let _ = termios::tcdrain(console.as_fd());
                log_error(&msg);
                return if e.kind() == std::io::ErrorKind::PermissionDenied {
                    126
                } else {
                    127
                };
            }
        };
        log_verbose(verbose, &format!("started pid {}", child.id()));
        let status = reap_until(Pid::from_raw(child.id() as i32));
        // Everything the command wrote must reach sm-vmm before the exit status does.
        let _ = termios::tcdrain(console.as_fd());
        let _ = termios::tcdrain(stderr.as_fd());
        status
    }
}

/// PID 1's wait loop: reaps every child (orphans included) until `main` exits, handing
/// the agent's commands their statuses.
fn reap_until(main: Pid) -> u8 {
    loop {
        match crate::reaper::reap_next() {
            Ok(Some(WaitStatus::Exited(pid, code))) if pid == main => return code as u8,
            Ok(Some(WaitStatus::Signaled(pid, sig, _))) if pid == main => {
                return 128u8.wrapping_add(sig as u8)
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => {
                log_error(&format!("waitpid: {e}"));
                return crate::hostio::STATUS_INIT_FAILED;
            }
        }
    }
}

/// Opens COM1 and COM2. For a command, output is passed through byte for byte (no CR/LF
/// translation) and input is line-buffered without echo, so only the command's own output
/// reaches sm-vmm's stdout; an interactive shell gets an ordinary terminal.
fn open_ttys(interactive: bool) -> std::io::Result<(File, File)> {
    let console = File::options().read(true).write(true).open(CONSOLE_TTY)?;
    let stderr = File::options().write(true).open(STDERR_TTY)?;
    for (tty, is_console) in [(&console, true), (&stderr, false)] {
        let mut t = termios::tcgetattr(tty.as_fd())?;
        if interactive {
            t.output_flags |= OutputFlags::OPOST | OutputFlags::ONLCR;
            t.local_flags |=
                LocalFlags::ECHO | LocalFlags::ICANON | LocalFlags::ISIG | LocalFlags::ECHOE;
        } else {
            t.output_flags &= !OutputFlags::OPOST;
            if is_console {
                t.local_flags &= !(LocalFlags::ECHO
                    | LocalFlags::ECHONL
                    | LocalFlags::ISIG
                    | LocalFlags::IEXTEN);
                t.local_flags |= LocalFlags::ICANON;
                t.input_flags &=
                    !(InputFlags::ICRNL | InputFlags::IXON | InputFlags::INLCR | InputFlags::IGNCR);
            }
        }
        termios::tcsetattr(tty.as_fd(), SetArg::TCSANOW, &t)?;
    }
    crate::hostio::console_ready();
    Ok((console, stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_separated_lists_keep_empty_and_odd_arguments() {
        let items = split_nul(b"sh\0-c\0\0a b=c 'd'\0");
        assert_eq!(
            items,
            vec![
                OsString::from("sh"),
                "-c".into(),
                "".into(),
                "a b=c 'd'".into()
            ]
        );
        assert!(split_nul(b"").is_empty());
    }
}
