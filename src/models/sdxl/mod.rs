//! Text → image with SDXL Turbo (the pipeline's first model stage).
//!
//! concept → [`canonical_prompt`] → both CLIP tokenizers (77 ids each) → both text
//! encoders (penultimate states side by side, plus encoder 2's pooled projection) → the
//! UNet with SDXL's text-time conditioning, driven by the Euler-ancestral sampler with
//! trailing spacing (1 step by default, guidance 0) → VAE decode in f32 → rounded u8.
//! This mirrors diffusers' `StableDiffusionXLPipeline`; `../shared/design/sdxl-turbo.md`
//! lists where candle's stock SDXL differs and why the parts here exist.
//!
//! Randomness: the initial latents and any ancestral noise come from [`Rng`] streams
//! derived from the concept's seed, so the same seed gives the same image on CPU.

pub mod clip;
pub mod prompt;
pub mod resnet;
pub mod scheduler;
pub mod synthetic;
pub mod tokenizer;
pub mod unet;
pub mod vae;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

pub use prompt::canonical_prompt;

use crate::rng::Rng;
use crate::stage::{TextToImage, Timings};
use crate::weights::{self, WeightsSource, SDXL_TURBO, SDXL_VAE_FP16_FIX};
use clip::{ClipTextConfig, ClipTextModel};
use scheduler::{EulerAncestral, SchedulerConfig};
use tokenizer::ClipTokenizer;
use unet::{AddedCond, UNet, UNetConfig};
use vae::{VaeConfig, VaeDecoder};

/// Most sampling steps `--sd-steps` accepts (Turbo is distilled for 1–4).
pub const MAX_STEPS: usize = 4;

/// Image side when neither the options nor the UNet config give one.
const DEFAULT_SIZE: usize = 512;

/// How the stage runs; the CLI's `--sd-steps` and `--keep-images` land here.
#[derive(Debug, Clone)]
pub struct SdxlOptions {
    /// Sampling steps, 1..=[`MAX_STEPS`].
    pub steps: usize,
    /// Image height and width in pixels, each a multiple of the VAE's scale factor (8) and
    /// independent of the other, as diffusers takes them. `None`: the UNet's `sample_size`
    /// times the VAE's scale factor, as diffusers defaults (512 for SDXL Turbo).
    pub height: Option<usize>,
    pub width: Option<usize>,
    /// Save the reference image beside the asset (the driver does it with [`image_path_for`]).
    pub keep_images: bool,
    /// Decode with `madebyollin/sdxl-vae-fp16-fix` in half precision on CUDA instead of the
    /// checkpoint's own VAE in f32.
    pub fp16_fix_vae: bool,
}

impl Default for SdxlOptions {
    fn default() -> Self {
        Self { steps: 1, height: None, width: None, keep_images: false, fp16_fix_vae: false }
    }
}

/// Where `--keep-images` puts the reference image of an asset: same name, `.sdxl.png`.
pub fn image_path_for(asset: &Path) -> PathBuf {
    asset.with_extension("sdxl.png")
}

/// `--keep-images`: writes the stage's image as PNG beside `asset` (see [`image_path_for`]).
pub fn save_reference_image(image: &RgbImage, asset: &Path) -> Result<PathBuf> {
    let path = image_path_for(asset);
    image.save_with_format(&path, image::ImageFormat::Png).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Everything one run computed, for the golden tests and for debugging a bad image.
pub struct Trace {
    pub prompt_embeds: Tensor,
    pub text_embeds: Tensor,
    pub time_ids: Tensor,
    pub timesteps: Vec<f64>,
    /// The UNet input and its noise prediction at each step.
    pub unet_inputs: Vec<Tensor>,
    pub noise_preds: Vec<Tensor>,
    /// Final latents (the x₀ prediction after the last step).
    pub latents_out: Tensor,
    /// Raw VAE output, about [−1, 1].
    pub vae_raw: Tensor,
    /// clamp(vae_raw / 2 + 0.5, 0, 1), (1, 3, H, W) f32.
    pub image: Tensor,
}

/// The loaded SDXL Turbo stage.
pub struct SdxlTurbo {
    tokenizer_1: ClipTokenizer,
    tokenizer_2: ClipTokenizer,
    text_encoder_1: ClipTextModel,
    text_encoder_2: ClipTextModel,
    unet: UNet,
    vae: VaeDecoder,
    scheduler: SchedulerConfig,
    options: SdxlOptions,
    device: Device,
    dtype: DType,
    vae_dtype: DType,
}

/// The checkpoint file of one component folder: the fp16 variant first when `half`,
/// the full-precision file first otherwise; either is converted to the run's dtype.
pub fn component_weights(dir: &Path, base: &str, half: bool) -> Result<PathBuf> {
    let full = dir.join(format!("{base}.safetensors"));
    let fp16 = dir.join(format!("{base}.fp16.safetensors"));
    let order = if half { [&fp16, &full] } else { [&full, &fp16] };
    for f in order {
        if f.is_file() {
            return Ok(f.clone());
        }
    }
    bail!(
        "missing weights file {} (or its fp16 variant {})",
        full.display(),
        fp16.file_name().unwrap_or_default().to_string_lossy()
    )
}

fn open_component(
    dir: &Path,
    base: &str,
    half: bool,
    dtype: DType,
    device: &Device,
) -> Result<candle_nn::VarBuilder<'static>> {
    let file = component_weights(dir, base, half)?;
    weights::open_safetensors(&[file], dtype, device)
}

/// A text encoder folder (`config.json` + `model{.fp16}.safetensors`); `with_projection` for
/// encoder 2 (`CLIPTextModelWithProjection`).
pub fn load_text_encoder(dir: &Path, with_projection: bool, device: &Device, dtype: DType) -> Result<ClipTextModel> {
    let cfg: ClipTextConfig = weights::read_config(dir)?;
    let vb = open_component(dir, "model", dtype != DType::F32, dtype, device)?;
    ClipTextModel::new(vb, &cfg, with_projection)
        .with_context(|| format!("loading the text encoder in {}", dir.display()))
}

/// The `unet/` folder.
pub fn load_unet(dir: &Path, device: &Device, dtype: DType) -> Result<UNet> {
    let cfg: UNetConfig = weights::read_config(dir)?;
    let vb = open_component(dir, "diffusion_pytorch_model", dtype != DType::F32, dtype, device)?;
    UNet::new(vb, &cfg).with_context(|| format!("loading the UNet in {}", dir.display()))
}

/// A VAE folder (`vae/`, or the fp16-fix VAE's repo root); only the decoder is loaded.
pub fn load_vae(dir: &Path, device: &Device, dtype: DType) -> Result<VaeDecoder> {
    let cfg: VaeConfig = weights::read_config(dir)?;
    let vb = open_component(dir, "diffusion_pytorch_model", dtype != DType::F32, dtype, device)?;
    VaeDecoder::new(vb, &cfg).with_context(|| format!("loading the VAE in {}", dir.display()))
}

impl SdxlTurbo {
    /// Resolves `stabilityai/sdxl-turbo` (and the fp16-fix VAE when asked) through the shared
    /// weights layer and loads every component: fp16 weights on CUDA, f32 on CPU, the VAE in
    /// f32 unless the fp16-fix VAE is chosen.
    pub fn load(source: &WeightsSource, device: &Device, options: &SdxlOptions) -> Result<Self> {
        let repo = source.resolve(SDXL_TURBO, "unet/config.json")?;
        let vae_dir =
            if options.fp16_fix_vae { Some(source.resolve(SDXL_VAE_FP16_FIX, "config.json")?.dir) } else { None };
        Self::load_dirs(&repo.dir, vae_dir.as_deref(), device, options)
    }

    /// Loads from a folder laid out like the hub repo (`unet/`, `vae/`, `text_encoder/`,
    /// `text_encoder_2/`, `tokenizer/`, `tokenizer_2/`, `scheduler/`); `vae_dir` replaces
    /// `vae/` (the fp16-fix VAE's repo root).
    pub fn load_dirs(root: &Path, vae_dir: Option<&Path>, device: &Device, options: &SdxlOptions) -> Result<Self> {
        if options.steps == 0 || options.steps > MAX_STEPS {
            bail!("--sd-steps must be between 1 and {MAX_STEPS}, got {}", options.steps);
        }
        let dtype = if device.is_cuda() { DType::F16 } else { DType::F32 };
        let comp = |name: &str| root.join(name);

        let tokenizer_1 = ClipTokenizer::from_dir(&comp("tokenizer")).context("loading tokenizer/")?;
        let tokenizer_2 = ClipTokenizer::from_dir(&comp("tokenizer_2")).context("loading tokenizer_2/")?;

        let text_encoder_1 = load_text_encoder(&comp("text_encoder"), false, device, dtype)?;
        let text_encoder_2 = load_text_encoder(&comp("text_encoder_2"), true, device, dtype)?;
        let unet = load_unet(&comp("unet"), device, dtype)?;
        // SDXL's own VAE overflows in fp16 (its config says force_upcast): it always runs in
        // f32, as diffusers does. The fp16-fix VAE was fine-tuned to run in half precision.
        let (vae_path, vae_dtype) = match vae_dir {
            Some(d) => (d.to_path_buf(), dtype),
            None => (comp("vae"), DType::F32),
        };
        let vae = load_vae(&vae_path, device, vae_dtype)?;

        let sched_file = comp("scheduler").join("scheduler_config.json");
        let scheduler = match std::fs::read_to_string(&sched_file) {
            Ok(text) => serde_json::from_str(&text).with_context(|| format!("parsing {}", sched_file.display()))?,
            // The scheduler config is tiny and fixed for Turbo; a folder without it still works.
            Err(_) => SchedulerConfig::sdxl_turbo(),
        };

        let scale = vae.config.scale_factor();
        let default = unet.config.sample_size.map_or(DEFAULT_SIZE, |s| s * scale);
        let (height, width) = (options.height.unwrap_or(default), options.width.unwrap_or(default));
        for (what, v) in [("height", height), ("width", width)] {
            if v == 0 || v % scale != 0 {
                bail!("image {what} {v} is not a positive multiple of {scale}");
            }
        }
        let options = SdxlOptions { height: Some(height), width: Some(width), ..options.clone() };
        Ok(Self {
            tokenizer_1,
            tokenizer_2,
            text_encoder_1,
            text_encoder_2,
            unet,
            vae,
            scheduler,
            options,
            device: device.clone(),
            dtype,
            vae_dtype,
        })
    }

    /// The options in effect (`height` and `width` resolved).
    pub fn options(&self) -> &SdxlOptions {
        &self.options
    }

    /// Image (height, width) in pixels.
    pub fn image_size(&self) -> (usize, usize) {
        (self.options.height.unwrap_or(DEFAULT_SIZE), self.options.width.unwrap_or(DEFAULT_SIZE))
    }

    /// Both tokenizers' 77 ids for a prompt.
    pub fn tokenize(&self, prompt: &str) -> Result<(Vec<u32>, Vec<u32>)> {
        Ok((self.tokenizer_1.encode(prompt)?, self.tokenizer_2.encode(prompt)?))
    }

    /// (prompt_embeds (1, 77, d1 + d2), text_embeds (1, proj)).
    pub fn encode(&self, ids_1: &[u32], ids_2: &[u32]) -> Result<(Tensor, Tensor)> {
        let t1 = clip::ids_tensor(&[ids_1.to_vec()], &self.device)?;
        let t2 = clip::ids_tensor(&[ids_2.to_vec()], &self.device)?;
        let o1 = self.text_encoder_1.forward(&t1)?;
        let o2 = self.text_encoder_2.forward(&t2)?;
        let prompt_embeds = clip::concat_features(&o1, &o2)?;
        let text_embeds = o2.text_embeds.context("text_encoder_2 has no projection")?;
        Ok((prompt_embeds, text_embeds))
    }

    /// The latent shape (1, channels, height / 8, width / 8) for the configured image size.
    pub fn latent_shape(&self) -> (usize, usize, usize, usize) {
        let (h, w) = self.image_size();
        let s = self.vae.config.scale_factor();
        (1, self.unet.config.in_channels, h / s, w / s)
    }

    /// SDXL's `add_time_ids` as diffusers builds them: original size (h, w), crop top-left
    /// (0, 0), target size (h, w); lumen neither crops nor resizes, so both sizes are the image's.
    pub fn time_ids(&self) -> Result<Tensor> {
        let (h, w) = self.image_size();
        let (h, w) = (h as f32, w as f32);
        Ok(Tensor::new(&[[h, w, 0.0, 0.0, h, w]], &self.device)?.to_dtype(self.dtype)?)
    }

    /// The whole stage from token ids. `unit_latents` are N(0,1) initial latents (scaled by
    /// init_noise_sigma here, as diffusers does with user-given latents); `noise(k)` gives
    /// step k's N(0,1) ancestral noise.
    pub fn run(
        &self,
        ids_1: &[u32],
        ids_2: &[u32],
        unit_latents: &Tensor,
        mut noise: impl FnMut(usize) -> Result<Tensor>,
        timings: &mut Timings,
    ) -> Result<Trace> {
        let (prompt_embeds, text_embeds) = timings.time("sdxl_text_encoders", || self.encode(ids_1, ids_2))?;
        let time_ids = self.time_ids()?;
        let sched = EulerAncestral::new(&self.scheduler, self.options.steps)?;

        let (latents, unet_inputs, noise_preds) = timings.time("sdxl_unet", || -> Result<_> {
            let mut latents = (unit_latents.to_device(&self.device)?.to_dtype(DType::F32)? * sched.init_noise_sigma)?;
            let (mut unet_inputs, mut noise_preds) = (Vec::new(), Vec::new());
            for (i, &t) in sched.timesteps.iter().enumerate() {
                let input = sched.scale_model_input(&latents, i)?.to_dtype(self.dtype)?;
                let eps = self.unet.forward(
                    &input,
                    t,
                    &prompt_embeds,
                    Some(AddedCond { text_embeds: &text_embeds, time_ids: &time_ids }),
                )?;
                let z = noise(i)?.to_device(&self.device)?;
                latents = sched.step(&eps, i, &latents, &z)?.prev_sample;
                unet_inputs.push(input);
                noise_preds.push(eps);
            }
            Ok((latents, unet_inputs, noise_preds))
        })?;

        let (vae_raw, image) = timings.time("sdxl_vae", || -> Result<(Tensor, Tensor)> {
            let z = latents.to_dtype(self.vae_dtype)?;
            let raw = self.vae.decode_latents(&z)?.to_dtype(DType::F32)?;
            let image = ((&raw / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
            Ok((raw, image))
        })?;
        Ok(Trace {
            prompt_embeds,
            text_embeds,
            time_ids,
            timesteps: sched.timesteps.clone(),
            unet_inputs,
            noise_preds,
            latents_out: latents,
            vae_raw,
            image,
        })
    }
}

impl SdxlTurbo {
    /// The precision of the UNet and text encoders, and of the VAE.
    pub fn dtypes(&self) -> (DType, DType) {
        (self.dtype, self.vae_dtype)
    }
}

impl TextToImage for SdxlTurbo {
    fn generate(&self, prompt: &str, seed: u64, timings: &mut Timings) -> Result<RgbImage> {
        let (ids_1, ids_2) = self.tokenize(prompt)?;
        let shape = self.latent_shape();
        let numel = shape.0 * shape.1 * shape.2 * shape.3;
        let unit = Tensor::from_vec(Rng::derive(seed, "sdxl/latents").normal_vec(numel), shape, &Device::Cpu)?;
        let mut ancestral = Rng::derive(seed, "sdxl/ancestral");
        let trace = self.run(
            &ids_1,
            &ids_2,
            &unit,
            |_| Ok(Tensor::from_vec(ancestral.normal_vec(numel), shape, &Device::Cpu)?),
            timings,
        )?;
        // The conversion reads the decoded image back to the host: on a GPU that is where the
        // VAE's queued work completes, so it belongs to the VAE stage's time.
        let (h, w, bytes) = timings.time("sdxl_vae", || vae::to_rgb8(&trace.vae_raw))?;
        RgbImage::from_raw(w as u32, h as u32, bytes).context("image buffer size")
    }
}

#[cfg(test)]
mod stage_timing_tests {
    use super::*;

    /// The stage reports exactly its three stages, and the conversion of the decoded image
    /// to bytes (where a GPU's queued VAE work completes) is counted in `sdxl_vae`: with the
    /// conversion slowed by 1 s, `sdxl_vae` grows by that much and more than the other
    /// stages do.
    #[test]
    fn stage_list_and_conversion_inside_the_vae_stage() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/sdxl");
        let tmp = tempfile::tempdir().unwrap();
        synthetic::write_synthetic_repo(&golden, tmp.path()).unwrap();
        let opts = SdxlOptions { steps: 1, ..SdxlOptions::default() };
        let stage = SdxlTurbo::load_dirs(tmp.path(), None, &Device::Cpu, &opts).unwrap();
        let prompt = prompt::canonical_prompt("chair");

        let mut fast = Timings::default();
        stage.generate(&prompt, 1, &mut fast).unwrap();
        assert_eq!(fast.stage_names(), ["sdxl_text_encoders", "sdxl_unet", "sdxl_vae"]);

        vae::test_hooks::CONVERSION_DELAY_MS.set(1000);
        let mut slow = Timings::default();
        stage.generate(&prompt, 1, &mut slow).unwrap();
        vae::test_hooks::CONVERSION_DELAY_MS.set(0);
        assert_eq!(slow.stage_names(), fast.stage_names());
        // The delay is a sleep, so it is at least 1 s wherever it lands; it must land in
        // sdxl_vae: that stage grows by more than all the others together (an ordering of
        // the two runs' differences, no limit on how long anything takes).
        let vae_ms = slow.0["sdxl_vae"];
        assert!(vae_ms >= 1000.0, "sdxl_vae took {vae_ms:.1} ms: the conversion is not inside it");
        let others = |t: &Timings| -> f64 { t.0.iter().filter(|(k, _)| *k != "sdxl_vae").map(|(_, v)| v).sum() };
        let (vae_growth, others_growth) = (vae_ms - fast.0["sdxl_vae"], others(&slow) - others(&fast));
        assert!(
            vae_growth > others_growth,
            "the conversion was counted in another stage: {:?} then {:?}",
            fast.0,
            slow.0
        );
    }
}
