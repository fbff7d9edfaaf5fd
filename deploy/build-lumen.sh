#!/bin/sh
# The build stage's one step: puts the lumen binary the image will hold at $2.
#   build-lumen.sh ""            $2   compile here (cargo build --release --locked)
#   build-lumen.sh PATH          $2   take a binary already built (PATH inside the context)
#   extra cargo flags for the compile: $LUMEN_CARGO_FLAGS (e.g. --features cuda,cudnn)
# Why a script: one Dockerfile serves both the registry-less CI (which already built the
# binary) and Cloud Build (which compiles in the container), on the legacy builder too,
# which builds every stage it reads and so cannot pick a stage by a build argument.
set -eu
binary="$1" dest="$2"
mkdir -p "$(dirname "$dest")"
if [ -n "$binary" ]; then
  [ -f "$binary" ] || { echo "build-lumen: LUMEN_BINARY=$binary is not in the build context (see .dockerignore)" >&2; exit 1; }
  cp "$binary" "$dest"
else
  command -v cargo >/dev/null || { echo "build-lumen: no cargo in the build image; pass BUILD_IMAGE with a Rust toolchain, or LUMEN_BINARY" >&2; exit 1; }
  # shellcheck disable=SC2086 # the flags are a list on purpose
  cargo build --release --locked ${LUMEN_CARGO_FLAGS:-}
  cp "${CARGO_TARGET_DIR:-target}/release/lumen" "$dest"
fi
chmod 0755 "$dest"
# A binary for a newer C library than the runtime base's fails at start; say so at build time.
"$dest" --version >/dev/null 2>&1 || { "$dest" --version; echo "build-lumen: $binary does not run on this base image" >&2; exit 1; }
