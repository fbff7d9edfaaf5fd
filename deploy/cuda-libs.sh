#!/usr/bin/env bash
# The CUDA runtime libraries the CUDA image carries, derived from the binary itself:
# its NEEDED entries (readelf -d), and every library any of those names (NEEDED, or a name
# it passes to dlopen, found with `strings`: cuDNN loads its sub-libraries and NVRTC this
# way) that NVIDIA's pip wheels ship, recursively. What the wheels do not ship is either the
# driver (libcuda.so.1: the GPU host's, never in the image) or a system library the base
# image must hold.
#
#   cuda-libs.sh resolve BINARY LIBDIR...        print the list (the format of cuda-runtime-libs.txt)
#   cuda-libs.sh check   BINARY LIST LIBDIR...   exit 1, with a diff, when LIST is not that list
#   cuda-libs.sh copy    LIST DEST LIBDIR...     copy the shipped ones (needed, loaded) into DEST
#
# LIBDIR: the wheels' lib folders (nvidia/cu13/lib and nvidia/cudnn/lib of the toolchain's
# site-packages). Needs readelf and strings (binutils).
set -euo pipefail
DRIVER="libcuda.so.1"

die() { echo "cuda-libs: $*" >&2; exit 1; }

# The real file for soname or dlopen name $1 in the LIBDIRs (exact name, else NAME.*).
find_lib() {
  local name="$1" d f
  for d in "${LIBDIRS[@]}"; do
    if [ -f "$d/$name" ] && [ ! -L "$d/$name" ]; then echo "$d/$name"; return; fi
  done
  for d in "${LIBDIRS[@]}"; do
    for f in "$d/$name".*; do
      if [ -f "$f" ] && [ ! -L "$f" ]; then echo "$f"; return; fi
    done
  done
}

needed_of() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }
dlopen_names_of() { strings "$1" | grep -oE '^lib[A-Za-z0-9_+-]+\.so(\.[0-9]+)*$' | sort -u; }

resolve() {
  local binary="$1"; shift
  LIBDIRS=("$@")
  [ -f "$binary" ] || die "no binary at $binary"
  declare -A kind=()
  local queue=() name file
  for name in $(needed_of "$binary"); do
    if [ "$name" = "$DRIVER" ]; then kind[$name]=driver
    elif [ -n "$(find_lib "$name")" ]; then kind[$name]=needed; queue+=("$name")
    else kind[$name]=system; fi
  done
  while [ ${#queue[@]} -gt 0 ]; do
    name="${queue[0]}"; queue=("${queue[@]:1}")
    file="$(find_lib "$name")"
    for dep in $(needed_of "$file") $(dlopen_names_of "$file"); do
      local shipped; shipped="$(find_lib "$dep")"
      if [ -n "$shipped" ]; then dep="$(basename "$shipped")"; fi
      if [ -n "${kind[$dep]:-}" ]; then continue; fi
      if [ "$dep" = "$DRIVER" ]; then kind[$dep]=driver
      elif [ -n "$shipped" ]; then kind[$dep]=loaded; queue+=("$dep")
      elif needed_of "$file" | grep -qx "$dep"; then kind[$dep]=system
      fi   # a dlopen name nothing ships (an optional library): not needed
    done
  done
  for k in needed loaded driver system; do
    for name in "${!kind[@]}"; do
      if [ "${kind[$name]}" = "$k" ]; then echo "$k $name"; fi
    done | sort
  done
}

strip_comments() { sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$1"; }

case "${1:-}" in
  resolve) shift; [ $# -ge 2 ] || die "usage: resolve BINARY LIBDIR..."; resolve "$@" ;;
  check)
    shift; [ $# -ge 3 ] || die "usage: check BINARY LIST LIBDIR..."
    binary="$1" list="$2"; shift 2
    if ! diff <(strip_comments "$list") <(resolve "$binary" "$@") >&2; then
      die "$list is not what $binary needs (< the list, > the binary); regenerate it with: deploy/cuda-libs.sh resolve"
    fi
    echo "cuda-libs: $list matches $(basename "$binary")" >&2 ;;
  copy)
    shift; [ $# -ge 3 ] || die "usage: copy LIST DEST LIBDIR..."
    list="$1" dest="$2"; shift 2
    LIBDIRS=("$@")
    mkdir -p "$dest"
    strip_comments "$list" | while read -r k name; do
      case "$k" in
        needed|loaded) file="$(find_lib "$name")"; [ -n "$file" ] || die "$name is not in the wheels"; cp "$file" "$dest/$name" ;;
      esac
    done ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
