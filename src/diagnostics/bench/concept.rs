//! `lumen bench concept`: one whole concept end to end, stage by stage, with synthetic
//! weights generated in memory: SDXL Turbo (text encoders, one UNet step, VAE) → BriaRMBG
//! (model input, forward, mask post-processing) → PartCrafter (DINOv2 with preprocessing,
//! the guided 50-step DiT loop, per-part SDF trunk and surface extraction) → 2048-point
//! sampling.
//!
//! Released sizes (the default on CUDA, `--full` on the CPU): N = 4 parts × 1024 tokens, 50
//! steps, a 512² image, RMBG at 1024², extraction on the pipeline's 2^8 lattice. Reduced
//! sizes (the CPU default): the golden tests' tiny SDXL / DINOv2 / DiT / decoder configs, RMBG
//! (which has no small variant) at 320², 64 tokens, a 2^6 lattice, so `make bench` stays
//! in minutes.
//!
//! Synthetic weights give a meaningless image, mask and SDF. Where the next stage needs a
//! real shape the bench says so and substitutes one, keeping the cost: the SDF decoder is
//! evaluated at every query point the extraction asks for, but the extraction sees a
//! sphere's distance per part (as the peer baseline timed its extraction on a sphere field);
//! a mask with no object is post-processed as a disc instead.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::peer::{self, Stage};
use super::{BenchOptions, BenchRow};
use crate::geometry::mesh::TriMesh;
use crate::geometry::sampling::{sample_parts, SampleOptions};
use crate::models::partcrafter::dit::{DitConfig, PartCrafterDit, PartIds};
use crate::models::partcrafter::encoder::{self, Dinov2Config, Dinov2Model, PreprocessConfig};
use crate::models::partcrafter::extract::{extract_field, ExtractOptions};
use crate::models::partcrafter::sampler;
use crate::models::partcrafter::scheduler::RectifiedFlowScheduler;
use crate::models::partcrafter::vae::{CrossAttention, SdfDecoder, VaeConfig};
use crate::models::rmbg::{prepare, BriaRmbg};
use crate::models::sdxl::clip::{self, ClipTextConfig, ClipTextModel};
use crate::models::sdxl::scheduler::{EulerAncestral, SchedulerConfig};
use crate::models::sdxl::unet::{AddedCond, UNet, UNetConfig};
use crate::models::sdxl::vae::{self as sdxl_vae, VaeConfig as SdxlVaeConfig, VaeDecoder};
use crate::synth::synth_var_builder;

/// The golden tests' tiny SDXL (`tests/goldens/sdxl/manifest.json` `config`): 64² images.
const TINY_TEXT_ENCODER: &str = r#"{"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64,
 "num_hidden_layers": 3, "num_attention_heads": 2, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
 "hidden_act": "quick_gelu", "projection_dim": 32, "eos_token_id": 2}"#;
const TINY_TEXT_ENCODER_2: &str = r#"{"vocab_size": 49408, "hidden_size": 64, "intermediate_size": 128,
 "num_hidden_layers": 4, "num_attention_heads": 2, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
 "hidden_act": "gelu", "projection_dim": 32, "eos_token_id": 2}"#;
const TINY_UNET: &str = r#"{"sample_size": 8, "in_channels": 4, "out_channels": 4, "center_input_sample": false,
 "flip_sin_to_cos": true, "freq_shift": 0,
 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
 "block_out_channels": [32, 64, 96], "layers_per_block": 2, "downsample_padding": 1,
 "mid_block_scale_factor": 1, "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 96,
 "transformer_layers_per_block": [1, 2, 3], "attention_head_dim": [1, 2, 3], "use_linear_projection": true,
 "addition_embed_type": "text_time", "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 80}"#;
const TINY_VAE: &str = r#"{"in_channels": 3, "out_channels": 3, "block_out_channels": [32, 32, 64, 64],
 "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": 0.13025,
 "force_upcast": true}"#;
/// The tiny PartCrafter of `tests/goldens/partcrafter/manifest.json`.
const TINY_DIT: &str = r#"{"num_attention_heads": 2, "width": 64, "in_channels": 8, "num_layers": 5,
 "cross_attention_dim": 32, "max_num_parts": 32, "global_attn_block_ids": [0, 2, 4]}"#;
const TINY_DINOV2: &str = r#"{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 4,
 "patch_size": 14, "image_size": 518, "layer_norm_eps": 1e-6}"#;
const TINY_SDF_VAE: &str = r#"{"latent_channels": 8, "num_attention_heads": 2, "width_decoder": 64,
 "num_layers_decoder": 2, "embedding_type": "frequency", "embed_frequency": 8, "embed_include_pi": false}"#;
/// DINOv2-L, the released `image_encoder_dinov2/config.json`.
const DINOV2_LARGE: &str = r#"{"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
 "mlp_ratio": 4, "patch_size": 14, "image_size": 518, "layer_norm_eps": 1e-6}"#;

/// Sizes of one bench concept.
#[derive(Debug, Clone)]
pub struct ConceptSize {
    pub parts: usize,
    pub tokens: usize,
    pub steps: usize,
    pub rmbg_size: usize,
    pub extract_depth: u32,
    pub points: usize,
}

impl ConceptSize {
    pub fn for_options(opts: &BenchOptions) -> Self {
        if opts.quick {
            Self { parts: 4, tokens: 64, steps: 50, rmbg_size: 320, extract_depth: 6, points: 2048 }
        } else {
            Self { parts: 4, tokens: 1024, steps: 50, rmbg_size: prepare::MODEL_SIZE, extract_depth: 8, points: 2048 }
        }
    }
}

/// Every model of the pipeline, with synthetic weights, in the pipeline's precision.
struct Models {
    te1: ClipTextModel,
    te2: ClipTextModel,
    unet: UNet,
    unet_sample: usize,
    vae: VaeDecoder,
    rmbg: BriaRmbg,
    dinov2: Dinov2Model,
    dit: PartCrafterDit,
    decoder: SdfDecoder,
}

impl Models {
    fn synthetic(opts: &BenchOptions) -> Result<Self> {
        let (dev, dtype) = (&opts.device, opts.dtype);
        let json = |tiny: &str, released: &str| if opts.quick { tiny.to_string() } else { released.to_string() };
        let te1_cfg: ClipTextConfig = serde_json::from_str(&json(TINY_TEXT_ENCODER, super::sdxl::TEXT_ENCODER_CONFIG))?;
        let te2_cfg: ClipTextConfig =
            serde_json::from_str(&json(TINY_TEXT_ENCODER_2, super::sdxl::TEXT_ENCODER_2_CONFIG))?;
        let unet_cfg: UNetConfig = serde_json::from_str(&json(TINY_UNET, super::sdxl::UNET_CONFIG))?;
        let vae_cfg: SdxlVaeConfig = serde_json::from_str(&json(TINY_VAE, super::sdxl::VAE_CONFIG))?;
        let dino_cfg: Dinov2Config = serde_json::from_str(&json(TINY_DINOV2, DINOV2_LARGE))?;
        let dit_cfg: DitConfig = if opts.quick { serde_json::from_str(TINY_DIT)? } else { DitConfig::released() };
        let sdf_cfg: VaeConfig = if opts.quick { serde_json::from_str(TINY_SDF_VAE)? } else { VaeConfig::released() };
        let unet_sample = if opts.quick { 8 } else { 64 };
        let vb = |dt: DType| synth_var_builder(dt, dev);
        Ok(Self {
            te1: ClipTextModel::new(vb(dtype), &te1_cfg, false)?,
            te2: ClipTextModel::new(vb(dtype), &te2_cfg, true)?,
            unet: UNet::new(vb(dtype), &unet_cfg)?,
            unet_sample,
            // The checkpoint's VAE runs in f32 (it overflows in f16), as the stage runs it.
            vae: VaeDecoder::new(vb(DType::F32), &vae_cfg)?,
            rmbg: super::rmbg::synthetic_net(dev)?,
            dinov2: Dinov2Model::new(vb(dtype), &dino_cfg, Some((224, 224)))?,
            dit: PartCrafterDit::new(vb(dtype), &dit_cfg)?,
            decoder: SdfDecoder::new(sdf_cfg, vb(dtype))?,
        })
    }
}

/// Per-stage wall times of one run, ms, the device synchronised at each stage boundary.
#[derive(Default)]
struct StageTimes(BTreeMap<&'static str, f64>);

impl StageTimes {
    fn time<T>(&mut self, device: &Device, stage: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        device.synchronize()?;
        let start = Instant::now();
        let out = f()?;
        device.synchronize()?;
        *self.0.entry(stage).or_default() += start.elapsed().as_secs_f64() * 1e3;
        super::sample_memory(device);
        Ok(out)
    }
}

/// What one run produced, for the notes.
struct RunFacts {
    image: (u32, u32),
    mask_substituted: bool,
    decoded_points: usize,
    faces: usize,
    sampled: usize,
}

/// The stages in the order they run, with their peer-baseline stage at released sizes.
const STAGES: [(&str, &str); 6] = [
    ("sdxl", "text encoders + 1 UNet step + f32 VAE decode + RGB"),
    ("rmbg", "model input + forward + mask read-back + post-processing"),
    ("dinov2", "preprocess + DINOv2 forward"),
    ("dit_loop", "guided sampling loop (CFG batch 2N)"),
    ("sdf_extract", "per part: SDF trunk + fast extraction (decoder at every query point)"),
    ("sampling", "points with part ids over all part meshes"),
];

fn reference(stage: &str) -> Option<f64> {
    Some(match stage {
        "sdxl" => peer::ms(Stage::SdxlPipeline),
        "rmbg" => peer::ms(Stage::RmbgForward1024),
        "dinov2" => peer::ms(Stage::Dinov2WithPreprocess),
        "dit_loop" => peer::ms(Stage::Loop50N4),
        "sdf_extract" => 4.0 * peer::ms(Stage::ExtractOnePart),
        "total" => peer::ms(Stage::ConceptN4),
        _ => return None,
    })
}

pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let size = ConceptSize::for_options(opts);
    let start = Instant::now();
    let models = Models::synthetic(opts)?;
    opts.device.synchronize()?;
    let setup_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut rows = vec![BenchRow::new("concept", "synthetic weights (all models)", opts, 1, (setup_ms, setup_ms))
        .note("generated by the goldens rule on the CPU, moved to the device; not part of a concept")];

    // One warm-up concept, then `iters` timed ones.
    run_once(&models, &size, opts, 0)?;
    let mut runs = Vec::new();
    let mut facts = None;
    for i in 0..opts.iters {
        let mut times = StageTimes::default();
        let f = run_once_timed(&models, &size, opts, i as u64 + 1, &mut times)?;
        runs.push(times.0);
        facts = Some(f);
    }
    let facts = facts.context("no timed run")?;
    let released = !opts.quick;
    let stat = |key: &str| -> (f64, f64) {
        let mut v: Vec<f64> = runs.iter().map(|r| if key == "total" { r.values().sum() } else { r[key] }).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[0])
    };
    let what = format!(
        "N={} × {} tokens, {} steps, image {}×{}, RMBG {}², lattice 2^{}",
        size.parts, size.tokens, size.steps, facts.image.0, facts.image.1, size.rmbg_size, size.extract_depth
    );
    for (stage, desc) in STAGES {
        let mut note = desc.to_string();
        if stage == "rmbg" && facts.mask_substituted {
            note += "; the synthetic mask held no object, post-processing ran on a disc mask";
        }
        if stage == "sdf_extract" {
            note += &format!(
                "; {} query points decoded, {} faces; extraction saw sphere distances (synthetic SDF is noise)",
                facts.decoded_points, facts.faces
            );
        }
        if stage == "sampling" {
            note += &format!("; {} points", facts.sampled);
        }
        rows.push(BenchRow::new("concept", stage, opts, opts.iters, stat(stage)).note(note).reference(if released {
            reference(stage)
        } else {
            None
        }));
    }
    rows.push(
        BenchRow::new("concept", "total", opts, opts.iters, stat("total"))
            .note(format!("{what}; sum of the stages above per run (median and min of the per-run sums)"))
            .reference(if released { reference("total") } else { None }),
    );
    Ok(rows)
}

fn run_once(models: &Models, size: &ConceptSize, opts: &BenchOptions, seed: u64) -> Result<RunFacts> {
    run_once_timed(models, size, opts, seed, &mut StageTimes::default())
}

fn run_once_timed(
    m: &Models,
    size: &ConceptSize,
    opts: &BenchOptions,
    seed: u64,
    times: &mut StageTimes,
) -> Result<RunFacts> {
    let dev = &opts.device;
    let image = times.time(dev, "sdxl", || text_to_image(m, opts, seed))?;
    let (prepared, mask_substituted) = times.time(dev, "rmbg", || background(m, &image, size.rmbg_size, dev))?;
    let embeds = times.time(dev, "dinov2", || {
        let pre = encoder::preprocess(&prepared, &PreprocessConfig::default(), dev)?;
        Ok(m.dinov2.forward(&pre.pixel_values)?)
    })?;
    let latents = times.time(dev, "dit_loop", || {
        let noise = sampler::initial_noise(seed, size.parts, size.tokens, m.dit.config().in_channels, dev)?;
        let sched = RectifiedFlowScheduler::default();
        sampler::sample(&m.dit, &sched, &embeds, &noise, size.steps, 7.0, PartIds::Batch, None)
    })?;
    let (meshes, decoded_points) = times.time(dev, "sdf_extract", || extract_parts(m, &latents, size))?;
    let cloud = times.time(dev, "sampling", || sample_parts(&meshes, &SampleOptions::new(size.points, seed)))?;
    Ok(RunFacts {
        image: (image.width(), image.height()),
        mask_substituted,
        decoded_points,
        faces: meshes.iter().map(|m| m.faces.len()).sum(),
        sampled: cloud.positions.len(),
    })
}

/// SDXL Turbo, one step, as the stage runs it: both text encoders, the UNet at t = 999, the
/// Euler-ancestral update, the f32 VAE decode and the conversion to RGB bytes.
fn text_to_image(m: &Models, opts: &BenchOptions, seed: u64) -> Result<RgbImage> {
    let (dev, dtype) = (&opts.device, opts.dtype);
    let (p1, p2) = super::sdxl::prompt_ids();
    let o1 = m.te1.forward(&clip::ids_tensor(&[p1], dev)?)?;
    let o2 = m.te2.forward(&clip::ids_tensor(&[p2], dev)?)?;
    let context = clip::concat_features(&o1, &o2)?;
    let text_embeds = o2.text_embeds.clone().context("text_encoder_2 without projection")?;
    let px = (m.unet_sample * 8) as f32;
    let time_ids = Tensor::new(&[[px, px, 0., 0., px, px]], dev)?.to_dtype(dtype)?;
    let sched = EulerAncestral::new(&SchedulerConfig::sdxl_turbo(), 1)?;
    let s = m.unet_sample;
    let mut rng = crate::rng::Rng::derive(seed, "bench.concept.latents");
    let unit = Tensor::from_vec(rng.normal_vec(4 * s * s), (1, 4, s, s), dev)?;
    let latents = (unit * sched.init_noise_sigma)?;
    let input = sched.scale_model_input(&latents, 0)?.to_dtype(dtype)?;
    let added = AddedCond { text_embeds: &text_embeds, time_ids: &time_ids };
    let eps = m.unet.forward(&input, sched.timesteps[0], &context, Some(added))?.to_dtype(DType::F32)?;
    let noise = Tensor::from_vec(rng.normal_vec(4 * s * s), (1, 4, s, s), dev)?;
    let out = sched.step(&eps, 0, &latents, &noise)?;
    let raw = m.vae.decode_latents(&out.prev_sample.to_dtype(DType::F32)?)?;
    let (w, h, bytes) = sdxl_vae::to_rgb8(&raw)?;
    RgbImage::from_raw(w as u32, h as u32, bytes).context("RGB buffer size")
}

/// BriaRMBG as the stage runs it (input on the CPU, forward on the device, mask back, then
/// the CPU post-processing). Returns the prepared image and whether the mask was replaced.
fn background(m: &Models, image: &RgbImage, size: usize, dev: &Device) -> Result<(RgbImage, bool)> {
    let x = prepare::model_input(image, size, &Device::Cpu)?.to_device(dev)?;
    let d1: Vec<f32> = m.rmbg.forward_mask(&x)?.flatten_all()?.to_vec1()?;
    match prepare::prepare_from_mask(image, &d1, size, size) {
        Ok(p) => Ok((p.image()?, false)),
        Err(_) => {
            let disc = super::rmbg::disc_mask(size);
            Ok((prepare::prepare_from_mask(image, &disc, size, size)?.image()?, true))
        }
    }
}

/// Per part: the decoder trunk, then the pipeline's fast extraction. Every query point goes
/// through the decoder (that is the cost); the extraction is given a sphere's distance at
/// those points, one sphere per part along x, so each part has a surface to mesh.
fn extract_parts(m: &Models, latents: &Tensor, size: &ConceptSize) -> Result<(Vec<TriMesh>, usize)> {
    let opts = ExtractOptions {
        fast_depth: size.extract_depth,
        fast_coarse_depth: ExtractOptions::default().fast_coarse_depth.min(size.extract_depth),
        ..ExtractOptions::default()
    };
    let n = latents.dim(0)?;
    let mut meshes = Vec::with_capacity(n);
    let mut decoded = 0;
    for p in 0..n {
        let part = m.decoder.prepare(&latents.get(p)?)?;
        let cx = -0.6 + 1.2 * p as f32 / (n.max(2) - 1) as f32;
        let mut first = true;
        let mut field = |pts: &[[f32; 3]]| -> Result<Vec<f32>> {
            let mode = if first { opts.first_call_attention } else { CrossAttention::Full };
            first = false;
            let sdf = m.decoder.decode_points(&part, pts, mode)?;
            anyhow::ensure!(sdf.len() == pts.len(), "decoder returned {} values for {} points", sdf.len(), pts.len());
            Ok(pts.iter().map(|q| 0.3 - ((q[0] - cx).powi(2) + q[1] * q[1] + q[2] * q[2]).sqrt()).collect())
        };
        let g = extract_field(&mut field, &opts)?;
        decoded += g.decoded_points;
        meshes.push(g.mesh);
    }
    Ok((meshes, decoded))
}
