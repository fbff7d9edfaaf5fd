#!/usr/bin/env bash
# The GPU check: run from the repository root on a GPU machine that has no Rust toolchain and
# no network. It takes the CUDA binary built elsewhere (`make cuda-dist` → dist/lumen-cuda.xz),
# finds the CUDA libraries the binary links against, and in under 8 minutes prints
#   1. the GPU (nvidia-smi),
#   2. the golden numerics of every model computed on the GPU through the binary
#      (`lumen preflight --goldens tests/goldens`, f32 and the pipeline's f16),
#   3. `lumen bench` at released sizes beside the peer baseline (stage, lumen ms, reference
#      ms, ratio), plus the attention / conv checks and suites where the binary has them.
# Logs and JSON go to $OUT if set, else ./gpu-check-out. Works unchanged on L4, H100, H200.
#
# Environment: LUMEN_BIN (an unpacked binary instead of dist/lumen-cuda.xz),
# GPU_CHECK_BUDGET (seconds, default 450), BENCH_ITERS (default 3).
set -u

start_s=$(date +%s)
budget_s=${GPU_CHECK_BUDGET:-450}
iters=${BENCH_ITERS:-3}
out=${OUT:-./gpu-check-out}
mkdir -p "$out"
log="$out/gpu-check.log"
: >"$log"
say() { printf '%s\n' "$*" | tee -a "$log"; }
left() { echo $((budget_s - ($(date +%s) - start_s))); }

# --- the binary --------------------------------------------------------------------------
bin=${LUMEN_BIN:-}
if [ -z "$bin" ]; then
    if [ ! -f dist/lumen-cuda.xz ]; then
        say "no dist/lumen-cuda.xz: build it with 'make cuda-dist' and send it with the repository"
        exit 2
    fi
    bin=$(mktemp -d /tmp/lumen-gpu-check.XXXXXX)/lumen
    xz -dc dist/lumen-cuda.xz >"$bin" && chmod +x "$bin" || { say "could not unpack dist/lumen-cuda.xz"; exit 2; }
fi

# --- CUDA libraries (build guide §3.1: the pip CUDA 13 wheels of a Python environment, or a
# system toolkit). Only folders holding a library the loader cannot already find are added.
find_lib_dir() {
    local name=$1 dir p
    if ldconfig -p 2>/dev/null | grep -q "$name"; then return 0; fi
    for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -e "$dir/$name" ] && { echo "$dir"; return 0; }
    done
    for p in $(python3 -c 'import site,sys; print(" ".join(site.getsitepackages()+[site.getusersitepackages()]))' 2>/dev/null) \
        /usr /opt /usr/local; do
        [ -d "$p" ] || continue
        dir=$(find "$p" -name "$name" 2>/dev/null | head -1)
        [ -n "$dir" ] && { dirname "$dir"; return 0; }
    done
    return 1
}
libpath=""
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13 libcudnn.so.9; do
    if d=$(find_lib_dir "$lib"); then
        [ -n "$d" ] && case ":$libpath:" in *":$d:"*) ;; *) libpath="$libpath${libpath:+:}$d" ;; esac
    else
        say "warning: $lib not found under the Python site-packages, /usr, /opt or /usr/local"
    fi
done
export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if ldd "$bin" 2>/dev/null | grep -q "not found"; then
    say "the binary cannot find some libraries:"
    ldd "$bin" | grep "not found" | tee -a "$log"
    exit 2
fi

# --- runs a step with a timeout taken from what is left of the budget ----------------------
# step NAME SECONDS CMD...: stdout to $out/NAME.out, stderr to $out/NAME.err.
step() {
    local name=$1 want=$2 rest t rc
    shift 2
    rest=$(left)
    t=$((want < rest ? want : rest))
    if [ "$t" -lt 10 ]; then
        say "SKIP $name: the time budget is spent"
        return 124
    fi
    local s=$(date +%s)
    timeout --kill-after=10 "$t" "$@" >"$out/$name.out" 2>"$out/$name.err"
    rc=$?
    say "$(printf '%-28s rc %-3s %4ss (limit %ss)' "$name" "$rc" $(($(date +%s) - s)) "$t")"
    [ "$rc" -eq 124 ] && say "  $name ran out of time (no JSON); its log is $out/$name.err"
    return $rc
}

say "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1 | tee -a "$log"
nvidia-smi 2>&1 | head -20 >>"$log"
"$bin" --version 2>&1 | tee -a "$log"

say "== goldens on the GPU (f32 and the pipeline's f16)"
# The goldens were recorded in strict f32: convolutions without TF32 too.
LUMEN_CUDNN_TF32=0 step goldens 120 "$bin" preflight --pipeline procedural --store "$out/store" --goldens tests/goldens --json
goldens_rc=$?
suites=$("$bin" bench --list 2>/dev/null)
has() { printf '%s\n' "$suites" | grep -qx "$1"; }

say "== kernel checks"
checks_rc=0
for s in attention_check conv_check; do
    if has "$s"; then
        step "$s" 90 "$bin" bench "$s" --json || checks_rc=1
    else
        say "  no '$s' suite in this binary"
    fi
done
# Strict f32 convolutions (no TF32): the tolerance the CPU goldens use.
if has conv_check; then
    LUMEN_CUDNN_TF32=0 step conv_check_strict 60 "$bin" bench conv_check --json || checks_rc=1
fi

say "== bench at released sizes ($iters iterations after a warm-up; the concept: 1)"
# The whole concept first (the number that matters most), then the stages.
step bench_concept 150 "$bin" bench concept --iters 1 --json
for s in sdxl rmbg partcrafter_dit partcrafter_geometry attention conv; do
    has "$s" || continue
    step "bench_$s" 90 "$bin" bench "$s" --iters "$iters" --json
done

# --- one table ---------------------------------------------------------------------------
command -v python3 >/dev/null || { say "no python3 here: the results are the JSON files in $out"; exit 1; }
python3 - "$out" <<'PY' | tee -a "$log"
import json, os, sys
out = sys.argv[1]

def load(name):
    try:
        with open(os.path.join(out, name + ".out")) as f:
            return json.load(f)
    except Exception:
        return None

g = load("goldens")
print("\n== golden numerics (worst output per case; tolerance: manifest in f32, 32 u in f16/bf16)")
if g is None:
    print("  no result (see goldens.err)")
else:
    for c in g.get("checks", []):
        if c["name"].startswith("goldens") or c["status"] == "fail":
            print(f"  {c['status'].upper():<7} {c['name']:<28} {c['detail']}")
    print(f"  {'':4} {'component':<12} {'case':<24} {'dtype':<5} {'worst output':<26} {'error':>10} {'tol':>9}")
    for c in g.get("goldens", []):
        w = c["worst"]
        print(f"  {'ok' if c['pass'] else 'FAIL':<4} {c['component']:<12} {c['case']:<24} {c['dtype']:<5} "
              f"{w['output'][:26]:<26} {w['error']:>10.3e} {w['tol']:>9.1e}")

print("\n== bench against the peer baseline (H100, PyTorch fp16); ratio = lumen / reference")
print(f"  {'suite':<20} {'stage':<58} {'dtype':<5} {'lumen ms':>10} {'ref ms':>9} {'ratio':>7} {'peak MiB':>9}")
for s in ["concept", "sdxl", "rmbg", "partcrafter_dit", "partcrafter_geometry", "attention", "conv"]:
    rows = load("bench_" + s)
    if rows is None:
        if os.path.exists(os.path.join(out, f"bench_{s}.err")):
            print(f"  {s:<20} (no result: see bench_{s}.err)")
        continue
    for r in rows:
        ref = r.get("reference_ms")
        ratio = r.get("ratio")
        peak = r.get("peak_mem_mib")
        print(f"  {r['suite']:<20} {r['name'][:58]:<58} {r.get('dtype', ''):<5} {r['median_ms']:>10.1f} "
              f"{(f'{ref:.1f}' if ref else '-'):>9} {(f'{ratio:.2f}' if ratio else '-'):>7} "
              f"{(f'{peak:.0f}' if peak else '-'):>9}")
PY

say "== done in $(($(date +%s) - start_s)) s; logs and JSON in $out"
[ "$goldens_rc" -eq 0 ] && [ "$checks_rc" -eq 0 ]
