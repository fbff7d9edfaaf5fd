//! PartCrafter's part-aware DiT (`transformer/`, `PartCrafterDiTModel`).
//!
//! Sequence per part: [time token, proj_in(latents)] plus a learned part embedding on every
//! token; `num_layers` [`DiTBlock`]s with U-Net long skips (the first half push, the second
//! half pop); blocks listed in `global_attn_block_ids` attend across all parts of an object,
//! the others within a part; then `norm_out`, drop the time token, `proj_out`.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use super::block::{linear, AttnScope, DiTBlock};

fn d_true() -> bool {
    true
}
fn d_heads() -> usize {
    16
}
fn d_width() -> usize {
    2048
}
fn d_in() -> usize {
    64
}
fn d_layers() -> usize {
    21
}
fn d_cross() -> usize {
    1024
}
fn d_parts() -> usize {
    32
}

/// `transformer/config.json`; defaults are the constructor defaults of the reference class.
#[derive(Debug, Clone, Deserialize)]
pub struct DitConfig {
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_width")]
    pub width: usize,
    #[serde(default = "d_in")]
    pub in_channels: usize,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: usize,
    #[serde(default = "d_parts")]
    pub max_num_parts: usize,
    #[serde(default = "d_true")]
    pub enable_part_embedding: bool,
    #[serde(default = "d_true")]
    pub enable_local_cross_attn: bool,
    #[serde(default = "d_true")]
    pub enable_global_cross_attn: bool,
    #[serde(default)]
    pub global_attn_block_ids: Option<Vec<usize>>,
    #[serde(default)]
    pub global_attn_block_id_range: Option<Vec<usize>>,
}

impl DitConfig {
    /// The released `transformer/config.json` values (design guide §2.1): the serde defaults
    /// with global attention in blocks 0, 2, …, 20.
    pub fn released() -> Self {
        let mut cfg: DitConfig = serde_json::from_str("{}").expect("defaults");
        cfg.global_attn_block_ids = Some((0..cfg.num_layers).step_by(2).collect());
        cfg
    }

    /// Global blocks: the explicit list, else the inclusive range `[first, last]`.
    ///
    /// The reference falls back to *no* global block when both keys are missing or null; the
    /// released model has eleven, so a config without either would silently run a different
    /// network (parts that never see each other). That is an error here, as is a malformed
    /// range. An explicit empty list is taken at its word.
    pub fn global_blocks(&self) -> Result<Vec<usize>> {
        match (&self.global_attn_block_ids, &self.global_attn_block_id_range) {
            (Some(ids), _) => Ok(ids.clone()),
            (None, Some(r)) if r.len() == 2 && r[0] <= r[1] => Ok((r[0]..=r[1]).collect()),
            // Plain messages (no backtrace in the text): a config error is the user's to fix.
            (None, Some(r)) => Err(candle_core::Error::Msg(format!(
                "global_attn_block_id_range must be [first, last] with first <= last, got {r:?}"
            ))),
            (None, None) => Err(candle_core::Error::Msg(
                "the DiT config sets neither global_attn_block_ids nor global_attn_block_id_range: it must \
                 name the blocks that attend across parts (the released transformer/config.json lists \
                 [0, 2, ..., 20]); without them every block would attend within one part only"
                    .into(),
            )),
        }
    }

    /// FLOPs (2 per multiply-add) of one forward as the reference computes it, over `rows`
    /// part-rows of `tokens` latent tokens, `num_parts` parts per global group, `cond_len`
    /// conditioning tokens. Linear layers and attention matmuls only (norms, softmax, GELU
    /// are < 1 %). Includes [`cond_flops`](Self::cond_flops).
    pub fn flops(&self, rows: usize, num_parts: usize, tokens: usize, cond_len: usize) -> f64 {
        let d = self.width as f64;
        let l = (tokens + 1) as f64;
        let m = cond_len as f64;
        // A config without global blocks cannot build a DiT (see `global_blocks`); count none.
        let global = self.global_blocks().unwrap_or_default();
        let mut per_row = 0.0;
        for i in 0..self.num_layers {
            per_row += 8.0 * l * d * d; // self q, k, v, out
            per_row += 4.0 * l * d * d; // cross q, out
            per_row += 16.0 * l * d * d; // MLP
            per_row += 4.0 * l * m * d; // cross scores + values
            let keys = if global.contains(&i) { num_parts as f64 * l } else { l };
            per_row += 4.0 * l * keys * d; // self scores + values
            if i > self.num_layers / 2 {
                per_row += 4.0 * l * d * d; // skip linear
            }
        }
        let cin = self.in_channels as f64;
        per_row += 4.0 * tokens as f64 * cin * d + 16.0 * d * d; // proj_in + proj_out, time MLP
        per_row * rows as f64 + self.cond_flops(rows, num_parts, cond_len, true)
    }

    /// FLOPs of the cross-attention keys/values of the conditioning: every row in every block
    /// as the reference does (`reference = true`), or what [`PartCrafterDit::prepare_cond`]
    /// computes once per sampling run (first row of each group only in global blocks).
    pub fn cond_flops(&self, rows: usize, num_parts: usize, cond_len: usize, reference: bool) -> f64 {
        let per_row = 4.0 * cond_len as f64 * self.cross_attention_dim as f64 * self.width as f64;
        let global = self.global_blocks().unwrap_or_default();
        (0..self.num_layers)
            .map(|i| {
                let r = if global.contains(&i) && !reference { rows / num_parts.max(1) } else { rows };
                per_row * r as f64
            })
            .sum()
    }
}

/// Which part-embedding row each batch row gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PartIds {
    /// **Quirk (reference behaviour, the default):** with an integer `num_parts` the reference
    /// indexes the embedding with `arange(batch)` over the *whole* batch, so under CFG the
    /// unconditional parts get ids 0…N−1 and the conditional parts N…2N−1.
    #[default]
    Batch,
    /// Ids 0…N−1 in every group of N rows (what training used).
    PerGroup,
}

/// What `forward_traced` records (the golden intermediates).
#[derive(Debug, Default)]
pub struct DitTrace {
    /// `time_proj` output (B, D).
    pub temb: Option<Tensor>,
    /// Each block's output (B, T+1, D), time token first.
    pub blocks: Vec<Tensor>,
    /// `norm_out` output before the time token is dropped.
    pub norm_out: Option<Tensor>,
}

pub struct PartCrafterDit {
    time_1: Linear,
    time_2: Linear,
    part_embedding: Option<Tensor>,
    proj_in: Linear,
    blocks: Vec<DiTBlock>,
    norm_out: candle_nn::LayerNorm,
    proj_out: Linear,
    global: Vec<bool>,
    cfg: DitConfig,
}

impl PartCrafterDit {
    pub fn new(vb: VarBuilder, cfg: &DitConfig) -> Result<Self> {
        let d = cfg.width;
        if d % 2 != 0 {
            candle_core::bail!("DiT width {d} must be even (sinusoidal time embedding)");
        }
        let global_ids = cfg.global_blocks()?;
        if let Some(&bad) = global_ids.iter().find(|&&i| i >= cfg.num_layers) {
            candle_core::bail!("global_attn_block_ids names block {bad} but the DiT has {}", cfg.num_layers);
        }
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                DiTBlock::new(
                    vb.pp("blocks").pp(i),
                    d,
                    cfg.num_attention_heads,
                    cfg.cross_attention_dim,
                    i > cfg.num_layers / 2,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let part_embedding = if cfg.enable_part_embedding {
            Some(vb.pp("part_embedding").get((cfg.max_num_parts, d), "weight")?)
        } else {
            None
        };
        // `norm_out` is a plain LayerNorm (eps 1e-5, affine), not the FP32 variant.
        let norm_out = candle_nn::layer_norm(d, 1e-5, vb.pp("norm_out"))?;
        Ok(Self {
            time_1: linear(vb.pp("time_proj").pp("linear_1"), d, 4 * d, true)?,
            time_2: linear(vb.pp("time_proj").pp("linear_2"), 4 * d, d, true)?,
            part_embedding,
            proj_in: linear(vb.pp("proj_in"), cfg.in_channels, d, true)?,
            blocks,
            norm_out,
            proj_out: linear(vb.pp("proj_out"), d, cfg.in_channels, true)?,
            global: (0..cfg.num_layers).map(|i| global_ids.contains(&i)).collect(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &DitConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.proj_in.weight().dtype()
    }

    pub fn device(&self) -> &Device {
        self.proj_in.weight().device()
    }

    fn scope(&self, block: usize, num_parts: usize) -> AttnScope {
        if self.global[block] {
            AttnScope::Global { num_parts }
        } else {
            AttnScope::Local
        }
    }

    /// Per-block cross-attention keys/values of the conditioning `cond` (B, M,
    /// cross_attention_dim). They do not depend on the latents or the timestep, so a sampling
    /// loop computes them once (the reference recomputes them every step: same numbers).
    pub fn prepare_cond(&self, cond: &Tensor, num_parts: usize) -> Result<CondCache> {
        let (b, m, cd) = cond.dims3()?;
        if cd != self.cfg.cross_attention_dim {
            candle_core::bail!("conditioning width {cd} but the DiT expects {}", self.cfg.cross_attention_dim);
        }
        if num_parts == 0 || b % num_parts != 0 {
            candle_core::bail!("batch of {b} rows is not a whole number of {num_parts}-part groups");
        }
        let cond = cond.to_dtype(self.dtype())?;
        // Blocks whose kind has cross-attention disabled see zero conditioning; the reference
        // honours the two switches only when some block is global.
        let zeros = cond.zeros_like()?;
        let any_global = self.global.iter().any(|&g| g);
        let kv = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let off = any_global
                    && if self.global[i] {
                        !self.cfg.enable_global_cross_attn
                    } else {
                        !self.cfg.enable_local_cross_attn
                    };
                block.cross_kv(if off { &zeros } else { &cond }, self.scope(i, num_parts))
            })
            .collect::<Result<Vec<_>>>()?;
        let device = cond.device();
        let batch_rows = Tensor::from_vec((0..b as u32).collect::<Vec<_>>(), b, device)?;
        let group_rows = Tensor::from_vec((0..b as u32).map(|r| r % num_parts as u32).collect::<Vec<_>>(), b, device)?;
        Ok(CondCache { kv, rows: b, cond_len: m, num_parts, part_rows: (batch_rows, group_rows) })
    }

    /// `x`: (B, T, in_channels) latents; `t`: (B,) timesteps (1000·σ); `cond`: (B, M,
    /// cross_attention_dim); B a multiple of `num_parts` (B = 2N under CFG). → (B, T, in).
    pub fn forward(&self, x: &Tensor, t: &Tensor, cond: &Tensor, num_parts: usize, ids: PartIds) -> Result<Tensor> {
        self.forward_traced(x, t, cond, num_parts, ids, None)
    }

    pub fn forward_traced(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &Tensor,
        num_parts: usize,
        ids: PartIds,
        trace: Option<&mut DitTrace>,
    ) -> Result<Tensor> {
        let cache = self.prepare_cond(cond, num_parts)?;
        self.forward_cached(x, t, &cache, ids, trace)
    }

    /// As [`forward`](Self::forward) with the conditioning prepared by
    /// [`prepare_cond`](Self::prepare_cond).
    pub fn forward_cached(
        &self,
        x: &Tensor,
        t: &Tensor,
        cond: &CondCache,
        ids: PartIds,
        mut trace: Option<&mut DitTrace>,
    ) -> Result<Tensor> {
        let (b, tokens, cin) = x.dims3()?;
        let num_parts = cond.num_parts;
        if cin != self.cfg.in_channels {
            candle_core::bail!("latents have {cin} channels, the DiT expects {}", self.cfg.in_channels);
        }
        if t.dims1()? != b || cond.rows != b {
            candle_core::bail!("batch mismatch: latents {b}, timesteps {}, conditioning {}", t.dim(0)?, cond.rows);
        }
        // The reference tells self from cross attention by sequence lengths.
        if cond.cond_len == tokens + 1 {
            candle_core::bail!("conditioning length equals the token count + 1, which the reference cannot tell apart");
        }
        let dtype = self.dtype();
        let x = x.to_dtype(dtype)?;

        let temb = timestep_embedding(t, self.cfg.width)?.to_dtype(dtype)?;
        let temb = self.time_2.forward(&self.time_1.forward(&temb)?.gelu_erf()?)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.temb = Some(temb.clone());
        }
        let mut h = Tensor::cat(&[&temb.unsqueeze(1)?, &self.proj_in.forward(&x)?], 1)?;
        if let Some(table) = &self.part_embedding {
            let (max, idx) = match ids {
                PartIds::Batch => (b.saturating_sub(1), &cond.part_rows.0),
                PartIds::PerGroup => (num_parts.saturating_sub(1), &cond.part_rows.1),
            };
            if max >= self.cfg.max_num_parts {
                candle_core::bail!(
                    "part id {max} needs more than the {} part embeddings ({b} rows, {num_parts} parts per group, {ids:?} ids)",
                    self.cfg.max_num_parts
                );
            }
            h = h.broadcast_add(&table.index_select(idx, 0)?.unsqueeze(1)?)?;
        }

        let mut skips: Vec<Tensor> = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            let skip = if block.has_skip() {
                Some(skips.pop().ok_or_else(|| candle_core::Error::Msg("long-skip stack underflow".into()))?)
            } else {
                None
            };
            h = block.forward(&h, &cond.kv[i], skip.as_ref(), self.scope(i, num_parts))?;
            if i < self.cfg.num_layers / 2 {
                skips.push(h.clone());
            }
            if let Some(tr) = trace.as_deref_mut() {
                tr.blocks.push(h.clone());
            }
        }
        let h = self.norm_out.forward(&h)?;
        if let Some(tr) = trace {
            tr.norm_out = Some(h.clone());
        }
        self.proj_out.forward(&h.narrow(1, 1, tokens)?)
    }
}

/// Cross-attention keys/values of one conditioning batch for every block
/// ([`PartCrafterDit::prepare_cond`]).
pub struct CondCache {
    kv: Vec<(Tensor, Tensor)>,
    rows: usize,
    cond_len: usize,
    num_parts: usize,
    /// Part-embedding row of each batch row under [`PartIds::Batch`] and
    /// [`PartIds::PerGroup`], made once on the device (not once per sampler step).
    part_rows: (Tensor, Tensor),
}

/// Sinusoidal timestep embedding as diffusers' `Timesteps(dim, flip_sin_to_cos=False,
/// downscale_freq_shift=0)`: frequencies exp(−ln(10000)·k/half), k < half, **sin block
/// first**, then cos; t used as given (already 1000·σ). f32 throughout, like the reference.
/// Computed on `t`'s device: the sampler calls this every step, and reading `t` back to the
/// host would stall the GPU once per step.
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let neg_ln = -(10000f64.ln() as f32);
    // The frequencies are constants (no data dependency), built on the host.
    let freqs: Vec<f32> =
        (0..half).map(|k| ((neg_ln * k as f32) / half as f32) as f64).map(|e| e.exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    Tensor::cat(&[&args.sin()?, &args.cos()?], 1)
}

/// Every tensor of a `transformer/` checkpoint for `cfg`, in the reference `state_dict` order
/// (synthetic checkpoints for benches and shape tests).
pub fn tensor_specs(cfg: &DitConfig) -> Vec<crate::synth::TensorSpec> {
    use crate::synth::TensorSpec;
    let (d, c, hd) = (cfg.width, cfg.cross_attention_dim, cfg.width / cfg.num_attention_heads.max(1));
    let mut s = vec![
        TensorSpec::f32("time_proj.linear_1.weight", &[4 * d, d]),
        TensorSpec::f32("time_proj.linear_1.bias", &[4 * d]),
        TensorSpec::f32("time_proj.linear_2.weight", &[d, 4 * d]),
        TensorSpec::f32("time_proj.linear_2.bias", &[d]),
    ];
    if cfg.enable_part_embedding {
        s.push(TensorSpec::f32("part_embedding.weight", &[cfg.max_num_parts, d]));
    }
    s.push(TensorSpec::f32("proj_in.weight", &[d, cfg.in_channels]));
    s.push(TensorSpec::f32("proj_in.bias", &[d]));
    for i in 0..cfg.num_layers {
        let p = |n: &str| format!("blocks.{i}.{n}");
        s.push(TensorSpec::f32(p("norm1.weight"), &[d]));
        s.push(TensorSpec::f32(p("norm1.bias"), &[d]));
        for (a, kv) in [("attn1", d), ("attn2", c)] {
            s.push(TensorSpec::f32(p(&format!("{a}.norm_q.weight")), &[hd]));
            s.push(TensorSpec::f32(p(&format!("{a}.norm_k.weight")), &[hd]));
            s.push(TensorSpec::f32(p(&format!("{a}.to_q.weight")), &[d, d]));
            s.push(TensorSpec::f32(p(&format!("{a}.to_k.weight")), &[d, kv]));
            s.push(TensorSpec::f32(p(&format!("{a}.to_v.weight")), &[d, kv]));
            s.push(TensorSpec::f32(p(&format!("{a}.to_out.0.weight")), &[d, d]));
            s.push(TensorSpec::f32(p(&format!("{a}.to_out.0.bias")), &[d]));
            if a == "attn1" {
                s.push(TensorSpec::f32(p("norm2.weight"), &[d]));
                s.push(TensorSpec::f32(p("norm2.bias"), &[d]));
            }
        }
        s.push(TensorSpec::f32(p("norm3.weight"), &[d]));
        s.push(TensorSpec::f32(p("norm3.bias"), &[d]));
        s.push(TensorSpec::f32(p("ff.net.0.proj.weight"), &[4 * d, d]));
        s.push(TensorSpec::f32(p("ff.net.0.proj.bias"), &[4 * d]));
        s.push(TensorSpec::f32(p("ff.net.2.weight"), &[d, 4 * d]));
        s.push(TensorSpec::f32(p("ff.net.2.bias"), &[d]));
        if i > cfg.num_layers / 2 {
            s.push(TensorSpec::f32(p("skip_norm.weight"), &[d]));
            s.push(TensorSpec::f32(p("skip_norm.bias"), &[d]));
            s.push(TensorSpec::f32(p("skip_linear.weight"), &[d, 2 * d]));
            s.push(TensorSpec::f32(p("skip_linear.bias"), &[d]));
        }
    }
    s.push(TensorSpec::f32("norm_out.weight", &[d]));
    s.push(TensorSpec::f32("norm_out.bias", &[d]));
    s.push(TensorSpec::f32("proj_out.weight", &[cfg.in_channels, d]));
    s.push(TensorSpec::f32("proj_out.bias", &[cfg.in_channels]));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> DitConfig {
        serde_json::from_str(&format!("{{\"num_layers\": 5{extra}}}")).unwrap()
    }

    #[test]
    fn global_blocks_come_from_the_list_or_the_range() {
        assert_eq!(config(r#", "global_attn_block_ids": [0, 2, 4]"#).global_blocks().unwrap(), [0, 2, 4]);
        let both = r#", "global_attn_block_ids": [1], "global_attn_block_id_range": [0, 4]"#;
        assert_eq!(config(both).global_blocks().unwrap(), [1], "the list wins, as in the reference");
        let range = r#", "global_attn_block_ids": null, "global_attn_block_id_range": [1, 3]"#;
        assert_eq!(config(range).global_blocks().unwrap(), [1, 2, 3], "the range is inclusive");
        assert_eq!(config(r#", "global_attn_block_ids": []"#).global_blocks().unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn a_config_without_global_blocks_is_an_error() {
        for extra in ["", r#", "global_attn_block_ids": null, "global_attn_block_id_range": null"#] {
            let err = config(extra).global_blocks().unwrap_err().to_string();
            assert!(err.contains("global_attn_block_ids") && err.contains("global_attn_block_id_range"), "{err}");
            // The constructor refuses it before reading any weight.
            let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
            let err = PartCrafterDit::new(vb, &config(extra)).err().expect("no DiT without global blocks");
            assert!(err.to_string().contains("neither global_attn_block_ids"), "{err}");
        }
        for bad in ["[3]", "[3, 1]", "[0, 1, 2]"] {
            let err = config(&format!(r#", "global_attn_block_id_range": {bad}"#)).global_blocks().unwrap_err();
            assert!(err.to_string().contains("[first, last]"), "{bad}: {err}");
        }
    }
}
