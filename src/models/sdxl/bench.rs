//! `lumen bench sdxl`: the stage at SDXL Turbo's released sizes with synthetic weights.
//!
//! Weights come from the goldens' synthetic rule, generated straight into memory by a
//! `VarBuilder` backend (a real-size checkpoint would be 13 GB of f32 on disk), and the
//! models are the same code the stage runs. Configs are SDXL Turbo's `config.json`
//! values (hub repo `stabilityai/sdxl-turbo`, diffusers layout), as JSON so they go
//! through the same serde structs as a downloaded checkpoint.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::clip::{self, ClipTextConfig, ClipTextModel};
use super::scheduler::{EulerAncestral, SchedulerConfig};
use super::unet::{AddedCond, UNet, UNetConfig};
use super::vae::{VaeConfig, VaeDecoder};
use crate::bench::{measure, BenchOptions, BenchRow};

/// `text_encoder/config.json` of SDXL Turbo (CLIP ViT-L/14 text tower).
pub const TEXT_ENCODER_CONFIG: &str = r#"{"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
 "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
 "hidden_act": "quick_gelu", "projection_dim": 768, "eos_token_id": 2}"#;
/// `text_encoder_2/config.json` (OpenCLIP ViT-bigG/14 text tower).
pub const TEXT_ENCODER_2_CONFIG: &str = r#"{"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120,
 "num_hidden_layers": 32, "num_attention_heads": 20, "max_position_embeddings": 77, "layer_norm_eps": 1e-5,
 "hidden_act": "gelu", "projection_dim": 1280, "eos_token_id": 2}"#;
/// `unet/config.json`.
pub const UNET_CONFIG: &str = r#"{"sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": false,
 "flip_sin_to_cos": true, "freq_shift": 0,
 "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
 "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
 "block_out_channels": [320, 640, 1280], "layers_per_block": 2, "downsample_padding": 1,
 "mid_block_scale_factor": 1, "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 2048,
 "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "use_linear_projection": true,
 "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
 "projection_class_embeddings_input_dim": 2816}"#;
/// `vae/config.json`.
pub const VAE_CONFIG: &str = r#"{"in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512],
 "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "scaling_factor": 0.13025,
 "force_upcast": true}"#;

/// Serves every requested tensor from the synthetic rule, counting parameters.
struct SynthBackend {
    params: std::sync::atomic::AtomicUsize,
}

impl SimpleBackend for SynthBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let vals: Vec<f32> = crate::synth::synth_values(name, s.dims()).into_iter().map(|v| v as f32).collect();
        self.params.fetch_add(vals.len(), std::sync::atomic::Ordering::Relaxed);
        Tensor::from_vec(vals, s, dev)?.to_dtype(dtype)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("synthetic backend needs a shape for {name}")
    }
    fn contains_tensor(&self, name: &str) -> bool {
        // Only the VAE asks, to choose between old and new attention names.
        !name.starts_with("query")
    }
}

fn synth_vb() -> VarBuilder<'static> {
    synth_vb_on(&Device::Cpu)
}

/// Synthetic weights (f32) created on `device` (the conv bench runs the VAE on the GPU).
pub fn synth_vb_on(device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(SynthBackend { params: Default::default() }), DType::F32, device.clone())
}

fn row(name: &str, iters: usize, (median, min): (f64, f64), note: String) -> BenchRow {
    BenchRow { suite: "sdxl".into(), name: name.into(), iters, median_ms: median, min_ms: min, note }
}

/// The parts [`run_parts`] knows.
pub const PARTS: [&str; 4] = ["text_encoder_1", "text_encoder_2", "unet_step", "vae_decode"];

/// Text encoders, one UNet step and the VAE decode at 512², batch 1, f32 on the CPU.
/// `quick` skips the UNet (10 GB of f32 weights).
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let parts: Vec<&str> = PARTS.iter().copied().filter(|p| !(opts.quick && *p == "unet_step")).collect();
    run_parts(opts, &parts)
}

/// Times `f`: one warm-up and `iters` runs, except that with `iters == 1` a single run is
/// timed (a real-size UNet step takes minutes on a small CPU).
fn time_it(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    if iters > 1 {
        return measure(iters, f);
    }
    let start = std::time::Instant::now();
    f()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    Ok((ms, ms))
}

/// The named parts of [`PARTS`] only (the UNet needs the text encoders' outputs, which are
/// computed whether or not they are timed).
pub fn run_parts(opts: &BenchOptions, parts: &[&str]) -> Result<Vec<BenchRow>> {
    let want = |p: &str| parts.contains(&p);
    let dev = Device::Cpu;
    let iters = opts.iters.max(1);
    let mut rows = Vec::new();
    // The chair prompt's ids as both tokenizers give them (goldens' tokenizer case).
    let body = [320u32, 4269, 267, 274, 323, 13024, 267, 1579, 5994];
    let pad = |p: u32| {
        let mut v = vec![49406u32];
        v.extend(body);
        v.push(49407);
        v.resize(77, p);
        v
    };
    let ids1 = clip::ids_tensor(&[pad(49407)], &dev)?;
    let ids2 = clip::ids_tensor(&[pad(0)], &dev)?;

    let cfg1: ClipTextConfig = serde_json::from_str(TEXT_ENCODER_CONFIG)?;
    let te1 = ClipTextModel::new(synth_vb(), &cfg1, false)?;
    if want("text_encoder_1") {
        let t = time_it(iters, || Ok(te1.forward(&ids1).map(|_| ())?))?;
        rows.push(row("text_encoder_1", iters, t, "CLIP-L text, 77 tokens, f32".into()));
    }
    let o1 = te1.forward(&ids1)?;
    drop(te1);

    let cfg2: ClipTextConfig = serde_json::from_str(TEXT_ENCODER_2_CONFIG)?;
    let te2 = ClipTextModel::new(synth_vb(), &cfg2, true)?;
    if want("text_encoder_2") {
        let t = time_it(iters, || Ok(te2.forward(&ids2).map(|_| ())?))?;
        rows.push(row("text_encoder_2", iters, t, "bigG text + projection, 77 tokens, f32".into()));
    }
    let o2 = te2.forward(&ids2)?;
    drop(te2);

    if want("unet_step") {
        let cfg: UNetConfig = serde_json::from_str(UNET_CONFIG)?;
        let unet = UNet::new(synth_vb(), &cfg)?;
        let context = clip::concat_features(&o1, &o2)?;
        let text_embeds = o2.text_embeds.clone().context("text_encoder_2 without projection")?;
        let time_ids = Tensor::new(&[[512f32, 512., 0., 0., 512., 512.]], &dev)?;
        let sched = EulerAncestral::new(&SchedulerConfig::sdxl_turbo(), 1)?;
        let latents = (Tensor::randn(0f32, 1., (1, 4, 64, 64), &dev)? * sched.init_noise_sigma)?;
        let input = sched.scale_model_input(&latents, 0)?;
        let t = time_it(iters, || {
            let added = AddedCond { text_embeds: &text_embeds, time_ids: &time_ids };
            Ok(unet.forward(&input, 999.0, &context, Some(added)).map(|_| ())?)
        })?;
        rows.push(row("unet_step", iters, t, "2.57 B params, latent 1×4×64×64, f32".into()));
    }

    if want("vae_decode") {
        let cfg: VaeConfig = serde_json::from_str(VAE_CONFIG)?;
        let vae = VaeDecoder::new(synth_vb(), &cfg)?;
        let z = Tensor::randn(0f32, 1., (1, 4, 64, 64), &dev)?;
        let t = time_it(iters, || Ok(vae.decode_latents(&z).map(|_| ())?))?;
        rows.push(row("vae_decode", iters, t, "latent 64² → image 512², f32".into()));
    }
    Ok(rows)
}
