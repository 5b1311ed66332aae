//! The baked image the pool tests and the pool benchmark share: an image (or the guest's
//! own root), `sleep 100000` as the workload, a 64 MiB volume at `/cache` that a warm-up callback fills
//! with 500 files (`f1`..`f500`), then the snapshot.

use std::path::Path;

/// Files the warm-up writes into the volume.
pub const WARM_FILES: usize = 500;

/// Bakes (or finds, if unchanged) `name` from `image` (a reference; `None`: the guest's own
/// root) with `mem_mib` of RAM into the store at `store`, the volume's file at `volume`, with
/// the default network.
pub fn build(
    name: &str,
    image: Option<&str>,
    mem_mib: u64,
    store: &Path,
    volume: &Path,
) -> sm::Image {
    build_with_network(name, image, mem_mib, store, volume, sm::Network::default())
}

/// [`build`] with the guest network `network`.
pub fn build_with_network(
    name: &str,
    image: Option<&str>,
    mem_mib: u64,
    store: &Path,
    volume: &Path,
    network: sm::Network,
) -> sm::Image {
    sm::Image::build(sm::BuildOptions {
        name: name.into(),
        image: image.map(str::to_owned),
        mem_mib,
        volumes: vec![sm::Volume {
            file: volume.to_owned(),
            guest: "/cache".into(),
            size_mib: 64,
        }],
        cmd: vec!["sleep".into(), "100000".into()],
        warmup: Some(sm::Warmup::Callback(Box::new(|vm: &sm::Vm| {
            // Shell built-ins and `test` only: images have few tools.
            let fill = format!(
                "set -e; i=1; while test $i -le {WARM_FILES}; do echo $i > /cache/f$i; i=$((i+1)); done"
            );
            let out = vm
                .exec(&["sh", "-c", &fill])
                .output()
                .map_err(|e| e.to_string())?;
            match out.exit.code {
                Some(0) => Ok(()),
                c => Err(format!("warm-up exited {c:?}")),
            }
        }))),
        warmup_tag: "v1".into(),
        network,
        store: Some(sm::store::SnapshotStore::at(store)),
        ..Default::default()
    })
    .expect("bake")
}
