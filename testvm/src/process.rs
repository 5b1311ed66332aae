//! Child process hygiene: children die with the runner and stay out of the terminal's
//! process group, so a Ctrl-C reaches only the runner, which then stops them in order.

use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child of `cmd` get SIGKILL when the runner dies, run in its own process group,
/// and inherit `keep` (file descriptors that are close-on-exec in the runner).
pub fn supervise(cmd: &mut Command, keep: &[RawFd]) {
    let keep = keep.to_vec();
    let parent = std::process::id() as libc::pid_t;
    cmd.process_group(0);
    // SAFETY: in the forked child the closure calls only async-signal-safe functions
    // (prctl, getppid, fcntl, _exit), allocates nothing and takes no locks; it reads `keep`,
    // which it owns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != parent
            {
                libc::_exit(127);
            }
            for &fd in &keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}
