//! An image to boot: its root file system (pulled and built if needed) and what its
//! configuration says to run: Entrypoint + Cmd, Env, WorkingDir and User.

use std::path::PathBuf;

use sm_oci::progress::Progress;
use sm_oci::{Cache, Digest, ImageRef, PullOptions, PullPolicy, RunConfig};

use crate::Vm;

/// A pulled image ready to boot.
pub struct PulledImage {
    /// Its read-only root file system image.
    pub rootfs: PathBuf,
    /// Its run configuration.
    pub config: RunConfig,
    /// The digest of its manifest (what a bake's cache key names it by).
    pub manifest: Digest,
}

/// Finds `reference` in the image store, pulling or re-reading it first as `policy` says
/// (a local layout or archive that changed since it was imported is read again).
pub fn resolve(reference: &str, insecure: bool, policy: PullPolicy) -> Result<PulledImage, String> {
    let image = ImageRef::parse(reference).map_err(|e| e.to_string())?;
    let cache = Cache::open_default().map_err(|e| e.to_string())?;
    let opts = PullOptions {
        platform: "linux/amd64".parse().map_err(|e| format!("{e}"))?,
        insecure,
    };
    sm_oci::ensure(&cache, &image, &opts, policy, &Progress::auto()).map_err(|e| e.to_string())?;
    let config = sm_oci::image_config(&cache, &image).map_err(|e| e.to_string())?;
    let record = sm_oci::rootfs::image_record(&cache, &image).map_err(|e| e.to_string())?;
    let rootfs = sm_oci::rootfs::build(&cache, &record).map_err(|e| e.to_string())?;
    Ok(PulledImage {
        rootfs,
        config,
        manifest: record.manifest,
    })
}

/// What to run: argv, environment, working directory and user.
pub struct Plan {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// The image's environment (the user's `-e` comes after and wins).
    pub env: Vec<(String, String)>,
    /// The image's working directory.
    pub workdir: Option<String>,
    /// The image's user as numbers.
    pub user: Option<(u32, u32)>,
}

/// Combines the image's configuration with the command line, as docker does: a command
/// after `--` replaces Cmd and follows Entrypoint.
pub fn plan(image: Option<&PulledImage>, command: Vec<String>, vm: &Vm) -> Result<Plan, String> {
    let Some(image) = image else {
        let argv = if command.is_empty() {
            vec!["sh".into()]
        } else {
            command
        };
        return Ok(Plan {
            argv,
            env: vec![],
            workdir: None,
            user: None,
        });
    };
    let c = &image.config;
    let mut argv = c.entrypoint.clone().unwrap_or_default();
    argv.extend(if command.is_empty() {
        c.cmd.clone().unwrap_or_default()
    } else {
        command
    });
    if argv.is_empty() {
        return Err("the image names no command (no Entrypoint or Cmd): pass one after --".into());
    }
    let env = c
        .env
        .iter()
        .flatten()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let workdir = c.working_dir.clone().filter(|w| !w.is_empty());
    let user = match c.user.as_deref().filter(|u| !u.is_empty()) {
        Some(u) => Some(resolve_user(u, vm)?),
        None => None,
    };
    Ok(Plan {
        argv,
        env,
        workdir,
        user,
    })
}

/// `user[:group]` by number or by name in the image's /etc/passwd and /etc/group.
fn resolve_user(spec: &str, vm: &Vm) -> Result<(u32, u32), String> {
    let read = |f: &str| {
        vm.read_file(f, 1 << 20)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read("/etc/passwd");
    let entry = |name: &str| {
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == name)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, entry_by_uid(&passwd, n).unwrap_or(n)),
        Err(_) => {
            entry(user).ok_or_else(|| format!("image user {user:?} is not in its /etc/passwd"))?
        }
    };
    let gid = match group {
        None => primary,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read("/etc/group")
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| format!("image group {g:?} is not in its /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// The primary group of `uid` in a passwd file.
fn entry_by_uid(passwd: &str, uid: u32) -> Option<u32> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[2].parse() == Ok(uid))
        .and_then(|f| f[3].parse().ok())
}
