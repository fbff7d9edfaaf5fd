//! PartCrafter (image → part latents → part meshes), ported from the reference pipeline.
//!
//! This half: the DINOv2 image encoder and its preprocessing ([`encoder`]), the part-aware
//! DiT ([`dit`], built from [`block`]), the rectified-flow scheduler ([`scheduler`]) and the
//! guided sampling loop ([`sampler`]). [`PartCrafterLatents`] ties them to a checkpoint
//! folder laid out like the hub repo (`transformer/`, `image_encoder_dinov2/`,
//! `feature_extractor_dinov2/`, `scheduler/`). The other half: the TripoSG-style SDF
//! decoder ([`vae`]) and surface extraction ([`extract`]) turn each part's latents into a mesh.

pub mod block;
pub mod dit;
pub mod encoder;
pub mod extract;
pub mod sampler;
pub mod scheduler;
pub mod vae;

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::stage::{ImageToParts, PartOutcome, PartsRequest, Timings};
use crate::weights::{
    check_safetensors_file, open_model_dir, read_config, safetensors_files, WeightsSource, PARTCRAFTER,
};
pub use dit::PartIds;
pub use sampler::{SamplerOptions, SamplerTrace};

use dit::{DitConfig, PartCrafterDit};
use encoder::{Dinov2Config, Dinov2Model, PreprocessConfig};
use scheduler::{RectifiedFlowScheduler, SchedulerConfig};

/// Sub-folders of the PartCrafter repository this half reads.
pub const TRANSFORMER_DIR: &str = "transformer";
pub const IMAGE_ENCODER_DIR: &str = "image_encoder_dinov2";
pub const FEATURE_EXTRACTOR_DIR: &str = "feature_extractor_dinov2";
pub const SCHEDULER_DIR: &str = "scheduler";

/// Image → part latents: preprocessing, DINOv2, DiT and sampler, loaded once.
pub struct PartCrafterLatents {
    pub preprocess: PreprocessConfig,
    pub encoder: Dinov2Model,
    pub dit: PartCrafterDit,
    pub scheduler: RectifiedFlowScheduler,
    device: Device,
}

/// Fails with the tensor's name when a checkpoint holds a non-float tensor (the VarBuilder
/// would otherwise convert integers silently).
fn check_float_checkpoint(dir: &Path) -> Result<()> {
    for file in safetensors_files(dir)? {
        for (name, (dtype, shape)) in check_safetensors_file(&file)? {
            use safetensors::Dtype as S;
            if !matches!(dtype, S::F32 | S::F16 | S::BF16) {
                bail!(
                    "tensor {name} {shape:?} in {} has dtype {dtype:?}; expected a float tensor (f32, f16 or bf16)",
                    file.display()
                );
            }
        }
    }
    Ok(())
}

/// A small JSON config that may be absent: the released values are the defaults.
fn optional_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T> {
    if !path.is_file() {
        return Ok(T::default());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} does not match the expected configuration", path.display()))
}

impl PartCrafterLatents {
    /// `dir`: the PartCrafter repository folder. `dtype`: f32 on CPU; f16/bf16 on CUDA.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let preprocess: PreprocessConfig =
            optional_json(&dir.join(FEATURE_EXTRACTOR_DIR).join("preprocessor_config.json"))?;
        let sched_cfg: SchedulerConfig = optional_json(&dir.join(SCHEDULER_DIR).join("scheduler_config.json"))?;

        let enc_dir = dir.join(IMAGE_ENCODER_DIR);
        let enc_cfg: Dinov2Config = read_config(&enc_dir)?;
        check_float_checkpoint(&enc_dir)?;
        let crop = match (preprocess.crop_size.height, preprocess.crop_size.width) {
            (Some(h), Some(w)) if preprocess.do_center_crop => Some((h, w)),
            _ => None,
        };
        let encoder = Dinov2Model::new(open_model_dir(&enc_dir, dtype, device)?, &enc_cfg, crop)
            .with_context(|| format!("loading the image encoder from {}", enc_dir.display()))?;

        let dit_dir = dir.join(TRANSFORMER_DIR);
        let dit_cfg: DitConfig = read_config(&dit_dir)?;
        check_float_checkpoint(&dit_dir)?;
        let dit = PartCrafterDit::new(open_model_dir(&dit_dir, dtype, device)?, &dit_cfg)
            .with_context(|| format!("loading the DiT from {}", dit_dir.display()))?;
        if enc_cfg.hidden_size != dit_cfg.cross_attention_dim {
            bail!(
                "image encoder width {} does not match the DiT's cross_attention_dim {}",
                enc_cfg.hidden_size,
                dit_cfg.cross_attention_dim
            );
        }
        Ok(Self { preprocess, encoder, dit, scheduler: RectifiedFlowScheduler::new(sched_cfg), device: device.clone() })
    }

    /// Resolves the PartCrafter repository (`--weights DIR`, the hub cache, `HF_HUB_OFFLINE`)
    /// and loads it.
    pub fn from_source(source: &WeightsSource, device: &Device, dtype: DType) -> Result<Self> {
        let repo = source.resolve(PARTCRAFTER, &format!("{TRANSFORMER_DIR}/config.json"))?;
        Self::load(&repo.dir, device, dtype)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Image → DINOv2 `last_hidden_state` (1, tokens, width). The reference encodes the same
    /// image once per part; one encoding broadcast to all parts is the same in exact arithmetic.
    pub fn encode_image(&self, image: &RgbImage) -> Result<Tensor> {
        let pre = encoder::preprocess(image, &self.preprocess, &self.device)?;
        Ok(self.encoder.forward(&pre.pixel_values)?)
    }

    /// Image → part latents (N, tokens, latent channels), f32, initial noise from `opts.seed`.
    pub fn generate(
        &self,
        image: &RgbImage,
        num_parts: usize,
        opts: &SamplerOptions,
        timings: &mut Timings,
    ) -> Result<Tensor> {
        check_options(num_parts, opts)?;
        let noise =
            sampler::initial_noise(opts.seed, num_parts, opts.tokens, self.dit.config().in_channels, &self.device)?;
        self.generate_from_noise(image, &noise, opts, timings, None)
    }

    /// As [`generate`](Self::generate) with injected initial latents (N, tokens, channels)
    /// (goldens feed the reference's noise); `opts.seed` and `opts.tokens` are not used.
    pub fn generate_from_noise(
        &self,
        image: &RgbImage,
        noise: &Tensor,
        opts: &SamplerOptions,
        timings: &mut Timings,
        trace: Option<&mut SamplerTrace>,
    ) -> Result<Tensor> {
        let embeds = timings.time("partcrafter_encode", || self.encode_image(image))?;
        timings.time("partcrafter_sample", || {
            sampler::sample(&self.dit, &self.scheduler, &embeds, noise, opts.steps, opts.guidance, opts.part_ids, trace)
        })
    }
}

/// Part latents (tokens, latent channels) → one part's surface: the VAE decoder and surface
/// extraction plug in here. An `Err` becomes [`PartOutcome::Failed`] for that part only, as
/// upstream turns a failed extraction into a missing mesh — except running out of device
/// memory, which fails the whole call (a smaller run may fit; a dropped part would hide it).
pub trait PartDecoder: Send + Sync {
    fn decode(&self, part_latents: &Tensor, timings: &mut Timings) -> Result<PartOutcome>;
}

/// The image→parts stage: [`PartCrafterLatents`] then a [`PartDecoder`] per part.
pub struct PartCrafter<Dec: PartDecoder> {
    pub latents: PartCrafterLatents,
    pub decoder: Dec,
    /// Steps, guidance, tokens and part-id policy; the seed comes from each call.
    pub options: SamplerOptions,
}

impl<Dec: PartDecoder> ImageToParts for PartCrafter<Dec> {
    fn parts(&self, image: &RgbImage, request: PartsRequest, timings: &mut Timings) -> Result<Vec<PartOutcome>> {
        let opts = SamplerOptions {
            seed: request.seed,
            tokens: request.tokens.unwrap_or(self.options.tokens),
            ..self.options.clone()
        };
        let latents = self.latents.generate(image, request.num_parts, &opts, timings)?;
        (0..request.num_parts)
            .map(|p| {
                let part = latents.get(p)?;
                Ok(match self.decoder.decode(&part, timings) {
                    Ok(outcome) => outcome,
                    Err(e) if crate::device::is_out_of_memory(&e) => return Err(e.context(format!("part {p}"))),
                    Err(e) => PartOutcome::Failed(format!("part {p}: {e:#}")),
                })
            })
            .collect()
    }
}

fn check_options(num_parts: usize, opts: &SamplerOptions) -> Result<()> {
    if num_parts == 0 || num_parts > sampler::MAX_PARTS {
        bail!("--parts must be between 1 and {}, got {num_parts}", sampler::MAX_PARTS);
    }
    if opts.tokens == 0 {
        bail!("--tokens must be at least 1");
    }
    if opts.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !opts.guidance.is_finite() {
        bail!("--guidance must be a finite number");
    }
    Ok(())
}
