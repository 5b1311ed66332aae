#!/usr/bin/env bash
# Assemble the guest initramfs: sm-init as /init, busybox as the default userland, fio (built
# by build-fio.sh) for block tests and benchmarks, and the
# kernel modules later devices need (virtio-mmio, virtio-blk, virtio-net, virtio-fs, vsock, overlay,
# erofs) with /etc/sm/modules listing them in load order. The output is cached under
# $SM_CACHE_DIR by the hash of its inputs and installed as $SM_DATA_DIR/guest/initramfs.img.
#
# usage: build-initramfs.sh SM_INIT_BINARY FIO_BINARY
set -euo pipefail
sm_init=${1:?usage: build-initramfs.sh SM_INIT_BINARY FIO_BINARY}
fio=${2:?usage: build-initramfs.sh SM_INIT_BINARY FIO_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
data=${SM_DATA_DIR:-/usr/local/share/sm}
cache=${SM_CACHE_DIR:-/var/cache/sm}
kdir="$data/kernel"
busybox=${BUSYBOX:-/bin/busybox}
[ -f "$kdir/.complete" ] || { echo "build-initramfs: no kernel in $kdir (run fetch-kernel.sh)" >&2; exit 1; }
[ -x "$busybox" ] || { echo "build-initramfs: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
if readelf -l "$sm_init" | grep -q "program interpreter"; then
  echo "build-initramfs: $sm_init is dynamically linked; build it with -C target-feature=+crt-static" >&2
  exit 1
fi
if readelf -l "$fio" | grep -q "program interpreter"; then
  echo "build-initramfs: $fio is dynamically linked; use the one build-fio.sh makes" >&2
  exit 1
fi
kver=$(cat "$kdir/version")
wanted="virtio_mmio virtio_blk virtio_net fuse virtiofs vmw_vsock_virtio_transport overlay erofs"

# Resolve dependencies from modules.dep, dependencies first.
declare -A seen=()
order=()
dep_line() { grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$kdir/modules/modules.dep" | head -n1; }
visit() {
  local mod=$1 line path deps d
  line=$(dep_line "$mod") || { echo "build-initramfs: module $mod not in $kver" >&2; exit 1; }
  path=${line%%:*}
  [ -n "${seen[$path]:-}" ] && return 0
  seen[$path]=1
  deps=${line#*:}
  for d in $deps; do
    visit "$(basename "$d" | sed -E 's/\.ko(\.[a-z]+)?$//')"
  done
  order+=("$path")
}
for m in $wanted; do visit "$(echo "$m" | tr - _)" 2>/dev/null || visit "$m"; done

hash=$( {
  sha256sum "$sm_init" "$busybox" "$fio" "$0" "$kdir/vmlinuz"
  for p in "${order[@]}"; do sha256sum "$kdir/modules/$p"; done
} | awk '{print $1}' | sha256sum | cut -c1-16)
dest="$cache/guest-$hash"
if [ ! -f "$dest/initramfs.img" ]; then
  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,etc/sm,proc,sys,dev,tmp,run,root,mnt,lib/modules/"$kver"}
  install -m 0755 "$sm_init" "$stage/init"
  install -m 0755 "$busybox" "$stage/bin/busybox"
  install -m 0755 "$fio" "$stage/usr/bin/fio"
  for applet in $("$busybox" --list-full); do
    [ -e "$stage/$applet" ] || ln -s /bin/busybox "$stage/$applet"
  done
  : > "$stage/etc/sm/modules"
  for p in "${order[@]}"; do
    mkdir -p "$stage/lib/modules/$kver/$(dirname "$p")"
    cp "$kdir/modules/$p" "$stage/lib/modules/$kver/$p"
    echo "/lib/modules/$kver/$p" >> "$stage/etc/sm/modules"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$stage/etc/passwd"
  printf 'root:x:0:\ntty:x:5:\n' > "$stage/etc/group"
  printf 'export PS1="sm:\\w# "\n' > "$stage/etc/profile"
  mkdir -p "$dest.tmp"
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 --reproducible) > "$dest.tmp/initramfs.img"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
ln -sfn "$dest" "$data/guest.new" && mv -T "$data/guest.new" "$data/guest"
echo "$data/guest/initramfs.img"
