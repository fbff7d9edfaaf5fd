#!/usr/bin/env bash
# Makes the base images the Dockerfiles under deploy/ start from, without a container
# registry: a minimal Debian root filesystem from Debian's own packages (debootstrap),
# imported with `docker import`.
#
#   deploy/base-image.sh            lumen-base:bookworm   (runtime base of every image)
#   deploy/base-image.sh --build    also lumen-build:bookworm (gcc, make, python3-venv and
#                                   this machine's Rust toolchain: the build stage for
#                                   compiling lumen inside a container)
#
# Why not `FROM debian:bookworm-slim`: where no registry can be reached (CI here), nothing
# can be pulled; with a registry, pass --build-arg BASE_IMAGE=debian:bookworm-slim (and
# BUILD_IMAGE=rust:1.95-slim-bookworm) to the Dockerfiles instead and skip this script.
#
# The root filesystems are cached as tarballs under .cache/base/ (ignored by git): a later
# run only re-imports them. Needs root (debootstrap), debootstrap and a Docker daemon.
# Environment: DEBIAN_SUITE (bookworm), DEBIAN_MIRROR (default: this machine's apt source),
# LUMEN_BASE_CACHE (the cache folder), LUMEN_BASE_REBUILD=1 (ignore the cache).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
suite="${DEBIAN_SUITE:-bookworm}"
cache="${LUMEN_BASE_CACHE:-$root/.cache/base}"
want_build=false
for a in "$@"; do
  case "$a" in
    --build) want_build=true ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "base-image: unknown argument $a (try --help)" >&2; exit 2 ;;
  esac
done

# Runtime: certificates for GCS and the hub, nothing else beyond Debian's minimal base.
runtime_pkgs="ca-certificates"
# Build: what cargo's C dependencies and scripts/cuda-toolchain.sh need (g++: nvcc runs the
# host C++ compiler even for device-only PTX).
build_pkgs="ca-certificates,gcc,g++,libc6-dev,make,pkg-config,python3,python3-venv,binutils,xz-utils,git"

log() { echo "base-image: $*" >&2; }

# The mirror this machine's apt already uses (deb822 or one-line format), so the script
# follows the local setup; debootstrap's own default otherwise.
host_mirror() {
  local uri
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1)"
  [ -n "$uri" ] || uri="$(grep -hsE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1)"
  echo "$uri"
}

# Strips what no container reads (docs, man pages, locales, apt's package lists and caches).
slim_rootfs() {
  local dir="$1"
  rm -rf "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
         "$dir"/usr/share/locale/* "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
         "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log
}

# debootstrap SUITE into a tarball at $2 with the packages in $1 (comma-separated).
make_rootfs_tar() {
  local pkgs="$1" tarball="$2" dir mirror start
  command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 1; }
  [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
  mirror="${DEBIAN_MIRROR:-$(host_mirror)}"
  dir="$(mktemp -d "$cache/rootfs.XXXXXX")"
  start=$(date +%s)
  log "debootstrap $suite (minbase + $pkgs) into $dir"
  debootstrap --variant=minbase --include="$pkgs" "$suite" "$dir" ${mirror:+"$mirror"} >"$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; rm -rf "$dir"; exit 1; }
  slim_rootfs "$dir"
  tar --numeric-owner -C "$dir" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$dir" "$dir.log"
  log "rootfs $(basename "$tarball"): $(( $(date +%s) - start )) s, $(du -m "$tarball" | cut -f1) MB"
}

# Imports tarball $1 as image $2 unless an image made from the same tarball is there.
import_image() {
  local tarball="$1" image="$2" sum
  sum="$(cksum <"$tarball" | cut -d' ' -f1)"
  if [ "$(docker image inspect -f '{{index .Config.Labels "lumen.rootfs"}}' "$image" 2>/dev/null)" = "$sum" ]; then
    log "$image is up to date"
    return
  fi
  docker import --change "LABEL lumen.rootfs=$sum" --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tarball" "$image" >/dev/null
  log "imported $image"
}

# A tarball's name carries its package list, so a changed list is built afresh.
tar_name() { echo "$cache/debian-$suite-$1-$(echo "$2" | cksum | cut -d' ' -f1).tar"; }

mkdir -p "$cache"
base_tar="$(tar_name runtime "$runtime_pkgs")"
if [ -n "${LUMEN_BASE_REBUILD:-}" ] || [ ! -s "$base_tar" ]; then
  make_rootfs_tar "$runtime_pkgs" "$base_tar"
fi
import_image "$base_tar" "lumen-base:$suite"

if $want_build; then
  build_tar="$(tar_name build "$build_pkgs")"
  if [ -n "${LUMEN_BASE_REBUILD:-}" ] || [ ! -s "$build_tar" ]; then
    make_rootfs_tar "$build_pkgs" "$build_tar"
  fi
  import_image "$build_tar" "lumen-build-os:$suite"
  "$root/deploy/rust-image.sh" "lumen-build-os:$suite" "lumen-build:$suite"
fi
