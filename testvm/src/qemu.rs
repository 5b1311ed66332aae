//! The QEMU command line of the test VM: TCG with an SVM+NPT CPU on q35, shared memory for
//! vhost-user-fs, the kernel console on ttyS0 (SeaBIOS and the boot loader also write there)
//! and the command's stdout/stderr on the virtio-serial ports `sm.stdout`/`sm.stderr`
//! (the ISA UART costs QEMU one write(2) per byte).

use crate::tools::Tools;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::process::Command;

/// Everything that varies between test VM runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Kernel command line.
    pub append: String,
    /// virtio-fs devices: (tag, vhost-user socket).
    pub fs: Vec<(String, PathBuf)>,
    /// Where ttyS0 (the kernel console) goes.
    pub console: Console,
    /// Write end of the pipe for the port `sm.stdout`.
    pub stdout_fd: RawFd,
    /// Write end of the pipe for the port `sm.stderr`.
    pub stderr_fd: RawFd,
    /// QEMU's end of the socket pair for the port `sm.tick` ([`crate::tick`]).
    pub tick_fd: RawFd,
    /// QEMU's QMP socket (for the report on a stalled test VM).
    pub monitor: PathBuf,
}

/// Where the test VM's kernel console goes.
#[derive(Debug, Clone)]
pub enum Console {
    /// The write end of an inherited pipe.
    Pipe(RawFd),
    /// A file (kept for a post-mortem when the test VM stalls).
    File(PathBuf),
}

/// The kernel command line: warnings only unless `verbose` (so a stall leaves a trace),
/// console on ttyS0, reboot (so QEMU exits) on panic.
pub fn kernel_cmdline(nonce: &str, verbose: bool) -> String {
    let mut s = format!("console=ttyS0 panic=-1 edd=off mitigations=off sm.nonce={nonce}");
    s.push_str(if verbose {
        " sm.verbose=1"
    } else {
        " quiet loglevel=4 kvm.report_ignored_msrs=0"
    });
    s
}

/// The QEMU command for `cfg` (the fds in `cfg` must be inherited by the child).
pub fn command(tools: &Tools, cfg: &Config) -> Command {
    let mut cmd = Command::new(&tools.qemu);
    let mem = format!("{}M", cfg.mem_mib);
    cmd.args(["-accel", "tcg,thread=multi,tb-size=512"])
        .args(["-cpu", "EPYC,+svm,+npt"])
        .args(["-M", "q35,memory-backend=mem"])
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={mem},share=on"))
        .args(["-m", &mem])
        .args(["-smp", &cfg.cpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            escape(&cfg.monitor.to_string_lossy())
        ))
        .arg("-kernel")
        .arg(&tools.kernel)
        .arg("-initrd")
        .arg(&tools.initramfs)
        .args(["-append", &cfg.append]);
    let console = match &cfg.console {
        Console::Pipe(fd) => pipe_chardev("con", *fd),
        Console::File(path) => format!("file,id=con,path={}", escape(&path.to_string_lossy())),
    };
    cmd.args(["-chardev", &console, "-serial", "chardev:con"]);
    cmd.args(["-device", "virtio-serial-pci,id=vser"]);
    for (id, fd) in [("stdout", cfg.stdout_fd), ("stderr", cfg.stderr_fd)] {
        cmd.args(["-chardev", &pipe_chardev(id, fd)])
            .arg("-device")
            .arg(format!(
                "virtserialport,bus=vser.0,chardev={id},name=sm.{id}"
            ));
    }
    cmd.arg("-chardev")
        .arg(format!("socket,id=tick,fd={}", cfg.tick_fd))
        .args([
            "-device",
            "virtserialport,bus=vser.0,chardev=tick,name=sm.tick",
        ]);
    for (tag, socket) in &cfg.fs {
        cmd.arg("-chardev")
            .arg(format!(
                "socket,id=fs-{tag},path={}",
                escape(&socket.to_string_lossy())
            ))
            .arg("-device")
            .arg(format!("vhost-user-fs-pci,chardev=fs-{tag},tag={tag}"));
    }
    cmd
}

/// A chardev `id` writing into `fd`, an inherited pipe.
fn pipe_chardev(id: &str, fd: RawFd) -> String {
    format!("file,id={id},path=/dev/fd/{fd},append=on")
}

/// Escapes a value inside a QEMU `key=value,...` option (commas are doubled).
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}
