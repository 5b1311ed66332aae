#!/usr/bin/env bash
# Install the host packages and tools sm's build and tests need (idempotent).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need_apt=0
for bin in qemu-system-x86_64 qemu-storage-daemon busybox cpio depmod readelf make cc; do
  command -v "$bin" >/dev/null || need_apt=1
done
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 || need_apt=1
dpkg -s libseccomp-dev libcap-ng-dev libaio-dev zlib1g-dev >/dev/null 2>&1 || need_apt=1
# sm's guest kernel (guest/assets/build-kernel.sh): Kbuild's tools and objtool's libelf.
for bin in flex bison bc; do command -v "$bin" >/dev/null || need_apt=1; done
dpkg -s libelf-dev libssl-dev >/dev/null 2>&1 || need_apt=1
# sm-oci's tests and benchmark: a local registry, skopeo/umoci as peers, mkfs.erofs, htpasswd,
# openssl (signs the test token server's JWTs).
for bin in docker-registry skopeo umoci mkfs.erofs fsck.erofs htpasswd openssl curl mkfs.ext4; do
  command -v "$bin" >/dev/null || need_apt=1
done
# systemd-analyze verifies the unit files in systemd/ (a host test).
command -v systemd-analyze >/dev/null || need_apt=1
if [ "$need_apt" = 1 ]; then
  apt-get update -q
  # Debian 12's QEMU (7.2) is the project's peer. Some images carry a newer qemu-utils from
  # backports that conflicts with it: pin qemu-utils to the same release as qemu-system.
  v=$(apt-cache madison qemu-system-x86 | awk '$5 ~ /^bookworm\/main/ || $6 ~ /bookworm\/main/ {print $3; exit}')
  [ -n "$v" ] || v=$(apt-cache policy qemu-system-x86 | awk '/Candidate/ {print $2}')
  apt-get install -y -q --allow-downgrades \
    "qemu-system-x86=$v" "qemu-utils=$v" "qemu-block-extra=$v" "qemu-system-common=$v" "qemu-system-data" \
    busybox-static cpio kmod binutils xz-utils libseccomp-dev libcap-ng-dev \
    libaio-dev zlib1g-dev make curl e2fsprogs \
    docker-registry skopeo umoci erofs-utils apache2-utils openssl systemd gcc \
    flex bison bc libelf-dev libssl-dev
fi
# The Rust virtiofsd shares the host root into the test VM (Debian 7.2's C virtiofsd cannot
# enforce read-only).
if ! command -v virtiofsd >/dev/null || ! virtiofsd --version 2>/dev/null | grep -q '1\.14\.'; then
  cargo install virtiofsd --version 1.14.0 --locked --root /usr/local
fi
# pjdfstest (the Rust port of the POSIX file system test suite) runs inside guests, whose
# userland is busybox without glibc: linked statically, kept off PATH (a static glibc's NSS
# cannot read this host's user database, so it is for guests only).
pjdfstest=/usr/local/lib/pjdfstest-static
if ! "$pjdfstest/bin/pjdfstest" --version 2>/dev/null | grep -q '0\.2\.2'; then
  RUSTFLAGS='-C target-feature=+crt-static' cargo install pjdfstest --version 0.2.2 --locked \
    --target x86_64-unknown-linux-gnu --root "$pjdfstest"
fi
# passt, the user-mode network stack behind sm-vhost-user-net: Debian 13's release, built from
# Debian's source. Debian 12's passt (2023-03) sends data the guest already acknowledged again
# as new data on the test VM's 6.1 kernel (QEMU's own -netdev stream + passt shows the same), so
# guests' downloads arrive corrupted.
passt_version=0.0~git20250503.587980c
passt_sha256=69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49
if ! [ -x /usr/local/bin/passt ] || ! grep -qs "$passt_version" /usr/local/share/sm/passt.version; then
  src=$(mktemp -d)
  tarball="$src/passt.tar.xz"
  curl -sfL -o "$tarball" "http://deb.debian.org/debian/pool/main/p/passt/passt_${passt_version}.orig.tar.xz"
  echo "$passt_sha256  $tarball" | sha256sum -c --quiet
  tar -C "$src" -xf "$tarball"
  make -s -C "$src"/passt-* passt >/dev/null
  install -m 0755 "$src"/passt-*/passt /usr/local/bin/passt
  mkdir -p /usr/local/share/sm && echo "$passt_version" > /usr/local/share/sm/passt.version
  rm -rf "$src"
fi
# rust-vmm's vhost-user vsock backend: the host end of the guest agent's vsock.
if ! command -v vhost-device-vsock >/dev/null; then
  cargo install vhost-device-vsock --version 0.3.0 --locked --root /usr/local
fi
