#!/usr/bin/env bash
# Build the workspace (release), the static sm-init, the guest kernels (Debian's, and sm's
# own from source: ~4 min the first time) + initramfs and the
# test VM initramfs. Every guest asset is cached by content hash, so re-runs are cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --bins
node/build.sh  # the Node.js binding's addon, node/sm.node
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p sm-guest --target x86_64-unknown-linux-gnu
guest/assets/fetch-kernel.sh >/dev/null
guest/assets/build-kernel.sh >/dev/null
fio=$(guest/assets/build-fio.sh)
guest/assets/build-initramfs.sh target/x86_64-unknown-linux-gnu/release/sm-init "$fio" >/dev/null
testvm/build-initramfs.sh >/dev/null
echo "built: target/release/{sm-vmm,sm-testvm}, ${SM_DATA_DIR:-/usr/local/share/sm}/{sm-kernel,kernel,guest,testvm}"
