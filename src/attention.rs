//! The one scaled-dot-product attention every model calls.
//!
//! Why one entry point: attention dominates the DiT and the SDF decoder, and how
//! it is computed (fused kernel on CUDA, bounded-memory chunks on CPU) is a
//! device concern, not a model concern. Models pass (batch, heads, len, dim)
//! tensors and get the same layout back.
//!
//! CPU path: queries are processed in blocks sized so that one block's score
//! matrix (batch × heads × block × keys) stays under [`SCORE_BUDGET_BYTES`];
//! memory is bounded for the decoder's 50 k-point chunks and the 16-part global
//! blocks alike. Scores and softmax are computed in f32 whatever the input dtype.
//!
//! CUDA path: until a fused kernel lands (issue "Fused attention on CUDA") the
//! same blocked computation runs on the GPU; it is correct but not fast: peer-baseline.md
//! measured matmul → softmax → matmul 18–26× slower than torch's SDPA at these shapes.
//!
//! Plan for the fused kernel (not yet measured; needs a GPU session): the candidates are
//! `candle-flash-attn` (FlashAttention-2; its many CUTLASS instantiations make the build time
//! on 2 cores and the binary size the questions to measure first), its Hopper variant, or a
//! small flash-style kernel of our own (online softmax, f32 accumulation, head dims 64/128,
//! optional causal mask) compiled to PTX by the same nvcc that builds candle's kernels and
//! launched as a candle custom op. Whatever wins must keep this function's signature and
//! pass the f64 checks below on the GPU for f16/bf16 (rel L2 ≤ 2e-3 / 1e-2).

use candle_core::{DType, Device, Result, Tensor};

/// Upper bound on the score matrix of one query block, in bytes.
pub const SCORE_BUDGET_BYTES: usize = 256 << 20;

/// softmax(q kᵀ · scale [+ causal mask]) v.
///
/// `q`: (b, h, lq, d); `k`, `v`: (b, h, lk, d) (v may have another last dim).
/// `causal`: query i sees keys 0..=i + (lk − lq) (aligned at the end, as torch does
/// for lq == lk; CLIP only uses lq == lk).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool) -> Result<Tensor> {
    let (b, h, lq, _d) = q.dims4()?;
    let (_, _, lk, _) = k.dims4()?;
    let out_dtype = q.dtype();
    let q = q.to_dtype(DType::F32)?;
    let k = k.to_dtype(DType::F32)?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let kt = k.transpose(2, 3)?.contiguous()?;

    let row_bytes = b * h * lk.max(1) * 4;
    let block = (SCORE_BUDGET_BYTES / row_bytes).clamp(1, lq.max(1));
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

    #[test]
    fn blocks_queries_when_scores_exceed_budget() {
        // 4 × 8 heads × 1024 keys × 4 B = 128 KiB per query row → blocks of 2048 rows.
        let (b, h, lq, lk, d) = (4, 8, 5000, 1024, 4);
        let dev = Device::Cpu;
        let q = Tensor::zeros((b, h, lq, d), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((b, h, lk, d), DType::F32, &dev).unwrap();
        let v = Tensor::ones((b, h, lk, d), DType::F32, &dev).unwrap();
        let out = attention(&q, &k, &v, 1.0, false).unwrap();
        assert_eq!(out.dims(), &[b, h, lq, d]);
        let m: f32 = out.mean_all().unwrap().to_scalar().unwrap();
        assert!((m - 1.0).abs() < 1e-6);
    }
}
