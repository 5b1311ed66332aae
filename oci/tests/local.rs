//! Local sources: OCI layout directories, OCI archives and docker-archive tars (written by
//! skopeo and by hand in `docker save`'s legacy shape), each checked blob by blob.

use std::path::Path;
use std::process::Command;

use sm_oci::progress::Progress;
use sm_oci::{Cache, ImageRecord, ImageRef, PullOptions, PullPolicy};
use sm_test_support::oci::*;

fn import(
    cache: &Cache,
    r: &str,
    platform: &str,
) -> Result<sm_oci::ImageRecord, sm_oci::PullError> {
    let opts = PullOptions {
        platform: platform.parse().unwrap(),
        insecure: false,
    };
    sm_oci::pull(
        cache,
        &ImageRef::parse(r).unwrap(),
        &opts,
        &Progress::hidden(),
    )
}

fn file_in_rootfs(cache: &Cache, r: &str, path: &str) -> Vec<u8> {
    let img = sm_oci::rootfs_image(cache, &ImageRef::parse(r).unwrap()).unwrap();
    std::fs::read(erofs_view(&img).path().join(path)).unwrap()
}

#[test]
fn oci_layout_by_tag_and_platform() {
    let work = tempfile::tempdir().unwrap();
    let l = write_test_layout(&work.path().join("layout"));
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("oci-layout:{}:v1", l.dir.display());
    let rec = import(&cache, &r, "linux/amd64").unwrap();
    assert_eq!(rec.layers.len(), 3);
    assert_eq!(file_in_rootfs(&cache, &r, "bin/busybox"), busybox());
    assert!(!sm_oci::rootfs_image(&cache, &ImageRef::parse(&r).unwrap())
        .map(|p| erofs_view(&p).path().join("etc/gone").exists())
        .unwrap());

    let multi = format!("oci-layout:{}:multi", l.dir.display());
    import(&cache, &multi, "linux/arm64/v8").unwrap();
    assert_eq!(file_in_rootfs(&cache, &multi, "arch"), b"arm64\n");

    let e = import(
        &cache,
        &format!("oci-layout:{}:nope", l.dir.display()),
        "linux/amd64",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no manifest tagged \"nope\""), "{e}");
    let e = import(
        &cache,
        &format!("oci-layout:{}", l.dir.display()),
        "linux/amd64",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("2 manifests"), "{e}");
}

#[test]
fn altered_layout_blob_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let m = l.image(
        "amd64",
        &[(
            layer_tar(&[Entry::File("f".into(), vec![1u8; 5000], 0o644, 0, 0)]),
            Compression::Gzip,
        )],
        serde_json::json!({}),
    );
    l.tag(&m, "v1");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(l.blob_path(m["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let mut bytes = std::fs::read(l.blob_path(layer)).unwrap();
    let n = bytes.len();
    bytes[n - 9] ^= 1;
    std::fs::write(l.blob_path(layer), bytes).unwrap();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let e = import(
        &cache,
        &format!("oci-layout:{}:v1", l.dir.display()),
        "linux/amd64",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("digest mismatch") && e.contains(layer), "{e}");
    assert!(!cache.has_blob(&layer.parse().unwrap()));
    assert!(cache.records().unwrap().is_empty());
}

#[test]
fn oci_archive() {
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let m = l.image("amd64", &test_layers(), test_config());
    l.tag(&m, "v1");
    let tar_path = work.path().join("img.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", &l.dir).unwrap();
    b.finish().unwrap();
    drop(b);
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("oci-archive:{}", tar_path.display());
    let rec = import(&cache, &r, "linux/amd64").unwrap();
    assert_eq!(rec.manifest.to_string(), m["digest"].as_str().unwrap());
    assert_eq!(file_in_rootfs(&cache, &r, "opt/dir/c"), b"c");
}

#[test]
fn docker_archive_from_skopeo() {
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("layout"));
    let layers = test_layers();
    let m = l.image(
        "amd64",
        &[layers[0].clone(), layers[2].clone()],
        test_config(),
    );
    l.tag(&m, "v1");
    let tar_path = work.path().join("docker.tar");
    let o = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", l.dir.display()))
        .arg(format!("docker-archive:{}:test/img:v1", tar_path.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("docker-archive:{}", tar_path.display());
    let rec = import(&cache, &r, "linux/amd64").unwrap();
    assert_eq!(rec.layers.len(), 2);
    assert_eq!(file_in_rootfs(&cache, &r, "bin/busybox"), busybox());
    assert_eq!(
        sm_oci::image_config(&cache, &ImageRef::parse(&r).unwrap())
            .unwrap()
            .working_dir
            .as_deref(),
        Some("/opt")
    );
}

#[test]
fn docker_archive_legacy_layout_and_bad_layer() {
    let work = tempfile::tempdir().unwrap();
    let l1 = layer_tar(&[Entry::File("one".into(), b"1".to_vec(), 0o644, 0, 0)]);
    let l2 = layer_tar(&[Entry::File("two".into(), b"2".to_vec(), 0o644, 0, 0)]);
    let evil = layer_tar(&[Entry::File("two".into(), b"X".to_vec(), 0o644, 0, 0)]);
    // `docker save` legacy shape: <id>/layer.tar, <hex>.json config, a symlinked layer.
    let write = |name: &str, layers: &[&str], bbb: &[u8]| {
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/one"]},
            "rootfs": {"type": "layers", "diff_ids": [digest(&l1), digest(&l2)]},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let config_name = format!("{}.json", &digest(&config)[7..]);
        let manifest =
            serde_json::json!([{"Config": config_name, "RepoTags": ["t:1"], "Layers": layers}]);
        let path = work.path().join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |p: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, data).unwrap();
        };
        add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
        add(&config_name, &config);
        add("aaa/layer.tar", &l1);
        add("bbb/layer.tar", bbb);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "ccc/layer.tar", "../aaa/layer.tar")
            .unwrap();
        b.finish().unwrap();
        format!("docker-archive:{}", path.display())
    };
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let ok = write("ok.tar", &["ccc/layer.tar", "bbb/layer.tar"], &l2);
    import(&cache, &ok, "linux/amd64").unwrap();
    assert_eq!(file_in_rootfs(&cache, &ok, "one"), b"1");
    assert_eq!(file_in_rootfs(&cache, &ok, "two"), b"2");

    let bad = write("bad.tar", &["aaa/layer.tar", "bbb/layer.tar"], &evil);
    let e = import(&cache, &bad, "linux/amd64").unwrap_err().to_string();
    assert!(e.contains("does not match diff_id"), "{e}");

    let three = write(
        "three.tar",
        &["aaa/layer.tar", "bbb/layer.tar", "ccc/layer.tar"],
        &l2,
    );
    let e = import(&cache, &three, "linux/amd64")
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 layers but config lists 2 diff_ids"), "{e}");
}

#[test]
fn hostile_image_gives_one_error_and_no_root_image() {
    let work = tempfile::tempdir().unwrap();
    let (l, m) = symlink_escape_layout(&work.path().join("layout"));
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let r = format!("oci-layout:{}:v1", l.dir.display());
    import(&cache, &r, "linux/amd64").unwrap();
    let e = sm_oci::rootfs_image(&cache, &ImageRef::parse(&r).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("layer 2 (sha256:")
            && e.contains(
                "unsafe layer entry \"etc/pwned-by-sm-test\" refused: path goes through a symlink"
            ),
        "{e}"
    );
    assert!(!Path::new("/etc/pwned-by-sm-test").exists());
    // No root image; the refusal is kept, for `sm images` to show.
    let in_rootfs: Vec<_> = std::fs::read_dir(cache.rootfs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let manifest: sm_oci::Digest = m["digest"].as_str().unwrap().parse().unwrap();
    assert_eq!(in_rootfs, [format!("{}.refused", manifest.hex())]);
    assert_eq!(cache.refusal(&manifest).as_deref(), Some(e.as_str()));
    let scratch: Vec<_> = std::fs::read_dir(cache.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    // Garbage collection keeps it while the image is recorded, and drops it after.
    cache.gc().unwrap();
    assert!(cache.refusal(&manifest).is_some());
    cache
        .remove_record(&ImageRef::parse(&r).unwrap().key())
        .unwrap();
    cache.gc().unwrap();
    assert_eq!(std::fs::read_dir(cache.rootfs_dir()).unwrap().count(), 0);
}

/// Packs a layout as an OCI archive at `path`.
fn oci_archive_of(l: &Layout, path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    b.append_dir_all(".", &l.dir).unwrap();
    b.finish().unwrap();
}

/// Packs a layout's `v1` as a docker-archive at `path` with skopeo.
fn docker_archive_of(l: &Layout, path: &Path) {
    let _ = std::fs::remove_file(path);
    let o = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:v1", l.dir.display()))
        .arg(format!("docker-archive:{}:test/img:v1", path.display()))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn ensure(cache: &Cache, r: &str, policy: PullPolicy) -> Result<ImageRecord, sm_oci::PullError> {
    sm_oci::ensure(
        cache,
        &ImageRef::parse(r).unwrap(),
        &PullOptions::default(),
        policy,
        &Progress::hidden(),
    )
}

#[test]
fn rebuilt_local_sources_are_read_again() {
    let work = tempfile::tempdir().unwrap();
    let cache = Cache::open(work.path().join("cache")).unwrap();
    let layout_dir = work.path().join("layout");
    let oci_tar = work.path().join("oci.tar");
    let docker_tar = work.path().join("docker.tar");
    let sources = [
        format!("oci-layout:{}:v1", layout_dir.display()),
        format!("oci-archive:{}", oci_tar.display()),
        format!("docker-archive:{}", docker_tar.display()),
    ];
    let build = |version: &str| {
        let (l, _) = versioned_layout(&layout_dir, version);
        oci_archive_of(&l, &oci_tar);
        docker_archive_of(&l, &docker_tar);
    };

    build("1\n");
    for r in &sources {
        let e = ensure(&cache, r, PullPolicy::Never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in the image store"), "{r}: {e}");
        ensure(&cache, r, PullPolicy::Missing).unwrap();
        assert_eq!(file_in_rootfs(&cache, r, "version"), b"1\n", "{r}");
    }
    // Unchanged sources give the same image.
    let first: Vec<_> = sources
        .iter()
        .map(|r| ensure(&cache, r, PullPolicy::Missing).unwrap().manifest)
        .collect();

    // Rebuilt at the same path and tag: the next run uses the new content...
    build("2\n");
    for (r, old) in sources.iter().zip(&first) {
        // ...unless the user said never to read the source.
        let kept = ensure(&cache, r, PullPolicy::Never).unwrap();
        assert_eq!(&kept.manifest, old, "{r}");
        let rec = ensure(&cache, r, PullPolicy::Missing).unwrap();
        assert_ne!(&rec.manifest, old, "{r}: the rebuilt source was not read");
        assert_eq!(file_in_rootfs(&cache, r, "version"), b"2\n", "{r}");
        let again = ensure(&cache, r, PullPolicy::Always).unwrap();
        assert_eq!(again.manifest, rec.manifest, "{r}");
    }
}
