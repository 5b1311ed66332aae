//! `sm run IMAGE`: an OCI image the test builds itself (busybox and a few files, with an
//! Entrypoint-less Cmd, Env, WorkingDir and a named User) run from an OCI layout: its root
//! comes up read-only under a writable overlay and its configuration is honoured.

use crate::common::*;
use sha2::Digest;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` as a blob of the layout at `dir`; returns its descriptor fields.
fn blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let hex = sha256_hex(data);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

fn layer() -> Vec<u8> {
    let mut t = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        t.append_data(&mut h, path, data).unwrap();
    };
    add(
        "bin/busybox",
        &std::fs::read("/bin/busybox").unwrap(),
        0o755,
    );
    add("etc/os-release", b"NAME=sm-test-image\n", 0o644);
    add(
        "etc/passwd",
        b"root:x:0:0::/root:/bin/sh\napp:x:1234:4321::/srv:/bin/sh\n",
        0o644,
    );
    add("etc/group", b"root:x:0:\napp:x:4321:\n", 0o644);
    add("srv/data", b"image data\n", 0o644);
    // A directory the image's user owns: its writes go to the overlay's upper layer.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o755);
    h.set_uid(1234);
    h.set_gid(4321);
    t.append_data(&mut h, "srv/own", &[][..]).unwrap();
    // Every applet, as the busybox image has them: the bake, pool and Node.js examples'
    // scripts run in this image too.
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("/bin/busybox --list (apt-get install busybox-static)");
    let list = String::from_utf8(list.stdout).unwrap();
    let applets: Vec<&str> = list
        .lines()
        .filter(|a| !a.contains('/') && *a != "busybox")
        .collect();
    assert!(applets.contains(&"sh"), "busybox --list: {list}");
    for applet in applets {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        t.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    t.into_inner().unwrap()
}

/// Builds the test image as an OCI layout in `dir` (tag `latest`), its commands running as
/// `user` (a name from its /etc/passwd) or, with `None`, as root.
pub(crate) fn build_layout(dir: &Path, user: Option<&str>) {
    let layer = layer();
    let (layer_digest, layer_size) = blob(dir, &layer);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {
            "Env": ["PATH=/bin", "GREETING=from the image"],
            "Cmd": ["sh", "-c", "echo $GREETING; pwd; id -u; id -g; cat /etc/os-release"],
            "WorkingDir": "/srv",
            "User": user.unwrap_or("")
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let (config_digest, config_size) = blob(dir, config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": layer_size}]
    });
    let (m_digest, m_size) = blob(dir, manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": m_digest, "size": m_size,
                       "annotations": {"org.opencontainers.image.ref.name": "latest"}}]
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

#[test]
fn an_oci_image_runs_with_its_own_config_and_a_writable_overlay() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    build_layout(&layout, Some("app"));
    let image = format!("oci-layout:{}:latest", layout.display());
    let sm = |args: &[&str]| {
        require_kvm();
        let make = || {
            let mut c = Command::new(sm_integration::bin_dir().join("sm"));
            c.env("XDG_RUNTIME_DIR", work.path())
                .env("SM_HOME", work.path().join("sm"))
                .env("SM_BIN_DIR", sm_integration::bin_dir())
                .stdin(Stdio::null())
                .args(args);
            c
        };
        run_retrying_stall(make, Duration::from_secs(180))
    };
    // The image's own command, environment, working directory and user.
    let out = sm(&["run", &image]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "from the image\n/srv\n1234\n4321\nNAME=sm-test-image\n"
    );
    // A command after -- replaces Cmd; -e wins over the image's Env; the root is writable
    // (an overlay) and the image's files are there.
    let out = sm(&[
        "run",
        "-e",
        "GREETING=from the user",
        &image,
        "--",
        "sh",
        "-c",
        "echo $GREETING; cat data; echo new > own/made && cat own/made",
    ]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "from the user\nimage data\nnew\n");
}
