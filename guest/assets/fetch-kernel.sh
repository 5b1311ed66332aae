#!/usr/bin/env bash
# Fetch the pinned Debian cloud kernel package and unpack it (vmlinuz + modules) into
# $SM_DATA_DIR/kernel. The package's own sha256 names the cache entry, so a re-run is a no-op.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=kernel.env
. "$here/kernel.env"
data=${SM_DATA_DIR:-/usr/local/share/sm}
cache=${SM_CACHE_DIR:-/var/cache/sm}
mkdir -p "$cache/debs" "$data"

deb=$(ls "$cache/debs/${SM_KERNEL_PACKAGE}_${SM_KERNEL_PACKAGE_VERSION}_amd64.deb" 2>/dev/null || true)
if [ -z "$deb" ]; then
  (cd "$cache/debs" && apt-get download "${SM_KERNEL_PACKAGE}=${SM_KERNEL_PACKAGE_VERSION}" >/dev/null 2>&1) || {
    echo "fetch-kernel: cannot download ${SM_KERNEL_PACKAGE}=${SM_KERNEL_PACKAGE_VERSION} (run 'apt-get update' first?)" >&2
    exit 1
  }
  deb="$cache/debs/${SM_KERNEL_PACKAGE}_${SM_KERNEL_PACKAGE_VERSION}_amd64.deb"
fi
sum=$(sha256sum "$deb" | cut -c1-16)
dest="$cache/kernel-$sum"
if [ ! -f "$dest/.complete" ]; then
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  dpkg-deb -x "$deb" "$dest.tmp/root"
  kver=$(ls "$dest.tmp/root/lib/modules")
  # The package ships no modules.dep (its postinst runs depmod): make one.
  depmod -b "$dest.tmp/root" "$kver"
  mv "$dest.tmp/root/boot/vmlinuz-$kver" "$dest.tmp/vmlinuz"
  mv "$dest.tmp/root/lib/modules/$kver" "$dest.tmp/modules"
  echo "$kver" > "$dest.tmp/version"
  rm -rf "$dest.tmp/root"
  touch "$dest.tmp/.complete"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
ln -sfn "$dest" "$data/kernel.new" && mv -T "$data/kernel.new" "$data/kernel"
echo "$data/kernel"
