#!/usr/bin/env bash
# The GPU check: run from the repository root on a GPU machine that has no Rust toolchain and
# no network. It takes the CUDA binary built elsewhere (`make cuda-dist` → dist/lumen-cuda.xz),
# finds the CUDA libraries the binary links against, and in at most 6 minutes runs, in order:
#   smoke              `lumen preflight --pipeline procedural`: libraries load, the GPU computes,
#                      lumen's PTX (attention, groupnorm) and candle's load and launch (≈30 s);
#                      if it fails nothing else runs
#   goldens            every model's golden cases on the GPU, f32 then f16, TF32 off
#   attention_check, conv_check, conv_check_strict   the kernels against f64 / the CPU
#   bench_concept      one whole concept; memory: predicted vs measured device memory
#   bench_*            the stages at released sizes beside the peer baseline
# Numerics steps run with CUDA_LAUNCH_BLOCKING=1 (an asynchronous fault names its kernel);
# candle's compute_80 PTX is JIT-compiled once into a cache shared by all steps.
#
# Everything is written in a scratch folder; $OUT (default ./gpu-check-out) gets at most four
# files: gpu-check.log (what was printed, plus nvidia-smi), results.json (every step: name,
# status, rc, seconds, its parsed JSON output or null), table.txt (the summary), and
# gpu-check-files.tar.xz (every step's stdout and stderr). A failing step's last 40 lines of
# stderr are printed as it fails; normal output stays terse.
#
# Environment: LUMEN_BIN (an unpacked binary instead of dist/lumen-cuda.xz), GPU_CHECK_BUDGET
# (seconds, default 360), BENCH_ITERS (default 3), GPU_CHECK_STEPS (comma-separated step names
# to run; the others are recorded as skipped; named steps run even where no GPU is visible).
# Without a GPU (a CPU build, or no card) the smoke step runs on the CPU and the GPU steps are
# skipped, so the script itself can be checked anywhere.
set -u

start_s=$(date +%s)
budget_s=${GPU_CHECK_BUDGET:-360}
iters=${BENCH_ITERS:-3}
out=${OUT:-./gpu-check-out}
mkdir -p "$out" || exit 2
scratch=$(mktemp -d "${TMPDIR:-/tmp}/lumen-gpu-check.XXXXXX") || exit 2
steps_dir="$scratch/steps"
mkdir -p "$steps_dir" "$scratch/cuda-cache"
log="$out/gpu-check.log"
: >"$log"
say() { printf '%s\n' "$*" | tee -a "$log"; }
note() { printf '%s\n' "$*" >>"$log"; }
left() { echo $((budget_s - ($(date +%s) - start_s))); }

# One JIT cache for every step: candle's kernels are compiled for this card once.
export CUDA_CACHE_PATH="$scratch/cuda-cache" CUDA_CACHE_MAXSIZE=4294967296 CUDA_CACHE_DISABLE=0

# --- the binary --------------------------------------------------------------------------
bin=${LUMEN_BIN:-}
if [ -z "$bin" ]; then
    if [ ! -f dist/lumen-cuda.xz ]; then
        say "no dist/lumen-cuda.xz: build it with 'make cuda-dist' and send it with the repository"
        exit 2
    fi
    bin="$scratch/lumen"
    xz -dc dist/lumen-cuda.xz >"$bin" && chmod +x "$bin" || { say "could not unpack dist/lumen-cuda.xz"; exit 2; }
fi
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac

# --- CUDA libraries: the pip CUDA 13 wheels of a Python environment, or a system toolkit.
# Only folders holding a library the loader cannot already find are added.
find_lib_dir() {
    local name=$1 dir p
    if ldconfig -p 2>/dev/null | grep -q "$name"; then return 0; fi
    for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
        [ -e "$dir/$name" ] && { echo "$dir"; return 0; }
    done
    for p in $(python3 -c 'import site; print(" ".join(site.getsitepackages()+[site.getusersitepackages()]))' 2>/dev/null) \
        /usr/lib /opt /usr/local; do
        [ -d "$p" ] || continue
        dir=$(timeout 20 find "$p" -maxdepth 7 -name "$name" 2>/dev/null | head -1)
        [ -n "$dir" ] && { dirname "$dir"; return 0; }
    done
    return 1
}
if ldd "$bin" 2>/dev/null | grep -q "libcudart\|libcublas"; then
    libpath=""
    for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13 libnvrtc.so.13 libcudnn.so.9; do
        if d=$(find_lib_dir "$lib"); then
            [ -n "$d" ] && case ":$libpath:" in *":$d:"*) ;; *) libpath="$libpath${libpath:+:}$d" ;; esac
        else
            say "warning: $lib not found (Python site-packages, /usr/lib, /opt, /usr/local)"
        fi
    done
    export LD_LIBRARY_PATH="$libpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
fi
# Named here; the smoke step then fails on it and records it.
ldd "$bin" 2>/dev/null | grep "not found" | sed 's/^[[:space:]]*/missing library: /' | tee -a "$log"

gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    gpu=1
    say "$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 | head -4)"
    nvidia-smi >>"$log" 2>&1
else
    say "no GPU visible (nvidia-smi): GPU steps are skipped unless GPU_CHECK_STEPS names them"
fi
say "$("$bin" --version 2>&1 | head -1)"

# --- steps -------------------------------------------------------------------------------
# Each step leaves NAME.out, NAME.err and one line in steps.tsv:
# name <TAB> status <TAB> rc <TAB> seconds <TAB> limit <TAB> note
smoke_ok=1
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$scratch/steps.tsv"; }

wanted() {
    [ -z "${GPU_CHECK_STEPS:-}" ] && return 0
    case ",$GPU_CHECK_STEPS," in *",$1,"*) return 0 ;; esac
    return 1
}

# step NAME SECONDS gpu|any [VAR=VALUE ...] -- CMD ...
step() {
    local name=$1 want=$2 needs=$3 rest t rc s status
    shift 3
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    if ! wanted "$name"; then record "$name" skipped "" 0 "$want" "not in GPU_CHECK_STEPS"; return 0; fi
    if [ "$smoke_ok" -eq 0 ]; then record "$name" skipped "" 0 "$want" "the smoke step failed"; return 0; fi
    if [ "$needs" = gpu ] && [ "$gpu" -eq 0 ] && [ -z "${GPU_CHECK_STEPS:-}" ]; then
        record "$name" skipped "" 0 "$want" "no GPU visible"
        return 0
    fi
    rest=$(left)
    t=$((want < rest ? want : rest))
    if [ "$t" -lt 5 ]; then
        say "$(printf '%-26s SKIP (time budget spent)' "$name")"
        record "$name" skipped "" 0 "$want" "time budget spent"
        return 0
    fi
    s=$(date +%s)
    timeout --kill-after=10 "$t" env ${envs[@]+"${envs[@]}"} "$@" >"$steps_dir/$name.out" 2>"$steps_dir/$name.err"
    rc=$?
    s=$(($(date +%s) - s))
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=fail ;; esac
    record "$name" "$status" "$rc" "$s" "$t" "${envs[*]:-}"
    say "$(printf '%-26s %-7s rc %-3s %4ss of %ss' "$name" "$status" "$rc" "$s" "$t")"
    if [ "$status" != ok ]; then
        say "--- $name: last 40 lines of stderr"
        tail -n 40 "$steps_dir/$name.err" | cut -c1-240 | tee -a "$log"
        say "---"
    fi
    return 0
}

strict="LUMEN_CUDNN_TF32=0" # the goldens were recorded in strict f32: convolutions too
blocking="CUDA_LAUNCH_BLOCKING=1"
step smoke 30 any -- "$bin" preflight --pipeline procedural --store "$scratch/store" --json
if wanted smoke && ! awk -F'\t' '$1 == "smoke" && $2 == "ok"' "$scratch/steps.tsv" | grep -q .; then smoke_ok=0; fi
step goldens 70 gpu "$strict" "$blocking" -- \
    "$bin" preflight --pipeline procedural --store "$scratch/store" --goldens tests/goldens --json
step attention_check 35 gpu "$blocking" -- "$bin" bench attention_check --json
step conv_check 25 gpu "$blocking" -- "$bin" bench conv_check --json
step conv_check_strict 15 gpu "$strict" "$blocking" -- "$bin" bench conv_check --json
step bench_concept 60 gpu -- "$bin" bench concept --iters 1 --json
step memory 35 any -- "$bin" bench memory --quick --json
step bench_partcrafter_dit 20 gpu -- "$bin" bench partcrafter_dit --iters "$iters" --json
step bench_sdxl 20 gpu -- "$bin" bench sdxl --iters "$iters" --json
step bench_attention 15 gpu -- "$bin" bench attention --iters "$iters" --json
step bench_conv 15 gpu -- "$bin" bench conv --iters "$iters" --json
step bench_partcrafter_geometry 10 gpu -- "$bin" bench partcrafter_geometry --iters "$iters" --json
step bench_rmbg 10 gpu -- "$bin" bench rmbg --iters "$iters" --json

# --- results.json and the table ------------------------------------------------------------
if command -v python3 >/dev/null; then
    python3 - "$scratch" "$out" <<'PY' | tee -a "$log"
import json, os, sys
scratch, out = sys.argv[1], sys.argv[2]
steps = []
for line in open(os.path.join(scratch, "steps.tsv")):
    name, status, rc, secs, limit, note = line.rstrip("\n").split("\t")
    parsed = None
    try:
        with open(os.path.join(scratch, "steps", name + ".out")) as f:
            parsed = json.load(f)
    except Exception:
        pass
    steps.append({"name": name, "status": status, "rc": int(rc) if rc else None, "seconds": int(secs),
                  "limit_s": int(limit), "note": note, "output": parsed})
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"steps": steps}, f)

lines = []
p = lines.append
by = {s["name"]: s for s in steps}
p("== steps")
for s in steps:
    rc = "" if s["rc"] is None else s["rc"]
    extra = f"({s['note']})" if s["status"] == "skipped" else ""
    p(f"  {s['name']:<26} {s['status']:<8} {rc:>3} {s['seconds']:>4}s {extra}")
g = (by.get("goldens") or {}).get("output")
if g:
    cases = g.get("goldens", [])
    bad = [c for c in cases if not c["pass"]]
    worst = sorted(cases, key=lambda c: -c["worst"]["error"] / max(c["worst"]["tol"], 1e-30))[:6]
    p(f"== goldens: {len(cases) - len(bad)} of {len(cases)} within tolerance (worst error/tol first)")
    for c in bad + [c for c in worst if c["pass"]]:
        w = c["worst"]
        p(f"  {'ok' if c['pass'] else 'FAIL':<4} {c['component']:<11} {c['case'][:22]:<22} {c['dtype']:<4} "
          f"{w['output'][:22]:<22} {w['error']:.2e} / {w['tol']:.1e}")
    for c in g.get("checks", []):
        if c["status"] == "fail":
            p(f"  FAIL {c['name']}: {c['detail'][:200]}")
def rows(name):
    o = (by.get(name) or {}).get("output")
    return o if isinstance(o, list) else []
bench = [s for s in ["bench_concept", "bench_partcrafter_dit", "bench_sdxl", "bench_attention", "bench_conv",
                     "bench_partcrafter_geometry", "bench_rmbg"] if rows(s)]
if bench:
    p("== bench: suite, row, dtype, median ms, peer ms, ratio (lumen / peer, H100 fp16), peak MiB")
    for s in bench:
        for r in rows(s):
            ref, ratio, peak = r.get("reference_ms"), r.get("ratio"), r.get("peak_mem_mib")
            p(f"  {r['suite'][:11]:<11} {r['name'][:44]:<44} {r.get('dtype', ''):<4} {r['median_ms']:>9.1f}"
              f" {(f'{ref:.1f}' if ref else '-'):>7} {(f'{ratio:.2f}' if ratio else '-'):>5}"
              f" {(f'{peak:.0f}' if peak else '-'):>6}")
for s in ["attention_check", "conv_check", "conv_check_strict"]:
    r = rows(s)
    if r:
        bad = [x for x in r if "FAIL" in x.get("note", "")]
        p(f"== {s}: {len(r) - len(bad)} of {len(r)} cases ok")
        for x in bad[:10]:
            p(f"  FAIL {x['name'][:50]}: {x['note'][:120]}")
m = rows("memory")
if m:
    p("== memory: row, predicted MiB, measured MiB")
    for r in m:
        if r.get("measured_mib") is not None or "N=16" in r["name"] or "verdict" in r["name"]:
            meas = r.get("measured_mib")
            p(f"  {r['name'][:40]:<40} {r['predicted_mib']:>8.0f} {(f'{meas:.0f}' if meas is not None else '-'):>8}")
    p("  " + m[-1]["note"][:220])
text = "\n".join(lines) + "\n"
open(os.path.join(out, "table.txt"), "w").write(text)
sys.stdout.write(text)
PY
else
    say "no python3 here: results.json has no parsed outputs; the step files are in the archive"
    {
        printf '{"steps":['
        sep=""
        while IFS=$'\t' read -r name status rc secs limit _; do
            printf '%s{"name":"%s","status":"%s","rc":%s,"seconds":%s,"limit_s":%s,"output":null}' \
                "$sep" "$name" "$status" "${rc:-null}" "$secs" "$limit"
            sep=","
        done <"$scratch/steps.tsv"
        printf ']}\n'
    } >"$out/results.json"
fi

# --- everything else, compressed ----------------------------------------------------------
cp "$scratch/steps.tsv" "$steps_dir/" 2>/dev/null
if command -v xz >/dev/null; then
    tar -C "$scratch" -cJf "$out/gpu-check-files.tar.xz" steps
else
    tar -C "$scratch" -czf "$out/gpu-check-files.tar.gz" steps
fi
failed=$(awk -F'\t' '$2 == "fail" || $2 == "timeout"' "$scratch/steps.tsv" | wc -l)
say "== done in $(($(date +%s) - start_s)) s, $failed step(s) failed or timed out; files in $out"
rm -rf "$scratch"
[ "$failed" -eq 0 ] && [ "$smoke_ok" -eq 1 ]
