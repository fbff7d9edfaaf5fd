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
//!   scores stay under [`SCORE_BUDGET_BYTES`]; q is scaled before the score GEMM so f16
//!   scores overflow only where the scaled score would.
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
/// does this. No keys at all (lk = 0) is zeros, an empty output an empty tensor, on every
/// path and without a launch.
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
    if let Some(trivial) = plan::trivial(&dims) {
        return Ok((trivial_output(trivial, &dims, q)?, path));
    }
    if d == 0 {
        bail!("attention: head dim 0 (q {:?})", q.shape());
    }
    if path == Path::Fused {
        // A forced fused path (checks, benches) must not reach an impossible launch.
        if let Some(why) = plan::fused_blocker(q.dtype(), &dims) {
            bail!("attention: the fused path cannot run q {:?}: {why}", q.shape());
        }
    }
    let out = match path {
        Path::Blocked => blocked(q, k, v, scale, causal, opts.score_budget_bytes)?,
        Path::Fused => fused(q, k, v, scale, causal, opts.poison)?,
        Path::Safe => safe(q, k, v, scale, causal, &dims, opts)?,
    };
    Ok((out, path))
}

/// The output of a call that launches nothing, in q's dtype and on its device: an empty
/// (b, h, lq, dv) view of a one-element buffer (no zero-byte allocation, which CUDA refuses),
/// or zeros when there are no keys.
fn trivial_output(trivial: plan::Trivial, s: &plan::Dims, q: &Tensor) -> Result<Tensor> {
    let shape = (s.b, s.h, s.lq, s.dv);
    match trivial {
        plan::Trivial::Empty => Tensor::zeros(1, q.dtype(), q.device())?.narrow(0, 0, 0)?.reshape(shape),
        plan::Trivial::Zeros => Tensor::zeros(shape, q.dtype(), q.device()),
    }
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
    let softmax = |scores: &Tensor, rest: f64, row0: usize| {
        cuda::scaled_softmax(scores, rest, causal, row0, dims.lq, opts.poison)
    };
    safe_blocks(q, k, v, scale, dims, opts.score_budget_bytes, softmax)
}

#[cfg(not(feature = "cuda"))]
fn safe(_: &Tensor, _: &Tensor, _: &Tensor, _: f64, _: bool, _: &plan::Dims, _: &Options) -> Result<Tensor> {
    bail!("the safe attention path needs a CUDA build")
}

/// The safe path's host side, whatever computes its softmax (the CUDA kernel, or its CPU
/// model in the tests): per query block, scores = q' kᵀ in the input dtype, then
/// `softmax(scores, rest, first row)`, then probs · v.
///
/// Why q is scaled first: the scores are written in the input dtype, and raw f16 scores
/// overflow to inf (then NaN) where |q·k| > 65504 (the SDXL VAE mid-block, head dim 512). q is
/// multiplied by the power-of-two part of `scale` (exact), so a score is never larger than
/// the scaled score; the rest of the scale, in [1, 2), is applied in f32 by the softmax.
#[cfg(any(feature = "cuda", test))]
fn safe_blocks(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    dims: &plan::Dims,
    budget_bytes: usize,
    softmax: impl Fn(&Tensor, f64, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let (pow2, rest) = plan::split_scale(scale);
    let q = if pow2 == 1.0 { q.clone() } else { q.affine(pow2, 0.0)? };
    let kt = k.contiguous()?.t()?;
    let v = v.contiguous()?;
    let block = plan::query_block_rows(budget_bytes, dims, q.dtype().size_in_bytes());
    let mut outs = Vec::with_capacity(dims.lq.div_ceil(block));
    let mut start = 0;
    while start < dims.lq {
        let len = block.min(dims.lq - start);
        let scores = q.narrow(2, start, len)?.contiguous()?.matmul(&kt)?;
        outs.push(softmax(&scores, rest, start)?.matmul(&v)?);
        start += len;
    }
    if outs.len() == 1 {
        Ok(outs.pop().unwrap())
    } else {
        Tensor::cat(&outs, 2)
    }
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

    fn f16_round(x: f32) -> f32 {
        half::f16::from_f32(x).to_f32()
    }

    fn bf16_round(x: f32) -> f32 {
        half::bf16::from_f32(x).to_f32()
    }

    /// The safe path's host side on the CPU, its softmax computed by the kernel's CPU model.
    fn safe_on_cpu(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool, budget: usize) -> Tensor {
        let ((b, h, lq, d), (_, _, lk, dv)) = (q.dims4().unwrap(), v.dims4().unwrap());
        let dims = plan::Dims { b, h, lq, lk, d, dv };
        let round = if q.dtype() == DType::F16 { f16_round } else { bf16_round };
        let softmax = |s: &Tensor, scale: f64, row0: usize| {
            let (sb, sh, len, slk) = s.dims4()?;
            let host: Vec<f32> = s.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let scale_log2 = (scale * std::f64::consts::LOG2_E) as f32;
            let p = kernel_model::softmax_rows(&host, len, slk, row0, lq, scale_log2, causal, round);
            Tensor::from_vec(p, (sb, sh, len, slk), &Device::Cpu)?.to_dtype(s.dtype())
        };
        safe_blocks(q, k, v, scale, &dims, budget, softmax).unwrap()
    }

    fn host(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Normal-magnitude inputs through several query blocks, causal with lq > lk (the first
    /// rows see no key: zeros, as on the CUDA paths), f16 and bf16, against f64.
    #[test]
    fn safe_path_host_side_matches_f64_reference() {
        let (b, h, lq, lk, d) = (1, 2, 40, 30, 16);
        for (dtype, tol) in [(DType::F16, 2e-3), (DType::BF16, 1e-2)] {
            for causal in [false, true] {
                let mut rng = crate::rng::Rng::new(17 + causal as u64);
                let t = |len: usize, rng: &mut crate::rng::Rng| {
                    Tensor::from_vec(rng.normal_vec(b * h * len * d), (b, h, len, d), &Device::Cpu)
                        .unwrap()
                        .to_dtype(dtype)
                        .unwrap()
                };
                let (q, k, v) = (t(lq, &mut rng), t(lk, &mut rng), t(lk, &mut rng));
                let scale = 1.0 / (d as f64).sqrt();
                // 7 query rows a block: 6 blocks, so block offsets reach the mask.
                let out = safe_on_cpu(&q, &k, &v, scale, causal, 7 * b * h * lk * 2);
                let got = host(&out);
                let want = reference(&host(&q), &host(&k), &host(&v), b * h, lq, lk, d, d, scale, causal);
                // The f64 reference is NaN where a causal row sees nothing; the safe path writes 0.
                let want: Vec<f64> = want.iter().map(|w| if w.is_nan() { 0.0 } else { *w }).collect();
                assert!(got.iter().all(|x| x.is_finite()));
                let rel = rel_l2(&got, &want);
                println!("safe host side {dtype:?} causal={causal}: rel_l2 {rel:.2e} (tol {tol:.0e})");
                assert!(rel <= tol, "rel_l2 {rel}");
            }
        }
    }

    /// f16 inputs whose raw q·kᵀ overflows f16 (|q·k| > 65504) while the scaled scores do
    /// not (the SDXL VAE mid-block shape: one head of dim 512): the safe path must stay finite
    /// and match f64.
    #[test]
    fn safe_path_f16_large_scores_stay_finite() {
        let (lq, lk, d) = (8, 16, 512);
        let mut rng = crate::rng::Rng::new(512);
        let mut t = |len: usize| {
            let x: Vec<f32> = rng.normal_vec(len * d).into_iter().map(|x| x * 48.0).collect();
            Tensor::from_vec(x, (1, 1, len, d), &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap()
        };
        let (q, k, v) = (t(lq), t(lk), t(lk));
        let raw = host(&q.matmul(&k.t().unwrap()).unwrap());
        let overflowed = raw.iter().filter(|x| x.is_infinite()).count();
        println!("raw f16 q·kᵀ: {overflowed} of {} scores overflow", raw.len());
        assert!(overflowed > 0, "the inputs must overflow f16 when unscaled");
        let scale = 1.0 / (d as f64).sqrt();
        let got = host(&safe_on_cpu(&q, &k, &v, scale, false, SCORE_BUDGET_BYTES));
        let non_finite = got.iter().filter(|x| !x.is_finite()).count();
        let want = reference(&host(&q), &host(&k), &host(&v), 1, lq, lk, d, d, scale, false);
        let rel = rel_l2(&got, &want);
        println!("safe path f16, |q·k| up to {:.0}: {non_finite} non-finite, rel_l2 {rel:.2e} (tol 2e-3)", {
            raw.iter().filter(|x| x.is_finite()).fold(0f32, |m, x| m.max(x.abs()))
        });
        assert_eq!(non_finite, 0);
        assert!(rel <= 2e-3, "rel_l2 {rel}");
    }

    /// A row whose every visible score is −inf (here: an f16 score that overflows negative
    /// even after scaling) is zeros on the safe path, as on the fused one, never NaN; the
    /// other rows are unaffected.
    #[test]
    fn safe_path_fully_masked_row_is_zeros() {
        let (lq, lk, d) = (4, 6, 512);
        let mut rng = crate::rng::Rng::new(3);
        // Dimension 0 carries only row 0's score: 60000 · −3000 · 2⁻⁵ per key, −inf in f16.
        let mut q = rng.normal_vec(lq * d);
        q.iter_mut().step_by(d).for_each(|x| *x = 0.0);
        q[..d].fill(0.0);
        q[0] = 60_000.0;
        let mut k = rng.normal_vec(lk * d);
        k.iter_mut().step_by(d).for_each(|x| *x = -3000.0);
        let v = rng.normal_vec(lk * d);
        let t = |x: Vec<f32>, len: usize| {
            Tensor::from_vec(x, (1, 1, len, d), &Device::Cpu).unwrap().to_dtype(DType::F16).unwrap()
        };
        let (q, k, v) = (t(q, lq), t(k, lk), t(v, lk));
        let scale = 1.0 / (d as f64).sqrt();
        let got = host(&safe_on_cpu(&q, &k, &v, scale, false, SCORE_BUDGET_BYTES));
        assert!(got[..d].iter().all(|&x| x == 0.0), "fully masked row: {:?}", &got[..4]);
        let want = reference(&host(&q), &host(&k), &host(&v), 1, lq, lk, d, d, scale, false);
        assert!(got[d..].iter().all(|x| x.is_finite()));
        let rel = rel_l2(&got[d..], &want[d..]);
        println!("rows beside a fully masked one: rel_l2 {rel:.2e} (tol 2e-3)");
        assert!(rel <= 2e-3, "rel_l2 {rel}");
    }

    /// Calls with nothing to compute return the right shape (and zeros without keys) on
    /// every path instead of reaching a zero-size launch or an empty concatenation.
    #[test]
    fn empty_calls_return_empty_outputs() {
        let z = |dims: (usize, usize, usize, usize)| Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap();
        for (q, k, v) in [
            (z((1, 2, 0, 8)), z((1, 2, 5, 8)), z((1, 2, 5, 4))), // lq = 0
            (z((0, 2, 3, 8)), z((0, 2, 5, 8)), z((0, 2, 5, 8))), // b = 0
            (z((1, 0, 3, 8)), z((1, 0, 5, 8)), z((1, 0, 5, 8))), // h = 0
        ] {
            for causal in [false, true] {
                let out = attention(&q, &k, &v, 0.5, causal).unwrap();
                let (b, h, lq, _) = q.dims4().unwrap();
                assert_eq!(out.dims(), &[b, h, lq, v.dim(3).unwrap()]);
                assert_eq!(out.elem_count(), 0);
                // Forcing a CUDA path changes nothing: no launch is reached.
                for path in [Path::Fused, Path::Safe] {
                    let opts = Options { path: Some(path), ..Options::default() };
                    assert_eq!(attention_with(&q, &k, &v, 0.5, causal, &opts).unwrap().0.dims(), out.dims());
                }
            }
        }
        // No keys: every row sees nothing, zeros (as the CUDA paths define it), in q's dtype.
        let q = Tensor::ones((1, 2, 3, 8), DType::F16, &Device::Cpu).unwrap();
        let kv = Tensor::zeros((1, 2, 0, 8), DType::F16, &Device::Cpu).unwrap();
        let out = attention(&q, &kv, &kv, 0.5, false).unwrap();
        assert_eq!((out.dims(), out.dtype()), (&[1, 2, 3, 8][..], DType::F16));
        assert!(host(&out).iter().all(|&x| x == 0.0));
    }

    /// A forced fused path past CUDA's grid.y limit is a clear error, not a failed launch.
    #[test]
    fn forced_fused_past_the_grid_limit_is_refused() {
        let q = Tensor::zeros((65_536, 1, 1, 64), DType::F16, &Device::Cpu).unwrap();
        let opts = Options { path: Some(Path::Fused), ..Options::default() };
        let err = attention_with(&q, &q, &q, 0.125, false, &opts).unwrap_err().to_string();
        assert!(err.contains("grid limit"), "{err}");
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &Device::Cpu).unwrap();
        let k = Tensor::zeros((1, 2, 5, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(attention(&q, &k, &k, 1.0, false).is_err());
    }
}
