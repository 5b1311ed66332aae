//! Every process and device of one VM, decided in one place: which backends run with which
//! flags, and the order sm-vmm attaches their devices in, which fixes the virtio-mmio slots
//! and the guest's `/dev/vdX` names. Command lines are built from the binaries' own flag
//! types ([`sm_launch::CommandLine`]), so a renamed flag does not compile.

use std::path::{Path, PathBuf};

use sm_launch::CommandLine;
use sm_vhost_user_blk::cli::BlkArgs;
use sm_vhost_user_fs::cli::FsArgs;
use sm_vmm::cli::{blk_device_name, FsSocket, VmmArgs};

use super::network::{self, NetDevice, Network};
use super::process::{tool, INHERITED_FD};
use super::service::{Readiness, ServiceSpec};
use super::spec::{Mount, Volume};
use super::VmConfig;

/// DAX window of a `:dax` mount: address space only (no memory until the guest maps
/// files), enough for the Linux driver to keep 512 2 MiB ranges mapped at once.
pub const DAX_WINDOW_MIB: u64 = 1024;

/// The guest CID vhost-device-vsock serves (the guest's only vsock address).
pub const GUEST_CID: u64 = 3;

/// sm-vmm's control API socket's name in the runtime directory.
pub const API_SOCKET: &str = "api.sock";

/// One virtio-fs share: a host directory behind an sm-vhost-user-fs.
#[derive(Clone, Debug)]
pub struct Share {
    /// The mount it serves.
    pub mount: Mount,
    /// The tag the guest mounts (`mount -t virtiofs TAG`).
    pub tag: String,
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
}

/// What a disk holds.
#[derive(Clone, Debug)]
pub enum DiskRole {
    /// The image's read-only root file system (erofs).
    Root(PathBuf),
    /// A writable volume.
    Volume(Volume),
}

/// One virtio-blk disk behind an sm-vhost-user-blk.
#[derive(Clone, Debug)]
pub struct Disk {
    /// What it holds.
    pub role: DiskRole,
    /// The backend's vhost-user socket.
    pub socket: PathBuf,
    /// The guest's device node (`/dev/vda`, ...).
    pub guest_dev: String,
}

/// Every device of a VM, in the order sm-vmm attaches them.
#[derive(Clone, Debug)]
pub struct DeviceLayout {
    /// Disks, in `--blk-socket` order: the root image first, then the volumes.
    pub disks: Vec<Disk>,
    /// Shares, in `--fs-socket` order.
    pub shares: Vec<Share>,
    /// vhost-device-vsock's socket.
    pub vsock: PathBuf,
    /// The Unix socket the guest agent's vsock ports appear on (`<path>_<port>`).
    pub agent: PathBuf,
    /// sm-vmm's control API socket (`sm snapshot` pauses and snapshots through it).
    pub api: PathBuf,
    /// The network device, attached last.
    pub net: Option<NetDevice>,
}

impl DeviceLayout {
    /// The layout of `config`'s devices, with every socket under the runtime directory `dir`.
    pub fn new(config: &VmConfig, dir: &Path) -> DeviceLayout {
        let root = config
            .root_image
            .iter()
            .map(|image| (DiskRole::Root(image.clone()), dir.join("root.sock")));
        let volumes = config.volumes.iter().enumerate().map(|(i, v)| {
            (
                DiskRole::Volume(v.clone()),
                dir.join(format!("blk-{i}.sock")),
            )
        });
        let disks = root
            .chain(volumes)
            .enumerate()
            .map(|(i, (role, socket))| Disk {
                role,
                socket,
                guest_dev: format!("/dev/{}", blk_device_name(i)),
            })
            .collect();
        let shares = config
            .mounts
            .iter()
            .enumerate()
            .map(|(i, m)| Share {
                mount: m.clone(),
                tag: format!("m{i}"),
                socket: dir.join(format!("fs-{i}.sock")),
            })
            .collect();
        DeviceLayout {
            disks,
            shares,
            vsock: dir.join("vsock.sock"),
            agent: dir.join("vm.vsock"),
            api: dir.join(API_SOCKET),
            net: match &config.network {
                Network::None => None,
                Network::User(policy) => Some(NetDevice {
                    socket: dir.join("net.sock"),
                    policy: policy.clone(),
                }),
            },
        }
    }

    /// The root image's disk, if the VM runs an image.
    pub fn root_disk(&self) -> Option<&Disk> {
        self.disks
            .iter()
            .find(|d| matches!(d.role, DiskRole::Root(_)))
    }

    /// The volumes' disks with their volumes, in order.
    pub fn volume_disks(&self) -> impl Iterator<Item = (&Disk, &Volume)> {
        self.disks.iter().filter_map(|d| match &d.role {
            DiskRole::Volume(v) => Some((d, v)),
            DiskRole::Root(_) => None,
        })
    }

    /// sm-vmm's flags: every device in layout order, the agent's vsock, and a guest command
    /// that keeps the VM up until sm stops it (the agent runs the real commands).
    pub fn vmm_args(&self, config: &VmConfig, verbose: bool) -> VmmArgs {
        let mut args = VmmArgs::new(config.vcpus, config.mem_mib);
        args.blk_socket = self.disks.iter().map(|d| d.socket.clone()).collect();
        args.fs_socket = self
            .shares
            .iter()
            .map(|s| FsSocket {
                tag: s.tag.clone(),
                path: s.socket.clone(),
            })
            .collect();
        // Each share's backend keeps its tables in the journal sm holds (`--state-fd`).
        args.fs_replay = self.shares.iter().map(|s| s.tag.clone()).collect();
        args.vsock_socket = Some(self.vsock.clone());
        args.api_socket = Some(self.api.clone());
        args.net_socket = self.net.as_ref().map(|n| n.socket.clone());
        args.verbose = verbose;
        let net_arg = self.net.as_ref().map(|_| network::kernel_arg());
        args.cmdline_append = match (net_arg, &config.kernel_args) {
            (Some(n), Some(k)) => Some(format!("{n} {k}")),
            (n, k) => n.or_else(|| k.clone()),
        };
        args.command = vec!["sleep".into(), "2147483647".into()];
        args
    }

    /// sm-vmm's flags to restore the snapshot in `snapshot` onto this layout's fresh
    /// backends: the same devices in the same order as [`DeviceLayout::vmm_args`], no
    /// command (the guest continues where it was).
    pub fn restore_args(&self, config: &VmConfig, snapshot: &Path, verbose: bool) -> VmmArgs {
        let mut args = self.vmm_args(config, verbose);
        args.command = vec![];
        args.cmdline_append = None;
        args.cid = Some(GUEST_CID);
        args.restore = Some(snapshot.to_owned());
        args
    }
}

impl Disk {
    /// The backend's flags: the root image read-only, a volume at its size (`size_mib`);
    /// the socket is sm's, inherited as descriptor 3.
    pub fn backend_args(&self, size_mib: Option<u64>) -> BlkArgs {
        let args = match &self.role {
            DiskRole::Root(image) => BlkArgs {
                read_only: true,
                ..BlkArgs::new(&self.socket, image)
            },
            DiskRole::Volume(v) => BlkArgs {
                size_mib,
                ..BlkArgs::new(&self.socket, &v.file)
            },
        };
        BlkArgs {
            socket: None,
            fd: Some(INHERITED_FD),
            ..args
        }
    }

    /// What the supervisor runs for this disk, named `name`.
    pub fn service(&self, name: String, size_mib: Option<u64>) -> ServiceSpec {
        let image = match &self.role {
            DiskRole::Root(image) => image.clone(),
            DiskRole::Volume(v) => v.file.clone(),
        };
        ServiceSpec {
            name,
            program: tool("sm-vhost-user-blk"),
            args: self.backend_args(size_mib).to_args(),
            socket: self.socket.clone(),
            readiness: Readiness::Notify,
            image: Some(image),
            stale: vec![],
            keeps_state: false,
        }
    }
}

impl Share {
    /// The backend's flags: the mount's policy, under the share's tag; the socket is sm's,
    /// inherited as descriptor 3, and its crash journal the memfd sm keeps, descriptor 4.
    pub fn backend_args(&self) -> FsArgs {
        let m = &self.mount;
        FsArgs {
            tag: Some(self.tag.clone()),
            symlinks: m.symlinks,
            read_only: m.read_only,
            allow_devices: m.devices,
            allow_setuid: m.suid,
            translate_uid: m.uid_map.clone(),
            translate_gid: m.gid_map.clone(),
            dax_window_mib: if m.dax { DAX_WINDOW_MIB } else { 0 },
            socket: None,
            fd: Some(INHERITED_FD),
            state_fd: Some(INHERITED_FD + 1),
            ..FsArgs::new(&self.socket, &m.host)
        }
    }

    /// What the supervisor runs for this share.
    pub fn service(&self) -> ServiceSpec {
        ServiceSpec {
            name: format!("fs backend for {}", self.mount.host.display()),
            program: tool("sm-vhost-user-fs"),
            args: self.backend_args().to_args(),
            socket: self.socket.clone(),
            readiness: Readiness::Notify,
            image: None,
            stale: vec![],
            keeps_state: true,
        }
    }
}

/// What the supervisor runs for the agent's vsock: vhost-device-vsock (a peer's binary: its
/// flags are its own; it binds its sockets itself and speaks no sd_notify).
pub fn vsock_service(layout: &DeviceLayout) -> ServiceSpec {
    let args = [
        "--guest-cid".into(),
        GUEST_CID.to_string().into(),
        "--socket".into(),
        layout.vsock.clone().into(),
        "--uds-path".into(),
        layout.agent.clone().into(),
    ];
    ServiceSpec {
        name: "vhost-device-vsock".into(),
        program: tool("vhost-device-vsock"),
        args: args.into(),
        socket: layout.vsock.clone(),
        readiness: Readiness::SocketFile,
        image: None,
        stale: vec![layout.vsock.clone(), layout.agent.clone()],
        keeps_state: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::spec::Symlinks;

    fn config(root: bool, volumes: usize, mounts: usize) -> VmConfig {
        VmConfig {
            root_image: root.then(|| PathBuf::from("/i/root.erofs")),
            volumes: (0..volumes)
                .map(|i| Volume {
                    file: format!("/v/{i}.img").into(),
                    guest: format!("/vol{i}"),
                    size_mib: 64,
                })
                .collect(),
            mounts: (0..mounts)
                .map(|i| Mount {
                    host: format!("/h/{i}").into(),
                    guest: format!("/m{i}"),
                    read_only: false,
                    symlinks: Symlinks::Opaque,
                    dax: false,
                    devices: false,
                    suid: false,
                    uid_map: vec![],
                    gid_map: vec![],
                })
                .collect(),
            ..VmConfig::default()
        }
    }

    #[test]
    fn the_root_image_is_vda_and_volumes_follow() {
        let l = DeviceLayout::new(&config(true, 2, 0), Path::new("/r"));
        let devs: Vec<_> = l.disks.iter().map(|d| d.guest_dev.as_str()).collect();
        assert_eq!(devs, ["/dev/vda", "/dev/vdb", "/dev/vdc"]);
        assert_eq!(l.root_disk().unwrap().socket, Path::new("/r/root.sock"));
        let vols: Vec<_> = l
            .volume_disks()
            .map(|(d, v)| (d.guest_dev.clone(), v.guest.clone()))
            .collect();
        assert_eq!(
            vols,
            [
                ("/dev/vdb".into(), "/vol0".into()),
                ("/dev/vdc".into(), "/vol1".into())
            ]
        );
        let l = DeviceLayout::new(&config(false, 1, 0), Path::new("/r"));
        assert_eq!(l.disks[0].guest_dev, "/dev/vda");
        assert!(l.root_disk().is_none());
    }

    #[test]
    fn sm_vmm_gets_the_disks_in_layout_order() {
        let c = config(true, 2, 2);
        let l = DeviceLayout::new(&c, Path::new("/r"));
        let a = l.vmm_args(&c, false);
        let sockets: Vec<_> = l.disks.iter().map(|d| d.socket.clone()).collect();
        assert_eq!(a.blk_socket, sockets);
        let tags: Vec<_> = a.fs_socket.iter().map(|f| f.tag.as_str()).collect();
        assert_eq!(tags, ["m0", "m1"]);
        assert_eq!(a.vsock_socket.as_deref(), Some(Path::new("/r/vsock.sock")));
        assert_eq!(a.api_socket.as_deref(), Some(Path::new("/r/api.sock")));
        sm_launch::assert_round_trip(&a);
    }

    #[test]
    fn a_restore_names_the_same_devices_in_the_same_order_and_no_command() {
        let c = config(true, 2, 2);
        let l = DeviceLayout::new(&c, Path::new("/r"));
        let boot = l.vmm_args(&c, false);
        let r = l.restore_args(&c, Path::new("/s/snap"), false);
        assert_eq!(r.restore.as_deref(), Some(Path::new("/s/snap")));
        assert_eq!(
            (&r.blk_socket, &r.fs_socket, &r.vsock_socket),
            (&boot.blk_socket, &boot.fs_socket, &boot.vsock_socket)
        );
        assert!(r.command.is_empty());
        assert_eq!(r.api_socket.as_deref(), Some(Path::new("/r/api.sock")));
    }

    #[test]
    fn each_share_gets_its_mounts_policy_and_only_a_devices_mount_makes_nodes() {
        let mut c = config(false, 0, 2);
        c.mounts[1].devices = true;
        c.mounts[1].suid = true;
        c.mounts[1].dax = true;
        c.mounts[1].read_only = true;
        c.mounts[1].symlinks = Symlinks::Deny;
        c.mounts[1].uid_map = vec!["map:0:100000:65536".parse().unwrap()];
        let l = DeviceLayout::new(&c, Path::new("/r"));
        let (a, b) = (l.shares[0].backend_args(), l.shares[1].backend_args());
        assert_eq!((a.allow_devices, b.allow_devices), (false, true));
        assert_eq!((a.allow_setuid, b.allow_setuid), (false, true));
        assert_eq!(
            (a.tag.as_deref(), b.tag.as_deref()),
            (Some("m0"), Some("m1"))
        );
        assert_eq!((a.dax_window_mib, b.dax_window_mib), (0, DAX_WINDOW_MIB));
        assert!(!a.read_only && b.read_only);
        assert_eq!((a.symlinks, b.symlinks), (Symlinks::Opaque, Symlinks::Deny));
        assert_eq!(b.shared_dir, Path::new("/h/1"));
        sm_launch::assert_round_trip(&b);
        let svc = l.shares[1].service();
        assert!(svc.args.iter().any(|x| x == "--allow-devices"));
        assert!(
            svc.args
                .iter()
                .any(|x| x == "--translate-uid=map:0:100000:65536"),
            "{svc:?}"
        );
        assert!(!svc
            .args
            .iter()
            .any(|x| x.to_string_lossy().starts_with("--translate-gid")));
        assert!(svc.args.iter().any(|x| x == "--fd=3"), "{svc:?}");
        assert_eq!(b.socket, None);
    }

    #[test]
    fn the_root_disk_is_read_only_and_volumes_carry_their_size() {
        let l = DeviceLayout::new(&config(true, 1, 0), Path::new("/r"));
        let root = l.disks[0].backend_args(None);
        assert!(root.read_only);
        assert_eq!(root.file, Path::new("/i/root.erofs"));
        let vol = l.disks[1].backend_args(Some(64));
        assert!(!vol.read_only);
        assert_eq!(vol.size_mib, Some(64));
        assert_eq!((vol.socket.as_deref(), vol.fd), (None, Some(3)));
        sm_launch::assert_round_trip(&vol);
        let svc = l.disks[1].service("volume /v/0.img".into(), Some(64));
        assert_eq!(svc.image.as_deref(), Some(Path::new("/v/0.img")));
        assert_eq!(svc.socket, Path::new("/r/blk-0.sock"));
    }
}
