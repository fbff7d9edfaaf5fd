#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 build toolchain (nvcc, headers, cuBLAS/cuRAND/NVRTC
# link libraries, cuDNN 9) from NVIDIA's pip wheels into .cuda/ of this repository,
# for building `--features cuda` on a machine without a GPU or a system toolkit.
#
# Why 13.0 exactly: the driver JIT-compiles the PTX embedded in the binary and refuses PTX
# from a newer toolkit than itself; the GPU machines run driver 580 (= CUDA 13.0).
#
# Prints the CUDA_HOME to use on its last line. Idempotent: a finished install is reused.
set -euo pipefail
# Everything but the final path goes to stderr: callers capture stdout (`| tail -1`), and a
# failing step's message (pip's, venv's) must still reach the user.
exec 3>&1 1>&2
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${LUMEN_CUDA_DIR:-$root/.cuda}"
venv="$dest/venv"
stamp="$dest/.installed-13.0"

# Versions: nvcc/nvvm/crt 13.0.88 go together (nvcc does not pin nvvm, so pip would
# otherwise pull a newer one); cuDNN 9.13 is the oldest 9.x with CUDA 13 wheels, so the
# binary runs against any newer libcudnn.so.9 on the GPU machine.
pkgs=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35 nvidia-cuda-cccl==13.0.85 nvidia-cudnn-cu13==9.13.0.50
)

# A system toolkit of the right version is used as is (cuDNN must then be installed beside
# it, or build with CUDA_FEATURES=cuda).
if [ -z "${LUMEN_CUDA_FORCE_PIP:-}" ] && command -v nvcc >/dev/null 2>&1 \
   && nvcc --version | grep -q "release 13\.0,"; then
  dirname "$(dirname "$(command -v nvcc)")" >&3
  exit 0
fi

if [ ! -f "$stamp" ]; then
  echo "cuda-toolchain: installing CUDA 13.0 wheels into $venv (about 2 GB)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pkgs[@]}"
fi

site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cu="$site/nvidia/cu13"
[ -x "$cu/bin/nvcc" ] || { echo "cuda-toolchain: nvcc missing under $cu" >&2; exit 1; }

# The wheels ship only versioned sonames; the linker wants the plain names.
cd "$cu/lib"
for pair in cublas:13 cublasLt:13 cudart:13 nvrtc:13 curand:10; do
  name="${pair%%:*}"; major="${pair##*:}"
  [ -e "lib$name.so" ] || ln -s "lib$name.so.$major" "lib$name.so"
done
# cuDNN lives in its own wheel folder; link it next to the others.
cudnn_lib="$site/nvidia/cudnn/lib"
[ -d "$cudnn_lib" ] || cudnn_lib="$(dirname "$(find "$site/nvidia" -name 'libcudnn.so.9' | head -1)")"
[ -e libcudnn.so ] || ln -s "$cudnn_lib/libcudnn.so.9" libcudnn.so
[ -d "$cu/include/cudnn" ] || true

# libcuda.so is the driver, which only a GPU machine has. Link against a stub that
# declares every driver function cudarc binds, with the real soname, so the binary asks
# for the driver's libcuda.so.1 at run time. The stub never leaves this folder.
if [ ! -f "$cu/lib/stubs/libcuda.so" ]; then
  mkdir -p "$cu/lib/stubs"
  # cudarc's sources come from cargo's registry: fetched first on a machine that has none
  # (a fresh container). `|| true`: under pipefail a failed ls would end the script silently.
  find_sys() { ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | tail -1 || true; }
  sys="$(find_sys)"
  if [ -z "$sys" ]; then
    echo "cuda-toolchain: fetching the crates (cudarc's driver declarations make the libcuda stub)"
    (cd "$root" && cargo fetch --locked)
    sys="$(find_sys)"
  fi
  [ -n "$sys" ] || { echo "cuda-toolchain: cudarc 0.19's sources are not in cargo's registry after cargo fetch" >&2; exit 1; }
  grep -ohE 'fn cu[A-Za-z0-9_]+\(' "$sys"/*.rs | sort -u | sed -E 's/fn (cu[A-Za-z0-9_]+)\(/void \1(void) {}/' > "$dest/cuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/stubs/libcuda.so" "$dest/cuda_stub.c"
fi

touch "$stamp"
echo "$cu" >&3
