#!/usr/bin/env bash
# Build a static, stripped fio from Debian's source package (pinned in fio.env) with the
# libaio, io_uring, psync and verify code it needs and none of the network engines. Cached
# under $SM_CACHE_DIR by the hash of the source and this script; prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=fio.env
. "$here/fio.env"
cache=${SM_CACHE_DIR:-/var/cache/sm}
src="$cache/src/fio-$SM_FIO_SOURCE_VERSION"
mkdir -p "$src"
if [ ! -f "$src/.complete" ]; then
  # A private deb-src list and lists directory: the host's own apt lists stay untouched.
  apt_dir=$(mktemp -d)
  trap 'rm -rf "$apt_dir"' EXIT
  mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial"
  cat > "$apt_dir/parts/src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_opts=(-o "Dir::Etc::SourceParts=$apt_dir/parts" -o Dir::Etc::SourceList=/dev/null
            -o "Dir::State::Lists=$apt_dir/lists" -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" update -q >/dev/null
  (cd "$src" && apt-get "${apt_opts[@]}" source --download-only "fio=$SM_FIO_SOURCE_VERSION" >/dev/null)
  touch "$src/.complete"
fi
orig=$(ls "$src"/fio_*.orig.tar.[gx]z)
hash=$(sha256sum "$orig" "$0" "$here/fio.env" | awk '{print $1}' | sha256sum | cut -c1-16)
dest="$cache/fio-$hash"
if [ ! -x "$dest/fio" ]; then
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  tar xf "$orig" -C "$build" --strip-components=1
  (
    cd "$build"
    ./configure --build-static --disable-native --disable-numa --disable-rdma --disable-rados \
      --disable-rbd --disable-http --disable-gfapi --disable-libnfs --disable-pmem \
      --disable-xnvme --disable-libzbc --disable-tcmalloc --disable-dfs >configure.log 2>&1 ||
      { tail -20 configure.log >&2; exit 1; }
    grep -q '^Linux AIO support *yes' configure.log ||
      { echo "build-fio: libaio not found (apt-get install libaio-dev)" >&2; exit 1; }
    make -j"$(nproc)" fio >make.log 2>&1 || { tail -20 make.log >&2; exit 1; }
    strip fio
  )
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
  mv "$build/fio" "$dest.tmp/fio"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
echo "$dest/fio"
