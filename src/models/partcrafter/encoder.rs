//! PartCrafter's image encoder: DINOv2 (transformers `Dinov2Model`, no registers) under the
//! checkpoint's `image_encoder_dinov2/` names, and the `feature_extractor_dinov2/`
//! preprocessing (`BitImageProcessor`).
//!
//! Why not candle-transformers' dinov2: it expects the original (non-HF) tensor names,
//! hard-codes LayerNorm eps 1e-5, resizes the position table with nearest neighbours and
//! returns classifier logits. Here: HF names, eps from the config, PyTorch's bicubic
//! (A = −0.75, align_corners = false, no antialias) for the 37×37 → 16×16 table, and all
//! tokens after the final LayerNorm are returned (`last_hidden_state`).
//!
//! The resize in the preprocessing reproduces PIL's fixed-point separable resampler so
//! that the 224×224 crop is bit-identical to the reference.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use image::RgbImage;
use serde::Deserialize;

use super::block::{linear, Fp32LayerNorm};
use crate::attention::attention;

fn d_true() -> bool {
    true
}

/// `image_encoder_dinov2/config.json` (transformers `Dinov2Config`; defaults are that class's).
#[derive(Debug, Clone, Deserialize)]
pub struct Dinov2Config {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_mlp_ratio")]
    pub mlp_ratio: f64,
    #[serde(default = "d_patch")]
    pub patch_size: usize,
    #[serde(default = "d_image_size")]
    pub image_size: usize,
    #[serde(default = "d_channels")]
    pub num_channels: usize,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_true")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default = "d_act")]
    pub hidden_act: String,
}

fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_patch() -> usize {
    14
}
fn d_image_size() -> usize {
    518
}
fn d_channels() -> usize {
    3
}
fn d_eps() -> f64 {
    1e-6
}
fn d_act() -> String {
    "gelu".into()
}

/// `{"shortest_edge": n}` or `{"height": h, "width": w}`.
#[derive(Debug, Clone, Deserialize)]
pub struct SizeSpec {
    pub shortest_edge: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
}

/// `feature_extractor_dinov2/preprocessor_config.json` (`BitImageProcessor`). The defaults
/// are the values PartCrafter's (and TripoSG's) released file holds, i.e. the standard
/// DINOv2 preprocessing — not `BitImageProcessor`'s own class defaults (CLIP statistics).
#[derive(Debug, Clone, Deserialize)]
pub struct PreprocessConfig {
    #[serde(default = "d_true")]
    pub do_resize: bool,
    #[serde(default = "d_size")]
    pub size: SizeSpec,
    /// PIL resampling filter id: 2 bilinear, 3 bicubic.
    #[serde(default = "d_resample")]
    pub resample: u32,
    #[serde(default = "d_true")]
    pub do_center_crop: bool,
    #[serde(default = "d_crop")]
    pub crop_size: SizeSpec,
    #[serde(default = "d_true")]
    pub do_rescale: bool,
    #[serde(default = "d_rescale")]
    pub rescale_factor: f64,
    #[serde(default = "d_true")]
    pub do_normalize: bool,
    #[serde(default = "d_mean")]
    pub image_mean: Vec<f32>,
    #[serde(default = "d_std")]
    pub image_std: Vec<f32>,
}

fn d_size() -> SizeSpec {
    SizeSpec { shortest_edge: Some(256), height: None, width: None }
}
fn d_resample() -> u32 {
    3
}
fn d_crop() -> SizeSpec {
    SizeSpec { shortest_edge: None, height: Some(224), width: Some(224) }
}
fn d_rescale() -> f64 {
    1.0 / 255.0
}
fn d_mean() -> Vec<f32> {
    vec![0.485, 0.456, 0.406]
}
fn d_std() -> Vec<f32> {
    vec![0.229, 0.224, 0.225]
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// What the preprocessing hands on: the uint8 crop (before rescaling) and the normalised
/// pixel tensor (1, 3, H, W) in f32.
pub struct Preprocessed {
    pub crop: RgbImage,
    pub pixel_values: Tensor,
}

/// Resize (shortest edge, PIL filter) → centre crop → rescale → normalise, as
/// `BitImageProcessor` does for an RGB uint8 image.
pub fn preprocess(image: &RgbImage, cfg: &PreprocessConfig, device: &Device) -> Result<Preprocessed> {
    let filter = match cfg.resample {
        2 => PilFilter::Bilinear,
        3 => PilFilter::Bicubic,
        r => candle_core::bail!("preprocessor resample={r} is not supported (2 bilinear, 3 bicubic)"),
    };
    if cfg.do_normalize && (cfg.image_mean.len() != 3 || cfg.image_std.len() != 3) {
        candle_core::bail!("preprocessor image_mean and image_std need 3 values each (RGB)");
    }
    let (w, h) = image.dimensions();
    let (w, h) = (w as usize, h as usize);
    if w == 0 || h == 0 {
        candle_core::bail!("cannot preprocess an empty image");
    }
    let mut img = image.clone();
    if cfg.do_resize {
        let (nw, nh) = match (cfg.size.shortest_edge, cfg.size.height, cfg.size.width) {
            // transformers' get_resize_output_image_size: the long side is truncated.
            (Some(s), _, _) => {
                if w <= h {
                    (s, (s as f64 * h as f64 / w as f64) as usize)
                } else {
                    ((s as f64 * w as f64 / h as f64) as usize, s)
                }
            }
            (None, Some(hh), Some(ww)) => (ww, hh),
            _ => candle_core::bail!("preprocessor size needs shortest_edge or height and width"),
        };
        img = pil_resize(&img, nw, nh, filter);
    }
    if cfg.do_center_crop {
        let (ch, cw) = match (cfg.crop_size.height, cfg.crop_size.width) {
            (Some(h), Some(w)) => (h, w),
            _ => candle_core::bail!("preprocessor crop_size needs height and width"),
        };
        img = center_crop(&img, cw, ch);
    }
    let (cw, ch) = img.dimensions();
    let (cw, ch) = (cw as usize, ch as usize);
    let mut data = vec![0f32; 3 * ch * cw];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            // transformers rescales in f64, stores f32, then normalises in f32.
            let mut v = if cfg.do_rescale { (p[c] as f64 * cfg.rescale_factor) as f32 } else { p[c] as f32 };
            if cfg.do_normalize {
                v = (v - cfg.image_mean[c]) / cfg.image_std[c];
            }
            data[(c * ch + y as usize) * cw + x as usize] = v;
        }
    }
    let pixel_values = Tensor::from_vec(data, (1, 3, ch, cw), device)?;
    Ok(Preprocessed { crop: img, pixel_values })
}

/// transformers' `center_crop`: top = ⌊(H − h)/2⌋, left = ⌊(W − w)/2⌋; pads with zeros when
/// the image is smaller (never the case after the shortest-edge resize).
fn center_crop(img: &RgbImage, cw: usize, ch: usize) -> RgbImage {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let top = (h - ch as i64).div_euclid(2);
    let left = (w - cw as i64).div_euclid(2);
    RgbImage::from_fn(cw as u32, ch as u32, |x, y| {
        let (sx, sy) = (x as i64 + left, y as i64 + top);
        if sx >= 0 && sy >= 0 && sx < w && sy < h {
            *img.get_pixel(sx as u32, sy as u32)
        } else {
            image::Rgb([0, 0, 0])
        }
    })
}

#[derive(Clone, Copy)]
enum PilFilter {
    Bilinear,
    Bicubic,
}

impl PilFilter {
    fn support(self) -> f64 {
        match self {
            PilFilter::Bilinear => 1.0,
            PilFilter::Bicubic => 2.0,
        }
    }

    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            PilFilter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            PilFilter::Bicubic => {
                // PIL's bicubic uses a = −0.5 (PyTorch's uses −0.75).
                let a = -0.5;
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
        }
    }
}

/// PIL keeps 8-bit resampling weights in fixed point with this many fractional bits.
const PIL_PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output pixel: first input index and fixed-point weights (PIL's `precompute_coeffs`
/// followed by its 8-bit normalisation).
fn pil_coeffs(in_size: usize, out_size: usize, filter: PilFilter) -> Vec<(usize, Vec<i64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C casts truncate toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let ws: Vec<f64> = (xmin..xmax).map(|x| filter.eval((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = ws.iter().sum();
            let one = (1u64 << PIL_PRECISION_BITS) as f64;
            let ks = ws
                .iter()
                .map(|&w| {
                    let k = if total != 0.0 { w / total } else { w };
                    if k < 0.0 {
                        (-0.5 + k * one) as i64
                    } else {
                        (0.5 + k * one) as i64
                    }
                })
                .collect();
            (xmin, ks)
        })
        .collect()
}

fn pil_clip8(acc: i64) -> u8 {
    (acc >> PIL_PRECISION_BITS).clamp(0, 255) as u8
}

/// PIL `Image.resize` for RGB uint8: horizontal pass (rounded to uint8), then vertical pass.
fn pil_resize(img: &RgbImage, out_w: usize, out_h: usize, filter: PilFilter) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let mut cur: Vec<u8> = src.clone();
    let mut cur_w = in_w;
    if out_w != in_w {
        let coeffs = pil_coeffs(in_w, out_w, filter);
        let mut out = vec![0u8; out_w * in_h * 3];
        for y in 0..in_h {
            for (xx, (xmin, ks)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PIL_PRECISION_BITS - 1);
                    for (j, k) in ks.iter().enumerate() {
                        acc += cur[(y * cur_w + xmin + j) * 3 + c] as i64 * k;
                    }
                    out[(y * out_w + xx) * 3 + c] = pil_clip8(acc);
                }
            }
        }
        cur = out;
        cur_w = out_w;
    }
    if out_h != in_h {
        let coeffs = pil_coeffs(in_h, out_h, filter);
        let mut out = vec![0u8; cur_w * out_h * 3];
        for (yy, (ymin, ks)) in coeffs.iter().enumerate() {
            for x in 0..cur_w {
                for c in 0..3 {
                    let mut acc: i64 = 1 << (PIL_PRECISION_BITS - 1);
                    for (j, k) in ks.iter().enumerate() {
                        acc += cur[((ymin + j) * cur_w + x) * 3 + c] as i64 * k;
                    }
                    out[(yy * cur_w + x) * 3 + c] = pil_clip8(acc);
                }
            }
        }
        cur = out;
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, cur).expect("buffer size matches")
}

/// PyTorch `interpolate(mode="bicubic", align_corners=False, antialias=False)` weights for
/// one axis: per output index, four (clamped input index, weight) taps, A = −0.75.
fn torch_bicubic_taps(in_size: usize, out_size: usize) -> Vec<[(usize, f64); 4]> {
    const A: f64 = -0.75;
    let cc1 = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let cc2 = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    // PyTorch computes the scale in f32 (opmath) as in/out when only a size is given.
    let scale = (in_size as f32 / out_size as f32) as f64;
    (0..out_size)
        .map(|o| {
            // Cubic source index is not clamped at 0 (unlike linear modes).
            let real = scale * (o as f64 + 0.5) - 0.5;
            let i0 = real.floor();
            let t = real - i0;
            let w = [cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)];
            let mut taps = [(0usize, 0.0f64); 4];
            for (k, tap) in taps.iter_mut().enumerate() {
                let idx = (i0 as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize;
                *tap = (idx, w[k]);
            }
            taps
        })
        .collect()
}

/// The position table for an input of `gh × gw` patches: the CLS row unchanged, the square
/// patch table resized by bicubic interpolation in f32 (transformers 4.51
/// `interpolate_pos_encoding`). Returns (1, 1 + gh·gw, D) in f32.
pub fn interpolate_pos_embed(table: &Tensor, gh: usize, gw: usize) -> Result<Tensor> {
    let (_, rows, dim) = table.dims3()?;
    let n = rows - 1;
    let side = (n as f64).sqrt().round() as usize;
    if side * side != n {
        candle_core::bail!("position table of {n} patch rows is not square");
    }
    let table = table.to_dtype(DType::F32)?;
    // transformers returns the table itself when the patch count and aspect match.
    if gh * gw == n && gh == gw {
        return Ok(table);
    }
    let device = table.device().clone();
    let flat: Vec<f32> = table.flatten_all()?.to_vec1()?;
    let src = &flat[dim..];
    let th = torch_bicubic_taps(side, gh);
    let tw = torch_bicubic_taps(side, gw);
    let mut out = flat[..dim].to_vec();
    out.reserve(gh * gw * dim);
    let mut acc = vec![0f64; dim];
    for ty in &th {
        for tx in &tw {
            acc.iter_mut().for_each(|a| *a = 0.0);
            for &(iy, wy) in ty {
                for &(ix, wx) in tx {
                    let w = wy * wx;
                    let row = &src[(iy * side + ix) * dim..(iy * side + ix + 1) * dim];
                    for (a, &v) in acc.iter_mut().zip(row) {
                        *a += w * v as f64;
                    }
                }
            }
            out.extend(acc.iter().map(|&a| a as f32));
        }
    }
    Tensor::from_vec(out, (1, 1 + gh * gw, dim), &device)
}

struct Dinov2Layer {
    norm1: Fp32LayerNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    lambda1: Tensor,
    norm2: Fp32LayerNorm,
    fc1: Linear,
    fc2: Linear,
    lambda2: Tensor,
    heads: usize,
}

impl Dinov2Layer {
    fn new(vb: VarBuilder, cfg: &Dinov2Config) -> Result<Self> {
        let d = cfg.hidden_size;
        let inner = (d as f64 * cfg.mlp_ratio) as usize;
        let att = vb.pp("attention");
        let qkv = |name: &str| -> Result<Linear> {
            let vb = att.pp("attention").pp(name);
            let w = vb.get((d, d), "weight")?;
            let b = if cfg.qkv_bias { Some(vb.get(d, "bias")?) } else { None };
            Ok(Linear::new(w, b))
        };
        Ok(Self {
            norm1: Fp32LayerNorm::new(vb.pp("norm1"), d, cfg.layer_norm_eps)?,
            query: qkv("query")?,
            key: qkv("key")?,
            value: qkv("value")?,
            dense: linear(att.pp("output").pp("dense"), d, d, true)?,
            lambda1: vb.pp("layer_scale1").get(d, "lambda1")?,
            norm2: Fp32LayerNorm::new(vb.pp("norm2"), d, cfg.layer_norm_eps)?,
            fc1: linear(vb.pp("mlp").pp("fc1"), d, inner, true)?,
            fc2: linear(vb.pp("mlp").pp("fc2"), inner, d, true)?,
            lambda2: vb.pp("layer_scale2").get(d, "lambda1")?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let hd = d / self.heads;
        let h = self.norm1.forward(x)?;
        let split = |t: Tensor| t.reshape((b, l, self.heads, hd))?.transpose(1, 2)?.contiguous();
        let q = split(self.query.forward(&h)?)?;
        let k = split(self.key.forward(&h)?)?;
        let v = split(self.value.forward(&h)?)?;
        let a = attention(&q, &k, &v, 1.0 / (hd as f64).sqrt(), false)?;
        let a = a.transpose(1, 2)?.reshape((b, l, d))?;
        let a = self.dense.forward(&a)?.broadcast_mul(&self.lambda1)?;
        let x = (x + a)?;
        let h = self.norm2.forward(&x)?;
        let h = self.fc2.forward(&self.fc1.forward(&h)?.gelu_erf()?)?;
        x + h.broadcast_mul(&self.lambda2)?
    }
}

/// DINOv2 with transformers' tensor names, returning `last_hidden_state`.
pub struct Dinov2Model {
    cls_token: Tensor,
    position_embeddings: Tensor,
    /// Position table resized for the configured crop, computed once at load.
    pos_cache: Option<((usize, usize), Tensor)>,
    patch_w: Tensor,
    patch_b: Tensor,
    layers: Vec<Dinov2Layer>,
    layernorm: Fp32LayerNorm,
    cfg: Dinov2Config,
}

impl Dinov2Model {
    /// `input_hw`: the pixel size `forward` will mostly see (the crop size), so its position
    /// table is interpolated once here.
    pub fn new(vb: VarBuilder, cfg: &Dinov2Config, input_hw: Option<(usize, usize)>) -> Result<Self> {
        if cfg.use_swiglu_ffn {
            candle_core::bail!("DINOv2 with a SwiGLU MLP is not supported (PartCrafter uses the plain MLP)");
        }
        if cfg.hidden_act != "gelu" {
            candle_core::bail!("DINOv2 hidden_act {} is not supported (exact gelu only)", cfg.hidden_act);
        }
        // Tolerate a `dinov2.` prefix, as a wrapped save would write.
        let vb = if !vb.contains_tensor("embeddings.cls_token") && vb.contains_tensor("dinov2.embeddings.cls_token") {
            vb.pp("dinov2")
        } else {
            vb
        };
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        if p == 0 || cfg.num_attention_heads == 0 || d % cfg.num_attention_heads != 0 {
            candle_core::bail!(
                "DINOv2 config: patch_size {p}, hidden_size {d} and {} heads do not fit",
                cfg.num_attention_heads
            );
        }
        let grid = cfg.image_size / p;
        let emb = vb.pp("embeddings");
        let position_embeddings = emb.get((1, 1 + grid * grid, d), "position_embeddings")?;
        let proj = emb.pp("patch_embeddings").pp("projection");
        let patch_w = proj
            .get((d, cfg.num_channels, p, p), "weight")?
            .reshape((d, cfg.num_channels * p * p))?
            .t()?
            .contiguous()?;
        let patch_b = proj.get(d, "bias")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Dinov2Layer::new(vb.pp("encoder").pp("layer").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let mut model = Self {
            cls_token: emb.get((1, 1, d), "cls_token")?,
            position_embeddings,
            pos_cache: None,
            patch_w,
            patch_b,
            layers,
            layernorm: Fp32LayerNorm::new(vb.pp("layernorm"), d, cfg.layer_norm_eps)?,
            cfg: cfg.clone(),
        };
        if let Some((h, w)) = input_hw {
            let key = (h / p, w / p);
            let table = model.pos_embed(key.0, key.1)?;
            model.pos_cache = Some((key, table));
        }
        Ok(model)
    }

    pub fn config(&self) -> &Dinov2Config {
        &self.cfg
    }

    /// The position table for `gh × gw` patches, in the model dtype.
    pub fn pos_embed(&self, gh: usize, gw: usize) -> Result<Tensor> {
        if let Some((key, t)) = &self.pos_cache {
            if *key == (gh, gw) {
                return Ok(t.clone());
            }
        }
        interpolate_pos_embed(&self.position_embeddings, gh, gw)?.to_dtype(self.position_embeddings.dtype())
    }

    /// Patch embedding + CLS + position table (`hidden_states[0]` in transformers).
    pub fn embed(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixel_values.dims4()?;
        let p = self.cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        let d = self.cfg.hidden_size;
        let x = pixel_values.to_dtype(self.patch_w.dtype())?.narrow(2, 0, gh * p)?.narrow(3, 0, gw * p)?;
        // A stride-p p×p convolution is a matmul over (c, ky, kx) patches.
        let patches =
            x.reshape((b, c, gh, p, gw, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b * gh * gw, c * p * p))?;
        let tokens = patches.matmul(&self.patch_w)?.broadcast_add(&self.patch_b)?.reshape((b, gh * gw, d))?;
        let cls = self.cls_token.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &tokens], 1)?;
        x.broadcast_add(&self.pos_embed(gh, gw)?)
    }

    /// `last_hidden_state`: (B, 1 + patches, D), CLS first, final LayerNorm applied.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.forward_with_hidden(pixel_values, None)
    }

    /// As `forward`, also pushing transformers' `hidden_states` (embeddings, then each layer's
    /// output before the final LayerNorm) into `hidden` when given.
    pub fn forward_with_hidden(&self, pixel_values: &Tensor, mut hidden: Option<&mut Vec<Tensor>>) -> Result<Tensor> {
        let mut x = self.embed(pixel_values)?;
        if let Some(h) = hidden.as_deref_mut() {
            h.push(x.clone());
        }
        for layer in &self.layers {
            x = layer.forward(&x)?;
            if let Some(h) = hidden.as_deref_mut() {
                h.push(x.clone());
            }
        }
        self.layernorm.forward(&x)
    }
}

/// Every tensor of an `image_encoder_dinov2/` checkpoint for `cfg`, in `state_dict` order.
pub fn tensor_specs(cfg: &Dinov2Config) -> Vec<crate::synth::TensorSpec> {
    use crate::synth::TensorSpec;
    let d = cfg.hidden_size;
    let p = cfg.patch_size;
    let g = cfg.image_size / p;
    let inner = (d as f64 * cfg.mlp_ratio) as usize;
    let mut s = vec![
        TensorSpec::f32("embeddings.cls_token", &[1, 1, d]),
        TensorSpec::f32("embeddings.mask_token", &[1, d]),
        TensorSpec::f32("embeddings.position_embeddings", &[1, 1 + g * g, d]),
        TensorSpec::f32("embeddings.patch_embeddings.projection.weight", &[d, cfg.num_channels, p, p]),
        TensorSpec::f32("embeddings.patch_embeddings.projection.bias", &[d]),
    ];
    for i in 0..cfg.num_hidden_layers {
        let n = |x: &str| format!("encoder.layer.{i}.{x}");
        s.push(TensorSpec::f32(n("norm1.weight"), &[d]));
        s.push(TensorSpec::f32(n("norm1.bias"), &[d]));
        for q in ["query", "key", "value"] {
            s.push(TensorSpec::f32(n(&format!("attention.attention.{q}.weight")), &[d, d]));
            if cfg.qkv_bias {
                s.push(TensorSpec::f32(n(&format!("attention.attention.{q}.bias")), &[d]));
            }
        }
        s.push(TensorSpec::f32(n("attention.output.dense.weight"), &[d, d]));
        s.push(TensorSpec::f32(n("attention.output.dense.bias"), &[d]));
        s.push(TensorSpec::f32(n("layer_scale1.lambda1"), &[d]));
        s.push(TensorSpec::f32(n("norm2.weight"), &[d]));
        s.push(TensorSpec::f32(n("norm2.bias"), &[d]));
        s.push(TensorSpec::f32(n("mlp.fc1.weight"), &[inner, d]));
        s.push(TensorSpec::f32(n("mlp.fc1.bias"), &[inner]));
        s.push(TensorSpec::f32(n("mlp.fc2.weight"), &[d, inner]));
        s.push(TensorSpec::f32(n("mlp.fc2.bias"), &[d]));
        s.push(TensorSpec::f32(n("layer_scale2.lambda1"), &[d]));
    }
    s.push(TensorSpec::f32("layernorm.weight", &[d]));
    s.push(TensorSpec::f32("layernorm.bias", &[d]));
    s
}
