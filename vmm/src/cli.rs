//! sm-vmm's flags as a type: the binary parses them, and `sm` builds sm-vmm's command line
//! from a value of it ([`sm_launch::CommandLine`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use sm_launch::{ArgWriter, CommandLine};

use crate::config::{self, VmConfig};

/// Boot a Linux guest on KVM and run COMMAND in it, exiting with its status.
/// Without COMMAND, an interactive shell on the serial console (Ctrl-A x quits).
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(name = "sm-vmm", version)]
pub struct VmmArgs {
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub mem: u64,
    /// Kernel: an ELF vmlinux with a PVH entry, or a bzImage [default: sm's own,
    /// $SM_DATA_DIR/sm-kernel/vmlinux; the Debian kernel is $SM_DATA_DIR/kernel/vmlinuz;
    /// SM_DATA_DIR=/usr/local/share/sm].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initramfs with sm-init [default: $SM_DATA_DIR/guest/initramfs.img].
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Extra kernel command-line parameters.
    #[arg(long, value_name = "PARAMS")]
    pub cmdline_append: Option<String>,
    /// Environment for the command, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<OsString>,
    /// A vhost-user-blk backend socket (repeatable: vda, vdb, ... in order).
    #[arg(long = "blk-socket", value_name = "PATH")]
    pub blk_socket: Vec<PathBuf>,
    /// A vhost-user-fs backend: mount TAG in the guest with `mount -t virtiofs TAG DIR`
    /// (repeatable).
    #[arg(long = "fs-socket", value_name = "TAG=PATH", value_parser = parse_fs_socket)]
    pub fs_socket: Vec<FsSocket>,
    /// After the virtio-fs backend of TAG hangs up, replay its requests on the backend that
    /// takes its socket next, as for block devices, instead of stopping the VM: only for a
    /// backend that keeps the guest's node IDs and open files across a restart
    /// (sm-vhost-user-fs --state-fd) and completes requests in order (repeatable).
    #[arg(long = "fs-replay", value_name = "TAG")]
    pub fs_replay: Vec<String>,
    /// A vhost-user-vsock backend (e.g. vhost-device-vsock) for host-guest sockets.
    #[arg(long = "vsock-socket", value_name = "PATH")]
    pub vsock_socket: Option<PathBuf>,
    /// The guest's vsock CID; must match what the vsock backend serves (default: its CID).
    #[arg(long, value_name = "N", requires = "vsock_socket")]
    pub cid: Option<u64>,
    /// A vhost-user-net backend (one queue pair); the guest's `eth0`.
    #[arg(long = "net-socket", value_name = "PATH")]
    pub net_socket: Option<PathBuf>,
    /// The guest's MAC address on `--net-socket` [default: 02:73:6d:00:00:01].
    #[arg(long, value_name = "MAC", requires = "net_socket", value_parser = parse_mac)]
    pub mac: Option<MacAddress>,
    /// Show the kernel boot log and sm-init's messages on stderr.
    #[arg(long)]
    pub verbose: bool,
    /// Serve the control API (HTTP/1.1, JSON) on this Unix socket: GET /vm, PUT /vm/pause,
    /// /vm/resume, /vm/shutdown.
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Start the VM from the snapshot in DIR (written by PUT /vm/snapshot) instead of
    /// booting: its vCPUs, memory and console come from the snapshot; the device flags must
    /// name the snapshotted VM's devices in the same order, each served by a fresh backend.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["kernel", "initrd", "cmdline_append", "env", "command"]
    )]
    pub restore: Option<PathBuf>,
    /// The command to run in the guest.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// One `--fs-socket TAG=PATH`: a virtio-fs backend and the tag the guest mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsSocket {
    /// The tag in the device's config space.
    pub tag: String,
    /// The backend's vhost-user socket.
    pub path: PathBuf,
}

/// Parses `TAG=PATH`: a non-empty tag of at most 36 bytes (the virtio-fs config field).
fn parse_fs_socket(v: &str) -> Result<FsSocket, String> {
    let (tag, path) = v.split_once('=').ok_or("expected TAG=PATH")?;
    if tag.is_empty() || tag.len() > crate::vhost_user::FS_TAG_MAX || tag.contains('\0') {
        return Err(format!(
            "tag '{tag}' must be 1 to {} bytes",
            crate::vhost_user::FS_TAG_MAX
        ));
    }
    if path.is_empty() {
        return Err("expected TAG=PATH".into());
    }
    Ok(FsSocket {
        tag: tag.to_string(),
        path: PathBuf::from(path),
    })
}

/// A MAC address, six octets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl std::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex octets); a multicast address cannot name one interface.
fn parse_mac(v: &str) -> Result<MacAddress, String> {
    let octets = v
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect::<Option<Vec<u8>>>()
        .and_then(|o| <[u8; 6]>::try_from(o).ok())
        .ok_or("expected six hex octets, e.g. 02:73:6d:00:00:01")?;
    if octets[0] & 1 != 0 {
        return Err(format!("{v} is a multicast address"));
    }
    Ok(MacAddress(octets))
}

/// The guest's name for the disk of the `index`-th `--blk-socket` (`vda`, ..., `vdz`, `vdaa`,
/// ...): sm-vmm attaches block devices first and in flag order, so the guest kernel names
/// them in that order.
pub fn blk_device_name(index: usize) -> String {
    // Linux's virtio_blk names disks like spreadsheet columns (drivers/block/virtio_blk.c).
    let mut suffix = Vec::new();
    let mut n = index + 1;
    while n > 0 {
        n -= 1;
        suffix.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    suffix.reverse();
    format!("vd{}", String::from_utf8_lossy(&suffix))
}

impl VmmArgs {
    /// Flags for a VM of `vcpus` and `mem` MiB, everything else at its default.
    pub fn new(vcpus: u32, mem: u64) -> VmmArgs {
        VmmArgs {
            vcpus,
            mem,
            kernel: None,
            initrd: None,
            cmdline_append: None,
            env: vec![],
            blk_socket: vec![],
            fs_socket: vec![],
            fs_replay: vec![],
            vsock_socket: None,
            cid: None,
            net_socket: None,
            mac: None,
            verbose: false,
            api_socket: None,
            restore: None,
            command: vec![],
        }
    }

    /// The VM these flags describe (defaults filled in; not yet validated).
    pub fn into_config(self) -> VmConfig {
        let interactive = self.command.is_empty();
        VmConfig {
            vcpus: self.vcpus,
            mem_mib: self.mem,
            kernel: self.kernel.unwrap_or_else(config::default_kernel),
            initrd: self.initrd.unwrap_or_else(config::default_initrd),
            cmdline_append: self.cmdline_append,
            verbose: self.verbose,
            command: (!interactive).then_some(self.command),
            env: self.env,
            blk_sockets: self.blk_socket,
            fs_sockets: self
                .fs_socket
                .into_iter()
                .map(|f| (f.tag, f.path))
                .collect(),
            fs_replay: self.fs_replay,
            vsock_socket: self.vsock_socket,
            cid: self.cid,
            net_socket: self.net_socket,
            mac: self.mac.map(|m| m.0).unwrap_or(config::DEFAULT_MAC),
        }
    }
}

impl CommandLine for VmmArgs {
    fn to_args(&self) -> Vec<OsString> {
        let VmmArgs {
            vcpus,
            mem,
            kernel,
            initrd,
            cmdline_append,
            env,
            blk_socket,
            fs_socket,
            fs_replay,
            vsock_socket,
            cid,
            net_socket,
            mac,
            verbose,
            api_socket,
            restore,
            command,
        } = self;
        let fs = fs_socket.iter().map(|f| {
            let mut v = OsString::from(format!("{}=", f.tag));
            v.push(&f.path);
            v
        });
        ArgWriter::new::<VmmArgs>()
            .value("vcpus", vcpus.to_string())
            .value("mem", mem.to_string())
            .option("kernel", kernel.as_ref())
            .option("initrd", initrd.as_ref())
            .option("cmdline_append", cmdline_append.as_ref())
            .values("env", env)
            .values("blk_socket", blk_socket)
            .values("fs_socket", fs)
            .values("fs_replay", fs_replay)
            .option("vsock_socket", vsock_socket.as_ref())
            .option("cid", cid.map(|c| c.to_string()))
            .option("net_socket", net_socket.as_ref())
            .option("mac", mac.map(|m| m.to_string()))
            .switch("verbose", *verbose)
            .option("api_socket", api_socket.as_ref())
            .option("restore", restore.as_ref())
            .trailing(command)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_parse_as_six_unicast_octets() {
        assert_eq!(
            parse_mac("02:73:6D:00:00:01"),
            Ok(MacAddress([0x02, 0x73, 0x6d, 0, 0, 1]))
        );
        assert_eq!(
            MacAddress([0x02, 0x73, 0x6d, 0, 0, 1]).to_string(),
            "02:73:6d:00:00:01"
        );
        for bad in [
            "",
            "02:73:6d:00:00",
            "02:73:6d:00:00:01:02",
            "2:73:6d:00:00:01",
            "zz:73:6d:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert!(parse_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));
    }

    #[test]
    fn flags_round_trip() {
        let mut a = VmmArgs::new(2, 512);
        sm_launch::assert_round_trip(&a);
        a.kernel = Some("/k/vmlinuz".into());
        a.initrd = Some("/k/initrd".into());
        a.cmdline_append = Some("quiet loglevel=0".into());
        a.env = vec!["A=b c".into(), "-x=1".into()];
        a.blk_socket = vec!["/r/root.sock".into(), "/r/blk 1.sock".into()];
        a.fs_socket = vec![FsSocket {
            tag: "m0".into(),
            path: "/r/fs=0.sock".into(),
        }];
        a.vsock_socket = Some("/r/vsock.sock".into());
        a.cid = Some(3);
        a.net_socket = Some("/r/net.sock".into());
        a.mac = Some(MacAddress([0x02, 0, 0, 0, 0xab, 0xcd]));
        a.verbose = true;
        a.api_socket = Some("/r/api 1.sock".into());
        a.command = vec!["sh".into(), "-c".into(), "exit 3".into(), "--".into()];
        sm_launch::assert_round_trip(&a);
        let mut r = VmmArgs::new(1, 256);
        r.restore = Some("/s/snap 1".into());
        r.api_socket = Some("/r/api.sock".into());
        sm_launch::assert_round_trip(&r);
    }

    #[test]
    fn restore_conflicts_with_boot_flags() {
        for extra in [
            &["--kernel", "/k"][..],
            &["--initrd", "/i"],
            &["-e", "A=1"],
            &["--", "true"],
        ] {
            let args = ["sm-vmm", "--restore", "/s"].iter().chain(extra);
            assert!(VmmArgs::try_parse_from(args).is_err(), "{extra:?}");
        }
        // A restore attaches fresh backends for the snapshotted VM's devices.
        let args = VmmArgs::try_parse_from([
            "sm-vmm",
            "--restore",
            "/s",
            "--blk-socket",
            "/b.sock",
            "--fs-socket",
            "w=/f.sock",
            "--vsock-socket",
            "/v.sock",
            "--cid",
            "7",
        ])
        .expect("device flags go with --restore");
        sm_launch::assert_round_trip(&args);
    }

    #[test]
    fn disks_are_named_as_linux_names_them() {
        assert_eq!(blk_device_name(0), "vda");
        assert_eq!(blk_device_name(25), "vdz");
        assert_eq!(blk_device_name(26), "vdaa");
        assert_eq!(blk_device_name(27), "vdab");
        assert_eq!(blk_device_name(26 + 26 * 26), "vdaaa");
    }

    #[test]
    fn a_bad_fs_socket_is_refused() {
        assert!(parse_fs_socket("noequals").is_err());
        assert!(parse_fs_socket("=/p").is_err());
        assert!(parse_fs_socket("t=").is_err());
        assert!(parse_fs_socket(&format!("{}=/p", "x".repeat(37))).is_err());
    }
}
