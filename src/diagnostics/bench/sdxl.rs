//! `lumen bench sdxl`: the stage at SDXL Turbo's released sizes with synthetic weights.
//!
//! Weights come from the goldens' synthetic rule, generated straight into memory
//! (`synth::synth_var_builder`; a real-size checkpoint would be 13 GB of f32 on disk), and
//! the models are the same code the stage runs, in the stage's precision: text encoders and
//! UNet in the pipeline's dtype, the VAE in f32 (the checkpoint's VAE overflows in f16).
//! Configs are SDXL Turbo's `config.json` values (hub repo `stabilityai/sdxl-turbo`,
//! diffusers layout), as JSON so they go through the same serde structs as a download.

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};

use super::peer::{self, Stage};
use super::{measure_on, once_on, BenchOptions, BenchRow};
use crate::models::sdxl::clip::{self, ClipTextConfig, ClipTextModel};
use crate::models::sdxl::scheduler::{EulerAncestral, SchedulerConfig};
use crate::models::sdxl::unet::{AddedCond, UNet, UNetConfig};
use crate::models::sdxl::vae::{VaeConfig, VaeDecoder};
use crate::synth::synth_var_builder;

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

/// The parts [`run_parts`] knows.
pub const PARTS: [&str; 4] = ["text_encoder_1", "text_encoder_2", "unet_step", "vae_decode"];

/// Text encoders, one UNet step and the VAE decode at 512², batch 1. On reduced sizes (the
/// CPU default) the UNet is skipped (10 GB of f32 weights, minutes per step) and the VAE
/// decodes to 128².
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let parts: Vec<&str> = PARTS.iter().copied().filter(|p| !(opts.quick && *p == "unet_step")).collect();
    run_parts(opts, &parts)
}

/// Times `f` on the bench device: one warm-up and `iters` runs, except that with
/// `iters == 1` a single run is timed (a real-size UNet step takes minutes on a small CPU).
fn time_it(opts: &BenchOptions, f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    if opts.iters > 1 {
        return measure_on(&opts.device, opts.iters, f);
    }
    Ok(once_on(&opts.device, f)?.1)
}

/// The chair prompt's ids as both tokenizers give them (goldens' tokenizer case), padded
/// the way each tokenizer pads.
pub fn prompt_ids() -> (Vec<u32>, Vec<u32>) {
    let body = [320u32, 4269, 267, 274, 323, 13024, 267, 1579, 5994];
    let pad = |p: u32| {
        let mut v = vec![49406u32];
        v.extend(body);
        v.push(49407);
        v.resize(77, p);
        v
    };
    (pad(49407), pad(0))
}

/// The named parts of [`PARTS`] only (the UNet needs the text encoders' outputs, which are
/// computed whether or not they are timed).
pub fn run_parts(opts: &BenchOptions, parts: &[&str]) -> Result<Vec<BenchRow>> {
    let want = |p: &str| parts.contains(&p);
    let (dev, dtype) = (&opts.device, opts.dtype);
    let row = |name: &str, t, dtype: DType, note: String, stage: Stage| {
        BenchRow::new("sdxl", name, opts, opts.iters, t).dtype(dtype).note(note).reference(Some(peer::ms(stage)))
    };
    let mut rows = Vec::new();
    let (p1, p2) = prompt_ids();
    let ids1 = clip::ids_tensor(&[p1], dev)?;
    let ids2 = clip::ids_tensor(&[p2], dev)?;

    let cfg1: ClipTextConfig = serde_json::from_str(TEXT_ENCODER_CONFIG)?;
    let te1 = ClipTextModel::new(synth_var_builder(dtype, dev), &cfg1, false)?;
    if want("text_encoder_1") {
        let t = time_it(opts, || Ok(te1.forward(&ids1).map(|_| ())?))?;
        rows.push(row("text_encoder_1 77 tokens", t, dtype, "CLIP-L text".into(), Stage::SdxlTextEncoder1));
    }
    let o1 = te1.forward(&ids1)?;
    drop(te1);

    let cfg2: ClipTextConfig = serde_json::from_str(TEXT_ENCODER_2_CONFIG)?;
    let te2 = ClipTextModel::new(synth_var_builder(dtype, dev), &cfg2, true)?;
    if want("text_encoder_2") {
        let t = time_it(opts, || Ok(te2.forward(&ids2).map(|_| ())?))?;
        rows.push(row("text_encoder_2 77 tokens", t, dtype, "bigG text + projection".into(), Stage::SdxlTextEncoder2));
    }
    let o2 = te2.forward(&ids2)?;
    drop(te2);

    if want("unet_step") {
        let cfg: UNetConfig = serde_json::from_str(UNET_CONFIG)?;
        let unet = UNet::new(synth_var_builder(dtype, dev), &cfg)?;
        let context = clip::concat_features(&o1, &o2)?;
        let text_embeds = o2.text_embeds.clone().context("text_encoder_2 without projection")?;
        let time_ids = Tensor::new(&[[512f32, 512., 0., 0., 512., 512.]], dev)?.to_dtype(dtype)?;
        let sched = EulerAncestral::new(&SchedulerConfig::sdxl_turbo(), 1)?;
        let latents = (Tensor::randn(0f32, 1., (1, 4, 64, 64), dev)? * sched.init_noise_sigma)?;
        let input = sched.scale_model_input(&latents, 0)?.to_dtype(dtype)?;
        let t = time_it(opts, || {
            let added = AddedCond { text_embeds: &text_embeds, time_ids: &time_ids };
            Ok(unet.forward(&input, 999.0, &context, Some(added)).map(|_| ())?)
        })?;
        rows.push(row("unet_step 64² latent", t, dtype, "2.57 B params, latent 1×4×64×64".into(), Stage::SdxlUnetStep));
    }

    if want("vae_decode") {
        let cfg: VaeConfig = serde_json::from_str(VAE_CONFIG)?;
        let vae = VaeDecoder::new(synth_var_builder(DType::F32, dev), &cfg)?;
        // Reduced sizes decode a 16² latent (128² image): the 512² decode takes minutes on a CPU.
        let latent = if opts.quick { 16 } else { 64 };
        let z = Tensor::randn(0f32, 1., (1, 4, latent, latent), dev)?;
        let t = time_it(opts, || Ok(vae.decode_latents(&z).map(|_| ())?))?;
        let px = latent * 8;
        let note = format!("latent {latent}² → image {px}²");
        let r = BenchRow::new("sdxl", format!("vae_decode {px}²"), opts, opts.iters, t).dtype(DType::F32).note(note);
        rows.push(r.reference((latent == 64).then(|| peer::ms(Stage::SdxlVaeDecode))));
    }
    Ok(rows)
}
