//! Layer application: metadata (modes, owners, xattrs, links) and a corpus of hostile layers
//! that must be refused with nothing written outside the root.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use sm_oci::unpack::{UnpackError, Unpacker};
use sm_test_support::oci::*;
use tar::EntryType as T;

#[test]
fn layers_apply_with_metadata_whiteouts_and_links() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let u = Unpacker::new(&root).unwrap();
    for (tar, _) in test_layers() {
        u.apply_layer(&tar[..]).unwrap();
    }
    let suid = std::fs::metadata(root.join("usr/bin-suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o4755);
    assert_eq!((suid.uid(), suid.gid()), (1000, 1000));
    let a = std::fs::metadata(root.join("bin/busybox")).unwrap();
    let b = std::fs::metadata(root.join("bin/hardbox")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link must share the inode");
    assert_eq!(a.mtime(), 1_700_000_000);
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("opt/dir/a").exists());
    assert!(root.join("opt/dir/c").exists());
    // A whiteout hides lower layers only: a same-layer entry survives it.
    u.apply_layer(
        &layer_tar(&[
            Entry::File("etc/same".into(), b"kept".to_vec(), 0o644, 0, 0),
            Entry::File("etc/.wh.same".into(), Vec::new(), 0o644, 0, 0),
            Entry::File("etc/.wh.os-release".into(), Vec::new(), 0o644, 0, 0),
        ])[..],
    )
    .unwrap();
    assert_eq!(std::fs::read(root.join("etc/same")).unwrap(), b"kept");
    assert!(!root.join("etc/os-release").exists());
    assert_eq!(
        xattr(&root.join("etc/xattr"), "user.sm").as_deref(),
        Some(&b"yes"[..])
    );
}

/// Applies each hostile layer (after a benign first layer) and checks it is refused as
/// unsafe and that the sentinel outside the root is untouched.
#[test]
fn hostile_layers_are_refused_without_writing_outside() {
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "dotdot path",
            vec![raw_tar(&[(T::Regular, "../outside/pwned", "", b"x")])],
        ),
        (
            "nested dotdot",
            vec![raw_tar(&[
                (T::Directory, "a/", "", b""),
                (T::Regular, "a/../../outside/pwned", "", b"x"),
            ])],
        ),
        (
            "absolute path",
            vec![raw_tar(&[(T::Regular, "/OUTSIDE/pwned", "", b"x")])],
        ),
        (
            "symlink then file through it",
            vec![raw_tar(&[
                (T::Symlink, "esc", "/OUTSIDE", b""),
                (T::Regular, "esc/pwned", "", b"x"),
            ])],
        ),
        (
            "relative symlink then file",
            vec![raw_tar(&[
                (T::Symlink, "esc", "../outside", b""),
                (T::Regular, "esc/pwned", "", b"x"),
            ])],
        ),
        (
            "hard link to outside",
            vec![raw_tar(&[(T::Link, "pwned", "../outside/sentinel", b"")])],
        ),
        (
            "absolute hard link",
            vec![raw_tar(&[(T::Link, "pwned", "/OUTSIDE/sentinel", b"")])],
        ),
        (
            "symlink in lower layer, write in upper",
            vec![
                raw_tar(&[(T::Symlink, "lib", "/OUTSIDE", b"")]),
                raw_tar(&[(T::Regular, "lib/pwned", "", b"x")]),
            ],
        ),
        (
            "dir through symlink",
            vec![raw_tar(&[
                (T::Symlink, "d", "../outside", b""),
                (T::Directory, "d/sub/", "", b""),
            ])],
        ),
        (
            "whiteout through symlink",
            vec![raw_tar(&[
                (T::Symlink, "d", "../outside", b""),
                (T::Regular, "d/.wh.sentinel", "", b""),
            ])],
        ),
        (
            "opaque through symlink",
            vec![raw_tar(&[
                (T::Symlink, "d", "../outside", b""),
                (T::Regular, "d/.wh..wh..opq", "", b""),
            ])],
        ),
    ];
    for (name, layers) in cases {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("sentinel"), b"keep").unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let fix = |t: &[u8]| -> Vec<u8> {
            // Absolute targets name the test's own outside directory.
            let needle = b"/OUTSIDE";
            let repl = outside.as_os_str().as_encoded_bytes();
            assert!(repl.len() <= 90, "temp path too long for a v7 tar header");
            let mut out = t.to_vec();
            let mut i = 0;
            while i + needle.len() <= out.len() {
                if &out[i..i + needle.len()] == needle {
                    let end = out[i..]
                        .iter()
                        .position(|&c| c == 0)
                        .map_or(out.len(), |p| i + p);
                    let mut field = repl.to_vec();
                    field.extend_from_slice(&out[i + needle.len()..end]);
                    let block = i / 512 * 512;
                    let field_start = i;
                    out[field_start..field_start + field.len()].copy_from_slice(&field);
                    // Re-checksum the header this field belongs to.
                    let mut h = tar::Header::new_old();
                    h.as_mut_bytes().copy_from_slice(&out[block..block + 512]);
                    h.set_cksum();
                    out[block..block + 512].copy_from_slice(h.as_bytes());
                    i = end.max(field_start + field.len());
                } else {
                    i += 1;
                }
            }
            out
        };
        let u = Unpacker::new(&root).unwrap();
        let mut result = Ok(());
        for l in &layers {
            result = u.apply_layer(&fix(l)[..]);
            if result.is_err() {
                break;
            }
        }
        match result {
            Err(UnpackError::Unsafe { .. }) => {}
            other => panic!("{name}: expected an unsafe-entry error, got {other:?}"),
        }
        let msg = result.unwrap_err().to_string();
        assert!(
            msg.starts_with("unsafe layer entry") && !msg.contains('\n'),
            "{name}: {msg}"
        );
        let names: Vec<_> = std::fs::read_dir(&outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            ["sentinel"],
            "{name}: something was written outside the root"
        );
        assert_eq!(
            std::fs::read(outside.join("sentinel")).unwrap(),
            b"keep",
            "{name}"
        );
    }
}
