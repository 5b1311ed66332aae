//! The init configuration: how sm-vmm hands the command (and its environment) to sm-init.
//!
//! The kernel command line is short (2 KiB) and mangles quotes, spaces and `=`, so argv
//! travels instead as a small newc cpio archive appended to the initramfs in guest memory.
//! The kernel unpacks concatenated archives into the same rootfs, where sm-init reads
//! `/sm/argv` (each argument NUL-terminated; absent means an interactive shell) and
//! `/sm/env` (`KEY=VALUE`, NUL-terminated).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

/// Path, inside the guest, of the NUL-separated argv file.
pub const ARGV_PATH: &str = "sm/argv";
/// Path, inside the guest, of the NUL-separated environment file.
pub const ENV_PATH: &str = "sm/env";

/// Errors encoding the init configuration.
#[derive(Debug, thiserror::Error)]
pub enum InitConfigError {
    /// A C string cannot carry a NUL byte.
    #[error("argument {0} contains a NUL byte, which no program can receive")]
    NulInArgument(usize),
    /// Environment entries need a name.
    #[error("environment entry {0:?} is not KEY=VALUE with a non-empty KEY and no NUL")]
    BadEnv(String),
}

/// What sm-init should run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitConfig {
    /// The command and its arguments; `None` starts an interactive shell.
    pub argv: Option<Vec<OsString>>,
    /// Extra environment for the command, `KEY=VALUE`.
    pub env: Vec<OsString>,
}

/// Writes newc ("070701") cpio archives, the format the kernel unpacks into its rootfs.
#[derive(Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            0,
            0,
            namesize as u32,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Adds a directory (mode 0755).
    pub fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }

    /// Adds a regular file (mode 0644).
    pub fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, 0o100644, data);
    }

    /// Closes the archive with its trailer and returns the bytes (a multiple of 4 long).
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

fn nul_separated<'a>(items: impl Iterator<Item = &'a OsString>) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend_from_slice(item.as_bytes());
        out.push(0);
    }
    out
}

impl InitConfig {
    /// Checks that every argument and environment entry can reach the guest intact.
    pub fn validate(&self) -> Result<(), InitConfigError> {
        for (i, arg) in self.argv.iter().flatten().enumerate() {
            if arg.as_bytes().contains(&0) {
                return Err(InitConfigError::NulInArgument(i));
            }
        }
        for kv in &self.env {
            let b = kv.as_bytes();
            let eq = b.iter().position(|c| *c == b'=');
            if b.contains(&0) || matches!(eq, None | Some(0)) {
                return Err(InitConfigError::BadEnv(kv.to_string_lossy().into_owned()));
            }
        }
        Ok(())
    }

    /// Encodes the configuration as a cpio archive to append to the initramfs.
    pub fn to_cpio(&self) -> Result<Vec<u8>, InitConfigError> {
        self.validate()?;
        let mut cpio = CpioWriter::default();
        cpio.dir("sm");
        if let Some(argv) = &self.argv {
            cpio.file(ARGV_PATH, &nul_separated(argv.iter()));
        }
        cpio.file(ENV_PATH, &nul_separated(self.env.iter()));
        Ok(cpio.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    /// A minimal newc reader, to check what the kernel will see.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let up4 = |n: usize| (n + 3) & !3;
        loop {
            assert_eq!(&b[..6], b"070701");
            let (mode, size, namesize) = (field(b, 1), field(b, 6) as usize, field(b, 11) as usize);
            let name = String::from_utf8(b[110..110 + namesize - 1].to_vec()).unwrap();
            let data_start = up4(110 + namesize);
            let data = b[data_start..data_start + size].to_vec();
            b = &b[up4(data_start + size)..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode, data));
        }
    }

    #[test]
    fn argv_round_trips_any_bytes_but_nul() {
        let argv: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            "echo 'a b' \"c\" x=y; exit 3".into(),
            "".into(),
            OsString::from_vec(vec![0xff, 0xfe, b' ', b'=']),
        ];
        let cfg = InitConfig {
            argv: Some(argv.clone()),
            env: vec!["TERM=vt100".into()],
        };
        let cpio = cfg.to_cpio().unwrap();
        assert_eq!(cpio.len() % 4, 0);
        let entries = parse(&cpio);
        assert_eq!(entries[0].0, "sm");
        assert_eq!(entries[0].1 & 0o170000, 0o040000);
        let (name, _, data) = &entries[1];
        assert_eq!(name, ARGV_PATH);
        let decoded: Vec<OsString> = data
            .split(|c| *c == 0)
            .map(|s| OsString::from_vec(s.to_vec()))
            .collect();
        // Every argument is NUL-terminated, so the split leaves one empty tail.
        assert_eq!(&decoded[..decoded.len() - 1], &argv[..]);
        assert_eq!(entries[2].0, ENV_PATH);
        assert_eq!(entries[2].2, b"TERM=vt100\0");
    }

    #[test]
    fn interactive_has_no_argv_file() {
        let entries = parse(&InitConfig::default().to_cpio().unwrap());
        assert!(entries.iter().all(|e| e.0 != ARGV_PATH));
    }

    #[test]
    fn nul_and_bad_env_are_refused() {
        let cfg = InitConfig {
            argv: Some(vec!["a".into(), OsString::from_vec(b"b\0c".to_vec())]),
            env: vec![],
        };
        assert!(matches!(
            cfg.to_cpio(),
            Err(InitConfigError::NulInArgument(1))
        ));
        for bad in ["NOEQUALS", "=value"] {
            let cfg = InitConfig {
                argv: None,
                env: vec![bad.into()],
            };
            assert!(
                matches!(cfg.validate(), Err(InitConfigError::BadEnv(_))),
                "{bad}"
            );
        }
    }
}
