//! diffusers' `ResnetBlock2D`, `Upsample2D` and `UpDecoderBlock2D`, with their convolutions
//! on lumen's [`crate::conv::Conv2d`].
//!
//! These compute exactly what candle-transformers' blocks compute (and what diffusers
//! computes); they are written here only so that every convolution of the UNet and the VAE
//! goes through lumen's one convolution entry point. Config structs are candle's, so the
//! call sites read the same.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};
pub use candle_transformers::models::stable_diffusion::resnet::ResnetBlock2DConfig;
pub use candle_transformers::models::stable_diffusion::unet_2d_blocks::UpDecoderBlock2DConfig;

use crate::conv::{conv2d, group_norm, Conv2d, Conv2dConfig, GroupNorm};

/// GroupNorm then SiLU, the pair every resnet and output head runs before a convolution
/// (one fused kernel on CUDA).
pub fn norm_silu(norm: &GroupNorm, xs: &Tensor) -> Result<Tensor> {
    norm.forward_silu(xs)
}

/// norm1 → SiLU → conv1 (+ time embedding) → norm2 → SiLU → conv2, plus the (1×1 conv)
/// shortcut, divided by `output_scale_factor`.
#[derive(Debug)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    time_emb_proj: Option<Linear>,
    conv_shortcut: Option<Conv2d>,
    config: ResnetBlock2DConfig,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, in_channels: usize, config: ResnetBlock2DConfig) -> Result<Self> {
        let out_channels = config.out_channels.unwrap_or(in_channels);
        let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
        let groups_out = config.groups_out.unwrap_or(config.groups);
        let conv_shortcut = if config.use_in_shortcut.unwrap_or(in_channels != out_channels) {
            Some(conv2d(in_channels, out_channels, 1, Default::default(), vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        let time_emb_proj = match config.temb_channels {
            Some(t) => Some(linear(t, out_channels, vb.pp("time_emb_proj"))?),
            None => None,
        };
        Ok(Self {
            norm1: group_norm(config.groups, in_channels, config.eps, vb.pp("norm1"))?,
            conv1: conv2d(in_channels, out_channels, 3, pad1, vb.pp("conv1"))?,
            norm2: group_norm(groups_out, out_channels, config.eps, vb.pp("norm2"))?,
            conv2: conv2d(out_channels, out_channels, 3, pad1, vb.pp("conv2"))?,
            time_emb_proj,
            conv_shortcut,
            config,
        })
    }

    pub fn forward(&self, xs: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(xs)?,
            None => xs.clone(),
        };
        let mut h = self.conv1.forward(&norm_silu(&self.norm1, xs)?)?;
        if let (Some(temb), Some(proj)) = (temb, &self.time_emb_proj) {
            let t = proj.forward(&candle_nn::ops::silu(temb)?)?.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?;
            h = t.broadcast_add(&h)?;
        }
        let h = self.conv2.forward(&norm_silu(&self.norm2, &h)?)?;
        let out = (shortcut + h)?;
        // Dividing by 1 is exact, but a full pass over the activation: skip it.
        if self.config.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.config.output_scale_factor
        }
    }
}

/// Nearest ×2 upsampling then a 3×3 convolution.
#[derive(Debug)]
struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = xs.dims4()?;
        self.conv.forward(&xs.upsample_nearest2d(2 * h, 2 * w)?)
    }
}

/// The VAE decoder's up block: `num_layers` resnets, then an optional upsampler.
#[derive(Debug)]
pub struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        config: UpDecoderBlock2DConfig,
    ) -> Result<Self> {
        let res_cfg = ResnetBlock2DConfig {
            out_channels: Some(out_channels),
            eps: config.resnet_eps,
            groups: config.resnet_groups,
            output_scale_factor: config.output_scale_factor,
            temb_channels: None,
            ..Default::default()
        };
        let resnets = (0..config.num_layers)
            .map(|i| {
                let cin = if i == 0 { in_channels } else { out_channels };
                ResnetBlock2D::new(vb.pp("resnets").pp(i), cin, res_cfg)
            })
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if config.add_upsample {
            let pad1 = Conv2dConfig { padding: 1, ..Default::default() };
            let conv = conv2d(out_channels, out_channels, 3, pad1, vb.pp("upsamplers").pp(0).pp("conv"))?;
            Some(Upsample2D { conv })
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }
}

impl Module for UpDecoderBlock2D {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut xs = xs.clone();
        for r in &self.resnets {
            xs = r.forward(&xs, None)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&xs),
            None => Ok(xs),
        }
    }
}
