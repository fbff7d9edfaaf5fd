//! The SDXL VAE decoder (diffusers' `AutoencoderKL.decode`): `post_quant_conv`, then the
//! decoder. Only the decoding half is built, so only `decoder.*` and `post_quant_conv.*`
//! are read from the checkpoint.
//!
//! The resnet and up-decoder blocks are [`super::resnet`]'s (diffusers' computation, with
//! every convolution on [`crate::conv`]); the mid-block self-attention is written here so that it goes through lumen's
//! one attention entry point (its 4096-token score matrix at 512² is what that entry
//! point bounds on CPU).

use candle_core::{Module, Result, Tensor};
use candle_nn::{group_norm, linear, GroupNorm, Linear, VarBuilder};

use super::resnet::{norm_silu, ResnetBlock2D, ResnetBlock2DConfig, UpDecoderBlock2D, UpDecoderBlock2DConfig};
use crate::conv::{conv2d, Conv2d, Conv2dConfig};
use serde::Deserialize;

fn d_channels() -> Vec<usize> {
    vec![64]
}
fn d_layers() -> usize {
    1
}
fn d_latent() -> usize {
    4
}
fn d_groups() -> usize {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_three() -> usize {
    3
}
fn d_true() -> bool {
    true
}

/// `vae/config.json` (diffusers AutoencoderKL keys and defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_three")]
    pub out_channels: usize,
    #[serde(default = "d_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_layers")]
    pub layers_per_block: usize,
    #[serde(default = "d_latent")]
    pub latent_channels: usize,
    #[serde(default = "d_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default = "d_true")]
    pub mid_block_add_attention: bool,
    /// SDXL's VAE overflows in fp16; diffusers then decodes in f32.
    #[serde(default)]
    pub force_upcast: bool,
}

impl VaeConfig {
    /// Pixels per latent cell (8 for SDXL).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }
}

// diffusers builds every VAE norm with eps 1e-6.
const VAE_EPS: f64 = 1e-6;

/// Single-head spatial self-attention of the VAE mid block.
struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl MidAttention {
    fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        // Old diffusers checkpoints name the projections query/key/value/proj_attn.
        let (q, k, v, o) = if vb.contains_tensor("query.weight") {
            ("query", "key", "value", vb.pp("proj_attn"))
        } else {
            ("to_q", "to_k", "to_v", vb.pp("to_out").pp("0"))
        };
        Ok(Self {
            group_norm: group_norm(groups, c, VAE_EPS, vb.pp("group_norm"))?,
            to_q: linear(c, c, vb.pp(q))?,
            to_k: linear(c, c, vb.pp(k))?,
            to_v: linear(c, c, vb.pp(v))?,
            to_out: linear(c, c, o)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let t = self.group_norm.forward(xs)?.reshape((b, c, h * w))?.transpose(1, 2)?;
        let q = self.to_q.forward(&t)?.unsqueeze(1)?;
        let k = self.to_k.forward(&t)?.unsqueeze(1)?;
        let v = self.to_v.forward(&t)?.unsqueeze(1)?;
        let o = crate::attention::attention(&q, &k, &v, 1.0 / (c as f64).sqrt(), false)?.squeeze(1)?;
        let o = self.to_out.forward(&o)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        xs + o
    }
}

/// `post_quant_conv` + `decoder`.
pub struct VaeDecoder {
    post_quant_conv: Option<Conv2d>,
    conv_in: Conv2d,
    mid_resnet_0: ResnetBlock2D,
    mid_attention: Option<MidAttention>,
    mid_resnet_1: ResnetBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: crate::conv::GroupNorm,
    conv_out: Conv2d,
    pub config: VaeConfig,
}

impl VaeDecoder {
    /// `vb` is the root of `vae/diffusion_pytorch_model.safetensors`.
    pub fn new(vb: VarBuilder, config: &VaeConfig) -> Result<Self> {
        let ch = &config.block_out_channels;
        let top = *ch.last().ok_or_else(|| candle_core::Error::Msg("vae config: empty block_out_channels".into()))?;
        let groups = config.norm_num_groups;
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        let post_quant_conv = if config.use_post_quant_conv {
            Some(conv2d(
                config.latent_channels,
                config.latent_channels,
                1,
                Default::default(),
                vb.pp("post_quant_conv"),
            )?)
        } else {
            None
        };
        let d = vb.pp("decoder");
        let mid_cfg = ResnetBlock2DConfig {
            out_channels: Some(top),
            temb_channels: None,
            groups,
            eps: VAE_EPS,
            ..Default::default()
        };
        let mid = d.pp("mid_block");
        let mid_attention = if config.mid_block_add_attention {
            Some(MidAttention::new(mid.pp("attentions").pp(0), top, groups)?)
        } else {
            None
        };
        let reversed: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(ch.len());
        let mut prev = top;
        for (i, &out) in reversed.iter().enumerate() {
            let cfg = UpDecoderBlock2DConfig {
                num_layers: config.layers_per_block + 1,
                resnet_eps: VAE_EPS,
                resnet_groups: groups,
                output_scale_factor: 1.0,
                add_upsample: i + 1 < ch.len(),
            };
            up_blocks.push(UpDecoderBlock2D::new(d.pp("up_blocks").pp(i), prev, out, cfg)?);
            prev = out;
        }
        Ok(Self {
            post_quant_conv,
            conv_in: conv2d(config.latent_channels, top, 3, pad1, d.pp("conv_in"))?,
            mid_resnet_0: ResnetBlock2D::new(mid.pp("resnets").pp(0), top, mid_cfg)?,
            mid_attention,
            mid_resnet_1: ResnetBlock2D::new(mid.pp("resnets").pp(1), top, mid_cfg)?,
            up_blocks,
            conv_norm_out: crate::conv::group_norm(groups, ch[0], VAE_EPS, d.pp("conv_norm_out"))?,
            conv_out: conv2d(ch[0], config.out_channels, 3, pad1, d.pp("conv_out"))?,
            config: config.clone(),
        })
    }

    /// Decoder input (latents already divided by the scaling factor) → image in about [−1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        let mut xs = self.conv_in.forward(&z)?;
        xs = self.mid_resnet_0.forward(&xs, None)?;
        if let Some(a) = &self.mid_attention {
            xs = a.forward(&xs)?;
        }
        xs = self.mid_resnet_1.forward(&xs, None)?;
        for b in &self.up_blocks {
            xs = b.forward(&xs)?;
        }
        self.conv_out.forward(&norm_silu(&self.conv_norm_out, &xs)?)
    }

    /// Sampler latents → image: divides by `scaling_factor` first.
    pub fn decode_latents(&self, latents: &Tensor) -> Result<Tensor> {
        self.decode(&(latents / self.config.scaling_factor)?)
    }
}

/// Image in [−1, 1] (1, 3, H, W) → RGB bytes, HWC. Rounds, as diffusers does when making
/// PIL/numpy images (candle's `to_dtype(U8)` truncates, which is off by one half the time).
pub fn to_rgb8(image: &Tensor) -> Result<(usize, usize, Vec<u8>)> {
    #[cfg(test)]
    std::thread::sleep(std::time::Duration::from_millis(test_hooks::CONVERSION_DELAY_MS.get()));
    let (_, c, h, w) = image.dims4()?;
    if c != 3 {
        candle_core::bail!("expected a 3-channel image, got {c}");
    }
    let x = ((image.get(0)?.to_dtype(candle_core::DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    let x = (x * 255.0)?.round()?.permute((1, 2, 0))?.flatten_all()?;
    let bytes = x.to_vec1::<f32>()?.into_iter().map(|v| v as u8).collect();
    Ok((h, w, bytes))
}

/// Lets a unit test make the image conversion measurably slow, to prove which stage's clock
/// counts it (see the stage-timing test in `sdxl/mod.rs`).
#[cfg(test)]
pub(crate) mod test_hooks {
    thread_local! {
        pub static CONVERSION_DELAY_MS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn u8_conversion_rounds_and_clamps() {
        // x/2 + 0.5 = 0.5 / 255 · k for chosen k: 127.6 → 128 (truncation would give 127).
        let vals = [-2.0f32, 1.5, 127.6 / 255.0 * 2.0 - 1.0, 0.4 / 255.0 * 2.0 - 1.0];
        let mut data = Vec::new();
        for v in vals {
            data.extend([v, v, v]);
        }
        // (1, 3, 1, 4): channel-major.
        let img = Tensor::from_vec(data, (4, 3), &Device::Cpu).unwrap().t().unwrap().reshape((1, 3, 1, 4)).unwrap();
        let (h, w, bytes) = to_rgb8(&img).unwrap();
        assert_eq!((h, w), (1, 4));
        assert_eq!(bytes, vec![0, 0, 0, 255, 255, 255, 128, 128, 128, 0, 0, 0]);
    }
}
