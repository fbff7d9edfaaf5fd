//! SDXL's UNet (diffusers' `UNet2DConditionModel` with `addition_embed_type: "text_time"`).
//!
//! candle's `UNet2DConditionModel` has no added text-time conditioning (the pooled text
//! embedding and the size/crop ids would be ignored: 9 % off on the golden model), and its
//! transformer blocks use the tanh GELU in the GEGLU where diffusers uses the exact one.
//! So the top level and the transformer blocks are written here; candle's timestep
//! projection and timestep MLP compute exactly what diffusers computes and are reused, the
//! resnet block is [`super::resnet`]'s (every convolution on [`crate::conv`]). Attention
//! goes through [`crate::attention::attention`].

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{group_norm, layer_norm, linear, linear_no_bias, GroupNorm, LayerNorm, Linear, VarBuilder};
use candle_transformers::models::stable_diffusion::embeddings::{TimestepEmbedding, Timesteps};
use serde::Deserialize;

use super::resnet::{norm_silu, ResnetBlock2D, ResnetBlock2DConfig};
use crate::attention::attention;
use crate::conv::{conv2d, Conv2d, Conv2dConfig};

/// A list-or-scalar config value (diffusers accepts both for per-block settings).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Many(Vec<usize>),
}

impl PerBlock {
    fn get(&self, n: usize) -> Result<Vec<usize>> {
        match self {
            PerBlock::One(v) => Ok(vec![*v; n]),
            PerBlock::Many(v) if v.len() == n => Ok(v.clone()),
            PerBlock::Many(v) => candle_core::bail!("unet config: {} per-block values for {n} blocks", v.len()),
        }
    }
}

fn d_four() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_two() -> usize {
    2
}
fn d_one() -> usize {
    1
}
fn d_groups() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-5
}
fn d_scale() -> f64 {
    1.0
}
fn d_channels() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn d_heads() -> PerBlock {
    PerBlock::One(8)
}
fn d_layers() -> PerBlock {
    PerBlock::One(1)
}
fn d_cross() -> usize {
    1280
}

/// `unet/config.json` (diffusers keys, diffusers' defaults). Only what SDXL uses is supported;
/// anything else is rejected by [`UNet::new`] rather than silently ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    /// Latent side the model was trained at (64 for SDXL Turbo → 512² images).
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "d_four")]
    pub in_channels: usize,
    #[serde(default = "d_four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_two")]
    pub layers_per_block: usize,
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    #[serde(default = "d_scale")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_cross")]
    pub cross_attention_dim: usize,
    #[serde(default = "d_layers")]
    pub transformer_layers_per_block: PerBlock,
    /// Despite the name, the number of heads (a diffusers legacy that SDXL relies on).
    #[serde(default = "d_heads")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// The released config writes `null` here (diffusers reads it as false).
    #[serde(default, deserialize_with = "null_as_false")]
    pub upcast_attention: bool,
}

fn null_as_false<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// softmax(QKᵀ/√d)V attention of a transformer block (diffusers' `Attention`).
struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, query_dim: usize, context_dim: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: linear(inner, query_dim, vb.pp("to_out").pp(0))?,
            heads,
            head_dim,
        })
    }

    fn forward(&self, xs: &Tensor, context: Option<&Tensor>) -> Result<Tensor> {
        let context = context.unwrap_or(xs);
        let (b, lq, _) = xs.dims3()?;
        let lk = context.dim(1)?;
        let split = |t: Tensor, l: usize| t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2);
        let q = split(self.to_q.forward(xs)?, lq)?;
        let k = split(self.to_k.forward(context)?, lk)?;
        let v = split(self.to_v.forward(context)?, lk)?;
        let o = attention(&q, &k, &v, 1.0 / (self.head_dim as f64).sqrt(), false)?;
        self.to_out.forward(&o.transpose(1, 2)?.reshape((b, lq, self.heads * self.head_dim))?)
    }
}

/// diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward.
struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_proj: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(vb: VarBuilder, dim: usize, heads: usize, head_dim: usize, context_dim: usize) -> Result<Self> {
        let ff_inner = 4 * dim;
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff_proj: linear(dim, 2 * ff_inner, vb.pp("ff").pp("net").pp(0).pp("proj"))?,
            ff_out: linear(ff_inner, dim, vb.pp("ff").pp("net").pp(2))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let xs = (self.attn1.forward(&self.norm1.forward(xs)?, None)? + xs)?;
        let xs = (self.attn2.forward(&self.norm2.forward(&xs)?, Some(context))? + xs)?;
        // GEGLU: value half times GELU of the gate half; diffusers' GELU here is the exact one.
        let h = self.ff_proj.forward(&self.norm3.forward(&xs)?)?;
        let half = h.dim(D::Minus1)? / 2;
        let h = (h.narrow(D::Minus1, 0, half)? * h.narrow(D::Minus1, half, half)?.gelu_erf()?)?;
        self.ff_out.forward(&h)? + xs
    }
}

/// diffusers' `Transformer2DModel` with linear projections (SDXL's `use_linear_projection`).
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Linear,
    blocks: Vec<TransformerBlock>,
    proj_out: Linear,
}

impl SpatialTransformer {
    fn new(vb: VarBuilder, channels: usize, layers: usize, heads: usize, cfg: &UNetConfig) -> Result<Self> {
        if channels % heads != 0 {
            candle_core::bail!("unet config: {channels} channels not divisible by {heads} heads");
        }
        let head_dim = channels / heads;
        let inner = heads * head_dim;
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i),
                    inner,
                    heads,
                    head_dim,
                    cfg.cross_attention_dim,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            // diffusers builds this GroupNorm with eps 1e-6 whatever norm_eps says.
            norm: group_norm(cfg.norm_num_groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: linear(channels, inner, vb.pp("proj_in"))?,
            blocks,
            proj_out: linear(inner, channels, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let t = self.norm.forward(xs)?.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?;
        let mut t = self.proj_in.forward(&t)?;
        for blk in &self.blocks {
            t = blk.forward(&t, context)?;
        }
        let t = self.proj_out.forward(&t)?;
        let t = t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?;
        t + xs
    }
}

/// One down or up block: resnets, each optionally followed by a spatial transformer,
/// then an optional down/up-sampling conv.
struct Block {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<SpatialTransformer>,
    sampler: Option<Conv2d>,
}

/// SDXL UNet with the added text-time conditioning.
pub struct UNet {
    conv_in: Conv2d,
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add_time_proj: Option<Timesteps>,
    add_embedding: Option<TimestepEmbedding>,
    down: Vec<Block>,
    mid_resnets: Vec<ResnetBlock2D>,
    mid_attentions: Vec<SpatialTransformer>,
    up: Vec<Block>,
    conv_norm_out: crate::conv::GroupNorm,
    conv_out: Conv2d,
    pub config: UNetConfig,
}

/// The added conditioning of SDXL: pooled text embedding and the 6 size/crop ids.
pub struct AddedCond<'a> {
    /// (B, pooled dim)
    pub text_embeds: &'a Tensor,
    /// (B, 6): original h, w, crop top, left, target h, w.
    pub time_ids: &'a Tensor,
}

/// What every block constructor needs from the config, checked and read once: per level
/// (`down_blocks.{i}`) the channels, attention heads and transformer depth.
struct Levels<'a> {
    cfg: &'a UNetConfig,
    channels: &'a [usize],
    heads: Vec<usize>,
    transformer_layers: Vec<usize>,
    /// Time-embedding width (4 × the first level's channels).
    temb: usize,
}

impl<'a> Levels<'a> {
    fn of(cfg: &'a UNetConfig) -> Result<Self> {
        let n = cfg.block_out_channels.len();
        if cfg.down_block_types.len() != n || cfg.up_block_types.len() != n {
            candle_core::bail!("unet config: block type lists do not match block_out_channels");
        }
        if !cfg.use_linear_projection {
            candle_core::bail!("unet config: only use_linear_projection = true (SDXL) is supported");
        }
        // In diffusers, `attention_head_dim` means the number of heads unless num_attention_heads is set.
        let heads = cfg.num_attention_heads.as_ref().unwrap_or(&cfg.attention_head_dim).get(n)?;
        let transformer_layers = cfg.transformer_layers_per_block.get(n)?;
        let channels = &cfg.block_out_channels;
        Ok(Self { cfg, channels, heads, transformer_layers, temb: 4 * channels[0] })
    }

    fn count(&self) -> usize {
        self.channels.len()
    }

    fn resnet(&self, vb: VarBuilder, in_ch: usize, out_ch: usize, scale: f64) -> Result<ResnetBlock2D> {
        let c = ResnetBlock2DConfig {
            out_channels: Some(out_ch),
            temb_channels: Some(self.temb),
            groups: self.cfg.norm_num_groups,
            groups_out: None,
            eps: self.cfg.norm_eps,
            use_in_shortcut: None,
            output_scale_factor: scale,
        };
        ResnetBlock2D::new(vb, in_ch, c)
    }

    /// The transformer of level `level` (its heads and depth) at `ch` channels.
    fn transformer(&self, vb: VarBuilder, ch: usize, level: usize) -> Result<SpatialTransformer> {
        SpatialTransformer::new(vb, ch, self.transformer_layers[level], self.heads[level], self.cfg)
    }
}

/// Whether a diffusers block type has cross-attention transformers.
fn has_cross_attention(kind: &str) -> Result<bool> {
    match kind {
        "DownBlock2D" | "UpBlock2D" => Ok(false),
        "CrossAttnDownBlock2D" | "CrossAttnUpBlock2D" => Ok(true),
        other => candle_core::bail!("unet config: unsupported block type {other:?}"),
    }
}

/// SDXL's `text_time` added embedding (pooled text + time ids), or none.
fn added_embedding(
    vb: VarBuilder,
    cfg: &UNetConfig,
    temb: usize,
) -> Result<(Option<Timesteps>, Option<TimestepEmbedding>)> {
    match cfg.addition_embed_type.as_deref() {
        None => Ok((None, None)),
        Some("text_time") => {
            let missing = |what: &str| candle_core::Error::Msg(format!("unet config: text_time without {what}"));
            let dim = cfg.addition_time_embed_dim.ok_or_else(|| missing("addition_time_embed_dim"))?;
            let input = cfg
                .projection_class_embeddings_input_dim
                .ok_or_else(|| missing("projection_class_embeddings_input_dim"))?;
            Ok((
                Some(Timesteps::new(dim, cfg.flip_sin_to_cos, cfg.freq_shift)),
                Some(TimestepEmbedding::new(vb.pp("add_embedding"), input, temb)?),
            ))
        }
        Some(other) => candle_core::bail!("unet config: unsupported addition_embed_type {other:?}"),
    }
}

/// `down_blocks.{i}`: resnets (and transformers), then a stride-2 conv except at the bottom.
fn down_blocks(vb: VarBuilder, l: &Levels) -> Result<Vec<Block>> {
    let (n, cfg) = (l.count(), l.cfg);
    let mut down = Vec::with_capacity(n);
    let mut out_ch = l.channels[0];
    for i in 0..n {
        let vbi = vb.pp("down_blocks").pp(i);
        let in_ch = out_ch;
        out_ch = l.channels[i];
        let has_attn = has_cross_attention(&cfg.down_block_types[i])?;
        let (mut resnets, mut attentions) = (Vec::new(), Vec::new());
        for j in 0..cfg.layers_per_block {
            let rin = if j == 0 { in_ch } else { out_ch };
            resnets.push(l.resnet(vbi.pp("resnets").pp(j), rin, out_ch, 1.0)?);
            if has_attn {
                attentions.push(l.transformer(vbi.pp("attentions").pp(j), out_ch, i)?);
            }
        }
        let sampler = if i + 1 < n {
            let c = Conv2dConfig { stride: 2, padding: cfg.downsample_padding, ..Default::default() };
            Some(conv2d(out_ch, out_ch, 3, c, vbi.pp("downsamplers").pp(0).pp("conv"))?)
        } else {
            None
        };
        down.push(Block { resnets, attentions, sampler });
    }
    Ok(down)
}

/// `mid_block` (UNetMidBlock2DCrossAttn, one layer): resnet, transformer, resnet, with the
/// last level's transformer depth and heads.
fn mid_block(vb: VarBuilder, l: &Levels) -> Result<(Vec<ResnetBlock2D>, Vec<SpatialTransformer>)> {
    let last = l.count() - 1;
    let top = l.channels[last];
    let vbm = vb.pp("mid_block");
    let resnets = (0..2)
        .map(|j| l.resnet(vbm.pp("resnets").pp(j), top, top, l.cfg.mid_block_scale_factor))
        .collect::<Result<Vec<_>>>()?;
    Ok((resnets, vec![l.transformer(vbm.pp("attentions").pp(0), top, last)?]))
}

/// `up_blocks.{i}`, levels in reverse: one more resnet per block than going down, each
/// taking a skip connection, then a conv upsampler except at the top.
fn up_blocks(vb: VarBuilder, l: &Levels) -> Result<Vec<Block>> {
    let (n, cfg) = (l.count(), l.cfg);
    let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
    let rch: Vec<usize> = l.channels.iter().rev().copied().collect();
    let mut up = Vec::with_capacity(n);
    let mut prev_out = rch[0];
    for i in 0..n {
        let vbi = vb.pp("up_blocks").pp(i);
        let (out, skip_in, level) = (rch[i], rch[(i + 1).min(n - 1)], n - 1 - i);
        let has_attn = has_cross_attention(&cfg.up_block_types[i])?;
        let layers = cfg.layers_per_block + 1;
        let (mut resnets, mut attentions) = (Vec::new(), Vec::new());
        for j in 0..layers {
            let skip = if j + 1 == layers { skip_in } else { out };
            let rin = if j == 0 { prev_out } else { out };
            resnets.push(l.resnet(vbi.pp("resnets").pp(j), rin + skip, out, 1.0)?);
            if has_attn {
                attentions.push(l.transformer(vbi.pp("attentions").pp(j), out, level)?);
            }
        }
        let sampler =
            if i + 1 < n { Some(conv2d(out, out, 3, pad1, vbi.pp("upsamplers").pp(0).pp("conv"))?) } else { None };
        up.push(Block { resnets, attentions, sampler });
        prev_out = out;
    }
    Ok(up)
}

impl UNet {
    /// `vb` is the root of `unet/diffusion_pytorch_model.safetensors`.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let levels = Levels::of(cfg)?;
        let (ch0, temb) = (cfg.block_out_channels[0], levels.temb);
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        let (add_time_proj, add_embedding) = added_embedding(vb.clone(), cfg, temb)?;
        let (mid_resnets, mid_attentions) = mid_block(vb.clone(), &levels)?;
        Ok(Self {
            conv_in: conv2d(cfg.in_channels, ch0, 3, pad1, vb.pp("conv_in"))?,
            time_proj: Timesteps::new(ch0, cfg.flip_sin_to_cos, cfg.freq_shift),
            time_embedding: TimestepEmbedding::new(vb.pp("time_embedding"), ch0, temb)?,
            add_time_proj,
            add_embedding,
            down: down_blocks(vb.clone(), &levels)?,
            mid_resnets,
            mid_attentions,
            up: up_blocks(vb.clone(), &levels)?,
            conv_norm_out: crate::conv::group_norm(cfg.norm_num_groups, ch0, cfg.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: conv2d(ch0, cfg.out_channels, 3, pad1, vb.pp("conv_out"))?,
            config: cfg.clone(),
        })
    }

    /// Noise prediction. `sample` (B, C, h, w); `timestep` one value for the batch;
    /// `context` (B, 77, cross_attention_dim); `added` required when the config has text_time.
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<AddedCond<'_>>,
    ) -> Result<Tensor> {
        let b = sample.dim(0)?;
        let dtype = sample.dtype();
        let dev = sample.device();
        // The sinusoidal projections are computed in f32, then cast, as diffusers does.
        let t = Tensor::full(timestep as f32, b, dev)?;
        let t_emb = self.time_proj.forward(&t)?.to_dtype(dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let (Some(proj), Some(add)) = (&self.add_time_proj, &self.add_embedding) {
            let added = added.ok_or_else(|| {
                candle_core::Error::Msg("SDXL UNet needs text_embeds and time_ids (added conditioning)".into())
            })?;
            let ids = added.time_ids.to_dtype(candle_core::DType::F32)?.flatten_all()?;
            let time_embeds = proj.forward(&ids)?.reshape((b, ()))?.to_dtype(dtype)?;
            let add_in = Tensor::cat(&[&added.text_embeds.to_dtype(dtype)?, &time_embeds], D::Minus1)?;
            emb = (emb + add.forward(&add_in)?)?;
        }
        let context = context.to_dtype(dtype)?;

        let mut xs = if self.config.center_input_sample { ((sample * 2.0)? - 1.0)? } else { sample.clone() };
        xs = self.conv_in.forward(&xs)?;
        let mut skips = vec![xs.clone()];
        for blk in &self.down {
            for (j, r) in blk.resnets.iter().enumerate() {
                xs = r.forward(&xs, Some(&emb))?;
                if let Some(a) = blk.attentions.get(j) {
                    xs = a.forward(&xs, &context)?;
                }
                skips.push(xs.clone());
            }
            if let Some(s) = &blk.sampler {
                xs = s.forward(&xs)?;
                skips.push(xs.clone());
            }
        }

        xs = self.mid_resnets[0].forward(&xs, Some(&emb))?;
        for (a, r) in self.mid_attentions.iter().zip(&self.mid_resnets[1..]) {
            xs = a.forward(&xs, &context)?;
            xs = r.forward(&xs, Some(&emb))?;
        }

        for blk in &self.up {
            for (j, r) in blk.resnets.iter().enumerate() {
                let skip =
                    skips.pop().ok_or_else(|| candle_core::Error::Msg("unet: skip connections exhausted".into()))?;
                xs = r.forward(&Tensor::cat(&[&xs, &skip], 1)?, Some(&emb))?;
                if let Some(a) = blk.attentions.get(j) {
                    xs = a.forward(&xs, &context)?;
                }
            }
            if let Some(s) = &blk.sampler {
                // Upsample to the size of the skip it meets next (odd latent sizes included).
                let (h, w) = match skips.last() {
                    Some(t) => (t.dim(2)?, t.dim(3)?),
                    None => (2 * xs.dim(2)?, 2 * xs.dim(3)?),
                };
                xs = s.forward(&xs.upsample_nearest2d(h, w)?)?;
            }
        }

        self.conv_out.forward(&norm_silu(&self.conv_norm_out, &xs)?)
    }
}
