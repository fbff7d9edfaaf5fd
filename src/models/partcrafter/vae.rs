//! TripoSG-style SDF decoder (PartCrafter's `vae/`): part latents → inside-positive field.
//!
//! Only the decoder path exists here; the checkpoint's `encoder.*` and `quant.*` tensors are
//! never read. The work splits in two, because the two halves scale differently:
//! - [`SdfDecoder::prepare`], once per part: `post_quant` and the self-attention trunk over the
//!   latent tokens, plus the key/value projections of the final cross-attention (upstream
//!   recomputes both for every 50 000-point chunk; the result is the same).
//! - [`SdfDecoder::decode_prepared`], per query point: Fourier embedding, `proj_query`, one
//!   cross-attention block, `norm_out`, `proj_out`, negation. Points are independent, so they
//!   are processed in chunks of [`DECODE_CHUNK`] and memory stays bounded for any grid size.
//!
//! Quirks of the reference reproduced here (see the port guide §2.4, §3 and §4.6):
//! - the head-interleaved Q/K/V split, folded into the weights once at load ([`deinterleave_heads`], shared with the DiT);
//! - the output multiplied by −1 (positive inside);
//! - optionally, the one-shot top-k ("flash") cross-attention of the pipeline's first decode.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use super::block::{self, deinterleave_heads};
use crate::attention::attention;
use crate::synth::TensorSpec;

/// Points per decoder call inside [`SdfDecoder::decode_prepared`]. Bounds the FFN activations
/// (chunk × 4·width floats); results do not depend on it.
pub const DECODE_CHUNK: usize = 8192;

/// Points per forward on a GPU: larger GEMMs (`lumen bench memory` predicts its activations).
pub const DECODE_CHUNK_CUDA: usize = 32_768;

/// Upstream's chunk size: the top-k quirk applies to its first chunk only.
pub const UPSTREAM_CHUNK: usize = 50_000;

/// `vae/config.json` (`TripoSGVAEModel`). Defaults are the class defaults, which the released
/// PartCrafter config repeats (port guide §3.1).
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_width")]
    pub width_decoder: usize,
    #[serde(default = "d_layers")]
    pub num_layers_decoder: usize,
    #[serde(default = "d_embedding")]
    pub embedding_type: String,
    #[serde(default = "d_freq")]
    pub embed_frequency: usize,
    #[serde(default)]
    pub embed_include_pi: bool,
}

fn d_latent() -> usize {
    64
}
fn d_heads() -> usize {
    8
}
fn d_width() -> usize {
    1024
}
fn d_layers() -> usize {
    16
}
fn d_embedding() -> String {
    "frequency".into()
}
fn d_freq() -> usize {
    8
}

impl VaeConfig {
    /// The released TripoSG / PartCrafter decoder (port guide §3.1).
    pub fn released() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }

    pub fn head_dim(&self) -> usize {
        self.width_decoder / self.num_attention_heads
    }

    /// Width of the point embedding: xyz plus sin and cos of each coordinate at each frequency.
    pub fn embed_dim(&self) -> usize {
        3 + 6 * self.embed_frequency
    }

    /// The decoder tensors of a checkpoint with this config (names and shapes as stored),
    /// e.g. to write synthetic weights at the released size for benchmarks.
    pub fn decoder_tensor_specs(&self) -> Vec<TensorSpec> {
        let w = self.width_decoder;
        let mut s = vec![];
        let mut push = |n: String, shape: &[usize]| s.push(TensorSpec::f32(n, shape));
        let ff = |push: &mut dyn FnMut(String, &[usize]), p: &str| {
            push(format!("{p}.norm3.weight"), &[w]);
            push(format!("{p}.norm3.bias"), &[w]);
            push(format!("{p}.ff.net.0.proj.weight"), &[4 * w, w]);
            push(format!("{p}.ff.net.0.proj.bias"), &[4 * w]);
            push(format!("{p}.ff.net.2.weight"), &[w, 4 * w]);
            push(format!("{p}.ff.net.2.bias"), &[w]);
        };
        for i in 0..self.num_layers_decoder {
            let p = format!("decoder.blocks.{i}");
            push(format!("{p}.norm1.weight"), &[w]);
            push(format!("{p}.norm1.bias"), &[w]);
            for n in ["to_q", "to_k", "to_v"] {
                push(format!("{p}.attn1.{n}.weight"), &[w, w]);
            }
            push(format!("{p}.attn1.to_out.0.weight"), &[w, w]);
            push(format!("{p}.attn1.to_out.0.bias"), &[w]);
            ff(&mut push, &p);
        }
        let p = format!("decoder.blocks.{}", self.num_layers_decoder);
        push(format!("{p}.norm2.weight"), &[w]);
        push(format!("{p}.norm2.bias"), &[w]);
        push(format!("{p}.attn2.norm_cross.weight"), &[w]);
        push(format!("{p}.attn2.norm_cross.bias"), &[w]);
        for n in ["to_q", "to_k", "to_v"] {
            push(format!("{p}.attn2.{n}.weight"), &[w, w]);
        }
        push(format!("{p}.attn2.to_out.0.weight"), &[w, w]);
        push(format!("{p}.attn2.to_out.0.bias"), &[w]);
        ff(&mut push, &p);
        push("decoder.proj_query.weight".into(), &[w, self.embed_dim()]);
        push("decoder.proj_query.bias".into(), &[w]);
        push("decoder.norm_out.weight".into(), &[w]);
        push("decoder.norm_out.bias".into(), &[w]);
        push("decoder.proj_out.weight".into(), &[1, w]);
        push("decoder.proj_out.bias".into(), &[1]);
        push("post_quant.weight".into(), &[w, self.latent_channels]);
        push("post_quant.bias".into(), &[w]);
        s
    }
}

fn linear_no_bias_from(w: Tensor) -> Linear {
    Linear::new(w, None)
}

fn layer_norm(dim: usize, vb: VarBuilder) -> candle_core::Result<LayerNorm> {
    // All decoder LayerNorms are affine with eps 1e-5 (torch default).
    candle_nn::layer_norm(dim, 1e-5, vb)
}

/// Linear → exact (erf) GELU → Linear (`ff.net.0.proj`, `ff.net.2`).
#[derive(Debug, Clone)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(dim: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            proj: candle_nn::linear(dim, 4 * dim, vb.pp("net.0.proj"))?,
            out: candle_nn::linear(4 * dim, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // candle's `gelu` is the tanh approximation; the reference uses the exact one.
        self.out.forward(&self.proj.forward(x)?.gelu_erf()?)
    }
}

/// Splits (b, len, heads·hd) into (b, heads, len, hd).
fn heads_first(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, l, c) = x.dims3()?;
    x.reshape((b, l, heads, c / heads))?.transpose(1, 2)?.contiguous()
}

/// Merges (b, heads, len, hd) back into (b, len, heads·hd), head-major.
fn heads_last(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, l, h * d))
}

/// Trunk block: x += attn1(norm1(x)); x += ff(norm3(x)). The self-attention is the DiT's
/// (same head de-interleaving), without qk-norm.
#[derive(Debug, Clone)]
struct SelfBlock {
    norm1: LayerNorm,
    attn1: block::Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl SelfBlock {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let w = cfg.width_decoder;
        Ok(Self {
            norm1: layer_norm(w, vb.pp("norm1"))?,
            attn1: block::Attention::new(vb.pp("attn1"), w, None, cfg.num_attention_heads, false)?,
            norm3: layer_norm(w, vb.pp("norm3"))?,
            ff: FeedForward::new(w, vb.pp("ff"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let x = (x + self.attn1.forward_self(&h, block::AttnScope::Local)?)?;
        &x + self.ff.forward(&self.norm3.forward(&x)?)?
    }
}

/// The query block (`decoder.blocks.{num_layers_decoder}`): cross-attention only.
#[derive(Debug, Clone)]
struct CrossBlock {
    norm2: LayerNorm,
    norm_cross: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm3: LayerNorm,
    ff: FeedForward,
    heads: usize,
}

impl CrossBlock {
    fn new(cfg: &VaeConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let w = cfg.width_decoder;
        let a = vb.pp("attn2");
        let kv =
            ["to_k", "to_v"].iter().map(|n| a.pp(*n).get((w, w), "weight")).collect::<candle_core::Result<Vec<_>>>()?;
        let mut split = deinterleave_heads(&kv, cfg.num_attention_heads, w / cfg.num_attention_heads)?.into_iter();
        Ok(Self {
            norm2: layer_norm(w, vb.pp("norm2"))?,
            norm_cross: layer_norm(w, a.pp("norm_cross"))?,
            // The query side is split into heads normally; only K/V are interleaved.
            q: linear_no_bias_from(a.pp("to_q").get((w, w), "weight")?),
            k: linear_no_bias_from(split.next().unwrap()),
            v: linear_no_bias_from(split.next().unwrap()),
            out: candle_nn::linear(w, w, a.pp("to_out.0"))?,
            norm3: layer_norm(w, vb.pp("norm3"))?,
            ff: FeedForward::new(w, vb.pp("ff"))?,
            heads: cfg.num_attention_heads,
        })
    }
}

/// What one part's latents contribute to every query: computed once by [`SdfDecoder::prepare`].
#[derive(Debug, Clone)]
pub struct PreparedPart {
    /// Trunk output (tokens, width): upstream's `kv_cache`.
    pub kv_cache: Tensor,
    /// Cross-attention keys and values, (1, heads, tokens, hd).
    keys: Tensor,
    values: Tensor,
}

/// Which keys the final cross-attention sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrossAttention {
    /// Exact attention over every latent token (default).
    #[default]
    Full,
    /// Upstream's `FlashTripo2AttnProcessor2_0(topk=True)` on the first [`UPSTREAM_CHUNK`]
    /// points of this call: per head keep the keys with the largest mean unscaled score over
    /// every 100th query of that chunk; later points use full attention, as upstream where
    /// the processor switches itself off after its first call.
    TopKFirstChunk,
}

/// The SDF decoder, loaded from a `vae/` folder (config.json + safetensors).
#[derive(Debug, Clone)]
pub struct SdfDecoder {
    pub config: VaeConfig,
    post_quant: Linear,
    trunk: Vec<SelfBlock>,
    proj_query: Linear,
    cross: CrossBlock,
    norm_out: LayerNorm,
    proj_out: Linear,
    /// Fourier frequencies 2^j (non-persistent buffer upstream, not in the checkpoint).
    freqs: Vec<f32>,
    device: Device,
    dtype: DType,
    /// Points per forward of the query path (default [`DECODE_CHUNK`]; larger suits a GPU).
    pub chunk: usize,
}

impl SdfDecoder {
    /// Loads the decoder from `vae_dir` (the checkpoint's `vae/` folder).
    pub fn load(vae_dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let config: VaeConfig = crate::weights::read_config(vae_dir)?;
        let vb = crate::weights::open_model_dir(vae_dir, dtype, device)?;
        Self::new(config, vb).with_context(|| format!("loading the SDF decoder from {}", vae_dir.display()))
    }

    pub fn new(config: VaeConfig, vb: VarBuilder) -> Result<Self> {
        anyhow::ensure!(
            config.embedding_type == "frequency",
            "unsupported VAE embedding_type {:?} (only \"frequency\")",
            config.embedding_type
        );
        anyhow::ensure!(
            config.width_decoder % config.num_attention_heads == 0,
            "width_decoder {} is not a multiple of num_attention_heads {}",
            config.width_decoder,
            config.num_attention_heads
        );
        let w = config.width_decoder;
        let dec = vb.pp("decoder");
        let trunk = (0..config.num_layers_decoder)
            .map(|i| SelfBlock::new(&config, dec.pp("blocks").pp(i)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let cross = CrossBlock::new(&config, dec.pp("blocks").pp(config.num_layers_decoder))?;
        let freqs = (0..config.embed_frequency)
            .map(|j| {
                let f = 2f32.powi(j as i32);
                // `embed_include_pi` multiplies every frequency by π (false in the release).
                if config.embed_include_pi {
                    f * std::f32::consts::PI
                } else {
                    f
                }
            })
            .collect();
        Ok(Self {
            post_quant: candle_nn::linear(config.latent_channels, w, vb.pp("post_quant"))?,
            trunk,
            proj_query: candle_nn::linear(config.embed_dim(), w, dec.pp("proj_query"))?,
            cross,
            norm_out: layer_norm(w, dec.pp("norm_out"))?,
            proj_out: candle_nn::linear(w, 1, dec.pp("proj_out"))?,
            freqs,
            device: vb.device().clone(),
            dtype: vb.dtype(),
            chunk: if vb.device().is_cuda() { DECODE_CHUNK_CUDA } else { DECODE_CHUNK },
            config,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The per-part work: `latents` (tokens, latent_channels) of one part.
    pub fn prepare(&self, latents: &Tensor) -> Result<PreparedPart> {
        let z = latents.to_device(&self.device)?.to_dtype(self.dtype)?.unsqueeze(0)?;
        // No scaling factor and no sampling: upstream applies post_quant to the latents as is.
        let mut x = self.post_quant.forward(&z)?;
        for block in &self.trunk {
            x = block.forward(&x)?;
        }
        let c = &self.cross;
        let kv = c.norm_cross.forward(&x)?;
        let keys = heads_first(&c.k.forward(&kv)?, c.heads)?;
        let values = heads_first(&c.v.forward(&kv)?, c.heads)?;
        Ok(PreparedPart { kv_cache: x.squeeze(0)?, keys, values })
    }

    /// Field values (P,) at `points` (P, 3) for one part's `latents` (tokens, C).
    pub fn decode(&self, latents: &Tensor, points: &Tensor) -> Result<Tensor> {
        let part = self.prepare(latents)?;
        self.decode_prepared(&part, points, CrossAttention::Full)
    }

    /// Field values (P,) at `points` (P, 3), in chunks of [`Self::chunk`] points.
    ///
    /// The Fourier embedding is computed in f32 from f32 coordinates whatever the model dtype
    /// (upstream rounds coordinates to f16 first in its f16 runs; the goldens are f32).
    pub fn decode_prepared(&self, part: &PreparedPart, points: &Tensor, mode: CrossAttention) -> Result<Tensor> {
        let (n, three) = points.dims2()?;
        anyhow::ensure!(three == 3, "query points must be (P, 3), got {:?}", points.dims());
        let points = points.to_device(&self.device)?.to_dtype(DType::F32)?;
        let mut outs = vec![];
        let mut start = 0;
        let topk_end = match mode {
            CrossAttention::Full => 0,
            CrossAttention::TopKFirstChunk => n.min(UPSTREAM_CHUNK),
        };
        if topk_end > 0 {
            let first = points.narrow(0, 0, topk_end)?;
            let (keys, values) = self.top_k_keys(part, &first)?;
            while start < topk_end {
                let len = self.chunk.max(1).min(topk_end - start);
                outs.push(self.query(&points.narrow(0, start, len)?, &keys, &values)?);
                start += len;
            }
        }
        while start < n {
            let len = self.chunk.max(1).min(n - start);
            outs.push(self.query(&points.narrow(0, start, len)?, &part.keys, &part.values)?);
            start += len;
        }
        if outs.is_empty() {
            return Ok(Tensor::zeros(0, DType::F32, &self.device)?);
        }
        Ok(Tensor::cat(&outs, 0)?.to_dtype(DType::F32)?)
    }

    /// Same as [`Self::decode_prepared`] on host arrays.
    pub fn decode_points(&self, part: &PreparedPart, points: &[[f32; 3]], mode: CrossAttention) -> Result<Vec<f32>> {
        if points.is_empty() {
            return Ok(vec![]);
        }
        let flat: Vec<f32> = points.iter().flatten().copied().collect();
        let t = Tensor::from_vec(flat, (points.len(), 3), &self.device)?;
        Ok(self.decode_prepared(part, &t, mode)?.to_vec1()?)
    }

    /// [x, sin(x_i·f_j) (i-major), cos(x_i·f_j) (i-major)], computed in f32.
    fn embed(&self, points: &Tensor) -> candle_core::Result<Tensor> {
        let n = points.dim(0)?;
        let f = self.freqs.len();
        let freqs = Tensor::from_slice(&self.freqs, (1, 1, f), points.device())?;
        let scaled = points.unsqueeze(2)?.broadcast_mul(&freqs)?.reshape((n, 3 * f))?;
        Tensor::cat(&[points.clone(), scaled.sin()?, scaled.cos()?], 1)
    }

    /// One chunk of the query path against given keys/values.
    fn query(&self, points: &Tensor, keys: &Tensor, values: &Tensor) -> Result<Tensor> {
        let c = &self.cross;
        let e = self.embed(points)?.to_dtype(self.dtype)?.unsqueeze(0)?;
        let q0 = self.proj_query.forward(&e)?;
        let q = heads_first(&c.q.forward(&c.norm2.forward(&q0)?)?, c.heads)?;
        let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
        let a = heads_last(&attention(&q, keys, values, scale, false)?)?;
        let x = (q0 + c.out.forward(&a)?)?;
        let x = (&x + c.ff.forward(&c.norm3.forward(&x)?)?)?;
        let y = self.proj_out.forward(&self.norm_out.forward(&x)?)?;
        // Quirk: the decoder predicts outside-positive values; the pipeline negates them.
        Ok(y.neg()?.squeeze(0)?.squeeze(1)?)
    }

    /// Upstream's top-k key selection (port guide §4.6): every 100th query of the chunk,
    /// unscaled dot products with all keys, mean over those queries, the k best keys per head
    /// (k = 1024 for 3072 keys, 256 for 512, else ⌊keys/3⌋).
    fn top_k_keys(&self, part: &PreparedPart, points: &Tensor) -> Result<(Tensor, Tensor)> {
        let c = &self.cross;
        let n = points.dim(0)?;
        let idx: Vec<u32> = (0..n).step_by(100).map(|i| i as u32).collect();
        let idx = Tensor::from_vec(idx, n.div_ceil(100), &self.device)?;
        let sub = points.index_select(&idx, 0)?;
        let e = self.embed(&sub)?.to_dtype(self.dtype)?.unsqueeze(0)?;
        let q = heads_first(&c.q.forward(&c.norm2.forward(&self.proj_query.forward(&e)?)?)?, c.heads)?;
        let q = q.to_dtype(DType::F32)?;
        let k32 = part.keys.to_dtype(DType::F32)?;
        // (1, H, S, T) → mean over S → (H, T)
        let scores = q.matmul(&k32.transpose(2, 3)?.contiguous()?)?.mean(2)?.squeeze(0)?;
        let t = part.keys.dim(2)?;
        let k = match t {
            3072 => 1024,
            512 => 256,
            _ => t / 3,
        }
        .max(1);
        let rows: Vec<Vec<f32>> = scores.to_vec2()?;
        let mut ks = vec![];
        let mut vs = vec![];
        for (h, row) in rows.iter().enumerate() {
            let mut order: Vec<u32> = (0..t as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            order.truncate(k);
            let sel = Tensor::from_vec(order, k, &self.device)?;
            ks.push(part.keys.i((0, h))?.index_select(&sel, 0)?);
            vs.push(part.values.i((0, h))?.index_select(&sel, 0)?);
        }
        Ok((Tensor::stack(&ks, 0)?.unsqueeze(0)?, Tensor::stack(&vs, 0)?.unsqueeze(0)?))
    }
}
