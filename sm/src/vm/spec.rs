//! What a VM is made of, parsed from the command line's shapes: `--mount`, `--volume`, `-p`.

use std::path::PathBuf;

/// Errors in a `--mount`, `--volume` or `-p` value.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The value does not have the documented shape.
    #[error("{flag} {value:?}: {why}")]
    Bad {
        /// The flag.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        why: String,
    },
}

fn bad(flag: &'static str, value: &str, why: impl Into<String>) -> SpecError {
    SpecError::Bad {
        flag,
        value: value.to_owned(),
        why: why.into(),
    }
}

/// How the fs backend treats symlinks (sm-vhost-user-fs `--symlinks`): the backend's own type.
pub use sm_vhost_user_fs::policy::SymlinkPolicy as Symlinks;

use sm_vhost_user_fs::idmap::IdMap;
/// An ID translation rule of the fs backend (`--translate-uid`, `--translate-gid`).
pub use sm_vhost_user_fs::idmap::IdRule;

/// A live host directory in the guest:
/// `HOST:GUEST[:ro][:symlinks=deny|opaque|follow][:dax][:devices][:suid][:uidmap=G-H-N][:gidmap=G-H-N][:idmap=G-H-N]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Host directory.
    pub host: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    /// Read-only in the guest.
    pub read_only: bool,
    /// Symlink policy.
    pub symlinks: Symlinks,
    /// Map files from the host's page cache (a DAX window) instead of copying them.
    pub dax: bool,
    /// The guest may make device nodes in the share (sm-vhost-user-fs `--allow-devices`);
    /// for trusted guests only, refused by default.
    pub devices: bool,
    /// Setuid and setgid bits the guest sets are kept (sm-vhost-user-fs `--allow-setuid`);
    /// cleared by default, as on a `nosuid` mount. For trusted guests only.
    pub suid: bool,
    /// User IDs translated between guest and host (`uidmap=GUEST-HOST-COUNT`, or `idmap=`
    /// for both), so the guest's root need not be the host's root.
    pub uid_map: Vec<IdRule>,
    /// Group IDs translated, as `uid_map` does user IDs (`gidmap=`, or `idmap=`).
    pub gid_map: Vec<IdRule>,
}

/// A writable block volume: `FILE:GUEST[:size=N]` (N in MiB, or with a K/M/G/T suffix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Host image file (created sparse and formatted ext4 on first use, kept after).
    pub file: PathBuf,
    /// Absolute guest path.
    pub guest: String,
    /// Size of a new volume in MiB.
    pub size_mib: u64,
}

/// A forwarded port: host 127.0.0.1:`host` to guest 127.0.0.1:`guest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortMap {
    /// Host port.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
}

fn guest_path(flag: &'static str, value: &str, p: &str) -> Result<String, SpecError> {
    if !p.starts_with('/') || p.contains('\0') {
        return Err(bad(flag, value, "the guest path must be absolute"));
    }
    Ok(p.to_owned())
}

impl std::str::FromStr for Mount {
    type Err = SpecError;
    fn from_str(v: &str) -> Result<Self, SpecError> {
        let mut parts = v.split(':');
        let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
            return Err(bad(
                "--mount",
                v,
                "expected HOST:GUEST[:ro][:symlinks=...][:dax][:devices][:suid][:uidmap=G-H-N][:gidmap=G-H-N]",
            ));
        };
        if host.is_empty() {
            return Err(bad("--mount", v, "the host directory is empty"));
        }
        let mut m = Mount {
            host: PathBuf::from(host),
            guest: guest_path("--mount", v, guest)?,
            read_only: false,
            symlinks: Symlinks::Opaque,
            dax: false,
            devices: false,
            suid: false,
            uid_map: vec![],
            gid_map: vec![],
        };
        for opt in parts {
            if let Some((key @ ("uidmap" | "gidmap" | "idmap"), range)) = opt.split_once('=') {
                let rule = id_range(range).ok_or_else(|| {
                    bad(
                        "--mount",
                        v,
                        format!("{key}= expects GUEST-HOST-COUNT, as in {key}=0-100000-65536"),
                    )
                })?;
                if key != "gidmap" {
                    m.uid_map.push(rule);
                }
                if key != "uidmap" {
                    m.gid_map.push(rule);
                }
                continue;
            }
            match opt {
                "ro" => m.read_only = true,
                "rw" => m.read_only = false,
                "symlinks=deny" => m.symlinks = Symlinks::Deny,
                "symlinks=opaque" => m.symlinks = Symlinks::Opaque,
                "symlinks=follow" => m.symlinks = Symlinks::Follow,
                "dax" => m.dax = true,
                "devices" => m.devices = true,
                "suid" => m.suid = true,
                "nosuid" => m.suid = false,
                o => return Err(bad("--mount", v, format!("unknown option {o:?}"))),
            }
        }
        for (what, rules) in [("uidmap", &m.uid_map), ("gidmap", &m.gid_map)] {
            if let Err(e) = IdMap::new(rules) {
                return Err(bad("--mount", v, format!("{what}: {e}")));
            }
        }
        Ok(m)
    }
}

/// `GUEST-HOST-COUNT`: the backend's `map:GUEST:HOST:COUNT` rule (`:` separates the mount's
/// options, so the range uses `-`).
fn id_range(range: &str) -> Option<IdRule> {
    let nums: Vec<&str> = range.split('-').collect();
    if nums.len() != 3 || nums.iter().any(|n| n.is_empty()) {
        return None;
    }
    format!("map:{}", nums.join(":")).parse().ok()
}

/// Parses a size: plain MiB, or a number with K, M, G or T (powers of 1024).
fn size_mib(s: &str) -> Option<u64> {
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 0),
        (i, 'M' | 'm') => (&s[..i], 1),
        (i, 'G' | 'g') => (&s[..i], 1024),
        (i, 'T' | 't') => (&s[..i], 1024 * 1024),
        _ => (s, 1),
    };
    let n: u64 = num.parse().ok()?;
    if mult == 0 {
        return (n % 1024 == 0 && n > 0).then_some(n / 1024);
    }
    n.checked_mul(mult).filter(|m| *m > 0)
}

impl std::str::FromStr for Volume {
    type Err = SpecError;
    fn from_str(v: &str) -> Result<Self, SpecError> {
        let mut parts = v.split(':');
        let (Some(file), Some(guest)) = (parts.next(), parts.next()) else {
            return Err(bad("--volume", v, "expected FILE:GUEST[:size=N]"));
        };
        if file.is_empty() {
            return Err(bad("--volume", v, "the volume file is empty"));
        }
        let mut vol = Volume {
            file: PathBuf::from(file),
            guest: guest_path("--volume", v, guest)?,
            size_mib: 1024,
        };
        for opt in parts {
            match opt.strip_prefix("size=") {
                Some(s) => {
                    vol.size_mib =
                        size_mib(s).ok_or_else(|| bad("--volume", v, format!("bad size {s:?}")))?
                }
                None => return Err(bad("--volume", v, format!("unknown option {opt:?}"))),
            }
        }
        Ok(vol)
    }
}

impl std::str::FromStr for PortMap {
    type Err = SpecError;
    fn from_str(v: &str) -> Result<Self, SpecError> {
        let (h, g) = v
            .split_once(':')
            .ok_or_else(|| bad("-p", v, "expected HOSTPORT:GUESTPORT"))?;
        let port = |s: &str| s.parse::<u16>().ok().filter(|p| *p > 0);
        match (port(h), port(g)) {
            (Some(host), Some(guest)) => Ok(PortMap { host, guest }),
            _ => Err(bad("-p", v, "ports are 1 to 65535")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_volumes_and_ports_parse() {
        let m: Mount = "/src:/work:ro:symlinks=deny".parse().unwrap();
        assert_eq!(
            (m.host.to_str(), m.guest.as_str(), m.read_only, m.symlinks),
            (Some("/src"), "/work", true, Symlinks::Deny)
        );
        let m: Mount = "/src:/work".parse().unwrap();
        assert_eq!(
            (m.read_only, m.symlinks, m.dax),
            (false, Symlinks::Opaque, false)
        );
        let m: Mount = "/src:/work:dax:ro".parse().unwrap();
        assert_eq!((m.read_only, m.dax, m.devices), (true, true, false));
        let m: Mount = "/src:/work:devices".parse().unwrap();
        assert_eq!((m.read_only, m.devices, m.suid), (false, true, false));
        let m: Mount = "/src:/work:suid".parse().unwrap();
        assert_eq!((m.devices, m.suid), (false, true));
        let m: Mount = "/src:/work:suid:nosuid".parse().unwrap();
        assert!(!m.suid);
        let m: Mount = "/src:/work:uidmap=0-100000-65536:gidmap=0-200000-10"
            .parse()
            .unwrap();
        assert_eq!(m.uid_map, ["map:0:100000:65536".parse().unwrap()]);
        assert_eq!(m.gid_map, ["map:0:200000:10".parse().unwrap()]);
        let m: Mount = "/src:/work:idmap=1000-0-1".parse().unwrap();
        assert_eq!((m.uid_map.len(), m.gid_map.len()), (1, 1));
        let v: Volume = "/c.img:/work/node_modules:size=1G".parse().unwrap();
        assert_eq!(v.size_mib, 1024);
        let v: Volume = "/c.img:/data:size=64".parse().unwrap();
        assert_eq!(v.size_mib, 64);
        let p: PortMap = "8080:80".parse().unwrap();
        assert_eq!((p.host, p.guest), (8080, 80));
    }

    #[test]
    fn bad_shapes_say_what_is_wrong() {
        for (v, why) in [
            ("/src", "expected HOST:GUEST"),
            ("/src:work", "must be absolute"),
            ("/src:/w:rx", "unknown option \"rx\""),
            ("/src:/w:uidmap=0:1:2", "uidmap= expects GUEST-HOST-COUNT"),
            ("/src:/w:gidmap=0-1", "gidmap= expects GUEST-HOST-COUNT"),
            ("/src:/w:idmap=0-1-0", "idmap= expects GUEST-HOST-COUNT"),
            ("/src:/w:uidmap=0-1-10:idmap=5-100-1", "uidmap: "),
        ] {
            let e = v.parse::<Mount>().unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        for v in [
            "/c.img:/d:size=0",
            "/c.img:/d:size=1X",
            "/c.img:/d:size=1000K",
        ] {
            assert!(v.parse::<Volume>().is_err(), "{v}");
        }
        for v in ["80", "0:80", "80:70000", "a:b"] {
            assert!(v.parse::<PortMap>().is_err(), "{v}");
        }
    }
}
