#!/usr/bin/env bash
# Build the test VM (L1) initramfs: busybox-static, the kernel modules the test VM needs
# (virtio-pci, virtio-fs, virtio-console, overlay, kvm-amd, dummy for a stand-in uplink, and
# their dependencies) and
# testvm/init.
# The image is cached under $SM_CACHE_DIR by a hash of everything that goes into it and
# installed as $SM_DATA_DIR/testvm/initramfs.img; a re-run with nothing changed is a no-op.
# Prints the installed path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
self="$here/$(basename "$0")"
data=${SM_DATA_DIR:-/usr/local/share/sm}
cache=${SM_CACHE_DIR:-/var/cache/sm}
kernel=${SM_TESTVM_KERNEL_DIR:-$data/kernel}
busybox=${SM_BUSYBOX:-/bin/busybox}
init="$here/init"
# Load order is resolved from these plus their dependencies.
wanted=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
  virtio_console fuse virtiofs overlay irqbypass kvm kvm_amd dummy)

die() { echo "build-initramfs: $*" >&2; exit 1; }
[ -f "$kernel/version" ] && [ -d "$kernel/modules" ] ||
  die "no kernel at $kernel (run guest/assets/fetch-kernel.sh first)"
[ -x "$busybox" ] || die "no busybox at $busybox (install busybox-static)"
"$busybox" --list >/dev/null 2>&1 || die "$busybox does not run"
[ -f "$init" ] || die "missing $init"
kver=$(cat "$kernel/version")
mods="$kernel/modules"

# Module name (dashes and underscores are the same) -> path relative to $mods.
declare -A path_of
while IFS= read -r p; do
  b=${p##*/}; b=${b%.ko}; path_of[${b//-/_}]=$p
done < <(cd "$mods" && find kernel -name '*.ko')

deps_of() { # name -> dependency names (modules.dep if present, else modinfo)
  local p=${path_of[$1]} line
  if [ -f "$mods/modules.dep" ]; then
    line=$(grep -m1 "^$p:" "$mods/modules.dep" || true)
    for d in ${line#*:}; do d=${d##*/}; d=${d%.ko}; echo "${d//-/_}"; done
  else
    modinfo -F depends "$mods/$p" | tr ',' '\n' | sed '/^$/d; s/-/_/g'
  fi
}

declare -A seen
order=()
visit() {
  local n=$1 d
  [ -n "${seen[$n]:-}" ] && return
  [ -n "${path_of[$n]:-}" ] || die "module $n not found under $mods (uncompressed .ko expected)"
  seen[$n]=1
  for d in $(deps_of "$n"); do visit "$d"; done
  order+=("$n")
}
for m in "${wanted[@]}"; do visit "$m"; done

hash=$({
  echo "kernel $kver"
  sha256sum "$self" "$init" "$busybox" | cut -d' ' -f1
  for n in "${order[@]}"; do echo "$n $(sha256sum < "$mods/${path_of[$n]}")"; done
} | sha256sum | cut -c1-16)

out="$cache/testvm/initramfs-$hash.img"
if [ ! -f "$out" ]; then
  mkdir -p "$cache/testvm"
  root=$(mktemp -d "$cache/testvm/build.XXXXXX")
  trap 'rm -rf "$root" "$root.img"' EXIT
  mkdir -p "$root"/{bin,dev,proc,sys,etc,lib/modules,host,ctl,ovl,newroot}
  cp "$busybox" "$root/bin/busybox"
  for a in $("$busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
  done
  mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
  install -m 755 "$init" "$root/init"
  for n in "${order[@]}"; do
    cp "$mods/${path_of[$n]}" "$root/lib/modules/$n.ko"
    echo "$n" >> "$root/etc/modules"
  done
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
    > "$root.img"
  mv "$root.img" "$out"
  # Drop images of earlier builds (a running test VM has its image open already).
  find "$cache/testvm" -maxdepth 1 -name 'initramfs-*.img' ! -name "${out##*/}" -delete
fi

mkdir -p "$data/testvm"
link="$data/testvm/initramfs.img"
if [ "$(readlink "$link" 2>/dev/null)" != "$out" ]; then
  ln -sfn "$out" "$link.new" && mv -T "$link.new" "$link"
fi
echo "$link"
