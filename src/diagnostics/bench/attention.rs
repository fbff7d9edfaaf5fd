//! Attention: speed at the shapes peer-baseline.md measured torch's SDPA at (suite
//! `attention`), and correctness of every path against a float64 host reference (suite
//! `attention_check`, which fails the command when a case is out of tolerance).
//!
//! Both run on the bench's device (CUDA in a CUDA build unless `--cpu`); on the CPU the check
//! runs reduced shapes through the blocked path so the harness itself is exercised.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::{measure, BenchOptions, BenchRow};
use crate::attention::{attention_with, plan, Options, Path};
use crate::diagnostics::compare::rel_l2_values;

/// One attention shape; `sdpa_ms`: torch 2.11 SDPA on an H100 (peer-baseline.md).
struct Shape {
    name: &'static str,
    b: usize,
    h: usize,
    lq: usize,
    lk: usize,
    d: usize,
    sdpa_ms: Option<f64>,
    /// q and k × 32 and v = 1 + 0.001·noise: raw f16 scores overflow (|q·k| ≫ 65504) while
    /// scaled ones do not; the softmax is nearly one-hot, so v near 1 keeps near-ties harmless.
    loud: bool,
}

const fn shape(name: &'static str, b: usize, h: usize, lq: usize, lk: usize, d: usize, sdpa_ms: Option<f64>) -> Shape {
    Shape { name, b, h, lq, lk, d, sdpa_ms, loud: false }
}

const fn loud(name: &'static str, lq: usize, lk: usize, d: usize) -> Shape {
    Shape { name, b: 1, h: 1, lq, lk, d, sdpa_ms: None, loud: true }
}

/// peer-baseline.md's attention rows, plus the SDXL UNet's head dim 64.
const SPEED: &[Shape] = &[
    shape("DiT global B2 H16 4100x4100 d128", 2, 16, 4100, 4100, 128, Some(0.525)),
    shape("DiT local B8 H16 1025x1025 d128", 8, 16, 1025, 1025, 128, Some(0.197)),
    shape("SDF decoder H8 50000x1024 d128", 1, 8, 50_000, 1024, 128, Some(0.374)),
    shape("UNet self B1 H10 1024x1024 d64", 1, 10, 1024, 1024, 64, None),
];

/// Every length the models run (queries 77 … 50 000, keys 77 … 16 400), head dims 64 and
/// 128, and ragged sizes that are no multiple of the kernel's 64-row tiles.
const CHECK: &[Shape] = &[
    shape("CLIP 77x77 d64", 1, 12, 77, 77, 64, None),
    shape("DINOv2 257x257 d64", 2, 16, 257, 257, 64, None),
    shape("UNet cross 1024x77 d64", 1, 10, 1024, 77, 64, None),
    shape("DiT local 1025x1025 d128", 2, 16, 1025, 1025, 128, None),
    shape("DiT global 4100x4100 d128", 1, 16, 4100, 4100, 128, None),
    shape("DiT global 16 parts 16400x16400 d128", 1, 2, 16_400, 16_400, 128, None),
    shape("SDF decoder 50000x1024 d128", 1, 8, 50_000, 1024, 128, None),
    shape("ragged 100x37 d64", 1, 3, 100, 37, 64, None),
    shape("ragged 130x200 d128", 2, 2, 130, 200, 128, None),
    shape("ragged 200x130 d128", 1, 2, 200, 130, 128, None),
    shape("head dim 80 (safe path) 300x300", 1, 4, 300, 300, 80, None),
    loud("VAE mid-block d512, raw f16 scores overflow, 256x2048", 256, 2048, 512),
];

/// Reduced shapes for the CPU run of the check.
/// (No lq > lk here: a causal row that sees no key is zeros on CUDA, NaN on the CPU path.)
const CHECK_CPU: &[Shape] = &[
    shape("ragged 37x100 d64", 1, 3, 37, 100, 64, None),
    shape("ragged 130x200 d128", 2, 2, 130, 200, 128, None),
    shape("CLIP 77x77 d64", 1, 2, 77, 77, 64, None),
];

fn random(dev: &Device, seed: u64, dims: (usize, usize, usize, usize), dtype: DType) -> Result<Tensor> {
    let mut rng = crate::rng::Rng::new(seed);
    let n = dims.0 * dims.1 * dims.2 * dims.3;
    Ok(Tensor::from_vec(rng.normal_vec(n), dims, dev)?.to_dtype(dtype)?)
}

fn flops(s: &Shape) -> f64 {
    4.0 * (s.b * s.h * s.lq * s.lk * s.d) as f64
}

/// `lumen bench attention`: median time and TFLOP/s per path and dtype beside SDPA
/// (`--quick`: fused path only).
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let dev = opts.device.clone();
    let card = crate::device::describe(&dev).name;
    let mut rows = Vec::new();
    if !dev.is_cuda() {
        // The CPU path at one small shape, so the suite has a CPU number.
        let s = shape("CPU blocked B1 H8 1025x1025 d64", 1, 8, 1025, 1025, 64, None);
        rows.push(time_one(&dev, &s, DType::F32, Path::Blocked, opts, &card)?);
        return Ok(rows);
    }
    for s in SPEED {
        for dtype in [DType::BF16, DType::F16] {
            // `--quick`: the fused path only.
            let paths: &[Path] = if opts.quick { &[Path::Fused] } else { &[Path::Fused, Path::Safe] };
            for &path in paths {
                rows.push(time_one(&dev, s, dtype, path, opts, &card)?);
            }
        }
    }
    Ok(rows)
}

fn time_one(dev: &Device, s: &Shape, dtype: DType, path: Path, opts: &BenchOptions, card: &str) -> Result<BenchRow> {
    let q = random(dev, 1, (s.b, s.h, s.lq, s.d), dtype)?;
    let k = random(dev, 2, (s.b, s.h, s.lk, s.d), dtype)?;
    let v = random(dev, 3, (s.b, s.h, s.lk, s.d), dtype)?;
    let scale = 1.0 / (s.d as f64).sqrt();
    let o = Options { path: Some(path), ..Options::default() };
    let (median, min) = measure(opts.iters, || {
        let (out, _) = attention_with(&q, &k, &v, scale, false, &o)?;
        drop(out);
        dev.synchronize()?;
        Ok(())
    })?;
    let rate = flops(s) / (median * 1e-3);
    let rate = if rate >= 1e12 { format!("{:.1} TFLOP/s", rate / 1e12) } else { format!("{:.1} GFLOP/s", rate / 1e9) };
    let vs_sdpa = match s.sdpa_ms {
        Some(ref_ms) => format!("; SDPA (H100) {ref_ms:.3} ms → {:.2}× SDPA's speed", ref_ms / median),
        None => String::new(),
    };
    Ok(BenchRow {
        suite: "attention".into(),
        name: format!("{} {dtype:?} {}", s.name, path.name()),
        iters: opts.iters,
        median_ms: median,
        min_ms: min,
        dtype: crate::device::dtype_name(dtype).into(),
        reference_ms: s.sdpa_ms,
        ratio: s.sdpa_ms.map(|r| median / r),
        note: format!("{rate} on {card}{vs_sdpa}"),
        ..Default::default()
    })
}

/// Inputs of one check case, rounded to the dtype under test, on the host.
struct Host {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// f64 reference for query row `i` of head `g`; rows with no visible key are zeros (what
/// the CUDA paths write).
fn reference_row(x: &Host, s: &Shape, g: usize, i: usize, scale: f64, causal: bool) -> Vec<f64> {
    let d = s.d;
    let visible = if causal { (i + s.lk).saturating_sub(s.lq - 1).min(s.lk) } else { s.lk };
    let qi = &x.q[(g * s.lq + i) * d..][..d];
    let scores: Vec<f64> = (0..visible)
        .map(|j| {
            let kj = &x.k[(g * s.lk + j) * d..][..d];
            qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale
        })
        .collect();
    let mut out = vec![0.0; d];
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
    for (j, sj) in scores.iter().enumerate() {
        let p = (sj - m).exp() / z;
        let vj = &x.v[(g * s.lk + j) * d..][..d];
        for (o, &vv) in out.iter_mut().zip(vj) {
            *o += p * vv as f64;
        }
    }
    out
}

/// (head, row) pairs to compare: all of them for small cases, else the tile edges of the
/// first and last head and a random spread (the reference costs lk·d per row).
fn sample_rows(s: &Shape, seed: u64) -> Vec<(usize, usize)> {
    let heads = s.b * s.h;
    if heads * s.lq * s.lk * s.d <= 50_000_000 {
        return (0..heads).flat_map(|g| (0..s.lq).map(move |i| (g, i))).collect();
    }
    let mut rows = Vec::new();
    for g in [0, heads - 1] {
        for i in [0, 1, 15, 16, 63, 64, 65, s.lq / 2, s.lq - 65, s.lq - 64, s.lq - 2, s.lq - 1] {
            rows.push((g, i.min(s.lq - 1)));
        }
    }
    let budget = if s.lk > 4096 { 200 } else { 400 };
    let mut rng = crate::rng::Rng::new(seed);
    while rows.len() < budget {
        let g = (rng.next_u64() % heads as u64) as usize;
        let i = (rng.next_u64() % s.lq as u64) as usize;
        rows.push((g, i));
    }
    rows
}

/// `lumen bench attention_check`: every shape × dtype × causal × path against the f64
/// reference, outputs poisoned with NaN first; an error (non-zero exit) if any case fails.
/// `--quick` leaves out the 16 400 × 16 400 shape.
pub fn check(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let dev = opts.device.clone();
    let card = crate::device::describe(&dev).name;
    let cuda = dev.is_cuda();
    // `--quick` skips the 16 400² case (the slowest for the host reference).
    let shapes: Vec<&Shape> =
        (if cuda { CHECK } else { CHECK_CPU }).iter().filter(|s| !opts.quick || s.lq * s.lk <= 100_000_000).collect();
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for (n, s) in shapes.iter().enumerate() {
        let seed = 1000 + n as u64 * 10;
        let mut q32 = random(&dev, seed, (s.b, s.h, s.lq, s.d), DType::F32)?;
        let mut k32 = random(&dev, seed + 1, (s.b, s.h, s.lk, s.d), DType::F32)?;
        let mut v32 = random(&dev, seed + 2, (s.b, s.h, s.lk, s.d), DType::F32)?;
        if s.loud {
            (q32, k32, v32) = ((q32 * 32.0)?, (k32 * 32.0)?, v32.affine(1e-3, 1.0)?);
        }
        let sample = sample_rows(s, seed + 3);
        for dtype in [DType::BF16, DType::F16] {
            let (q, k, v) = (q32.to_dtype(dtype)?, k32.to_dtype(dtype)?, v32.to_dtype(dtype)?);
            let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?) };
            let x = Host { q: host(&q)?, k: host(&k)?, v: host(&v)? };
            let tol = if dtype == DType::BF16 { 1e-2 } else { 2e-3 };
            for causal in [false, true] {
                let scale = 1.0 / (s.d as f64).sqrt();
                let want: Vec<Vec<f64>> =
                    sample.iter().map(|&(g, i)| reference_row(&x, s, g, i, scale, causal)).collect();
                // The automatic choice (fused where it applies), then the safe fallback.
                let paths: &[Option<Path>] = if cuda { &[None, Some(Path::Safe)] } else { &[None] };
                for &path in paths {
                    let o = Options { path, poison: true, ..Options::default() };
                    let start = std::time::Instant::now();
                    let (out, ran) = attention_with(&q, &k, &v, scale, causal, &o)?;
                    dev.synchronize()?;
                    let ms = start.elapsed().as_secs_f64() * 1e3;
                    let got: Vec<f32> = out.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                    let non_finite = got.iter().filter(|x| !x.is_finite()).count();
                    let rel = rel_l2_values(sample.iter().zip(&want).flat_map(|(&(g, i), w)| {
                        let row = &got[(g * s.lq + i) * s.d..][..s.d];
                        row.iter().zip(w).map(|(&a, &b)| (a as f64, b))
                    }));
                    let expected_path = plan::choose(
                        cuda.then_some((8, 0)),
                        dtype,
                        &plan::Dims { b: s.b, h: s.h, lq: s.lq, lk: s.lk, d: s.d, dv: s.d },
                    )
                    .0;
                    let path_ok = path.is_some() || ran == expected_path;
                    let ok = rel <= tol && non_finite == 0 && path_ok;
                    let name = format!("{} {dtype:?}{} {}", s.name, if causal { " causal" } else { "" }, ran.name());
                    let note = format!(
                        "rel_l2 {rel:.2e} (tol {tol:.0e}) over {} rows, {non_finite} non-finite of {}: {} on {card}",
                        sample.len(),
                        got.len(),
                        if ok { "ok" } else { "FAIL" }
                    );
                    if !ok {
                        failures.push(format!("{name}: {note}"));
                    }
                    rows.push(BenchRow {
                        suite: "attention_check".into(),
                        name,
                        iters: 1,
                        median_ms: ms,
                        min_ms: ms,
                        note,
                        ..Default::default()
                    });
                }
            }
        }
    }
    if !failures.is_empty() {
        for r in &rows {
            tracing::error!("{:<60} {}", r.name, r.note);
        }
        bail!("attention check: {} of {} cases failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference agrees with the CPU path's own test reference on a causal row with an
    /// offset, and gives zeros for a row that sees no key.
    #[test]
    fn reference_rows_and_sampling() {
        let s = shape("t", 1, 1, 6, 4, 2, None);
        let x = Host {
            q: vec![1.0; 12],
            k: vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0],
            v: (0..8).map(|i| i as f32).collect(),
        };
        // Row 0 of 6 queries against 4 keys, causal: sees keys ≤ 0 + 4 − 6 < 0 → none.
        assert_eq!(reference_row(&x, &s, 0, 0, 1.0, true), vec![0.0, 0.0]);
        // Row 2 sees key 0 only → v[0].
        assert_eq!(reference_row(&x, &s, 0, 2, 1.0, true), vec![0.0, 1.0]);
        // Row 5 sees all four; weights ∝ e^{0, 2, 4, 6}.
        let w: Vec<f64> = (0..4).map(|j| (2.0 * j as f64).exp()).collect();
        let z: f64 = w.iter().sum();
        let want0: f64 = (0..4).map(|j| w[j] / z * (2 * j) as f64).sum();
        let got = reference_row(&x, &s, 0, 5, 1.0, true);
        assert!((got[0] - want0).abs() < 1e-12);
        assert_eq!(reference_row(&x, &s, 0, 5, 1.0, true), reference_row(&x, &s, 0, 5, 1.0, false));

        let big = shape("b", 1, 8, 50_000, 1024, 128, None);
        let rows = sample_rows(&big, 1);
        assert!(rows.iter().all(|&(g, i)| g < 8 && i < 50_000));
        assert!(rows.contains(&(7, 49_999)) && rows.contains(&(0, 64)));
        assert_eq!(sample_rows(&shape("s", 1, 2, 10, 10, 8, None), 1).len(), 20);
    }

    /// The check harness passes on the CPU path (its CUDA run is the device script's).
    #[test]
    fn check_suite_passes_on_cpu() {
        if cfg!(feature = "cuda") {
            return; // the suite opens the GPU in a CUDA build
        }
        let rows = check(&BenchOptions::cpu(1, true)).unwrap();
        assert_eq!(rows.len(), CHECK_CPU.len() * 4);
    }
}
