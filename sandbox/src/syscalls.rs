//! The seccomp allowlist (built with seccompiler) and what happens on a violation.
//!
//! Two filters are stacked. The first answers `clone3` with ENOSYS, so the C library falls
//! back to `clone`, whose flags a filter can see; the second allows `clone` only with
//! CLONE_THREAD (threads yes, new processes no), `prctl` only to name threads, and otherwise
//! only the listed calls. Any other call raises SIGSYS, whose handler writes one line naming
//! the call to stderr and exits with status 159 (128 + SIGSYS).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// What a vhost-user backend's serving loop needs once its files and socket are open, on
/// top of [`QUEUE_WORKER_SYSCALLS`] (which the process allows too): accepting frontends,
/// receiving messages and fds, setting up epoll and eventfds for queue kicks and calls,
/// starting threads. Backend-specific I/O calls come from the policy.
pub const VHOST_USER_SYSCALLS: &[libc::c_long] = &[
    // vhost-user socket
    libc::SYS_accept4,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    // queues: epoll, eventfds; file status for guest memory's fds
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_lseek,
    // threads (clone and prctl are further restricted below)
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_set_robust_list,
    libc::SYS_rt_sigaction,
    libc::SYS_sched_getaffinity,
    libc::SYS_prctl,
    // a worker thread narrowing its own filter (both only ever restrict)
    libc::SYS_seccomp,
];

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules did not compile to BPF.
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    /// This architecture has no filter.
    #[error("seccomp: unsupported architecture {0}")]
    Arch(&'static str),
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    /// The stop signals could not be blocked on a worker thread.
    #[error("cannot block the stop signals on a worker thread: {0}")]
    Mask(nix::Error),
}

fn arch() -> Result<TargetArch, SeccompError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// Installs the SIGSYS reporter and both filters on every thread of the process.
pub fn install(allowed: &[libc::c_long]) -> Result<(), SeccompError> {
    install_sigsys_handler()?;
    let arch = arch()?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        allowed.iter().map(|nr| (*nr, vec![])).collect();
    // Threads yes, new processes no.
    let thread_only = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )?;
    narrow(&mut rules, libc::SYS_clone, thread_only)?;
    // The serving loop's prctls: naming threads, and no_new_privs, which a worker thread
    // sets before narrowing its own filter (it is set already; setting it again changes
    // nothing).
    let prctl = |op: libc::c_int| {
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, op as u64)
            .and_then(|c| SeccompRule::new(vec![c]))
    };
    if let Some(r) = rules.get_mut(&libc::SYS_prctl) {
        *r = vec![prctl(libc::PR_SET_NAME)?, prctl(libc::PR_SET_NO_NEW_PRIVS)?];
    }
    // seccomp(2) only to add a filter, which can only take calls away.
    let add_filter = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::SECCOMP_SET_MODE_FILTER as u64,
    )?;
    narrow(&mut rules, libc::SYS_seccomp, add_filter)?;
    let allowlist = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)?;
    for filter in [no_clone3, allowlist] {
        let bpf: BpfProgram = filter.try_into()?;
        seccompiler::apply_filter_all_threads(&bpf)?;
    }
    Ok(())
}

/// What a queue worker thread of a backend needs besides its device's own I/O calls: its
/// epoll loop, eventfd kicks and calls, the allocator, logging, and ending. No accepting,
/// no fds received, no threads started, no files opened.
pub const QUEUE_WORKER_SYSCALLS: &[libc::c_long] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rseq,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
];

/// Narrows the calling thread (only it, and threads it starts later) to `allowed`, on top
/// of the process's filter; a call outside it ends the process as any violation does.
///
/// The signals sent to the process (`stop_signals`) are blocked on the thread first: the
/// kernel hands such a signal to any thread that does not block it, and their handlers
/// (a backend's sends `STOPPING=1` and re-raises it) make calls a narrowed thread may not.
pub fn narrow_this_thread(
    allowed: &[libc::c_long],
    stop_signals: &[nix::sys::signal::Signal],
) -> Result<(), SeccompError> {
    let mask: nix::sys::signal::SigSet = stop_signals.iter().copied().collect();
    mask.thread_block().map_err(SeccompError::Mask)?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = allowed.iter().map(|nr| (*nr, vec![])).collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch()?)?;
    let bpf: BpfProgram = filter.try_into()?;
    seccompiler::apply_filter(&bpf)?;
    Ok(())
}

/// Allows `nr`, if it is allowed at all, only when `condition` holds.
fn narrow(
    rules: &mut BTreeMap<i64, Vec<SeccompRule>>,
    nr: libc::c_long,
    condition: SeccompCondition,
) -> Result<(), SeccompError> {
    if let Some(r) = rules.get_mut(&nr) {
        *r = vec![SeccompRule::new(vec![condition])?];
    }
    Ok(())
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler only uses async-signal-safe calls.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = report_violation as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` (after signo, errno, code and the call
/// address) on 64-bit Linux.
const SI_SYSCALL_OFFSET: usize = 24;

/// SIGSYS handler: "sm-sandbox: seccomp blocked system call N" on stderr, then exit 159.
extern "C" fn report_violation(
    _sig: libc::c_int,
    info: *mut libc::siginfo_t,
    _ctx: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; the read stays inside it.
    let nr = unsafe {
        (info as *const u8)
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let mut line = *b"sm-sandbox: seccomp blocked system call           \n";
    let prefix = b"sm-sandbox: seccomp blocked system call ".len();
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (nr.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 || len == digits.len() {
            break;
        }
    }
    for i in 0..len {
        line[prefix + i] = digits[len - 1 - i];
    }
    line[prefix + len] = b'\n';
    // SAFETY: write and _exit are async-signal-safe; the buffer is a local array.
    unsafe {
        libc::write(2, line.as_ptr().cast(), prefix + len + 1);
        libc::_exit(128 + libc::SIGSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let arch = arch().unwrap();
        let all = || VHOST_USER_SYSCALLS.iter().chain(QUEUE_WORKER_SYSCALLS);
        let rules: BTreeMap<i64, Vec<SeccompRule>> = all().map(|nr| (*nr, vec![])).collect();
        let filter = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch);
        let bpf: BpfProgram = filter.unwrap().try_into().unwrap();
        assert!(bpf.len() > all().count());
        assert!(
            VHOST_USER_SYSCALLS
                .iter()
                .all(|nr| !QUEUE_WORKER_SYSCALLS.contains(nr)),
            "each call is listed once"
        );
    }
}
