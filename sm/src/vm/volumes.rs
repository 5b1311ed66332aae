//! The files behind a clone's writable volumes. A volume still mounted in the guest when the
//! snapshot was taken lives on in the guest's RAM (its page cache, the file system's state),
//! so only a copy of the snapshot's own file fits it. A volume the bake unmounted first
//! ([`VolumeRecord::detached`]) is mounted again by the clone, so any file holding that file
//! system fits: the user's own, when no other process serves it, so what clones write there
//! persists across restores the way `sm run --volume` does; a private copy otherwise.
//! Copies are reflinks where the file system can, else sparse copies.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::record::{volume_file_name, RunRecord, VolumeRecord};

/// Whether a process serves `path` as a writable volume now: sm-vhost-user-blk holds an
/// exclusive open-file-description lock on it for as long as it runs (probed with
/// F_OFD_GETLK, which takes nothing).
pub fn served(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return false;
    };
    let mut lock = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    let probed = nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_OFD_GETLK(&mut lock));
    probed.is_ok() && lock.l_type != libc::F_UNLCK as libc::c_short
}

/// Whether a clone of `snapshot` may use volume `index`'s recorded file (the user's) in
/// place: the bake unmounted it, and the file is missing (it is then created as a copy of
/// the baked volume) or is a regular file of the baked volume's size that nobody serves.
pub fn user_file_fits(snapshot: &Path, index: usize, v: &VolumeRecord) -> bool {
    if !v.detached || v.read_only {
        return false;
    }
    match std::fs::metadata(&v.file) {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(m) => {
            let baked = std::fs::metadata(snapshot.join(volume_file_name(index)));
            m.is_file() && baked.is_ok_and(|b| b.len() == m.len()) && !served(&v.file)
        }
    }
}

/// Points each writable volume of `record` (a clone's, of `snapshot`) at its file: `own`
/// names a host file to use in place (created as a copy of the snapshot's volume when it is
/// missing), `None` a private copy in `dir`. Every file created is pushed on `created`, so
/// a clone that fails to start can remove them.
pub fn place(
    record: &mut RunRecord,
    snapshot: &Path,
    dir: &Path,
    mut own: impl FnMut(usize, &VolumeRecord) -> Option<PathBuf>,
    created: &mut Vec<PathBuf>,
) -> Result<(), String> {
    for (i, v) in record.volumes.iter_mut().enumerate() {
        if v.read_only {
            continue;
        }
        let dst = match own(i, v) {
            Some(host) if host.exists() => {
                v.file = host;
                continue;
            }
            Some(host) => host,
            None => dir.join(volume_file_name(i)),
        };
        let src = snapshot.join(volume_file_name(i));
        crate::trace::step(format_args!(
            "copying {} to {}",
            src.display(),
            dst.display()
        ));
        sm_snapshot::clone_file(&src, &dst).map_err(|e| e.to_string())?;
        created.push(dst.clone());
        v.file = dst;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(file: &Path, detached: bool) -> RunRecord {
        let mut r = RunRecord::new(&crate::VmConfig {
            name: None,
            mem_mib: 128,
            vcpus: 1,
            mounts: vec![],
            volumes: vec![crate::Volume {
                file: file.into(),
                guest: "/cache".into(),
                size_mib: 0,
            }],
            ports: vec![],
            root_image: None,
            network: crate::vm::Network::None,
            kernel_args: None,
            backend_watchdog: crate::vm::BACKEND_WATCHDOG,
        });
        r.volumes[0].detached = detached;
        r
    }

    #[test]
    fn the_users_file_fits_only_a_detached_volume_of_the_baked_size_nobody_serves() {
        let t = tempfile::tempdir().unwrap();
        let snap = t.path().join("snap");
        std::fs::create_dir(&snap).unwrap();
        std::fs::write(snap.join(volume_file_name(0)), vec![7u8; 8192]).unwrap();
        let user = t.path().join("user.img");
        // Missing: created from the baked volume.
        assert!(user_file_fits(&snap, 0, &record(&user, true).volumes[0]));
        // Still mounted in the snapshot: never.
        assert!(!user_file_fits(&snap, 0, &record(&user, false).volumes[0]));
        std::fs::write(&user, vec![1u8; 4096]).unwrap();
        assert!(
            !user_file_fits(&snap, 0, &record(&user, true).volumes[0]),
            "size"
        );
        std::fs::write(&user, vec![1u8; 8192]).unwrap();
        assert!(user_file_fits(&snap, 0, &record(&user, true).volumes[0]));
        // Served: sm-vhost-user-blk's lock, taken here the same way.
        let f = std::fs::OpenOptions::new().write(true).open(&user).unwrap();
        let lock = libc::flock {
            l_type: libc::F_WRLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        nix::fcntl::fcntl(f.as_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&lock)).unwrap();
        assert!(served(&user));
        assert!(!user_file_fits(&snap, 0, &record(&user, true).volumes[0]));
        drop(f);
        assert!(!served(&user));
    }

    #[test]
    fn place_uses_own_files_in_place_and_copies_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let snap = t.path().join("snap");
        let dir = t.path().join("run");
        std::fs::create_dir(&snap).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(snap.join(volume_file_name(0)), b"baked").unwrap();
        let user = t.path().join("user.img");
        let mut created = vec![];
        // A private copy.
        let mut r = record(&user, true);
        place(&mut r, &snap, &dir, |_, _| None, &mut created).unwrap();
        assert_eq!(r.volumes[0].file, dir.join(volume_file_name(0)));
        assert_eq!(std::fs::read(&r.volumes[0].file).unwrap(), b"baked");
        // The user's file, missing: created as the baked volume; existing: used as it is.
        let mut r = record(&user, true);
        place(
            &mut r,
            &snap,
            &dir,
            |_, v| Some(v.file.clone()),
            &mut created,
        )
        .unwrap();
        assert_eq!(r.volumes[0].file, user);
        assert_eq!(std::fs::read(&user).unwrap(), b"baked");
        std::fs::write(&user, b"mine!").unwrap();
        let mut r = record(&user, true);
        place(
            &mut r,
            &snap,
            &dir,
            |_, v| Some(v.file.clone()),
            &mut created,
        )
        .unwrap();
        assert_eq!(std::fs::read(&user).unwrap(), b"mine!");
        assert_eq!(created, vec![dir.join(volume_file_name(0)), user]);
    }
}
