//! sm-vhost-user-fs's flags as a type: the binary parses them, and `sm` builds the backend's
//! command line from a value of it ([`sm_launch::CommandLine`]).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use sm_launch::{ArgWriter, CommandLine};
use sm_vhost_user_common::startup::ListenArgs;

use crate::confine::Isolation;
use crate::idmap::IdRule;
use crate::policy::{CacheMode, SymlinkPolicy};

/// Share a host directory with a guest as a virtio-fs device over vhost-user.
#[derive(Parser, Clone, Debug, PartialEq, Eq)]
#[command(name = "sm-vhost-user-fs", version)]
pub struct FsArgs {
    /// vhost-user socket to listen on (created; a stale socket is replaced). Exactly one of
    /// --socket, --fd and socket activation (LISTEN_FDS) gives the socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Serve on this inherited listening socket instead of binding one (virtiofsd's flag).
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,
    /// Directory to share; the guest sees nothing outside it.
    #[arg(long)]
    pub shared_dir: PathBuf,
    /// Tag announced in the device config (frontends such as QEMU bring their own).
    #[arg(long)]
    pub tag: Option<String>,
    /// Symlink policy.
    #[arg(long, value_enum, default_value_t = SymlinkPolicy::Opaque)]
    pub symlinks: SymlinkPolicy,
    /// Refuse every change (EROFS).
    #[arg(long)]
    pub read_only: bool,
    /// Guest caching: `auto` (host changes visible within 1 s), `always`, `never`.
    #[arg(long, value_enum, default_value_t = CacheMode::Auto)]
    pub cache: CacheMode,
    /// Answer the guest's OPEN of a file. Without it a writable share with cache `auto` or
    /// `always` and no DAX window declines OPEN (FUSE's no-open mode): the guest opens files
    /// on its own and a READ or WRITE opens the host file itself, so reading a small file is
    /// one request, not three.
    #[arg(long)]
    pub open_requests: bool,
    /// Process isolation.
    #[arg(long, value_enum, default_value_t = Isolation::Namespace)]
    pub sandbox: Isolation,
    /// Let the guest make character and block device nodes (mknod) in the share; refused
    /// by default, as a guest-made device node on a host directory is a host escalation.
    /// For trusted guests only; the backend must run as root.
    #[arg(long)]
    pub allow_devices: bool,
    /// Keep the setuid and setgid bits the guest sets on files in the share; cleared by
    /// default (as a `nosuid` mount makes them inert), since a guest could otherwise leave a
    /// setuid-root program on the host. For trusted single-tenant guests only.
    #[arg(long)]
    pub allow_setuid: bool,
    /// Translate user IDs between guest and host (repeatable, virtiofsd's syntax):
    /// `map:GUEST:HOST:COUNT`, `guest:GUEST:HOST:COUNT` and `host:HOST:GUEST:COUNT` (one
    /// way), `squash-guest:GUEST:COUNT:HOST`, `squash-host:HOST:COUNT:GUEST`,
    /// `forbid-guest:GUEST:COUNT` (EPERM). Unmatched guest IDs pass unchanged; once a rule
    /// maps host to guest, unmatched host IDs show as 65534.
    #[arg(long, value_name = "RULE")]
    pub translate_uid: Vec<IdRule>,
    /// Translate group IDs, as --translate-uid does user IDs.
    #[arg(long, value_name = "RULE")]
    pub translate_gid: Vec<IdRule>,
    /// Size of the DAX window in MiB (0: no DAX), a multiple of 2: the guest can then mount
    /// with `-o dax=always` and map the host's page cache directly.
    #[arg(long, default_value_t = 0)]
    pub dax_window_mib: u64,
    /// Worker threads per request queue (0: requests run on the queue's own thread).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub thread_pool_size: u16,
    /// An inherited memfd for the crash journal: every change to the node and handle tables
    /// is recorded there, and a backend started with a journal that holds a session takes
    /// over the guest's node IDs and open files (the supervisor keeps the memfd across
    /// restarts). Not with --thread-pool-size (replay needs in-order completion).
    #[arg(long, value_name = "N", conflicts_with = "thread_pool_size")]
    pub state_fd: Option<i32>,
}

impl FsArgs {
    /// Flags sharing `shared_dir` on `socket`, everything else at its default.
    pub fn new(socket: impl Into<PathBuf>, shared_dir: impl Into<PathBuf>) -> FsArgs {
        FsArgs {
            socket: Some(socket.into()),
            fd: None,
            shared_dir: shared_dir.into(),
            tag: None,
            symlinks: SymlinkPolicy::Opaque,
            read_only: false,
            cache: CacheMode::Auto,
            open_requests: false,
            sandbox: Isolation::Namespace,
            allow_devices: false,
            allow_setuid: false,
            translate_uid: vec![],
            translate_gid: vec![],
            dax_window_mib: 0,
            thread_pool_size: 0,
            state_fd: None,
        }
    }
}

impl ListenArgs for FsArgs {
    fn socket(&self) -> Option<&std::path::Path> {
        self.socket.as_deref()
    }

    fn fd(&self) -> Option<i32> {
        self.fd
    }

    fn kept_fds(&self) -> Vec<i32> {
        self.state_fd.into_iter().collect()
    }
}

impl CommandLine for FsArgs {
    fn to_args(&self) -> Vec<OsString> {
        let FsArgs {
            socket,
            fd,
            shared_dir,
            tag,
            symlinks,
            read_only,
            cache,
            open_requests,
            sandbox,
            allow_devices,
            allow_setuid,
            translate_uid,
            translate_gid,
            dax_window_mib,
            thread_pool_size,
            state_fd,
        } = self;
        ArgWriter::new::<FsArgs>()
            .option("socket", socket.as_ref())
            .option("fd", fd.map(|f| f.to_string()))
            .value("shared_dir", shared_dir)
            .option("tag", tag.as_ref())
            .choice("symlinks", symlinks)
            .switch("read_only", *read_only)
            .choice("cache", cache)
            .switch("open_requests", *open_requests)
            .choice("sandbox", sandbox)
            .switch("allow_devices", *allow_devices)
            .switch("allow_setuid", *allow_setuid)
            .values(
                "translate_uid",
                translate_uid.iter().map(ToString::to_string),
            )
            .values(
                "translate_gid",
                translate_gid.iter().map(ToString::to_string),
            )
            .value("dax_window_mib", dax_window_mib.to_string())
            // Only when set: the default conflicts with --state-fd.
            .option(
                "thread_pool_size",
                (*thread_pool_size != 0).then(|| thread_pool_size.to_string()),
            )
            .option("state_fd", state_fd.map(|f| f.to_string()))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip() {
        let mut a = FsArgs::new("/r/fs-0.sock", "/home/u/my app");
        sm_launch::assert_round_trip(&a);
        a.tag = Some("m0".into());
        a.symlinks = SymlinkPolicy::Follow;
        a.read_only = true;
        a.cache = CacheMode::Never;
        a.open_requests = true;
        a.sandbox = Isolation::Chroot;
        a.allow_devices = true;
        a.allow_setuid = true;
        a.translate_uid = vec![
            "map:0:100000:65536".parse().unwrap(),
            "forbid-guest:65536:10".parse().unwrap(),
        ];
        a.translate_gid = vec!["squash-guest:0:65536:100000".parse().unwrap()];
        a.dax_window_mib = 1024;
        a.thread_pool_size = 4;
        sm_launch::assert_round_trip(&a);
        sm_launch::assert_round_trip(&FsArgs {
            socket: None,
            fd: Some(7),
            ..a.clone()
        });
        sm_launch::assert_round_trip(&FsArgs {
            thread_pool_size: 0,
            state_fd: Some(4),
            ..a.clone()
        });
        for p in [SymlinkPolicy::Deny, SymlinkPolicy::Opaque] {
            sm_launch::assert_round_trip(&FsArgs {
                symlinks: p,
                ..a.clone()
            });
        }
    }
}
