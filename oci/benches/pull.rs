//! sm-oci against its peers, side by side in one run: pulling a multi-layer image from a
//! local `docker-registry` (sm-oci vs `skopeo copy` to an OCI layout), and building the root
//! (sm-oci's unpack, and unpack + mkfs.erofs, vs `umoci unpack`). Prints medians and ratios
//! (peer time / sm time: above 1.0 means sm is faster).
//!
//! Run: `cargo bench -p sm-oci --bench pull` (as root, with the packages from
//! scripts/install-deps.sh).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sm_oci::progress::Progress;
use sm_oci::{Cache, ImageRef, PullOptions};
use sm_test_support::oci::*;

const RUNS: usize = 5;

/// A deterministic pseudo-random generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// `n` bytes that compress about 2:1 (random words from a small alphabet).
    fn text(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            let r = self.next();
            for i in 0..8 {
                v.push(b"abcdefghijklmnop \n"[((r >> (i * 8)) % 18) as usize]);
            }
        }
        v.truncate(n);
        v
    }
}

/// Six layers: busybox, 3000 small files, four 16 MB files (three gzip, one plain; umoci
/// 0.4.7 cannot read zstd layers, so there is none here).
fn bench_layers() -> Vec<(Vec<u8>, Compression)> {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut small = vec![Entry::Dir("usr", 0o755), Entry::Dir("usr/share", 0o755)];
    for d in 0..30 {
        for f in 0..100 {
            let size = 512 + (rng.next() % 16384) as usize;
            small.push(Entry::File(
                format!("usr/share/d{d}/f{f}.txt"),
                rng.text(size),
                0o644,
                0,
                0,
            ));
        }
    }
    let big = |rng: &mut Rng, name: &str| {
        layer_tar(&[Entry::File(name.into(), rng.text(16 << 20), 0o644, 0, 0)])
    };
    vec![
        (
            layer_tar(&[
                Entry::Dir("bin", 0o755),
                Entry::File("bin/busybox".into(), busybox(), 0o755, 0, 0),
            ]),
            Compression::Gzip,
        ),
        (layer_tar(&small), Compression::Gzip),
        (big(&mut rng, "big1"), Compression::Gzip),
        (big(&mut rng, "big2"), Compression::Gzip),
        (big(&mut rng, "big3"), Compression::Gzip),
        (big(&mut rng, "big4"), Compression::None),
    ]
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn run(cmd: &mut Command) {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn rm(p: &Path) {
    let _ = std::fs::remove_dir_all(p);
}

fn main() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let mut l = Layout::new(&work.path().join("src"));
    let layers = bench_layers();
    let total: usize = layers.iter().map(|(t, _)| t.len()).sum();
    let m = l.image(
        "amd64",
        &layers,
        serde_json::json!({"Cmd": ["/bin/busybox", "sh"]}),
    );
    l.tag(&m, "v1");
    reg.push(&l.dir, "v1", "bench/img", None);
    let r = format!("{}/bench/img:v1", reg.addr);
    let image = ImageRef::parse(&r).unwrap();
    println!(
        "image: {} layers, {:.1} MB uncompressed, registry {}",
        layers.len(),
        total as f64 / 1e6,
        reg.addr
    );

    let cache_dir = work.path().join("cache");
    let skopeo_dir = work.path().join("skopeo");
    let (mut sm_pull, mut skopeo_pull) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        rm(&cache_dir);
        sm_pull.push(time(|| {
            let cache = Cache::open(&cache_dir).unwrap();
            sm_oci::pull(&cache, &image, &PullOptions::default(), &Progress::hidden()).unwrap();
        }));
        rm(&skopeo_dir);
        skopeo_pull.push(time(|| {
            run(Command::new("skopeo")
                .args([
                    "copy",
                    "--quiet",
                    "--src-tls-verify=false",
                    &format!("docker://{r}"),
                ])
                .arg(format!("oci:{}:v1", skopeo_dir.display())));
        }));
    }

    let cache = Cache::open(&cache_dir).unwrap();
    let rec = cache.record(&image.key()).unwrap().unwrap();
    let unpack_dir = work.path().join("unpack");
    let bundle = work.path().join("bundle");
    let (mut sm_unpack, mut sm_rootfs, mut umoci) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        rm(&unpack_dir);
        std::fs::create_dir(&unpack_dir).unwrap();
        sm_unpack.push(time(|| {
            sm_oci::rootfs::unpack_layers(&cache, &rec, &unpack_dir).unwrap()
        }));
        rm(&unpack_dir);
        for e in std::fs::read_dir(cache.rootfs_dir()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        sm_rootfs.push(time(|| {
            sm_oci::rootfs_image(&cache, &image).unwrap();
        }));
        rm(&bundle);
        umoci.push(time(|| {
            run(Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:v1", skopeo_dir.display()))
                .arg(&bundle));
        }));
    }
    rm(&bundle);

    let row = |name: &str, sm: Duration, peer_name: &str, peer: Duration| {
        println!(
            "{name:<34} sm {:>8.1} ms   {peer_name:<24} {:>8.1} ms   ratio {:>5.2}x",
            sm.as_secs_f64() * 1e3,
            peer.as_secs_f64() * 1e3,
            peer.as_secs_f64() / sm.as_secs_f64()
        );
    };
    println!("medians of {RUNS} runs; ratio = peer time / sm time (> 1 means sm is faster)");
    let (sp, kp) = (median(sm_pull), median(skopeo_pull));
    row("pull (registry -> cache)", sp, "skopeo copy -> oci:", kp);
    let (su, sr, um) = (median(sm_unpack), median(sm_rootfs), median(umoci));
    row("unpack layers (tree only)", su, "umoci unpack", um);
    row("root image (unpack + mkfs.erofs)", sr, "umoci unpack", um);
}
