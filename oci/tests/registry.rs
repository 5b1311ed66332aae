//! Pulls from a real `docker-registry` on loopback: multi-layer images in OCI and Docker v2
//! form, platform selection, digest pinning, a corrupted blob, concurrent pulls, and the
//! EROFS root image built from the result.

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use sm_oci::progress::Progress;
use sm_oci::{Cache, ImageRef, Platform, PullOptions};
use sm_test_support::oci::*;

fn pull(cache: &Cache, r: &str, platform: &str) -> Result<sm_oci::ImageRecord, sm_oci::PullError> {
    let opts = PullOptions {
        platform: platform.parse::<Platform>().unwrap(),
        insecure: false,
    };
    sm_oci::pull(
        cache,
        &ImageRef::parse(r).unwrap(),
        &opts,
        &Progress::hidden(),
    )
}

/// Everything a user would check in the root image of the standard test image.
fn check_test_rootfs(root: &std::path::Path, exact_modes: bool) {
    assert_eq!(std::fs::read(root.join("bin/busybox")).unwrap(), busybox());
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("busybox")
    );
    assert_eq!(std::fs::read(root.join("bin/hardbox")).unwrap(), busybox());
    assert_eq!(
        std::fs::read(root.join("etc/os-release")).unwrap(),
        std::fs::read("/etc/os-release").unwrap()
    );
    assert!(
        !root.join("etc/gone").exists(),
        "whiteout must delete etc/gone"
    );
    assert!(
        !root.join("opt/dir/a").exists() && !root.join("opt/dir/b").exists(),
        "opaque dir must hide lower entries"
    );
    assert_eq!(std::fs::read(root.join("opt/dir/c")).unwrap(), b"c");
    assert!(!root.join("opt/dir/.wh..wh..opq").exists() && !root.join("etc/.wh.gone").exists());
    let suid = std::fs::metadata(root.join("usr/bin-suid")).unwrap();
    // fsck.erofs --extract drops set-id bits; a mount shows the image as the guest will.
    let want = if exact_modes { 0o4755 } else { 0o755 };
    assert_eq!(suid.permissions().mode() & 0o7777, want);
    if exact_modes {
        assert_eq!(
            xattr(&root.join("etc/xattr"), "user.sm").as_deref(),
            Some(&b"yes"[..])
        );
    }
    assert_eq!((suid.uid(), suid.gid()), (1000, 1000));
    assert_eq!(
        std::fs::read(root.join("usr/share/GPL-3")).unwrap(),
        std::fs::read("/usr/share/common-licenses/GPL-3").unwrap()
    );
}

#[test]
fn pull_multi_layer_image_and_build_erofs_root() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    write_test_layout(&work.path().join("layout"));
    reg.push(&work.path().join("layout"), "v1", "test/img", None);
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("{}/test/img:v1", reg.addr);
    let rec = pull(&cache, &r, "linux/amd64").unwrap();
    assert_eq!(rec.layers.len(), 3);
    assert!(rec.blobs().all(|d| cache.has_blob(d)));
    assert_eq!(cache.records().unwrap().len(), 1);
    assert_eq!(cache.records().unwrap()[0].reference, r);

    let image = ImageRef::parse(&r).unwrap();
    let cfg = sm_oci::image_config(&cache, &image).unwrap();
    assert_eq!(cfg.entrypoint.unwrap(), ["/bin/sh", "-c"]);
    assert_eq!(cfg.cmd.unwrap(), ["echo hi"]);
    assert_eq!(cfg.env.unwrap(), ["PATH=/bin", "A=b"]);
    assert_eq!(cfg.working_dir.as_deref(), Some("/opt"));
    assert_eq!(cfg.user.as_deref(), Some("1000:1000"));

    let img = sm_oci::rootfs_image(&cache, &image).unwrap();
    assert!(
        img.starts_with(cache.rootfs_dir()) && img.to_str().unwrap().contains(rec.manifest.hex())
    );
    let view = erofs_view(&img);
    check_test_rootfs(&view.path(), view.exact());

    // A second use reuses the image file: same inode, nothing unpacked.
    let ino = std::fs::metadata(&img).unwrap().ino();
    let again = sm_oci::rootfs_image(&cache, &image).unwrap();
    assert_eq!(
        (again.clone(), std::fs::metadata(&again).unwrap().ino()),
        (img, ino)
    );
    assert_eq!(
        std::fs::read_dir(cache.tmp_dir())
            .unwrap()
            .filter(|e| !e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".lock"))
            .count(),
        0
    );

    // A second pull of the same image is served from the cache and records the same digest.
    let rec2 = pull(&cache, &r, "linux/amd64").unwrap();
    assert_eq!(rec2.manifest, rec.manifest);

    // Forgetting the reference lets garbage collection take blobs and the root image.
    drop(view);
    assert!(cache.remove_record(&image.key()).unwrap());
    let stats = cache.gc().unwrap();
    assert!(stats.bytes >= rec.size);
    assert!(!again.exists());
    assert_eq!(std::fs::read_dir(cache.blob_dir()).unwrap().count(), 0);
}

#[test]
fn docker_v2_manifest_and_digest_pinning() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let layers = vec![
        (
            layer_tar(&[Entry::File(
                "hello".into(),
                b"docker v2\n".to_vec(),
                0o644,
                0,
                0,
            )]),
            Compression::Gzip,
        ),
        (
            layer_tar(&[Entry::File("two".into(), b"2".to_vec(), 0o600, 0, 0)]),
            Compression::Gzip,
        ),
    ];
    let m = l.image("amd64", &layers, serde_json::json!({"Cmd": ["/hello"]}));
    l.tag(&m, "v2");
    reg.push_with(&l.dir, "v2", "docker/img", None, &["--format", "v2s2"]);
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let rec = pull(
        &cache,
        &format!("{}/docker/img:v2", reg.addr),
        "linux/amd64",
    )
    .unwrap();
    let manifest = String::from_utf8(cache.read_blob(&rec.manifest, 1 << 20).unwrap()).unwrap();
    assert!(
        manifest.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{manifest}"
    );

    let pinned = format!("{}/docker/img@{}", reg.addr, rec.manifest);
    assert_eq!(
        pull(&cache, &pinned, "linux/amd64").unwrap().manifest,
        rec.manifest
    );
    let img = sm_oci::rootfs_image(&cache, &ImageRef::parse(&pinned).unwrap()).unwrap();
    assert_eq!(
        std::fs::read(erofs_view(&img).path().join("hello")).unwrap(),
        b"docker v2\n"
    );

    let wrong = format!("{}/docker/img@sha256:{}", reg.addr, "0".repeat(64));
    let e = pull(&cache, &wrong, "linux/amd64").unwrap_err().to_string();
    assert!(e.contains("manifest"), "{e}");

    // A Docker manifest list (what `docker buildx` pushes for several platforms).
    let arm_layer = layer_tar(&[Entry::File("hello".into(), b"arm\n".to_vec(), 0o644, 0, 0)]);
    let arm = l.image(
        "arm64",
        &[(arm_layer, Compression::Gzip)],
        serde_json::json!({}),
    );
    let list = l.index_of(&[m, arm]);
    l.tag(&list, "list");
    reg.push_with(&l.dir, "list", "docker/list", None, &["--format", "v2s2"]);
    let r = format!("{}/docker/list:list", reg.addr);
    let rec = pull(&cache, &r, "linux/arm64").unwrap();
    let index = cache
        .read_blob(rec.index.as_ref().unwrap(), 1 << 20)
        .unwrap();
    let index = String::from_utf8(index).unwrap();
    assert!(
        index.contains("application/vnd.docker.distribution.manifest.list.v2+json"),
        "{index}"
    );
    let img = sm_oci::rootfs_image(&cache, &ImageRef::parse(&r).unwrap()).unwrap();
    assert_eq!(
        std::fs::read(erofs_view(&img).path().join("hello")).unwrap(),
        b"arm\n"
    );
}

#[test]
fn corrupt_partial_download_is_discarded_then_pull_succeeds() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let m = l.image(
        "amd64",
        &[(
            layer_tar(&[Entry::File("f".into(), body, 0o644, 0, 0)]),
            Compression::None,
        )],
        serde_json::json!({}),
    );
    l.tag(&m, "v1");
    reg.push(&l.dir, "v1", "partial/img", None);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.blob_path(m["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer: sm_oci::Digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    // A leftover partial download whose bytes are wrong: resuming it cannot verify.
    std::fs::write(cache.partial_path(&layer), vec![0xAAu8; 4096]).unwrap();
    let r = format!("{}/partial/img:v1", reg.addr);
    let e = pull(&cache, &r, "linux/amd64").unwrap_err().to_string();
    assert!(
        e.contains("digest mismatch") && e.contains(&layer.to_string()),
        "{e}"
    );
    assert!(!cache.partial_path(&layer).exists() && !cache.has_blob(&layer));
    // The next pull starts that blob from scratch and succeeds.
    pull(&cache, &r, "linux/amd64").unwrap();
    assert!(cache.has_blob(&layer));
}

#[test]
fn image_index_selects_platform() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    write_test_layout(&work.path().join("layout"));
    reg.push(&work.path().join("layout"), "multi", "test/multi", None);
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("{}/test/multi:multi", reg.addr);

    let amd = pull(&cache, &r, "linux/amd64").unwrap();
    assert!(amd.index.is_some());
    assert_eq!(amd.layers.len(), 3);
    assert_eq!(amd.platform.as_ref().unwrap().architecture, "amd64");

    let arm = pull(&cache, &r, "linux/arm64").unwrap();
    assert_eq!(arm.platform.as_ref().unwrap().architecture, "arm64");
    assert_eq!(arm.layers.len(), 1);
    assert_eq!(arm.index, amd.index);
    let img = sm_oci::rootfs_image(&cache, &ImageRef::parse(&r).unwrap()).unwrap();
    assert_eq!(
        std::fs::read(erofs_view(&img).path().join("arch")).unwrap(),
        b"arm64\n"
    );

    let e = pull(&cache, &r, "linux/s390x").unwrap_err().to_string();
    assert!(
        e.contains("no image for platform linux/s390x") && e.contains("linux/arm64/v8"),
        "{e}"
    );
}

/// Changes one byte of a stored file in place (same length: only a digest check notices).
fn corrupt(path: &std::path::Path, at: impl Fn(&[u8]) -> usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = at(&bytes);
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn corrupted_manifest_config_or_layer_is_refused_and_not_cached() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    for (n, which) in ["layer", "config", "manifest"].into_iter().enumerate() {
        let mut l = Layout::new(&work.path().join(format!("layout-{which}")));
        let body = vec![n as u8; 100_000];
        let m = l.image(
            "amd64",
            &[(
                layer_tar(&[Entry::File("f".into(), body, 0o644, 0, 0)]),
                Compression::Gzip,
            )],
            serde_json::json!({ "Cmd": [which] }),
        );
        l.tag(&m, "v1");
        let name = format!("bad/{which}");
        reg.push(&l.dir, "v1", &name, None);
        let manifest_digest = m["digest"].as_str().unwrap().to_string();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(l.blob_path(&manifest_digest)).unwrap()).unwrap();
        let target = match which {
            "layer" => manifest["layers"][0]["digest"]
                .as_str()
                .unwrap()
                .to_string(),
            "config" => manifest["config"]["digest"].as_str().unwrap().to_string(),
            _ => manifest_digest.clone(),
        };
        corrupt(&reg.blob_file(&target), |b| match which {
            "layer" => b.len() / 2,
            // A hex digit inside a JSON string keeps the document valid for the registry.
            _ => b.windows(7).position(|w| w == b"sha256:").unwrap() + 7,
        });

        let e = pull(&cache, &format!("{}/{name}:v1", reg.addr), "linux/amd64")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("digest mismatch") && e.contains(&target),
            "{which}: {e}"
        );
        let d: sm_oci::Digest = target.parse().unwrap();
        assert!(
            !cache.has_blob(&d) && !cache.partial_path(&d).exists(),
            "{which}: nothing unverified may stay in the cache"
        );
        assert!(cache.records().unwrap().is_empty(), "{which}");
    }
}

#[test]
fn concurrent_pulls_share_one_cache() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let big: Vec<u8> = (0..8_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let layers = vec![
        (
            layer_tar(&[Entry::File("big".into(), big, 0o644, 0, 0)]),
            Compression::Gzip,
        ),
        (
            layer_tar(&[Entry::File("small".into(), b"s".to_vec(), 0o644, 0, 0)]),
            Compression::Zstd,
        ),
    ];
    let m = l.image("amd64", &layers, serde_json::json!({}));
    l.tag(&m, "v1");
    reg.push(&l.dir, "v1", "conc/img", None);
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("{}/conc/img:v1", reg.addr);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| pull(&cache, &r, "linux/amd64").map(|r| r.manifest)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for res in &results {
        assert_eq!(
            res.as_ref().unwrap().to_string(),
            m["digest"].as_str().unwrap()
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(cache.blob_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let img = sm_oci::rootfs_image(&cache, &ImageRef::parse(&r).unwrap()).unwrap();
    assert_eq!(
        std::fs::read(erofs_view(&img).path().join("small")).unwrap(),
        b"s"
    );
}

#[test]
fn anonymous_bearer_token_auth() {
    let tokens = TokenServer::start();
    let reg = Registry::start_with_tokens(&tokens);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let m = l.image(
        "amd64",
        &[(
            layer_tar(&[Entry::File("t".into(), b"token".to_vec(), 0o644, 0, 0)]),
            Compression::Gzip,
        )],
        serde_json::json!({}),
    );
    l.tag(&m, "v1");
    reg.push(&l.dir, "v1", "tok/img", None);
    let before = tokens.requests.lock().unwrap().len();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let rec = pull(&cache, &format!("{}/tok/img:v1", reg.addr), "linux/amd64").unwrap();
    assert_eq!(rec.manifest.to_string(), m["digest"].as_str().unwrap());
    let reqs = tokens.requests.lock().unwrap();
    assert!(
        reqs[before..]
            .iter()
            .any(|r| r.contains("repository%3Atok%2Fimg%3Apull")
                || r.contains("repository:tok/img:pull")),
        "sm never asked the token server for a pull token: {reqs:?}"
    );
}

#[test]
fn registry_images_keep_the_cache_unless_pull_always() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("{}/test/tagged:v1", reg.addr);
    let ensure = |policy| {
        sm_oci::ensure(
            &cache,
            &ImageRef::parse(&r).unwrap(),
            &PullOptions::default(),
            policy,
            &Progress::hidden(),
        )
    };
    let push = |name: &str, content: &[u8]| {
        let mut l = Layout::new(&work.path().join(name));
        let layer = layer_tar(&[Entry::File("f".into(), content.to_vec(), 0o644, 0, 0)]);
        let m = l.image(
            "amd64",
            &[(layer, Compression::Gzip)],
            serde_json::json!({}),
        );
        l.tag(&m, "v1");
        reg.push(&l.dir, "v1", "test/tagged", None);
        m["digest"].as_str().unwrap().to_string()
    };
    let first = push("one", b"1");
    let e = ensure(sm_oci::PullPolicy::Never).unwrap_err().to_string();
    assert!(e.contains("not in the image store"), "{e}");
    assert_eq!(
        ensure(sm_oci::PullPolicy::Missing)
            .unwrap()
            .manifest
            .to_string(),
        first
    );
    // The tag moves in the registry: `missing` and `never` keep what the store has...
    let second = push("two", b"2");
    assert_ne!(first, second);
    for policy in [sm_oci::PullPolicy::Missing, sm_oci::PullPolicy::Never] {
        assert_eq!(ensure(policy).unwrap().manifest.to_string(), first);
    }
    // ...`always` asks the registry.
    assert_eq!(
        ensure(sm_oci::PullPolicy::Always)
            .unwrap()
            .manifest
            .to_string(),
        second
    );
}
