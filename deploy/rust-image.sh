#!/usr/bin/env bash
# Makes the build image (default lumen-build:bookworm) for compiling lumen inside a container
# where no registry can be reached: the build root filesystem ($1, from base-image.sh --build)
# plus this machine's Rust toolchain (rustc, cargo, the standard library; `rustc --print
# sysroot`), so the container compiles with the same compiler as the host. crates.io must be
# reachable from the build (cargo fetches the locked dependencies).
#   deploy/rust-image.sh FROM_IMAGE IMAGE
set -euo pipefail
from="$1" image="$2"
command -v rustc >/dev/null || { echo "rust-image: no Rust toolchain on this machine" >&2; exit 1; }
sysroot="$(rustc --print sysroot)"
[ -x "$sysroot/bin/cargo" ] || { echo "rust-image: $sysroot has no cargo" >&2; exit 1; }
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
# The docs are a third of a toolchain and no build reads them.
tar -C "$sysroot" --exclude=./share/doc -cf - . | (mkdir -p "$ctx/rust" && tar -C "$ctx/rust" -xf -)
cat >"$ctx/Dockerfile" <<DOCKERFILE
FROM $from
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DOCKERFILE
docker build -q -t "$image" "$ctx" >/dev/null
echo "rust-image: $image ($("$sysroot/bin/rustc" --version))" >&2
