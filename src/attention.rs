//! The one scaled-dot-product attention every model calls.
//!
//! Why one entry point: attention dominates the DiT and the SDF decoder, and how
//! it is computed is a device concern, not a model concern. Models pass
//! (batch, heads, len, dim) tensors and get the same layout back. Which path runs is
//! decided per call by [`plan::choose`] and logged once per distinct choice on CUDA, so
//! a fallback is never silent. The measurements and the reasons for this design are in
//! docs/attention.md.
//!
//! - **Fused** (CUDA, f16/bf16, head dim 64 or 128, sm_80+): one FlashAttention-2-style
//!   kernel of our own (`src/cuda/attention.cu`): tensor-core MMA with f32 accumulation,
//!   online softmax, the score matrix never in memory, inputs never upcast, causal mask
//!   by index arithmetic.
//! - **Safe** (CUDA, f16/bf16, any other head dim or a v head dim of its own): cuBLAS GEMMs
//!   in the input dtype plus one fused scale-mask-softmax kernel, over query blocks whose
//!   scores stay under [`SCORE_BUDGET_BYTES`].
//! - **Blocked** (CPU, and f32 inputs anywhere): inputs upcast to f32, matmul → softmax →
//!   matmul over query blocks whose f32 scores stay under [`SCORE_BUDGET_BYTES`]; memory is
//!   bounded for the decoder's 50 k-point chunks and the 16-part global blocks alike.

use std::collections::HashSet;
use std::sync::Mutex;

use candle_core::{bail, DType, Device, Result, Tensor};

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(test)]
mod kernel_model;
pub mod plan;

pub use plan::Path;

/// Upper bound on the score matrix of one query block, in bytes.
pub const SCORE_BUDGET_BYTES: usize = 256 << 20;

/// How [`attention_with`] runs: defaults are what [`attention`] does.
#[derive(Debug, Clone)]
pub struct Options {
    /// Force a path instead of [`plan::choose`]'s (checks and benchmarks compare paths).
    pub path: Option<Path>,
    /// Fill kernel outputs with NaN before the launch, so a check catches unwritten elements.
    pub poison: bool,
    /// Score budget of the blocked and safe paths.
    pub score_budget_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { path: None, poison: false, score_budget_bytes: SCORE_BUDGET_BYTES }
    }
}

/// softmax(q kᵀ · scale [+ causal mask]) v.
///
/// `q`: (b, h, lq, d); `k`, `v`: (b, h, lk, d) (v may have another last dim).
/// `causal`: query i sees keys 0..=i + (lk − lq) (aligned at the end, as torch does
/// for lq == lk; CLIP only uses lq == lk). A causal row that sees no key at all (only
/// possible when lq > lk) is zeros on the CUDA paths and NaN on the blocked path; no model
/// does this.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    Ok(attention_with(q, k, v, scale, causal, &Options::default())?.0)
}

/// [`attention`] with explicit [`Options`]; also returns the path that ran.
pub fn attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
    opts: &Options,
) -> Result<(Tensor, Path)> {
    let (b, h, lq, d) = q.dims4()?;
    let (kb, kh, lk, kd) = k.dims4()?;
    let (vb, vh, vl, dv) = v.dims4()?;
    if (kb, kh, kd) != (b, h, d) || (vb, vh, vl) != (b, h, lk) {
        bail!("attention: q {:?}, k {:?}, v {:?} do not match", q.shape(), k.shape(), v.shape());
    }
    let dims = plan::Dims { b, h, lq, lk, d, dv };
    let path = match opts.path {
        Some(p) => p,
        None => {
            let (path, why) = plan::choose(compute_capability(q)?, q.dtype(), &dims);
            if q.device().is_cuda() {
                log_once(format!("attention on CUDA: {} path ({why})", path.name()));
            }
            path
        }
    };
    let out = match path {
        Path::Blocked => blocked(q, k, v, scale, causal, opts.score_budget_bytes)?,
        Path::Fused => fused(q, k, v, scale, causal, opts.poison)?,
        Path::Safe => safe(q, k, v, scale, causal, &dims, opts)?,
    };
    Ok((out, path))
}

/// `Some` on a CUDA device (its compute capability), `None` elsewhere.
fn compute_capability(t: &Tensor) -> Result<Option<(i32, i32)>> {
    #[cfg(feature = "cuda")]
    if t.device().is_cuda() {
        return cuda::compute_capability(t).map(Some);
    }
    let _ = t;
    Ok(None)
}

/// Logs each distinct message once per process (one line per path choice, not per call).
fn log_once(msg: String) {
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(msg.clone()) {
        tracing::info!("{msg}");
    }
}

/// Contiguous, and starting at a 16-byte boundary (the fused kernel's `cp.async` needs it).
#[cfg(feature = "cuda")]
fn kernel_ready(t: &Tensor) -> Result<Tensor> {
    let t = t.contiguous()?;
    if plan::needs_realign(t.layout().start_offset()) {
        // A fresh buffer: an exact copy (× 1 + 0) that starts at offset 0.
        return t.affine(1.0, 0.0);
    }
    Ok(t)
}

#[cfg(feature = "cuda")]
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool, poison: bool) -> Result<Tensor> {
    cuda::fused(&kernel_ready(q)?, &kernel_ready(k)?, &kernel_ready(v)?, scale, causal, poison)
}

#[cfg(not(feature = "cuda"))]
fn fused(_: &Tensor, _: &Tensor, _: &Tensor, _: f64, _: bool, _: bool) -> Result<Tensor> {
    bail!("the fused attention path needs a CUDA build")
}

/// cuBLAS scores in the input dtype, one fused scale-mask-softmax kernel, cuBLAS P·V.
#[cfg(feature = "cuda")]
fn safe(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    causal: bool,
    dims: &plan::Dims,
    opts: &Options,
) -> Result<Tensor> {
    let kt = k.contiguous()?.t()?;
    let v = v.contiguous()?;
    let block = plan::query_block_rows(opts.score_budget_bytes, dims, q.dtype().size_in_bytes());
    let mut outs = Vec::with_capacity(dims.lq.div_ceil(block));
    let mut start = 0;
    while start < dims.lq {
        let len = block.min(dims.lq - start);
        let scores = q.narrow(2, start, len)?.contiguous()?.matmul(&kt)?;
        let probs = cuda::scaled_softmax(&scores, scale, causal, start, dims.lq, opts.poison)?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    if outs.len() == 1 {
        Ok(outs.pop().unwrap())
    } else {
        Tensor::cat(&outs, 2)
    }
}

#[cfg(not(feature = "cuda"))]
fn safe(_: &Tensor, _: &Tensor, _: &Tensor, _: f64, _: bool, _: &plan::Dims, _: &Options) -> Result<Tensor> {
    bail!("the safe attention path needs a CUDA build")
}

/// Upcast to f32, then matmul → softmax → matmul over query blocks of at most
/// `budget_bytes` of scores each.
fn blocked(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool, budget_bytes: usize) -> Result<Tensor> {
    let (b, h, lq, d) = q.dims4()?;
    let (_, _, lk, dv) = v.dims4()?;
    let out_dtype = q.dtype();
    let q = q.to_dtype(DType::F32)?;
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let kt = k.transpose(2, 3)?.contiguous()?;

    let block = plan::query_block_rows(budget_bytes, &plan::Dims { b, h, lq, lk, d, dv }, 4);
    let mut outs = Vec::with_capacity(lq.div_ceil(block));
    let mut start = 0;
    while start < lq {
        let len = block.min(lq - start);
        let qb = q.narrow(2, start, len)?.contiguous()?;
        let mut scores = (qb.matmul(&kt)? * scale)?;
        if causal {
            scores = scores.broadcast_add(&causal_mask(start, len, lq, lk, q.device())?)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&v)?);
        start += len;
    }
    let out = if outs.len() == 1 { outs.pop().unwrap() } else { Tensor::cat(&outs, 2)? };
    out.to_dtype(out_dtype)
}

/// Additive mask (len, lk): 0 where allowed, −inf where query row `start + i`
/// must not see key `j`.
fn causal_mask(start: usize, len: usize, lq: usize, lk: usize, device: &Device) -> Result<Tensor> {
    let offset = lk as i64 - lq as i64;
    let data: Vec<f32> = (0..len)
        .flat_map(|i| {
            let last = (start + i) as i64 + offset;
            (0..lk).map(move |j| if (j as i64) <= last { 0.0 } else { f32::NEG_INFINITY })
        })
        .collect();
    Tensor::from_vec(data, (len, lk), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 reference on flat data.
    #[allow(clippy::too_many_arguments)] // the layout of flat data: every dimension is an argument
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        bh: usize,
        lq: usize,
        lk: usize,
        d: usize,
        dv: usize,
        scale: f64,
        causal: bool,
    ) -> Vec<f64> {
        let mut out = vec![0.0; bh * lq * dv];
        for g in 0..bh {
            for i in 0..lq {
                let limit = if causal { (i as i64 + lk as i64 - lq as i64).max(-1) } else { lk as i64 - 1 };
                let mut s: Vec<f64> = (0..lk)
                    .map(|j| {
                        if j as i64 > limit {
                            f64::NEG_INFINITY
                        } else {
                            (0..d).map(|t| q[(g * lq + i) * d + t] as f64 * k[(g * lk + j) * d + t] as f64).sum::<f64>()
                                * scale
                        }
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let mut z = 0.0;
                for x in &mut s {
                    *x = (*x - m).exp();
                    z += *x;
                }
                for j in 0..lk {
                    for t in 0..dv {
                        out[(g * lq + i) * dv + t] += s[j] / z * v[(g * lk + j) * dv + t] as f64;
                    }
                }
            }
        }
        out
    }

    fn check(b: usize, h: usize, lq: usize, lk: usize, d: usize, causal: bool) {
        let mut rng = crate::rng::Rng::new((lq * 31 + lk) as u64);
        let n = |len: usize, rng: &mut crate::rng::Rng| rng.normal_vec(b * h * len * d);
        let (qd, kd, vd) = (n(lq, &mut rng), n(lk, &mut rng), n(lk, &mut rng));
        let dev = Device::Cpu;
        let q = Tensor::from_vec(qd.clone(), (b, h, lq, d), &dev).unwrap();
        let k = Tensor::from_vec(kd.clone(), (b, h, lk, d), &dev).unwrap();
        let v = Tensor::from_vec(vd.clone(), (b, h, lk, d), &dev).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let got: Vec<f32> = attention(&q, &k, &v, scale, causal).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want = reference(&qd, &kd, &vd, b * h, lq, lk, d, d, scale, causal);
        let num: f64 = got.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
        let den: f64 = want.iter().map(|w| w * w).sum();
        let rel = (num / den).sqrt();
        println!("attention b{b} h{h} lq{lq} lk{lk} d{d} causal={causal}: rel_l2 {rel:.2e} (tol 1e-5)");
        assert!(rel <= 1e-5, "rel_l2 {rel}");
    }

    #[test]
    fn matches_f64_reference() {
        check(2, 3, 17, 17, 8, false);
        check(1, 2, 77, 77, 16, true);
        check(2, 2, 257, 33, 64, false);
        check(1, 1, 5, 9, 4, true);
    }

    /// The shapes the models run (DINOv2 257 tokens, a local block 1025, a 4-part global
    /// block 4100, a 50 k-point decoder chunk against 1024 latents), head dims 64 and 128.
    /// Rows of attention are independent, so the f64 reference checks a spread of rows.
    #[test]
    fn matches_f64_reference_at_model_shapes() {
        for &(lq, lk, d, causal) in &[
            (257, 257, 64, false),
            (1025, 1025, 128, false),
            (4100, 4100, 128, false),
            (50_000, 1024, 64, false),
            (77, 77, 64, true),
        ] {
            let mut rng = crate::rng::Rng::new((lq + d) as u64);
            let (qd, kd, vd) = (rng.normal_vec(lq * d), rng.normal_vec(lk * d), rng.normal_vec(lk * d));
            let dev = Device::Cpu;
            let q = Tensor::from_vec(qd.clone(), (1, 1, lq, d), &dev).unwrap();
            let k = Tensor::from_vec(kd.clone(), (1, 1, lk, d), &dev).unwrap();
            let v = Tensor::from_vec(vd.clone(), (1, 1, lk, d), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let got: Vec<f32> = attention(&q, &k, &v, scale, causal).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let rows: Vec<usize> = (0..lq).step_by((lq / 40).max(1)).chain([lq - 1]).collect();
            let (mut num, mut den) = (0.0, 0.0);
            for &i in &rows {
                // A causal row i sees keys 0..=i (lq == lk in the causal case).
                let keys = if causal { i + 1 } else { lk };
                let want = reference(
                    &qd[i * d..(i + 1) * d],
                    &kd[..keys * d],
                    &vd[..keys * d],
                    1,
                    1,
                    keys,
                    d,
                    d,
                    scale,
                    false,
                );
                for t in 0..d {
                    num += (got[i * d + t] as f64 - want[t]).powi(2);
                    den += want[t] * want[t];
                }
            }
            let rel = (num / den).sqrt();
            println!(
                "attention lq {lq} lk {lk} d {d} causal={causal}: rel_l2 {rel:.2e} over {} rows (tol 1e-5)",
                rows.len()
            );
            assert!(rel <= 1e-5, "rel_l2 {rel}");
        }
    }

    fn rel_l2(got: &[f32], want: &[f64]) -> f64 {
        let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
        let den: f64 = want.iter().map(|w| w * w).sum();
        (num / den).sqrt()
    }

    /// Random inputs through many query blocks (a tiny score budget), with lq ≠ lk and the
    /// causal mask at a block offset: a wrong block order, offset or mask shows here.
    #[test]
    fn multi_block_path_matches_f64_reference() {
        for &(b, h, lq, lk, d, causal) in &[
            (2, 3, 50, 37, 16, false), // lq > lk
            (2, 3, 29, 45, 16, true),  // causal, keys aligned at the end (offset 16)
            (1, 2, 50, 50, 8, true),   // causal, lq == lk
            (1, 1, 23, 23, 4, true),   // one row per block
        ] {
            let rows = if lq == 23 { 1 } else { 7 };
            let dims = plan::Dims { b, h, lq, lk, d, dv: d };
            let budget = rows * b * h * lk * 4;
            assert_eq!(plan::query_block_rows(budget, &dims, 4), rows);
            assert!(lq.div_ceil(rows) >= 4, "must run several blocks");
            let mut rng = crate::rng::Rng::new((lq * 131 + lk * 7 + causal as usize) as u64);
            let (qd, kd, vd) =
                (rng.normal_vec(b * h * lq * d), rng.normal_vec(b * h * lk * d), rng.normal_vec(b * h * lk * d));
            let dev = Device::Cpu;
            let q = Tensor::from_vec(qd.clone(), (b, h, lq, d), &dev).unwrap();
            let k = Tensor::from_vec(kd.clone(), (b, h, lk, d), &dev).unwrap();
            let v = Tensor::from_vec(vd.clone(), (b, h, lk, d), &dev).unwrap();
            let scale = 1.0 / (d as f64).sqrt();
            let opts = Options { score_budget_bytes: budget, ..Options::default() };
            let (out, path) = attention_with(&q, &k, &v, scale, causal, &opts).unwrap();
            assert_eq!(path, Path::Blocked);
            assert_eq!(out.dims(), &[b, h, lq, d]);
            let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
            let want = reference(&qd, &kd, &vd, b * h, lq, lk, d, d, scale, causal);
            let rel = rel_l2(&got, &want);
            println!(
                "blocked b{b} h{h} lq{lq} lk{lk} d{d} causal={causal}, {} blocks: rel_l2 {rel:.2e} (tol 1e-5)",
                lq.div_ceil(rows)
            );
            assert!(rel <= 1e-5, "rel_l2 {rel}");
        }
    }

    /// The same blocks with the default budget agree with one another to f32 rounding: block
    /// boundaries do not change the result.
    #[test]
    fn block_size_does_not_change_the_result() {
        let (b, h, lq, lk, d) = (1, 2, 40, 40, 8);
        let mut rng = crate::rng::Rng::new(99);
        let dev = Device::Cpu;
        let t = |len: usize, rng: &mut crate::rng::Rng| {
            Tensor::from_vec(rng.normal_vec(b * h * len * d), (b, h, len, d), &dev).unwrap()
        };
        let (q, k, v) = (t(lq, &mut rng), t(lk, &mut rng), t(lk, &mut rng));
        let whole = attention(&q, &k, &v, 0.3, true).unwrap();
        let opts = Options { score_budget_bytes: 3 * b * h * lk * 4, ..Options::default() };
        let split = attention_with(&q, &k, &v, 0.3, true, &opts).unwrap().0;
        let diff: f32 = (whole - split).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(diff < 1e-6, "max difference {diff}");
    }

    /// Half-precision inputs on the CPU take the blocked path (f32 inside) and keep their dtype.
    #[test]
    fn half_inputs_on_cpu_are_blocked_and_keep_dtype() {
        let mut rng = crate::rng::Rng::new(5);
        let (lq, d) = (19, 8);
        let qd = rng.normal_vec(lq * d);
        let dev = Device::Cpu;
        let q = Tensor::from_vec(qd, (1, 1, lq, d), &dev).unwrap().to_dtype(DType::BF16).unwrap();
        let (out, path) = attention_with(&q, &q, &q, 0.5, false, &Options::default()).unwrap();
        assert_eq!(path, Path::Blocked);
        assert_eq!(out.dtype(), DType::BF16);
    }

    /// Forcing a CUDA-only path on CPU tensors is an error, never a silent fallback.
    #[test]
    fn cuda_paths_refuse_cpu_tensors() {
        let q = Tensor::zeros((1, 1, 4, 64), DType::F16, &Device::Cpu).unwrap();
        for path in [Path::Fused, Path::Safe] {
            let opts = Options { path: Some(path), ..Options::default() };
            assert!(attention_with(&q, &q, &q, 1.0, false, &opts).is_err(), "{path:?}");
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((1, 2, 5, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&q, &k, &k, 1.0, false).is_err());
    }
}
