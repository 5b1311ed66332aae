//! Property-based fuzzing of image parsing (issue 17): manifests, indexes and configs as
//! JSON of arbitrary structure and edge values, and arbitrary tar entries through the layer
//! unpacker (`..`, absolute paths, NUL bytes, names past NAME_MAX and past the 100-byte
//! header field, symlinks and hard links pointing out, device nodes, sizes the stream does
//! not hold). The properties: no panic, an error (one line) where the input is unsafe or
//! malformed, nothing created or modified outside the root, and the unpacker still applies
//! the next layer.
//!
//! Cases per property come from `PROPTEST_CASES` (small by default); `scripts/fuzz
//! oci-unpack 10m` and `scripts/fuzz oci-spec 10m` run them for longer.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use proptest::prelude::*;
use serde_json::{json, Value};
use sm_oci::digest::Digest;
use sm_oci::platform::Platform;
use sm_oci::reference::ImageRef;
use sm_oci::spec::{
    AnyManifest, ImageConfig, DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST,
};
use sm_oci::unpack::{UnpackError, Unpacker};
use sm_test_support::fuzz::config;
use tar::EntryType;

// ---------------------------------------------------------------------------------------
// Target `oci-spec`: image documents.

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Keys the parsers look for, plus some they do not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("mediaType"),
        Just("manifests"),
        Just("schemaVersion"),
        Just("config"),
        Just("layers"),
        Just("digest"),
        Just("size"),
        Just("platform"),
        Just("annotations"),
        Just("os"),
        Just("architecture"),
        Just("variant"),
        Just("rootfs"),
        Just("diff_ids"),
        Just("Entrypoint"),
        Just("Cmd"),
        Just("Env"),
        Just("WorkingDir"),
        Just("User"),
        Just("org.opencontainers.image.ref.name"),
        Just("x"),
        Just("line\nbreak"),
    ]
    .prop_map(String::from)
}

/// Leaf values at the edges.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(2)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(1e308)),
        Just(json!(0.5)),
        Just(json!(DIGEST)),
        Just(json!("sha256:")),
        Just(json!("sha512:00")),
        Just(json!(
            "SHA256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"
        )),
        Just(json!(OCI_INDEX)),
        Just(json!(OCI_MANIFEST)),
        Just(json!(DOCKER_LIST)),
        Just(json!(DOCKER_MANIFEST)),
        Just(json!("linux")),
        Just(json!("amd64")),
        Just(json!("arm64")),
        Just(json!("v8")),
        Just(json!("\u{0}\u{feff}\u{10ffff}")),
        Just(json!("sha256:line\nbreak")),
        Just(json!("line\nbreak")),
        Just(Value::String("x".repeat(5000))),
        ".{0,12}".prop_map(Value::String),
    ]
}

/// Arbitrary JSON built from those keys and leaves, up to a few levels deep.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m: BTreeMap<String, Value>| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A descriptor-shaped object with one field possibly replaced by anything.
fn descriptor() -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!(OCI_MANIFEST)), leaf()],
        prop_oneof![3 => Just(json!(DIGEST)), 1 => leaf()],
        prop_oneof![3 => Just(json!(1234)), 1 => leaf()],
        proptest::option::of((
            prop_oneof![Just("linux".to_string()), ".{0,4}"],
            prop_oneof![
                Just("amd64".to_string()),
                Just("arm64".to_string()),
                ".{0,4}"
            ],
            proptest::option::of(prop_oneof![Just("v8".to_string()), ".{0,3}"]),
        )),
    )
        .prop_map(|(mt, digest, size, platform)| {
            let mut d = json!({"mediaType": mt, "digest": digest, "size": size});
            if let Some((os, arch, variant)) = platform {
                d["platform"] = json!({"os": os, "architecture": arch});
                if let Some(v) = variant {
                    d["platform"]["variant"] = json!(v);
                }
            }
            d
        })
}

/// A document: arbitrary JSON, or index- and manifest-shaped JSON with edge fields.
fn document() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => (leaf(), proptest::collection::vec(descriptor(), 0..5)).prop_map(|(sv, m)| {
            serde_json::to_vec(&json!({"schemaVersion": sv, "mediaType": OCI_INDEX, "manifests": m}))
                .unwrap()
        }),
        2 => (descriptor(), proptest::collection::vec(descriptor(), 0..4), leaf()).prop_map(
            |(c, l, mt)| {
                serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": mt, "config": c, "layers": l}))
                    .unwrap()
            }
        ),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..2000).prop_map(|n| {
            let mut v = "[".repeat(n).into_bytes();
            v.extend("]".repeat(n).into_bytes());
            v
        }),
    ]
}

fn media_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(OCI_INDEX.to_string())),
        Just(Some(OCI_MANIFEST.to_string())),
        Just(Some(DOCKER_LIST.to_string())),
        Just(Some(DOCKER_MANIFEST.to_string())),
        ".{0,10}".prop_map(Some),
    ]
}

proptest! {
    #![proptest_config(config(500))]

    /// Any bytes as a manifest, index or config: a value or a one-line error, never a panic;
    /// what parses also re-serialises and parses again; platform selection from any parsed
    /// index answers with one of its own entries or a one-line error.
    #[test]
    fn image_documents_parse_or_fail_cleanly(
        doc in document(),
        mt in media_type(),
        want in prop_oneof![
            Just(Platform::default()),
            Just("linux/arm64".parse::<Platform>().unwrap()),
            Just("linux/arm64/v8".parse::<Platform>().unwrap()),
        ],
    ) {
        match AnyManifest::parse(&doc, mt.as_deref()) {
            Ok(AnyManifest::Index(idx)) => {
                let again = serde_json::to_vec(&idx).unwrap();
                prop_assert!(matches!(AnyManifest::parse(&again, None), Ok(AnyManifest::Index(_))));
                match want.select(&idx) {
                    Ok(d) => prop_assert!(idx.manifests.iter().any(|m| std::ptr::eq(m, d))),
                    Err(e) => prop_assert!(!e.to_string().contains('\n')),
                }
            }
            Ok(AnyManifest::Image(m)) => {
                let again = serde_json::to_vec(&m).unwrap();
                prop_assert!(matches!(
                    AnyManifest::parse(&again, Some(OCI_MANIFEST)),
                    Ok(AnyManifest::Image(_))
                ));
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n'), "{e}"),
        }
        match ImageConfig::parse(&doc) {
            Ok(c) => {
                let again = serde_json::to_vec(&c).unwrap();
                prop_assert!(ImageConfig::parse(&again).is_ok());
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n'), "{e}"),
        }
    }

    /// Image references, digests and platforms from arbitrary strings.
    #[test]
    fn references_digests_and_platforms_parse_or_fail_cleanly(
        s in prop_oneof![
            ".{0,40}",
            "[a-z0-9./:@_-]{0,80}",
            Just("docker.io/library/busybox:latest@".to_string() + DIGEST),
            Just("localhost:99999999999/x".to_string()),
            Just("a".repeat(300)),
        ]
    ) {
        match ImageRef::parse(&s) {
            Ok(r) => { let _ = r.key(); }
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
        let d: Result<Digest, _> = serde_json::from_value(Value::String(s.clone()));
        if let Ok(d) = d {
            prop_assert_eq!(d.hex().len(), 64);
        }
        if let Some(hex) = s.strip_prefix("sha256:") {
            let _ = Digest::from_hex(hex);
        }
        match s.parse::<Platform>() {
            Ok(p) => prop_assert_eq!(p.to_string(), s),
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Target `oci-unpack`: tar entries through the unpacker.

/// One tar entry as a hostile layer could write it.
#[derive(Clone, Debug)]
struct RawEntry {
    kind: EntryType,
    path: Vec<u8>,
    link: Vec<u8>,
    data: Vec<u8>,
    /// The size the header announces when it is not the data's.
    size: Option<u64>,
    mode: u32,
    dev: (u32, u32),
}

/// A path component: ordinary names, the names the unpacker treats specially, `..`, `.`,
/// empty, NUL, and one longer than NAME_MAX.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => prop_oneof![Just("a"), Just("b"), Just("etc"), Just("sentinel"), Just("outside")]
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => Just(b"..".to_vec()),
        1 => Just(b".".to_vec()),
        1 => Just(Vec::new()),
        1 => Just(b".wh.a".to_vec()),
        1 => Just(b".wh..wh..opq".to_vec()),
        1 => Just(b".wh...".to_vec()),
        1 => Just(b"a\0b".to_vec()),
        1 => Just(vec![b'n'; 300]),
        1 => proptest::collection::vec(1u8..=255, 1..6),
    ]
}

/// A path: components joined by `/`, sometimes absolute, sometimes with a trailing `/`,
/// sometimes long enough to need a GNU long-name record.
fn path() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::bool::weighted(0.15),
        proptest::collection::vec(component(), 1..4),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(abs, comps, slash, long)| {
            let mut p = if abs { b"/".to_vec() } else { Vec::new() };
            if long {
                p.extend(b"d/".repeat(70));
            }
            p.extend(comps.join(&b'/'));
            if slash {
                p.push(b'/');
            }
            p
        })
}

/// A link target: a path as above, or one naming the outside directory.
fn link(outside: &'static str) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => path(),
        1 => Just(b"../outside/sentinel".to_vec()),
        1 => Just(b"../outside".to_vec()),
        1 => Just(format!("{outside}/sentinel").into_bytes()),
        1 => Just(outside.as_bytes().to_vec()),
    ]
}

fn entry(outside: &'static str) -> impl Strategy<Value = RawEntry> {
    (
        prop_oneof![
            4 => Just(EntryType::Regular),
            3 => Just(EntryType::Directory),
            3 => Just(EntryType::Symlink),
            3 => Just(EntryType::Link),
            1 => Just(EntryType::Char),
            1 => Just(EntryType::Block),
            1 => Just(EntryType::Fifo),
            1 => Just(EntryType::Continuous),
            1 => any::<u8>().prop_map(EntryType::new),
        ],
        path(),
        link(outside),
        proptest::collection::vec(any::<u8>(), 0..40),
        prop_oneof![
            6 => Just(None),
            1 => Just(Some(u64::MAX >> 1)),
            1 => Just(Some(1 << 40)),
            1 => (0u64..2000).prop_map(Some),
        ],
        prop_oneof![Just(0o644), Just(0o4755), Just(0o7777), any::<u32>()],
        prop_oneof![
            Just((1, 3)),
            Just((8, 0)),
            Just((0, 0)),
            any::<(u32, u32)>()
        ],
    )
        .prop_map(|(kind, path, link, data, size, mode, dev)| RawEntry {
            kind,
            path,
            link,
            data,
            size,
            mode,
            dev,
        })
}

fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % 512;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

/// A GNU long-name (`L`) or long-link (`K`) record carrying `bytes`.
fn long_record(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_entry_type(EntryType::new(kind));
    h.set_size(bytes.len() as u64 + 1);
    h.set_mode(0o644);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(bytes);
    out.push(0);
    pad(out);
}

/// Writes entries byte by byte as a tar stream (no sanitising: `tar::Builder` would refuse
/// the hostile paths), ending it properly or not.
fn encode(entries: &[RawEntry], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if e.path.len() > 100 {
            long_record(&mut out, b'L', &e.path);
        }
        if e.link.len() > 100 {
            long_record(&mut out, b'K', &e.link);
        }
        let mut h = tar::Header::new_gnu();
        let n = e.path.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&e.path[..n]);
        let has_link = matches!(e.kind, EntryType::Symlink | EntryType::Link);
        if has_link {
            let n = e.link.len().min(100);
            h.as_old_mut().linkname[..n].copy_from_slice(&e.link[..n]);
        }
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let _ = h.set_device_major(e.dev.0);
        let _ = h.set_device_minor(e.dev.1);
        let data: &[u8] = if e.kind.is_file() || e.kind == EntryType::Continuous {
            &e.data
        } else {
            &[]
        };
        h.set_size(e.size.unwrap_or(data.len() as u64));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        pad(&mut out);
    }
    if end {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

/// The path the unpacker sees for `e` (the header field stops at a NUL; a long name keeps
/// what the record holds).
fn seen_path(e: &RawEntry) -> Vec<u8> {
    if e.path.len() > 100 {
        e.path.clone()
    } else {
        e.path
            .split(|&b| b == 0)
            .next()
            .unwrap_or_default()
            .to_vec()
    }
}

fn is_unsafe_path(p: &[u8]) -> bool {
    Path::new(std::ffi::OsStr::from_bytes(p))
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
}

/// Everything under `dir` except `skip`: path, type, size, mode, owner, link count, mtime,
/// contents or link target.
fn snapshot(dir: &Path, skip: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d).unwrap();
        let what = if md.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&d).unwrap())
        } else if md.is_file() {
            format!("file {:?}", std::fs::read(&d).unwrap())
        } else {
            "dir".into()
        };
        out.push((
            d.display().to_string(),
            format!(
                "{what} mode {:o} {}:{} nlink {} size {} mtime {}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.nlink(),
                md.len(),
                md.mtime()
            ),
        ));
        if md.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p != skip {
                    stack.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// A fixed directory per process that the outside-pointing links name (a `'static` path
/// the strategies can use); each case fills and checks it.
fn outside_base() -> &'static str {
    use std::sync::OnceLock;
    static BASE: OnceLock<String> = OnceLock::new();
    BASE.get_or_init(|| {
        let d = tempfile::Builder::new()
            .prefix("sm-oci-fuzz")
            .tempdir()
            .unwrap()
            .keep();
        d.display().to_string()
    })
}

/// Applies `layers` to a fresh root next to a populated `outside` directory; checks the
/// properties and returns each layer's result.
fn run_layers(layers: &[(Vec<RawEntry>, bool)]) -> Result<(), TestCaseError> {
    let base = Path::new(outside_base());
    let root = base.join("root");
    let outside = base.join("outside");
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir_all(outside.join("a")).unwrap();
    std::fs::write(outside.join("sentinel"), b"keep").unwrap();
    std::fs::write(outside.join("a/b"), b"keep too").unwrap();
    std::os::unix::fs::symlink("/nonexistent-sm-fuzz", outside.join("etc")).unwrap();
    let before = snapshot(base, &root);
    let u = Unpacker::new(&root).unwrap();
    for (entries, end) in layers {
        let tar = encode(entries, *end);
        let r = u.apply_layer(&tar[..]);
        if let Err(e) = &r {
            let msg = e.to_string();
            prop_assert!(!msg.contains('\n'), "multi-line error: {msg}");
        }
        // An entry with `..` or an absolute path must never be accepted.
        // (Only entries the reader is sure to see as headers: an announced size the stream
        // does not hold, or an unusual kind byte such as a GNU or PAX extension, changes
        // how whatever follows is read.)
        let plain = |e: &RawEntry| {
            e.size.is_none()
                && matches!(
                    e.kind,
                    EntryType::Regular
                        | EntryType::Directory
                        | EntryType::Symlink
                        | EntryType::Link
                        | EntryType::Char
                        | EntryType::Block
                        | EntryType::Fifo
                        | EntryType::Continuous
                )
        };
        let mut seen = Vec::new();
        for e in entries {
            seen.push(e);
            if !plain(e) {
                break;
            }
        }
        if seen.iter().any(|e| is_unsafe_path(&seen_path(e))) {
            prop_assert!(r.is_err(), "a layer with `..` or `/` paths was accepted");
        }
        // Hard links naming outside are refused, never made.
        if let Err(UnpackError::Unsafe { reason, .. }) = &r {
            prop_assert!(!reason.is_empty());
        }
        prop_assert_eq!(
            &snapshot(base, &root),
            &before,
            "something outside the root changed"
        );
    }
    // The unpacker serves the next layer: a benign one under a name no case uses.
    let good = encode(
        &[
            RawEntry {
                kind: EntryType::Directory,
                path: b"fresh-dir/".to_vec(),
                link: Vec::new(),
                data: Vec::new(),
                size: None,
                mode: 0o755,
                dev: (0, 0),
            },
            RawEntry {
                kind: EntryType::Regular,
                path: b"fresh-dir/next".to_vec(),
                link: Vec::new(),
                data: b"next layer".to_vec(),
                size: None,
                mode: 0o644,
                dev: (0, 0),
            },
        ],
        true,
    );
    let r = u.apply_layer(&good[..]);
    prop_assert!(r.is_ok(), "the next layer failed: {r:?}");
    prop_assert_eq!(
        std::fs::read(root.join("fresh-dir/next")).unwrap(),
        b"next layer"
    );
    prop_assert_eq!(&snapshot(base, &root), &before);
    Ok(())
}

fn layers() -> impl Strategy<Value = Vec<(Vec<RawEntry>, bool)>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(entry(outside_base_outside()), 1..8),
            prop::bool::weighted(0.9),
        ),
        1..3,
    )
}

fn outside_base_outside() -> &'static str {
    use std::sync::OnceLock;
    static P: OnceLock<String> = OnceLock::new();
    P.get_or_init(|| format!("{}/outside", outside_base()))
}

/// The cases share one directory: run them one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Arbitrary layers into a temp root: an error or success, never a panic; nothing outside
/// the root created, removed or modified (contents, modes, owners, link counts); entries
/// with `..` or absolute paths refused; the next layer applies.
#[test]
fn hostile_layers_never_touch_anything_outside_the_root() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut runner = proptest::test_runner::TestRunner::new(config(300));
    let result = runner.run(&layers(), |l| run_layers(&l));
    let _ = std::fs::remove_dir_all(outside_base());
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Regression cases found by the fuzzer.

/// Found by `hostile_layers_never_touch_anything_outside_the_root`: a header announcing more
/// data than follows makes the reader take file contents as the next header, and the tar
/// crate's error quoted that "path" (a newline here) into the message. The error must stay
/// one line.
#[test]
fn a_tar_error_quoting_a_newline_from_the_layer_is_one_line() {
    let e = |kind, path: &[u8], data: &[u8], size| RawEntry {
        kind,
        path: path.to_vec(),
        link: b"a".to_vec(),
        data: data.to_vec(),
        size,
        mode: 0o644,
        dev: (1, 3),
    };
    let layer = vec![
        e(EntryType::new(1), b"a\0b", b"", Some(513)),
        e(EntryType::Directory, b"a", b"", None),
        e(EntryType::Regular, b"a", b"\n", None),
    ];
    let dir = tempfile::tempdir().unwrap();
    let r = Unpacker::new(dir.path())
        .unwrap()
        .apply_layer(&encode(&layer, false)[..]);
    let msg = r.expect_err("a malformed layer").to_string();
    assert!(msg.starts_with("reading layer: "), "{msg}");
    assert!(!msg.contains('\n'), "{msg:?}");
}
