//! The TripoSG/HunyuanDiT transformer block PartCrafter's DiT stacks: pre-norm
//! self-attention, cross-attention to the image tokens, exact-GELU MLP, an optional long
//! skip, RMS qk-norm; no adaLN (the timestep is a token).
//!
//! Two reference quirks live here and nowhere else:
//! - the head-interleaved Q/K/V split ([`deinterleave_heads`]), undone once at load time;
//! - the long skip concatenates `[skip, x]` and applies the Linear *before* the LayerNorm
//!   (`skip_concat_front = true`, `skip_norm_last = true`, which upstream calls a mistake
//!   but the weights depend on).

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::attention::attention;

/// `nn.Linear` from `vb` (`weight` (out, in), optional `bias`).
pub fn linear(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    let w = vb.get((out_dim, in_dim), "weight")?;
    let b = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
    Ok(Linear::new(w, b))
}

/// LayerNorm computed in f32 whatever the activation dtype (diffusers `FP32LayerNorm`:
/// input, weight and bias upcast, result cast back).
pub struct Fp32LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Fp32LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?.to_dtype(DType::F32)?,
            bias: vb.get(dim, "bias")?.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let y = candle_nn::ops::layer_norm(&x.to_dtype(DType::F32)?.contiguous()?, &self.weight, &self.bias, self.eps)?;
        y.to_dtype(dtype)
    }
}

/// Per-head RMSNorm of q or k over the head dimension (eps 1e-6, variance in f32).
#[derive(Debug, Clone)]
struct HeadRmsNorm {
    weight: Tensor,
    eps: f32,
}

impl HeadRmsNorm {
    fn new(vb: VarBuilder, head_dim: usize) -> Result<Self> {
        Ok(Self { weight: vb.get(head_dim, "weight")?.to_dtype(DType::F32)?, eps: 1e-6 })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, &self.weight, self.eps)?.to_dtype(dtype)
    }
}

/// **Quirk: head-interleaved Q/K/V split.** The checkpoints were trained with one fused
/// projection laid out per head as (heads, parts, head_dim), `parts` being q,k,v (self) or
/// k,v (cross). The reference concatenates the separate `to_q`/`to_k`/`to_v` outputs along
/// features and cuts *each head's* chunk into its parts, so head h's query is not rows
/// h·hd.. of `to_q`. Given the separate weights (each (heads·hd, in)), this returns the
/// weights that produce the true q, k, v with an ordinary per-head split.
pub fn deinterleave_heads(ws: &[Tensor], heads: usize, head_dim: usize) -> Result<Vec<Tensor>> {
    let parts = ws.len();
    let in_dim = ws[0].dim(1)?;
    let cat = Tensor::cat(ws, 0)?.reshape((heads, parts, head_dim, in_dim))?;
    (0..parts).map(|j| cat.narrow(1, j, 1)?.reshape((heads * head_dim, in_dim))?.contiguous()).collect()
}

/// How a block's attention treats the batch rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttnScope {
    /// Each row (one part) attends over its own tokens / its own conditioning.
    Local,
    /// Rows come in groups of `num_parts` consecutive parts of one object (one CFG branch):
    /// self-attention runs over the concatenation of the group's tokens (part-major, time
    /// tokens included), and cross-attention uses the conditioning of the group's first row
    /// only (the reference's `k[::num_parts]`).
    Global { num_parts: usize },
}

/// Multi-head attention with the checkpoint's `to_q/to_k/to_v/to_out.0` (and optional
/// `norm_q/norm_k`), shared by the DiT blocks and the SDF decoder's trunk.
#[derive(Debug, Clone)]
pub struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: Option<HeadRmsNorm>,
    norm_k: Option<HeadRmsNorm>,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `cross_dim`: None for self-attention, the conditioning width for cross-attention.
    pub fn new(vb: VarBuilder, dim: usize, cross_dim: Option<usize>, heads: usize, qk_norm: bool) -> Result<Self> {
        if heads == 0 || dim % heads != 0 {
            candle_core::bail!("width {dim} is not divisible by {heads} heads");
        }
        let hd = dim / heads;
        let kv_in = cross_dim.unwrap_or(dim);
        let get = |name: &str, in_dim: usize| vb.pp(name).get((dim, in_dim), "weight");
        let (wq, wk, wv) = (get("to_q", dim)?, get("to_k", kv_in)?, get("to_v", kv_in)?);
        let (wq, wk, wv) = match cross_dim {
            None => {
                let w = deinterleave_heads(&[wq, wk, wv], heads, hd)?;
                (w[0].clone(), w[1].clone(), w[2].clone())
            }
            Some(_) => {
                let w = deinterleave_heads(&[wk, wv], heads, hd)?;
                (wq, w[0].clone(), w[1].clone())
            }
        };
        let (norm_q, norm_k) = if qk_norm {
            (Some(HeadRmsNorm::new(vb.pp("norm_q"), hd)?), Some(HeadRmsNorm::new(vb.pp("norm_k"), hd)?))
        } else {
            (None, None)
        };
        Ok(Self {
            to_q: Linear::new(wq, None),
            to_k: Linear::new(wk, None),
            to_v: Linear::new(wv, None),
            to_out: linear(vb.pp("to_out").pp("0"), dim, dim, true)?,
            norm_q,
            norm_k,
            heads,
            head_dim: hd,
        })
    }

    /// (B, L, D) → (B, heads, L, hd)
    fn heads_of(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        x.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    /// Keys and values of a cross-attention over `ctx` (B, M, C), each (B', heads, M, hd),
    /// k already RMS-normed. B' = B for local scope, B / num_parts for global scope (the
    /// reference's `k[::num_parts]`: only the first row of each group is used, so only those
    /// rows are projected). They depend on the conditioning only, so the sampler computes
    /// them once for all steps.
    pub fn cross_kv(&self, ctx: &Tensor, scope: AttnScope) -> Result<(Tensor, Tensor)> {
        let src = match scope {
            AttnScope::Local => ctx.clone(),
            AttnScope::Global { num_parts } => {
                let (bc, m, cd) = ctx.dims3()?;
                check_scope(bc, scope)?;
                ctx.reshape((bc / num_parts, num_parts, m, cd))?.narrow(1, 0, 1)?.squeeze(1)?
            }
        };
        let mut k = self.heads_of(&self.to_k.forward(&src)?)?;
        let v = self.heads_of(&self.to_v.forward(&src)?)?;
        if let Some(nk) = &self.norm_k {
            k = nk.forward(&k)?;
        }
        Ok((k, v))
    }

    /// Self-attention over `x` (B, L, D), normed hidden states.
    pub fn forward_self(&self, x: &Tensor, scope: AttnScope) -> Result<Tensor> {
        let mut k = self.heads_of(&self.to_k.forward(x)?)?;
        let v = self.heads_of(&self.to_v.forward(x)?)?;
        if let Some(nk) = &self.norm_k {
            k = nk.forward(&k)?;
        }
        self.attend(x, &k, &v, scope, true)
    }

    /// Cross-attention of `x` (B, L, D) to keys/values from [`cross_kv`](Self::cross_kv).
    pub fn forward_cross(&self, x: &Tensor, kv: &(Tensor, Tensor), scope: AttnScope) -> Result<Tensor> {
        self.attend(x, &kv.0, &kv.1, scope, false)
    }

    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, scope: AttnScope, is_self: bool) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (h, hd) = (self.heads, self.head_dim);
        let mut q = self.heads_of(&self.to_q.forward(x)?)?;
        if let Some(nq) = &self.norm_q {
            q = nq.forward(&q)?;
        }
        let scale = 1.0 / (hd as f64).sqrt();
        let out = match scope {
            AttnScope::Local => attention(&q, k, v, scale, false)?,
            AttnScope::Global { num_parts: n } => {
                check_scope(b, scope)?;
                let g = b / n;
                // (g·n, h, l, hd) → (g, h, n·l, hd), part-major along the sequence.
                let group = |t: &Tensor| -> Result<Tensor> {
                    let lt = t.dim(2)?;
                    t.reshape((g, n, h, lt, hd))?.transpose(1, 2)?.reshape((g, h, n * lt, hd))
                };
                let qg = group(&q)?.contiguous()?;
                let o = if is_self {
                    attention(&qg, &group(k)?.contiguous()?, &group(v)?.contiguous()?, scale, false)?
                } else {
                    attention(&qg, k, v, scale, false)?
                };
                o.reshape((g, h, n, l, hd))?.transpose(1, 2)?.reshape((b, h, l, hd))?
            }
        };
        let out = out.transpose(1, 2)?.reshape((b, l, d))?;
        self.to_out.forward(&out)
    }
}

/// Validates that a global scope fits the batch.
pub fn check_scope(batch: usize, scope: AttnScope) -> Result<()> {
    if let AttnScope::Global { num_parts } = scope {
        if num_parts == 0 || batch % num_parts != 0 {
            candle_core::bail!("batch of {batch} rows is not a whole number of {num_parts}-part groups");
        }
    }
    Ok(())
}

/// One `DiTBlock` (`blocks.{i}`).
pub struct DiTBlock {
    norm1: Fp32LayerNorm,
    attn1: Attention,
    norm2: Fp32LayerNorm,
    attn2: Attention,
    norm3: Fp32LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    skip: Option<(Linear, Fp32LayerNorm)>,
}

/// Block norms: eps 1e-5, affine.
const BLOCK_NORM_EPS: f64 = 1e-5;

impl DiTBlock {
    pub fn new(vb: VarBuilder, dim: usize, heads: usize, cross_dim: usize, skip: bool) -> Result<Self> {
        let inner = dim * 4;
        let skip = if skip {
            Some((
                linear(vb.pp("skip_linear"), 2 * dim, dim, true)?,
                Fp32LayerNorm::new(vb.pp("skip_norm"), dim, BLOCK_NORM_EPS)?,
            ))
        } else {
            None
        };
        Ok(Self {
            norm1: Fp32LayerNorm::new(vb.pp("norm1"), dim, BLOCK_NORM_EPS)?,
            attn1: Attention::new(vb.pp("attn1"), dim, None, heads, true)?,
            norm2: Fp32LayerNorm::new(vb.pp("norm2"), dim, BLOCK_NORM_EPS)?,
            attn2: Attention::new(vb.pp("attn2"), dim, Some(cross_dim), heads, true)?,
            norm3: Fp32LayerNorm::new(vb.pp("norm3"), dim, BLOCK_NORM_EPS)?,
            ff_in: linear(vb.pp("ff").pp("net").pp("0").pp("proj"), dim, inner, true)?,
            ff_out: linear(vb.pp("ff").pp("net").pp("2"), inner, dim, true)?,
            skip,
        })
    }

    pub fn has_skip(&self) -> bool {
        self.skip.is_some()
    }

    /// Cross-attention keys/values of the conditioning (B, M, C) for this block's scope.
    pub fn cross_kv(&self, cond: &Tensor, scope: AttnScope) -> Result<(Tensor, Tensor)> {
        self.attn2.cross_kv(cond, scope)
    }

    /// `x`: (B, L, D); `cond_kv`: from [`cross_kv`](Self::cross_kv) with the same scope;
    /// `skip`: the matching earlier block's output.
    pub fn forward(
        &self,
        x: &Tensor,
        cond_kv: &(Tensor, Tensor),
        skip: Option<&Tensor>,
        scope: AttnScope,
    ) -> Result<Tensor> {
        check_scope(x.dim(0)?, scope)?;
        let mut x = x.clone();
        match (&self.skip, skip) {
            (Some((lin, norm)), Some(s)) => {
                // Quirk: [skip, x] order, Linear then LayerNorm.
                let cat = Tensor::cat(&[s, &x], D::Minus1)?;
                x = norm.forward(&lin.forward(&cat)?)?;
            }
            (None, None) => {}
            (Some(_), None) => candle_core::bail!("block with a long skip called without one"),
            (None, Some(_)) => candle_core::bail!("block without a long skip given one"),
        }
        x = (&x + self.attn1.forward_self(&self.norm1.forward(&x)?, scope)?)?;
        x = (&x + self.attn2.forward_cross(&self.norm2.forward(&x)?, cond_kv, scope)?)?;
        let h = self.ff_out.forward(&self.ff_in.forward(&self.norm3.forward(&x)?)?.gelu_erf()?)?;
        x + h
    }
}
