//! Predicted device memory of each pipeline stage at the released sizes, from tensor shapes
//! alone (no weights, no GPU): resident weights at the pipeline's CUDA dtypes, and each
//! stage's largest set of live activations, written out term by term from the code that
//! runs it.
//!
//! Why term by term: the answer that matters ("does N = 16 fit an L4?") is decided by a few
//! large tensors (the DiT's long skips and MLP, the SDF decoder's query chunk, the VAE's
//! 512² maps), and each term names the code it comes from, so a measured peak that disagrees
//! points at the term to fix. Attention's extra memory goes through the attention plan's own
//! path choice and query blocking ([`crate::attention::plan`]), so the prediction follows
//! the code when either changes.
//!
//! Not counted: allocator rounding and fragmentation, kernels' internal scratch (cuBLAS's
//! workspace), a weight transform's transient copy at load time.

use candle_core::DType;

use crate::attention::plan::{self, Dims, Path};
use crate::attention::SCORE_BUDGET_BYTES;
use crate::diagnostics::bench::partcrafter::COND_TOKENS;
use crate::models::partcrafter::dit::DitConfig;
use crate::models::partcrafter::encoder::Dinov2Config;
use crate::models::partcrafter::vae::{VaeConfig as SdfConfig, DECODE_CHUNK_CUDA};
use crate::models::rmbg::{RsuKind, DEC_STAGES, ENC_STAGES};

pub const MIB: f64 = (1u64 << 20) as f64;
pub const GIB: f64 = (1u64 << 30) as f64;

/// What an NVIDIA L4 (24 GB = 22.5 GiB, ECC on) leaves to one process after the driver's own
/// reservation: about 22.5 GiB (`nvidia-smi` reports 23 034 MiB total on a Cloud Run L4).
pub const L4_USABLE_BYTES: u64 = 22 * (1 << 30) + (1 << 29);

/// CUDA context, cuBLAS and cuDNN handles and loaded kernel modules: outside the stream
/// allocator, so never measured by the suite; a typical figure, not a measurement.
pub const CONTEXT_BYTES: u64 = 512 << 20;

/// The largest cuDNN workspace a measurement may hold at once (`conv::plan`); afterwards
/// the engine keeps only the chosen algorithms' need, but the peak can include the cap.
pub const CUDNN_WORKSPACE_BYTES: u64 = crate::conv::plan::WORKSPACE_CAP_BYTES as u64;

// Parameter counts the SDXL stages load (tests/released/files.json for the text encoders;
// the loaders' own tensor lists at the released configs for the UNet and the VAE decoder:
// checked by this module's tests against `checkpoint::expected_tensors`).
pub const TEXT_ENCODER_PARAMS: u64 = 123_060_480;
pub const TEXT_ENCODER_2_PARAMS: u64 = 694_659_840;
pub const UNET_PARAMS: u64 = 2_567_463_684;
/// `post_quant_conv` + decoder (the encoder is not loaded).
pub const VAE_DECODER_PARAMS: u64 = 49_490_199;

/// Compute capability the predictions assume for the attention path: the L4's 8.9.
const L4_CC: Option<(i32, i32)> = Some((8, 9));

/// The pipeline's model stages, in the order a concept runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    TextEncoders,
    Unet,
    VaeDecode,
    Rmbg,
    Dinov2,
    DitSampling,
    SdfDecoding,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::TextEncoders,
        Stage::Unet,
        Stage::VaeDecode,
        Stage::Rmbg,
        Stage::Dinov2,
        Stage::DitSampling,
        Stage::SdfDecoding,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::TextEncoders => "sdxl text encoders",
            Stage::Unet => "sdxl unet step",
            Stage::VaeDecode => "sdxl vae decode 512²",
            Stage::Rmbg => "rmbg 1024²",
            Stage::Dinov2 => "dinov2 224²",
            Stage::DitSampling => "dit sampling (cfg)",
            Stage::SdfDecoding => "sdf decoding",
        }
    }

    /// Parameters the stage holds on the device at the released sizes.
    pub fn params(self) -> u64 {
        let count = |specs: Vec<crate::synth::TensorSpec>| -> u64 {
            specs.iter().map(|s| s.shape.iter().map(|&d| d as u64).product::<u64>()).sum()
        };
        match self {
            Stage::TextEncoders => TEXT_ENCODER_PARAMS + TEXT_ENCODER_2_PARAMS,
            Stage::Unet => UNET_PARAMS,
            Stage::VaeDecode => VAE_DECODER_PARAMS,
            Stage::Rmbg => count(crate::models::rmbg::BriaRmbg::tensor_specs(&Default::default())),
            Stage::Dinov2 => count(crate::models::partcrafter::encoder::tensor_specs(&dinov2_config())),
            Stage::DitSampling => count(crate::models::partcrafter::dit::tensor_specs(&DitConfig::released())),
            Stage::SdfDecoding => count(SdfConfig::released().decoder_tensor_specs()),
        }
    }

    /// The dtype the pipeline holds the stage's weights in on CUDA: f16, except the SDXL VAE
    /// (f32, as diffusers upcasts it) and BriaRMBG (f32, as the reference runs it).
    pub fn cuda_dtype(self) -> DType {
        match self {
            Stage::VaeDecode | Stage::Rmbg => DType::F32,
            _ => DType::F16,
        }
    }

    pub fn weight_bytes(self) -> u64 {
        self.params() * self.cuda_dtype().size_in_bytes() as u64
    }
}

/// The released `image_encoder_dinov2/config.json` (DINOv2-L/14; the fields lumen reads,
/// checked against the vendored file by this module's tests).
pub const DINOV2_CONFIG: &str = r#"{"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
 "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "num_channels": 3, "layer_norm_eps": 1e-6, "qkv_bias": true}"#;

pub fn dinov2_config() -> Dinov2Config {
    serde_json::from_str(DINOV2_CONFIG).expect("DINOV2_CONFIG parses")
}

/// One stage's predicted activations: the total and its terms, largest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Activations {
    pub bytes: u64,
    pub terms: Vec<(String, u64)>,
}

impl Activations {
    fn of(mut terms: Vec<(String, u64)>) -> Self {
        terms.sort_by_key(|t| std::cmp::Reverse(t.1));
        Self { bytes: terms.iter().map(|t| t.1).sum(), terms }
    }

    /// The two largest terms, for a table note.
    pub fn summary(&self) -> String {
        let t: Vec<String> =
            self.terms.iter().take(2).map(|(n, b)| format!("{n} {:.0} MiB", *b as f64 / MIB)).collect();
        t.join(", ")
    }
}

/// Extra device memory of one attention call beyond q, k, v and the output, on `path`:
/// nothing on the fused path; on the safe path q scaled by its power of two, two score
/// blocks (scores and probabilities) of [`plan::query_block_rows`] rows and the query block's
/// copy, and the concatenation of the blocks; on the blocked path (f32) the upcasts, kᵀ's
/// copy, three f32 score blocks (scores, scaled, softmax) and the concatenation.
pub fn attention_extra_bytes(path: Path, dtype: DType, s: &Dims) -> u64 {
    let e = dtype.size_in_bytes();
    let bh = s.b * s.h;
    let (q, k, v, out) = (bh * s.lq * s.d, bh * s.lk * s.d, bh * s.lk * s.dv, bh * s.lq * s.dv);
    let blocked = |elem: usize| {
        let rows = plan::query_block_rows(SCORE_BUDGET_BYTES, s, elem);
        (rows, (rows * bh * s.lk * elem) as u64, if s.lq > rows { (out * elem) as u64 } else { 0 })
    };
    match path {
        Path::Fused => 0,
        Path::Safe => {
            let (rows, scores, cat) = blocked(e);
            let scaled_q = if plan::split_scale(1.0 / (s.d as f64).sqrt()).0 != 1.0 { q * e } else { 0 };
            scaled_q as u64 + 2 * scores + (rows * bh * s.d * e) as u64 + cat
        }
        Path::Blocked => {
            let (rows, scores, cat) = blocked(4);
            let upcast = if dtype == DType::F32 { 0 } else { (q + k + v + out) * 4 };
            (upcast + k * 4 + rows * bh * s.d * 4) as u64 + 3 * scores + cat
        }
    }
}

/// The path the pipeline takes for a call on an L4, unless `forced`.
fn path_for(dtype: DType, s: &Dims, forced: Option<Path>) -> Path {
    forced.unwrap_or_else(|| plan::choose(L4_CC, dtype, s).0)
}

/// One full score matrix of a call: what an attention without query blocking or a fused
/// kernel materialises (the design note's "materialised scores").
pub fn materialised_scores_bytes(dtype: DType, s: &Dims) -> u64 {
    (s.b * s.h * s.lq * s.lk * dtype.size_in_bytes()) as u64
}

/// The attention calls of one DiT forward: (global self, local self, local cross, global
/// cross) shapes for B rows of N parts, L tokens a part.
pub fn dit_attention_dims(cfg: &DitConfig, rows: usize, parts: usize, tokens: usize) -> [Dims; 4] {
    let (h, d, l, g) = (cfg.num_attention_heads, cfg.width / cfg.num_attention_heads, tokens + 1, rows / parts);
    let dims = |b, lq, lk| Dims { b, h, lq, lk, d, dv: d };
    [dims(g, parts * l, parts * l), dims(rows, l, l), dims(rows, l, COND_TOKENS), dims(g, parts * l, COND_TOKENS)]
}

/// The DiT sampling loop with `parts` parts of `tokens` latent tokens (`cfg_guidance`: the
/// batch doubles), attention on the L4's path or `forced`.
///
/// Terms (X = one hidden-state tensor, rows × (tokens + 1) × width): the long skips the first
/// half of the blocks push (num_layers / 2 · X, `dit.rs`) plus the block input; the largest
/// block transient, 9 X (the MLP: norm, 4X up-projection and its 4X GELU; a global
/// self-attention holds as much: norm, q, k, v, their part-major copies, output and its copy);
/// attention's extra memory; the conditioning's cross-attention K/V computed once per run;
/// the sampler's latents and velocities in f32.
pub fn dit_sampling(
    cfg: &DitConfig,
    parts: usize,
    tokens: usize,
    cfg_guidance: bool,
    forced: Option<Path>,
) -> Activations {
    let dtype = Stage::DitSampling.cuda_dtype();
    let e = dtype.size_in_bytes() as u64;
    let rows = if cfg_guidance { 2 * parts } else { parts };
    let x = (rows * (tokens + 1) * cfg.width) as u64 * e;
    let global = cfg.global_blocks().unwrap_or_default();
    let cond_rows: u64 =
        (0..cfg.num_layers).map(|i| if global.contains(&i) { rows / parts } else { rows } as u64).sum();
    let attention = dit_attention_dims(cfg, rows, parts, tokens)
        .iter()
        .map(|s| attention_extra_bytes(path_for(dtype, s, forced), dtype, s))
        .max()
        .unwrap_or(0);
    let latents = (parts * tokens * cfg.in_channels) as u64;
    Activations::of(vec![
        (format!("long skips {}·X + block input", cfg.num_layers / 2), (cfg.num_layers as u64 / 2 + 1) * x),
        ("block transient 9·X".into(), 9 * x),
        ("attention extra".into(), attention),
        ("cross-attention K/V cache".into(), 2 * cond_rows * (COND_TOKENS * cfg.width) as u64 * e),
        ("sampler latents".into(), latents * (28 + 2 * e)),
    ])
}

/// One chunk of the SDF decoder's query path (`vae.rs`), attention on the L4's path or
/// `forced`: 10 X (X = chunk × width: the residual stream, the FFN's norm, its 4X
/// up-projection and 4X GELU), attention's extra memory against the part's latent tokens,
/// the part's trunk output and its cross-attention K/V, the points and their embedding.
pub fn sdf_decoding(cfg: &SdfConfig, chunk: usize, tokens: usize, forced: Option<Path>) -> Activations {
    let dtype = Stage::SdfDecoding.cuda_dtype();
    let e = dtype.size_in_bytes() as u64;
    let (w, h) = (cfg.width_decoder, cfg.num_attention_heads);
    let x = (chunk * w) as u64 * e;
    let s = Dims { b: 1, h, lq: chunk, lk: tokens, d: w / h, dv: w / h };
    Activations::of(vec![
        ("query chunk 10·X".into(), 10 * x),
        ("attention extra".into(), attention_extra_bytes(path_for(dtype, &s, forced), dtype, &s)),
        ("trunk output + K/V".into(), 3 * (tokens * w) as u64 * e),
        ("points + embedding (f32)".into(), (chunk * (3 + cfg.embed_dim()) * 4) as u64),
    ])
}

/// A transformer stack over `tokens` × `width` (CLIP text layers, DINOv2): 10 X of layer
/// transients (residual, norm, q, k, v, output, the 4X MLP and its activation) plus attention.
fn transformer(name: &str, tokens: usize, width: usize, heads: usize, dtype: DType) -> Vec<(String, u64)> {
    let x = (tokens * width * dtype.size_in_bytes()) as u64;
    let s = Dims { b: 1, h: heads, lq: tokens, lk: tokens, d: width / heads, dv: width / heads };
    vec![
        (format!("{name} layer 10·X"), 10 * x),
        (format!("{name} attention extra"), attention_extra_bytes(path_for(dtype, &s, None), dtype, &s)),
    ]
}

/// Both CLIP text encoders on 77 tokens, batch 1 (SDXL Turbo runs without guidance): the
/// larger encoder's layer, plus both encoders' kept hidden states.
pub fn text_encoders() -> Activations {
    let e = Stage::TextEncoders.cuda_dtype().size_in_bytes() as u64;
    let mut terms = transformer("bigG", 77, 1280, 20, DType::F16);
    terms.push(("kept hidden states".into(), 3 * 77 * (768 + 1280) * e));
    Activations::of(terms)
}

/// DINOv2-L/14 on one 224² crop (257 tokens; encoded once and broadcast to the parts).
pub fn dinov2() -> Activations {
    let cfg = dinov2_config();
    let mut terms =
        transformer("dinov2", COND_TOKENS, cfg.hidden_size, cfg.num_attention_heads, Stage::Dinov2.cuda_dtype());
    terms.push(("pixels (f32)".into(), 2 * 3 * 224 * 224 * 4));
    Activations::of(terms)
}

/// One SDXL UNet step at a 64² latent, batch 1: the nine down-path skips the up path
/// concatenates, the 32² transformer (1024 tokens × 640: residual, norm, GEGLU's 8C
/// projection, its 4C gate and product = 18 C a token) with its attention, and the largest
/// up-path ResNet (960 → 320 channels at 64²: input, norm, output).
pub fn unet() -> Activations {
    let dtype = Stage::Unet.cuda_dtype();
    let e = dtype.size_in_bytes() as u64;
    let skips: u64 = [(320, 64 * 64, 3), (320, 32 * 32, 1), (640, 32 * 32, 2), (640, 16 * 16, 1), (1280, 16 * 16, 2)]
        .iter()
        .map(|&(c, hw, n)| (c * hw * n) as u64)
        .sum();
    let s = Dims { b: 1, h: 10, lq: 1024, lk: 1024, d: 64, dv: 64 };
    Activations::of(vec![
        ("32² transformer 18·C a token".into(), 18 * 640 * 1024 * e),
        ("down-path skips".into(), skips * e),
        ("up ResNet 960→320 @64²".into(), (2 * 960 + 2 * 320) * 64 * 64 * e),
        ("attention extra".into(), attention_extra_bytes(path_for(dtype, &s, None), dtype, &s)),
    ])
}

/// The SDXL VAE decoder from a 64² latent to 512², f32: the largest of its ResNets and
/// upsamplers walked over the up blocks of the released config (128/256/512/512 channels,
/// three ResNets per block, ×2 upsampling after the first three), and the mid-block
/// attention (4096 tokens, one head of 512, f32: the blocked path).
pub fn vae_decode(channels: &[usize], resnets: usize, latent: usize) -> Activations {
    let e = Stage::VaeDecode.cuda_dtype().size_in_bytes() as u64;
    let mut worst = (String::new(), 0u64);
    let mut consider = |name: String, bytes: u64| {
        if bytes > worst.1 {
            worst = (name, bytes);
        }
    };
    let rev: Vec<usize> = channels.iter().rev().copied().collect();
    let (mut side, mut cin) = (latent, rev[0]);
    for (i, &cout) in rev.iter().enumerate() {
        let hw = (side * side) as u64;
        for r in 0..resnets {
            let c_in = if r == 0 { cin } else { cout } as u64;
            let c_out = cout as u64;
            // Input, its GroupNorm+SiLU, conv1's output; then input, h, norm(h), conv2, shortcut.
            let live = (2 * c_in + c_out).max(c_in + 3 * c_out + if c_in != c_out { c_out } else { 0 });
            consider(format!("up block {i} ResNet {c_in}→{c_out} @{side}²"), live * hw * e);
        }
        if i + 1 < rev.len() {
            // Input, the nearest-upsampled map and the conv's output.
            consider(format!("up block {i} upsampler {cout} @{}²", 2 * side), (cout as u64) * hw * (1 + 4 + 4) * e);
            side *= 2;
        }
        cin = cout;
    }
    let c = rev[0];
    let s = Dims { b: 1, h: 1, lq: latent * latent, lk: latent * latent, d: c, dv: c };
    let mid = (4 * latent * latent * c) as u64 * e + attention_extra_bytes(Path::Blocked, DType::F32, &s);
    Activations::of(vec![worst, ("mid-block attention".into(), mid)])
}

/// BriaRMBG at a `size`² input, f32: every encoder output and decoder feature is kept until
/// the side head (`rmbg/mod.rs` trunk), so the peak is at stage1d, the last RSU-7 at half the
/// input size: the kept maps, the upsampled feature and the concatenation it reads, and the
/// RSU's own maps.
pub fn rmbg(size: usize) -> Activations {
    let e = Stage::Rmbg.cuda_dtype().size_in_bytes() as u64;
    let side = |k: usize| (size / 2) >> k; // stage k runs at (size / 2) / 2^k
    let map = |c: usize, k: usize| (c * side(k) * side(k)) as u64 * e;
    let kept: u64 = ENC_STAGES.iter().enumerate().map(|(k, s)| map(s.4, k)).sum::<u64>()
        + DEC_STAGES.iter().take(4).enumerate().map(|(j, s)| map(s.4, 4 - j)).sum::<u64>();
    let (_, kind, cin, mid, cout) = DEC_STAGES[4];
    Activations::of(vec![
        ("kept encoder outputs and decoder features".into(), kept),
        ("stage1d input (upsampled + concatenated)".into(), map(cin / 2, 0) + map(cin, 0)),
        ("stage1d RSU maps".into(), rsu_maps(kind, mid, cout, map(1, 0))),
        ("image and mask (f32)".into(), ((3 + 2) * size * size) as u64 * 4),
    ])
}

/// An RSU's own live maps at its top level, per channel-map of `plane` bytes: its input
/// convolution's output, the encoder maps (a pooled RSU-L: 4/3 · mid over its pyramid; RSU-4F:
/// 4 · mid at full size), and at the top decoder step the upsampled map, the concatenation
/// and the convolution's output before and after its ReLU.
fn rsu_maps(kind: RsuKind, mid: usize, cout: usize, plane: u64) -> u64 {
    let encoder = match kind {
        RsuKind::Pooled(_) => 4 * mid as u64 / 3,
        RsuKind::Dilated => 4 * mid as u64,
    };
    (cout as u64 + encoder + 3 * mid as u64 + 2 * cout as u64) * plane
}

/// Every stage's activations at `parts` parts (the DiT's and the SDF decoder's on the L4
/// path or `forced`), in [`Stage::ALL`] order.
pub fn all_stages(parts: usize, forced: Option<Path>) -> Vec<(Stage, Activations)> {
    let vae: crate::models::sdxl::vae::VaeConfig =
        serde_json::from_str(crate::diagnostics::bench::sdxl::VAE_CONFIG).expect("released VAE config");
    Stage::ALL
        .iter()
        .map(|&stage| {
            let a = match stage {
                Stage::TextEncoders => text_encoders(),
                Stage::Unet => unet(),
                Stage::VaeDecode => vae_decode(&vae.block_out_channels, vae.layers_per_block + 1, 64),
                Stage::Rmbg => rmbg(1024),
                Stage::Dinov2 => dinov2(),
                Stage::DitSampling => dit_sampling(&DitConfig::released(), parts, 1024, true, forced),
                Stage::SdfDecoding => sdf_decoding(&SdfConfig::released(), DECODE_CHUNK_CUDA, 1024, forced),
            };
            (stage, a)
        })
        .collect()
}

/// The whole pipeline on one card at `parts` parts: every stage's weights stay resident
/// (`PartCrafterGenerator::load` loads them all), stages run one at a time, so the peak is the
/// weights, the largest stage's activations, a cuDNN measurement's workspace and the context.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelinePeak {
    pub weights: u64,
    pub largest: (Stage, u64),
    pub workspace: u64,
    pub context: u64,
}

impl PipelinePeak {
    pub fn total(&self) -> u64 {
        self.weights + self.largest.1 + self.workspace + self.context
    }

    pub fn fits(&self, usable: u64) -> bool {
        self.total() <= usable
    }
}

pub fn pipeline(parts: usize, forced: Option<Path>) -> PipelinePeak {
    let largest =
        all_stages(parts, forced).into_iter().map(|(s, a)| (s, a.bytes)).max_by_key(|&(_, b)| b).expect("stages");
    PipelinePeak {
        weights: Stage::ALL.iter().map(|s| s.weight_bytes()).sum(),
        largest,
        workspace: CUDNN_WORKSPACE_BYTES,
        context: CONTEXT_BYTES,
    }
}
