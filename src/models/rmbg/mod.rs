//! BriaRMBG-1.4 (IS-Net / U²-Net family): the background-removal network, and
//! [`RmbgStage`], the pipeline stage that runs it and prepares the image the way
//! PartCrafter was trained to see it ([`prepare`]).
//!
//! Port guide: `../shared/design/rmbg.md`. The architecture is fixed (no sizes in the
//! checkpoint's `config.json` besides `in_ch`/`out_ch`); module paths mirror the
//! checkpoint's tensor names (`stage1.rebnconv7.conv_s1.weight`, …).
//!
//! BatchNorm runs in inference mode and is folded into the preceding convolution at load
//! time: one pass over each activation instead of two, same function up to f32 rounding.

pub mod prepare;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use image::{GrayImage, RgbImage};
use serde::Deserialize;

use crate::conv::{conv2d, Conv2d, Conv2dConfig};
use crate::stage::{BackgroundRemoval, PreparedImage, Timings};
use crate::synth::TensorSpec;
use crate::weights::{self, WeightsSource};

/// `config.json` of briaai/RMBG-1.4 (other keys of that file are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    #[serde(default = "default_in_ch")]
    pub in_ch: usize,
    #[serde(default = "default_out_ch")]
    pub out_ch: usize,
}

fn default_in_ch() -> usize {
    3
}
fn default_out_ch() -> usize {
    1
}

impl Default for Config {
    fn default() -> Self {
        Self { in_ch: default_in_ch(), out_ch: default_out_ch() }
    }
}

/// BatchNorm2d epsilon of the reference (PyTorch default).
const BN_EPS: f64 = 1e-5;

/// Named intermediate outputs, recorded only when switched on (golden tests compare
/// every stage and every REBNCONV; production forwards keep nothing).
#[derive(Debug, Default)]
pub struct Taps(Option<HashMap<String, Tensor>>);

impl Taps {
    pub fn off() -> Self {
        Self(None)
    }
    pub fn on() -> Self {
        Self(Some(HashMap::new()))
    }
    fn record(&mut self, name: impl FnOnce() -> String, t: &Tensor) {
        if let Some(map) = &mut self.0 {
            map.insert(name(), t.clone());
        }
    }
    /// The recorded tensors by name (`conv_in`, `stage1`, `stage1.rebnconv7`, …).
    pub fn into_map(self) -> HashMap<String, Tensor> {
        self.0.unwrap_or_default()
    }
}

/// Max pool 2×2 / stride 2 with PyTorch's `ceil_mode=True`: candle only floors, so an odd
/// dimension first gets its last row/column repeated (for a 2-wide max window this is exactly
/// the ceil-mode result: the last window sees one real element, twice).
fn pool_ceil(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let mut x = x.clone();
    if h % 2 == 1 {
        x = x.pad_with_same(D::Minus2, 0, 1)?;
    }
    if w % 2 == 1 {
        x = x.pad_with_same(D::Minus1, 0, 1)?;
    }
    x.max_pool2d_with_stride(2, 2)
}

/// `_upsample_like(src, tar)`: bilinear resize to `tar`'s spatial size, align_corners=false,
/// size mode (scale = in/out).
fn upsample_like(src: &Tensor, tar: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = tar.dims4()?;
    let (_, _, sh, sw) = src.dims4()?;
    if (sh, sw) == (h, w) {
        return Ok(src.clone());
    }
    src.upsample_bilinear2d(h, w, false)
}

/// REBNCONV: 3×3 conv (padding = dilation) → BatchNorm (running stats) → ReLU, with the
/// BatchNorm folded into the conv's weight and bias.
#[derive(Debug, Clone)]
struct RebnConv {
    conv: Conv2d,
}

impl RebnConv {
    fn new(cin: usize, cout: usize, dilation: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig { padding: dilation, dilation, ..Default::default() };
        let conv = conv2d(cin, cout, 3, cfg, vb.pp("conv_s1"))?;
        let bn = candle_nn::batch_norm(cout, BN_EPS, vb.pp("bn_s1"))?;
        Ok(Self { conv: conv.absorb_bn(&bn)? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)?.relu()
    }
}

/// The two residual U-block variants of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsuKind {
    /// RSU-L (L = 7, 6, 5, 4): an inner U-Net with L − 2 ceil-mode pools, dilation 2 at the bottom.
    Pooled(usize),
    /// RSU-4F: no pooling, dilations 1, 2, 4, 8 instead (used where maps are already small).
    Dilated,
}

/// One RSU block: `rebnconvin`, the encoder `rebnconv1..L`, the decoder `rebnconv{L-1}d..1d`.
#[derive(Debug, Clone)]
struct Rsu {
    kind: RsuKind,
    conv_in: RebnConv,
    /// `rebnconv1` … `rebnconv{L}`.
    enc: Vec<RebnConv>,
    /// `rebnconv1d` … `rebnconv{L-1}d` (index i holds `rebnconv{i+1}d`).
    dec: Vec<RebnConv>,
}

impl Rsu {
    fn height(kind: RsuKind) -> usize {
        match kind {
            RsuKind::Pooled(l) => l,
            RsuKind::Dilated => 4,
        }
    }

    /// Dilation of encoder conv `i` (1-based) and of decoder conv `i`d.
    fn enc_dilation(kind: RsuKind, i: usize) -> usize {
        match kind {
            RsuKind::Pooled(l) => {
                if i == l {
                    2
                } else {
                    1
                }
            }
            RsuKind::Dilated => 1 << (i - 1),
        }
    }
    fn dec_dilation(kind: RsuKind, i: usize) -> usize {
        match kind {
            RsuKind::Pooled(_) => 1,
            RsuKind::Dilated => 1 << (i - 1),
        }
    }

    fn new(kind: RsuKind, cin: usize, mid: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let l = Self::height(kind);
        let conv_in = RebnConv::new(cin, cout, 1, vb.pp("rebnconvin"))?;
        let enc = (1..=l)
            .map(|i| {
                let c = if i == 1 { cout } else { mid };
                RebnConv::new(c, mid, Self::enc_dilation(kind, i), vb.pp(format!("rebnconv{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let dec = (1..l)
            .map(|i| {
                let c = if i == 1 { cout } else { mid };
                RebnConv::new(2 * mid, c, Self::dec_dilation(kind, i), vb.pp(format!("rebnconv{i}d")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { kind, conv_in, enc, dec })
    }

    fn forward(&self, x: &Tensor, name: &str, taps: &mut Taps) -> Result<Tensor> {
        let l = Self::height(self.kind);
        let pooled = matches!(self.kind, RsuKind::Pooled(_));
        let hxin = self.conv_in.forward(x)?;
        taps.record(|| format!("{name}.rebnconvin"), &hxin);

        // Encoder: hx[i-1] holds the output of rebnconv{i}.
        let mut hx: Vec<Tensor> = Vec::with_capacity(l);
        for i in 1..=l {
            let input = match i {
                1 => hxin.clone(),
                // No pool before the innermost (dilated) conv, nor anywhere in RSU-4F.
                _ if pooled && i < l => pool_ceil(&hx[i - 2])?,
                _ => hx[i - 2].clone(),
            };
            let out = self.enc[i - 1].forward(&input)?;
            taps.record(|| format!("{name}.rebnconv{i}"), &out);
            hx.push(out);
        }

        // Decoder: deeper (upsampled) tensor first, skip second.
        let mut d = hx[l - 1].clone();
        for i in (1..l).rev() {
            let skip = &hx[i - 1];
            let deeper = if pooled && i < l - 1 { upsample_like(&d, skip)? } else { d };
            d = self.dec[i - 1].forward(&Tensor::cat(&[&deeper, skip], 1)?)?;
            taps.record(|| format!("{name}.rebnconv{i}d"), &d);
        }
        d + hxin
    }
}

/// Everything the reference forward returns, plus the side logits before upsampling.
#[derive(Debug, Clone)]
pub struct RmbgOutput {
    /// `[d1, …, d6]`, each `[B, out_ch, H, W]` in (0, 1); d1 is the mask.
    pub masks: Vec<Tensor>,
    /// `side1` … `side6` conv outputs at their own resolutions (before upsample and sigmoid).
    pub side_logits: Vec<Tensor>,
    /// `[hx1d, hx2d, hx3d, hx4d, hx5d, hx6]`.
    pub features: Vec<Tensor>,
}

/// BriaRMBG-1.4.
#[derive(Debug, Clone)]
pub struct BriaRmbg {
    conv_in: Conv2d,
    /// stage1 … stage6.
    enc: Vec<Rsu>,
    /// stage5d, stage4d, stage3d, stage2d, stage1d.
    dec: Vec<Rsu>,
    /// side1 … side6.
    sides: Vec<Conv2d>,
}

/// (name, kind, in, mid, out) of the encoder and decoder stages (fixed in the reference).
pub const ENC_STAGES: [(&str, RsuKind, usize, usize, usize); 6] = [
    ("stage1", RsuKind::Pooled(7), 64, 32, 64),
    ("stage2", RsuKind::Pooled(6), 64, 32, 128),
    ("stage3", RsuKind::Pooled(5), 128, 64, 256),
    ("stage4", RsuKind::Pooled(4), 256, 128, 512),
    ("stage5", RsuKind::Dilated, 512, 256, 512),
    ("stage6", RsuKind::Dilated, 512, 256, 512),
];
pub const DEC_STAGES: [(&str, RsuKind, usize, usize, usize); 5] = [
    ("stage5d", RsuKind::Dilated, 1024, 256, 512),
    ("stage4d", RsuKind::Pooled(4), 1024, 128, 256),
    ("stage3d", RsuKind::Pooled(5), 512, 64, 128),
    ("stage2d", RsuKind::Pooled(6), 256, 32, 64),
    ("stage1d", RsuKind::Pooled(7), 128, 16, 64),
];
/// Input channels of side1 … side6 (hx1d, hx2d, hx3d, hx4d, hx5d, hx6).
pub const SIDE_CH: [usize; 6] = [64, 64, 128, 256, 512, 512];

impl BriaRmbg {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let c3 = |cin, cout, stride, vb: VarBuilder| {
            let cfg = Conv2dConfig { padding: 1, stride, ..Default::default() };
            conv2d(cin, cout, 3, cfg, vb)
        };
        // conv_in: stride 2, no BatchNorm, no ReLU (the input is halved before stage1).
        let conv_in = c3(cfg.in_ch, 64, 2, vb.pp("conv_in"))?;
        let rsu = |&(name, kind, cin, mid, cout): &(&str, RsuKind, usize, usize, usize)| {
            Rsu::new(kind, cin, mid, cout, vb.pp(name))
        };
        let enc = ENC_STAGES.iter().map(rsu).collect::<Result<Vec<_>>>()?;
        let dec = DEC_STAGES.iter().map(rsu).collect::<Result<Vec<_>>>()?;
        let sides = SIDE_CH
            .iter()
            .enumerate()
            .map(|(k, &c)| c3(c, cfg.out_ch, 1, vb.pp(format!("side{}", k + 1))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { conv_in, enc, dec, sides })
    }

    /// Loads a checkpoint folder (`config.json` optional, `model.safetensors`) in f32.
    pub fn load_dir(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        let cfg: Config =
            if dir.join("config.json").is_file() { weights::read_config(dir)? } else { Config::default() };
        let vb = weights::open_model_dir(dir, DType::F32, device)?;
        Self::new(&cfg, vb).with_context(|| format!("building BriaRMBG from {}", dir.display()))
    }

    /// Encoder–decoder trunk: returns `[hx1d, hx2d, hx3d, hx4d, hx5d, hx6]`.
    fn trunk(&self, x: &Tensor, taps: &mut Taps) -> Result<Vec<Tensor>> {
        let hxin = self.conv_in.forward(x)?;
        taps.record(|| "conv_in".into(), &hxin);

        let mut skips: Vec<Tensor> = Vec::with_capacity(6);
        let mut hx = hxin;
        for (k, stage) in self.enc.iter().enumerate() {
            if k > 0 {
                hx = pool_ceil(&hx)?;
            }
            let name = ENC_STAGES[k].0;
            hx = stage.forward(&hx, name, taps)?;
            taps.record(|| name.into(), &hx);
            skips.push(hx.clone());
        }

        // Decoder: stage5d gets hx6 with hx5, …, stage1d gets hx2d with hx1.
        let mut feats = vec![skips[5].clone()];
        let mut d = skips[5].clone();
        for (k, stage) in self.dec.iter().enumerate() {
            let skip = &skips[4 - k];
            let up = upsample_like(&d, skip)?;
            let name = DEC_STAGES[k].0;
            d = stage.forward(&Tensor::cat(&[&up, skip], 1)?, name, taps)?;
            taps.record(|| name.into(), &d);
            feats.push(d.clone());
        }
        feats.reverse();
        Ok(feats)
    }

    /// Side head k (0-based): logits at the feature's resolution, and
    /// sigmoid(upsample(logits → input size)) — upsample first, then sigmoid, as the reference.
    fn side(&self, k: usize, feat: &Tensor, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = self.sides[k].forward(feat)?;
        let mask = candle_nn::ops::sigmoid(&upsample_like(&logits, x)?)?;
        Ok((logits, mask))
    }

    /// The reference forward: all six side outputs, their logits and the decoder features.
    pub fn forward(&self, x: &Tensor) -> Result<RmbgOutput> {
        self.forward_with_taps(x, &mut Taps::off())
    }

    /// [`Self::forward`], recording every stage and REBNCONV output into `taps`.
    pub fn forward_with_taps(&self, x: &Tensor, taps: &mut Taps) -> Result<RmbgOutput> {
        let features = self.trunk(x, taps)?;
        let mut masks = Vec::with_capacity(6);
        let mut side_logits = Vec::with_capacity(6);
        for (k, feat) in features.iter().enumerate() {
            let (l, m) = self.side(k, feat, x)?;
            side_logits.push(l);
            masks.push(m);
        }
        Ok(RmbgOutput { masks, side_logits, features })
    }

    /// Only d1, the mask everyone uses (`[B, out_ch, H, W]`); side2…side6 are training-time
    /// deep supervision and are skipped.
    pub fn forward_mask(&self, x: &Tensor) -> Result<Tensor> {
        let features = self.trunk(x, &mut Taps::off())?;
        Ok(self.side(0, &features[0], x)?.1)
    }

    /// The checkpoint's tensors the network reads (names and shapes; f32), in state-dict order
    /// without the unused `num_batches_tracked` counters. Used to write synthetic checkpoints
    /// (benchmarks) where no golden manifest is at hand.
    pub fn tensor_specs(cfg: &Config) -> Vec<TensorSpec> {
        let mut specs =
            vec![TensorSpec::f32("conv_in.weight", &[64, cfg.in_ch, 3, 3]), TensorSpec::f32("conv_in.bias", &[64])];
        let mut rebn = |prefix: String, cin: usize, cout: usize| {
            specs.push(TensorSpec::f32(format!("{prefix}.conv_s1.weight"), &[cout, cin, 3, 3]));
            specs.push(TensorSpec::f32(format!("{prefix}.conv_s1.bias"), &[cout]));
            for t in ["weight", "bias", "running_mean", "running_var"] {
                specs.push(TensorSpec::f32(format!("{prefix}.bn_s1.{t}"), &[cout]));
            }
        };
        for &(name, kind, cin, mid, cout) in ENC_STAGES.iter().chain(DEC_STAGES.iter()) {
            let l = Rsu::height(kind);
            rebn(format!("{name}.rebnconvin"), cin, cout);
            for i in 1..=l {
                rebn(format!("{name}.rebnconv{i}"), if i == 1 { cout } else { mid }, mid);
            }
            for i in (1..l).rev() {
                rebn(format!("{name}.rebnconv{i}d"), 2 * mid, if i == 1 { cout } else { mid });
            }
        }
        for (k, &c) in SIDE_CH.iter().enumerate() {
            specs.push(TensorSpec::f32(format!("side{}.weight", k + 1), &[cfg.out_ch, c, 3, 3]));
            specs.push(TensorSpec::f32(format!("side{}.bias", k + 1), &[cfg.out_ch]));
        }
        specs
    }
}

/// The background-removal stage: BriaRMBG-1.4 + PartCrafter's `prepare_image`.
pub struct RmbgStage {
    net: BriaRmbg,
    device: Device,
}

impl RmbgStage {
    /// Resolves briaai/RMBG-1.4 (`model.safetensors`) and loads it in f32 on `device`.
    pub fn load(source: &WeightsSource, device: &Device) -> anyhow::Result<Self> {
        let repo = source.resolve(weights::RMBG, "model.safetensors")?;
        Self::from_dir(&repo.dir, device)
    }

    /// Loads from a checkpoint folder directly (tests, benchmarks).
    pub fn from_dir(dir: &Path, device: &Device) -> anyhow::Result<Self> {
        Ok(Self { net: BriaRmbg::load_dir(dir, device)?, device: device.clone() })
    }

    pub fn net(&self) -> &BriaRmbg {
        &self.net
    }

    /// The network's mask d1 for `image` (resized to 1024², normalised), row-major 1024×1024.
    pub fn mask(&self, image: &RgbImage, timings: &mut Timings) -> anyhow::Result<Vec<f32>> {
        let input =
            timings.time("rmbg_preprocess", || prepare::model_input(image, prepare::MODEL_SIZE, &self.device))?;
        timings.time("rmbg", || -> anyhow::Result<Vec<f32>> {
            let m = self.net.forward_mask(&input)?;
            Ok(m.flatten_all()?.to_vec1::<f32>()?)
        })
    }

    /// Every step of the preparation, intermediates included.
    pub fn prepare_full(&self, image: &RgbImage, timings: &mut Timings) -> anyhow::Result<prepare::Prepared> {
        let d1 = self.mask(image, timings)?;
        timings.time("rmbg_postprocess", || {
            prepare::prepare_from_mask(image, &d1, prepare::MODEL_SIZE, prepare::MODEL_SIZE)
        })
    }
}

impl BackgroundRemoval for RmbgStage {
    /// The object composited on white, cropped and padded (PartCrafter's `prepare_image`);
    /// `mask` is the cleaned binary mask (0/255) at the input's size.
    fn prepare(&self, image: &RgbImage, timings: &mut Timings) -> anyhow::Result<PreparedImage> {
        let p = self.prepare_full(image, timings)?;
        let mask =
            GrayImage::from_raw(p.width as u32, p.height as u32, p.alpha_clean.iter().map(|&v| v * 255).collect())
                .context("mask buffer size")?;
        Ok(PreparedImage { image: p.image()?, mask })
    }
}
