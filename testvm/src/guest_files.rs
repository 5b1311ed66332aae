//! What the host puts on the control share for the guest init (see `testvm/init`):
//! `run.sh` (the command with the caller's cwd, umask and environment) and `mounts`.

use crate::shares::Share;
use crate::{Context, Result};
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A shell script for the guest's `/bin/sh` that enters `cwd`, sets `umask` and runs
/// `command` with exactly the environment `env`.
pub fn run_script(
    cwd: &Path,
    umask: u32,
    env: &[(OsString, OsString)],
    command: &[OsString],
) -> Vec<u8> {
    let mut s = b"# Written by sm-testvm for one run.\n".to_vec();
    s.extend_from_slice(b"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
    s.extend_from_slice(b"cd ");
    quote(&mut s, cwd.as_os_str().as_bytes());
    s.extend_from_slice(b" || { echo ");
    let msg = format!("sm-testvm: cannot enter {} in the test VM", cwd.display());
    quote(&mut s, msg.as_bytes());
    s.extend_from_slice(b" >&2; exit 125; }\n");
    s.extend_from_slice(format!("umask {umask:04o}\n").as_bytes());
    s.extend_from_slice(b"exec env -i --");
    for (k, v) in env {
        s.push(b' ');
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        quote(&mut s, &kv);
    }
    // env would take a program name containing '=' for one more variable: let sh run it.
    if command
        .first()
        .is_some_and(|c| c.as_bytes().contains(&b'='))
    {
        s.extend_from_slice(b" /bin/sh -c 'exec \"$0\" \"$@\"'");
    }
    for arg in command {
        s.push(b' ');
        quote(&mut s, arg.as_bytes());
    }
    s.push(b'\n');
    s
}

/// The `mounts` file: one `<tag> <path>` line per share, in mount order.
pub fn mounts_file(shares: &[Share]) -> Vec<u8> {
    let mut s = Vec::new();
    for share in shares {
        s.extend_from_slice(share.tag.as_bytes());
        s.push(b' ');
        s.extend_from_slice(share.path.as_os_str().as_bytes());
        s.push(b'\n');
    }
    s
}

/// A fresh random nonce (16 hex digits) naming this run's result files.
pub fn nonce() -> Result<String> {
    let mut buf = [0u8; 8];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context(|| "reading /dev/urandom".to_string())?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Appends `word` single-quoted for the shell.
fn quote(out: &mut Vec<u8>, word: &[u8]) {
    out.push(b'\'');
    for &b in word {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_survive_the_shell() {
        let env = vec![("A".into(), "it's \"x\" $y".into())];
        let cmd = vec!["sh".into(), "-c".into(), "printf '%s|' \"$A\" $#".into()];
        let script = run_script(Path::new("/"), 0o022, &env, &cmd);
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(std::ffi::OsStr::from_bytes(&script))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "it's \"x\" $y|0|");
    }

    #[test]
    fn program_names_with_equals_still_run() {
        let script = run_script(Path::new("/"), 0o022, &[], &["A=b".into()]);
        let s = String::from_utf8(script).unwrap();
        assert!(s.contains("/bin/sh -c 'exec \"$0\" \"$@\"' 'A=b'"), "{s}");
    }
}
