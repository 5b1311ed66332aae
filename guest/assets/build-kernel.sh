#!/usr/bin/env bash
# Build sm's guest kernel: Debian's linux-source-6.1 (the version kernel.env pins) configured
# by `make allnoconfig` with guest/kernel/sm.config as KCONFIG_ALLCONFIG, and install its
# uncompressed vmlinux (booted through PVH) as $SM_DATA_DIR/sm-kernel/vmlinux. The result is
# cached under $SM_CACHE_DIR by the hash of the source package version, the configuration and
# this script, so a re-run is a no-op; a build takes ~4 min on both cores of a 2-core machine.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=kernel.env
. "$here/kernel.env"
config="$here/../kernel/sm.config"
data=${SM_DATA_DIR:-/usr/local/share/sm}
cache=${SM_CACHE_DIR:-/var/cache/sm}
mkdir -p "$cache" "$data"

hash=$( { echo "linux-source-6.1=$SM_KERNEL_SOURCE_VERSION"; cat "$config" "$0"; } | sha256sum | cut -c1-16)
dest="$cache/sm-kernel-$hash"
if [ ! -f "$dest/.complete" ]; then
  for tool in flex bison bc make gcc; do
    command -v "$tool" >/dev/null || { echo "build-kernel: $tool missing (scripts/install-deps.sh)" >&2; exit 1; }
  done
  work="$cache/sm-kernel-build"
  rm -rf "$work" "$dest.tmp" && mkdir -p "$work/out" "$dest.tmp"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download "linux-source-6.1=$SM_KERNEL_SOURCE_VERSION" >/dev/null 2>&1) || {
    echo "build-kernel: cannot download linux-source-6.1=$SM_KERNEL_SOURCE_VERSION (run 'apt-get update' first?)" >&2
    exit 1
  }
  dpkg-deb --fsys-tarfile "$work"/linux-source-6.1_*.deb | tar -x -C "$work" ./usr/src/linux-source-6.1.tar.xz
  rm -f "$work"/linux-source-6.1_*.deb
  tar -xJf "$work/usr/src/linux-source-6.1.tar.xz" -C "$work"
  rm -f "$work/usr/src/linux-source-6.1.tar.xz"
  src="$work/linux-source-6.1"
  make -s -C "$src" O="$work/out" ARCH=x86_64 KCONFIG_ALLCONFIG="$config" allnoconfig
  # allnoconfig drops what it cannot satisfy without a word: every line must hold.
  missing=$(grep -E '^CONFIG_' "$config" | while read -r line; do
    grep -qxF "$line" "$work/out/.config" || echo "$line"
  done)
  if [ -n "$missing" ]; then
    echo "build-kernel: these options of $config do not hold (a dependency is off):" >&2
    echo "$missing" >&2
    exit 1
  fi
  make -s -C "$src" O="$work/out" ARCH=x86_64 -j"$(nproc)" vmlinux
  cp "$work/out/vmlinux" "$dest.tmp/vmlinux"
  cp "$work/out/.config" "$dest.tmp/config"
  make -s -C "$src" O="$work/out" ARCH=x86_64 kernelrelease > "$dest.tmp/version"
  touch "$dest.tmp/.complete"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
ln -sfn "$dest" "$data/sm-kernel.new" && mv -T "$data/sm-kernel.new" "$data/sm-kernel"
echo "$data/sm-kernel/vmlinux"
