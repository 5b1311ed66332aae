//! The image tests' harness, shared by sm-oci's and sm's tests: a real `docker-registry` on
//! a random loopback port (basic or token auth), a docker token server, an OCI image layout
//! writer for test images, `skopeo copy` to push them, and views of EROFS images.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of bytes.
pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Where the registry stores blobs.
    pub storage: PathBuf,
    /// The registry's log (access log included).
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry; with `auth`, it requires HTTP basic auth (bcrypt htpasswd).
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        Registry::start_at("127.0.0.1", auth)
    }

    /// [`Registry::start`] listening on `ip` (an address of this host).
    pub fn start_at(ip: &str, auth: Option<(&str, &str)>) -> Registry {
        Registry::start_cfg(ip, auth, "")
    }

    /// A registry that wants bearer tokens from `tokens` (docker's token auth).
    pub fn start_with_tokens(tokens: &TokenServer) -> Registry {
        let cfg = format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            tokens.addr,
            tokens.cert.display()
        );
        Registry::start_cfg("127.0.0.1", None, &cfg)
    }

    fn start_cfg(ip: &str, auth: Option<(&str, &str)>, extra: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("{ip}:{port}");
        let storage = dir.path().join("data");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        if let Some((user, pass)) = auth {
            let htpasswd = dir.path().join("htpasswd");
            let st = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&htpasswd)
                .args([user, pass])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "htpasswd failed");
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: sm-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        cfg += extra;
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("registry.err")).unwrap())
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let reg = Registry {
            child,
            addr,
            storage,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(&reg.addr) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return reg;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("registry did not come up on {}", reg.addr);
    }

    /// Pushes `oci:LAYOUT:tag` as `name:tag` with skopeo, byte for byte (`--all` keeps an
    /// index whole, `--preserve-digests` stops skopeo from compressing plain layers).
    pub fn push(&self, layout: &Path, tag: &str, name: &str, creds: Option<(&str, &str)>) {
        self.push_with(layout, tag, name, creds, &["--preserve-digests"]);
    }

    /// [`Registry::push`] with extra skopeo flags (e.g. `--format v2s2`).
    pub fn push_with(
        &self,
        layout: &Path,
        tag: &str,
        name: &str,
        creds: Option<(&str, &str)>,
        extra: &[&str],
    ) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
            .args(extra);
        if let Some((u, p)) = creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{name}:{tag}", self.addr));
        let out = cmd.output().expect("skopeo (apt-get install skopeo)");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The registry's stored file for a blob.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A non-loopback IPv4 address of this host, if it has one.
pub fn host_ip() -> Option<String> {
    let o = Command::new("hostname").arg("-I").output().ok()?;
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// One entry of a test layer.
pub enum Entry {
    /// Directory with mode.
    Dir(&'static str, u32),
    /// Regular file: path, contents, mode, uid, gid.
    File(String, Vec<u8>, u32, u64, u64),
    /// Symlink: path, target.
    Symlink(&'static str, &'static str),
    /// Hard link: path, target.
    Link(&'static str, &'static str),
    /// Regular file with one xattr: path, contents, xattr name, value.
    XattrFile(&'static str, Vec<u8>, &'static str, &'static str),
}

/// Builds an uncompressed layer tar.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match e {
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::File(p, data, mode, uid, gid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, p, t).unwrap();
            }
            Entry::Link(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_size(0);
                h.set_mode(0o644);
                b.append_link(&mut h, p, t).unwrap();
            }
            Entry::XattrFile(p, data, k, v) => {
                let key = format!("SCHILY.xattr.{k}");
                b.append_pax_extensions([(key.as_str(), v.as_bytes())])
                    .unwrap();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// Builds a tar with raw (unchecked) paths, for hostile layers.
pub fn raw_tar(entries: &[(tar::EntryType, &str, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (kind, path, link, data) in entries {
        let mut h = tar::Header::new_old();
        {
            let raw = h.as_old_mut();
            raw.name[..path.len()].copy_from_slice(path.as_bytes());
            raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn compress(tar: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (
                e.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            zstd::encode_all(tar, 1).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

/// Writes OCI image layouts.
pub struct Layout {
    /// The layout directory.
    pub dir: PathBuf,
    index: Vec<serde_json::Value>,
}

impl Layout {
    /// An empty layout at `dir`.
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            index: Vec::new(),
        }
    }

    /// Stores a blob, returning its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> serde_json::Value {
        let d = digest(bytes);
        std::fs::write(self.blob_path(&d), bytes).unwrap();
        json!({"mediaType": media_type, "digest": d, "size": bytes.len()})
    }

    /// Path of a blob in the layout.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap())
    }

    /// Stores an image (config + layers + manifest); returns the manifest descriptor.
    pub fn image(
        &self,
        arch: &str,
        layers: &[(Vec<u8>, Compression)],
        cfg: serde_json::Value,
    ) -> serde_json::Value {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, c) in layers {
            diff_ids.push(digest(tar));
            let (blob, mt) = compress(tar, *c);
            descs.push(self.blob(mt, &blob));
        }
        let config = json!({
            "architecture": arch, "os": "linux", "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).unwrap(),
        );
        let manifest = json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config, "layers": descs,
        });
        let mut d = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        d["platform"] = json!({"os": "linux", "architecture": arch});
        d
    }

    /// Stores an index of manifests; returns its descriptor.
    pub fn index_of(&self, manifests: &[serde_json::Value]) -> serde_json::Value {
        let ix = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
        self.blob(
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&ix).unwrap(),
        )
    }

    /// Tags a descriptor in index.json and rewrites it.
    pub fn tag(&mut self, desc: &serde_json::Value, tag: &str) {
        let mut d = desc.clone();
        d.as_object_mut().unwrap().remove("platform");
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        self.index.push(d);
        let ix = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": self.index});
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&ix).unwrap(),
        )
        .unwrap();
    }
}

/// Host files from Debian packages put into the test image.
pub fn busybox() -> Vec<u8> {
    std::fs::read("/bin/busybox").expect("busybox-static")
}

/// The standard multi-layer test image: busybox, Debian files, a whiteout, an opaque dir,
/// hard link, symlink, set-uid file owned by 1000:1000, an xattr; gzip, zstd and plain layers.
pub fn test_layers() -> Vec<(Vec<u8>, Compression)> {
    let l1 = layer_tar(&[
        Entry::Dir("bin", 0o755),
        Entry::File("bin/busybox".into(), busybox(), 0o755, 0, 0),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Link("bin/hardbox", "bin/busybox"),
        Entry::Dir("etc", 0o755),
        Entry::File(
            "etc/os-release".into(),
            std::fs::read("/etc/os-release").unwrap(),
            0o644,
            0,
            0,
        ),
        Entry::File(
            "etc/gone".into(),
            b"deleted by layer 2\n".to_vec(),
            0o644,
            0,
            0,
        ),
        Entry::Dir("opt", 0o755),
        Entry::Dir("opt/dir", 0o755),
        Entry::File("opt/dir/a".into(), b"a".to_vec(), 0o644, 0, 0),
        Entry::File("opt/dir/b".into(), b"b".to_vec(), 0o644, 0, 0),
    ]);
    let l2 = layer_tar(&[
        Entry::File("etc/.wh.gone".into(), Vec::new(), 0o644, 0, 0),
        Entry::Dir("opt/dir", 0o755),
        Entry::File("opt/dir/.wh..wh..opq".into(), Vec::new(), 0o644, 0, 0),
        Entry::File("opt/dir/c".into(), b"c".to_vec(), 0o644, 0, 0),
        Entry::XattrFile("etc/xattr", b"x".to_vec(), "user.sm", "yes"),
    ]);
    let l3 = layer_tar(&[
        Entry::Dir("usr", 0o755),
        Entry::Dir("usr/share", 0o755),
        Entry::File(
            "usr/share/GPL-3".into(),
            std::fs::read("/usr/share/common-licenses/GPL-3").unwrap(),
            0o644,
            0,
            0,
        ),
        Entry::File(
            "usr/bin-suid".into(),
            b"#!/bin/sh\n".to_vec(),
            0o4755,
            1000,
            1000,
        ),
    ]);
    vec![
        (l1, Compression::Gzip),
        (l2, Compression::Zstd),
        (l3, Compression::None),
    ]
}

/// The run configuration of the test image.
pub fn test_config() -> serde_json::Value {
    json!({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["PATH=/bin", "A=b"], "WorkingDir": "/opt", "User": "1000:1000"})
}

/// Writes the test image as `oci:DIR:v1` and a two-platform index (amd64 + arm64) as `multi`.
pub fn write_test_layout(dir: &Path) -> Layout {
    let mut l = Layout::new(dir);
    let amd = l.image("amd64", &test_layers(), test_config());
    l.tag(&amd, "v1");
    let arm_layer = layer_tar(&[Entry::File("arch".into(), b"arm64\n".to_vec(), 0o644, 0, 0)]);
    let arm = l.image(
        "arm64",
        &[(arm_layer, Compression::Gzip)],
        json!({"Cmd": ["/arch"]}),
    );
    let mut arm = arm;
    arm["platform"]["variant"] = json!("v8");
    let ix = l.index_of(&[amd, arm]);
    l.tag(&ix, "multi");
    l
}

/// A one-layer image at `dir` (anything there before is removed) tagged `v1`, whose file
/// `version` holds `version`; returns the layout and the manifest digest. Calling it again
/// with another version is a rebuild of the same image at the same path and tag.
pub fn versioned_layout(dir: &Path, version: &str) -> (Layout, String) {
    let _ = std::fs::remove_dir_all(dir);
    let mut l = Layout::new(dir);
    let layer = layer_tar(&[Entry::File(
        "version".into(),
        version.as_bytes().to_vec(),
        0o644,
        0,
        0,
    )]);
    let m = l.image(
        "amd64",
        &[(layer, Compression::Gzip)],
        json!({"Cmd": ["/bin/cat", "/version"]}),
    );
    l.tag(&m, "v1");
    (l, m["digest"].as_str().unwrap().to_string())
}

/// A hostile image at `dir` tagged `v1`: a good first layer, then a layer that makes `etc`
/// a symlink to `/` and writes `etc/pwned-by-sm-test` through it (an unpacker that follows
/// it writes on the host). Returns the layout and the manifest.
pub fn symlink_escape_layout(dir: &Path) -> (Layout, serde_json::Value) {
    let mut l = Layout::new(dir);
    let good = layer_tar(&[Entry::File("ok".into(), b"ok".to_vec(), 0o644, 0, 0)]);
    let evil = raw_tar(&[
        (tar::EntryType::Symlink, "etc", "/", b""),
        (tar::EntryType::Regular, "etc/pwned-by-sm-test", "", b"x"),
    ]);
    let m = l.image(
        "amd64",
        &[(good, Compression::Gzip), (evil, Compression::Gzip)],
        json!({}),
    );
    l.tag(&m, "v1");
    (l, m)
}

/// The contents of an EROFS image: mounted read-only with `mount -t erofs -o loop` when that
/// works (root), else extracted with `fsck.erofs --extract` (which drops set-id bits).
pub struct ErofsView {
    dir: tempfile::TempDir,
    /// True when the image is mounted (all metadata is exact).
    pub mounted: bool,
}

impl ErofsView {
    /// Whether all metadata (set-id bits included) can be checked: true when mounted; if
    /// the mount was refused, says so loudly (a failure under `CI=true`) and is false.
    pub fn exact(&self) -> bool {
        crate::require(
            self.mounted,
            "mount -t erofs was refused: set-id bits and exact metadata go unchecked",
        )
    }

    /// The image's root directory.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("x")
    }
}

impl Drop for ErofsView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.path()).status();
        }
    }
}

/// Opens an EROFS image for inspection (see [`ErofsView`]).
pub fn erofs_view(img: &Path) -> ErofsView {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("x");
    std::fs::create_dir(&dest).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(img)
        .arg(&dest)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let o = Command::new("fsck.erofs")
            .arg(format!("--extract={}", dest.display()))
            .arg("--overwrite")
            .arg(img)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fsck.erofs: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    ErofsView { dir, mounted }
}

/// The value of extended attribute `name` on `path` (not following a symlink).
pub fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: both strings are NUL-terminated and `buf` is writable for its full length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

/// The `service` a token-auth registry names.
pub const TOKEN_SERVICE: &str = "sm-test-registry";
/// The issuer of the test tokens.
pub const TOKEN_ISSUER: &str = "sm-test-issuer";

/// A docker token server on loopback that hands any client (anonymous included) an RS256
/// JWT for whatever scope it asks, signed with a throwaway key via `openssl`.
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The certificate the registry trusts (`rootcertbundle`).
    pub cert: PathBuf,
    /// Request lines received (with query strings), for assertions.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Generates a key and certificate and starts serving `/token`.
    pub fn start() -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=sm-test-token",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (reqs, key2, scratch) = (requests.clone(), key.clone(), dir.path().to_path_buf());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                reqs.lock().unwrap().push(line.clone());
                let target = line.split_whitespace().nth(1).unwrap_or("");
                let query = target.split_once('?').map_or("", |(_, q)| q);
                let access: Vec<serde_json::Value> = query
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("scope="))
                    .map(percent_decode)
                    .filter_map(|scope| {
                        let mut parts = scope.splitn(3, ':');
                        let (t, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                        Some(serde_json::json!({"type": t, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                    })
                    .collect();
                let token = sign_jwt(&key2, &der, &access, &scratch);
                let body =
                    serde_json::json!({"token": token, "access_token": token, "expires_in": 300})
                        .to_string();
                let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                let _ = conn.write_all(resp.as_bytes());
            }
        });
        TokenServer {
            addr,
            cert,
            requests,
            _dir: dir,
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sign_jwt(key: &Path, cert_der: &[u8], access: &[serde_json::Value], scratch: &Path) -> String {
    use base64::Engine as _;
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let std_b64 = base64::engine::general_purpose::STANDARD;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header =
        serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [std_b64.encode(cert_der)]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": "", "aud": TOKEN_SERVICE, "exp": now + 300, "nbf": now - 10,
        "iat": now - 10, "jti": format!("{now}-{}", access.len()), "access": access,
    });
    let input = format!(
        "{}.{}",
        url.encode(header.to_string()),
        url.encode(claims.to_string())
    );
    let f = scratch.join(format!("jwt-{}", std::process::id()));
    std::fs::write(&f, &input).unwrap();
    let o = Command::new("openssl")
        .args(["dgst", "-sha256", "-binary", "-sign"])
        .arg(key)
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "openssl dgst: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    format!("{input}.{}", url.encode(o.stdout))
}
