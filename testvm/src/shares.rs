//! Which host directories the test VM may write, mounted in the guest at their host paths.

use crate::{Context, Error, Result};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A writable host directory and the virtio-fs tag it is exported under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// virtio-fs tag (`w0`, `w1`, ...).
    pub tag: String,
    /// Absolute, canonical host path; also the mount point in the guest.
    pub path: PathBuf,
}

/// The default writable share for a caller in `cwd`: the directory of the outermost
/// `Cargo.toml` with a `[workspace]`, else the git top-level, else `cwd` itself (never `/`).
pub fn default_share(cwd: &Path) -> Option<PathBuf> {
    let workspace = cwd.ancestors().filter(|d| is_workspace_root(d)).last();
    let git = || cwd.ancestors().find(|d| d.join(".git").exists());
    let dir = workspace.or_else(git).unwrap_or(cwd);
    (dir != Path::new("/")).then(|| dir.to_path_buf())
}

fn is_workspace_root(dir: &Path) -> bool {
    fs::read_to_string(dir.join("Cargo.toml"))
        .is_ok_and(|s| s.lines().any(|l| l.trim() == "[workspace]"))
}

/// Canonicalizes `dirs`, drops duplicates and directories inside another share, and tags the
/// rest in mount order (parents first).
pub fn plan(dirs: impl IntoIterator<Item = PathBuf>) -> Result<Vec<Share>> {
    let mut paths = Vec::new();
    for dir in dirs {
        let path = fs::canonicalize(&dir).context(|| format!("share {}", dir.display()))?;
        if !path.is_dir() {
            return Err(Error::new(format!(
                "share {} is not a directory",
                dir.display()
            )));
        }
        check_mountable(&path)?;
        paths.push(path);
    }
    paths.sort();
    let mut kept: Vec<PathBuf> = Vec::new();
    for p in paths {
        if !kept.iter().any(|k| p.starts_with(k)) {
            kept.push(p);
        }
    }
    Ok(kept
        .into_iter()
        .enumerate()
        .map(|(i, path)| Share {
            tag: format!("w{i}"),
            path,
        })
        .collect())
}

/// The guest reads `<tag> <path>` lines with the shell, so some paths cannot be passed.
fn check_mountable(path: &Path) -> Result<()> {
    let bytes = path.as_os_str().as_bytes();
    if path == Path::new("/") {
        return Err(Error::new(
            "cannot share / writable (it is already visible read-only)",
        ));
    }
    if bytes.contains(&b'\n') || bytes.last().is_some_and(u8::is_ascii_whitespace) {
        return Err(Error::new(format!(
            "cannot share {:?}: newlines and trailing blanks are not supported",
            path
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_duplicate_shares_collapse() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::create_dir_all(a.join("b")).unwrap();
        let shares = plan([a.join("b"), a.clone(), a.join("b/..")]).unwrap();
        let canon = fs::canonicalize(&a).unwrap();
        assert_eq!(
            shares,
            vec![Share {
                tag: "w0".into(),
                path: canon
            }]
        );
    }

    #[test]
    fn outermost_workspace_wins() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("outer/inner");
        fs::create_dir_all(inner.join("src")).unwrap();
        fs::write(dir.path().join("outer/Cargo.toml"), "[workspace]\n").unwrap();
        fs::write(inner.join("Cargo.toml"), "[workspace]\n").unwrap();
        let got = default_share(&inner.join("src")).unwrap();
        assert_eq!(got, dir.path().join("outer"));
    }

    #[test]
    fn root_is_refused() {
        assert!(plan([PathBuf::from("/")]).is_err());
    }
}
