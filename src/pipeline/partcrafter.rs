//! The `partcrafter` pipeline: concept → prompt → SDXL Turbo → BriaRMBG → PartCrafter →
//! part meshes. Assembled from the stage traits so each model stays in its own module. Its
//! device phase runs every model stage (and the SDF decoding); its CPU phase meshes the
//! decoded fields and encodes the kept images.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use image::RgbImage;

use super::memory::{describe_memory, retry_tokens, MemoryRetry, OutOfDeviceMemory};
use crate::asset::{ModelInfo, PipelineInfo};
use crate::models::partcrafter::extract::{ExtractOptions, SurfaceExtractor};
use crate::models::partcrafter::vae::SdfDecoder;
use crate::models::partcrafter::{PartCrafter, PartCrafterLatents, SamplerOptions};
use crate::models::rmbg::RmbgStage;
use crate::models::sdxl::prompt::canonical_prompt;
use crate::models::sdxl::{SdxlOptions, SdxlTurbo};
use crate::shape::{mesh_parts, png_bytes, DeviceOutput, GeneratedShape, ShapeGenerator, ShapeRequest};
use crate::stage::{BackgroundRemoval, ImageToParts, PartOutcome, PartsRequest, TextToImage, Timings};
use crate::weights::{self, WeightsSource};

/// Settings of the model pipeline (command-line flags).
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub weights_dir: Option<PathBuf>,
    pub steps: usize,
    pub guidance: f64,
    pub tokens: usize,
    pub sd_steps: usize,
    pub keep_images: bool,
    pub force_cpu: bool,
    /// Depth of the surface-extraction lattice (2^depth cells per axis).
    pub extract_depth: u32,
    /// SDXL: decode with the fp16-safe VAE.
    pub fp16_vae: bool,
    /// Revision overrides, `(repo, revision)`.
    pub revisions: Vec<(String, String)>,
    /// Whether loading may download missing weights (off by default: only the commands that
    /// generate turn it on, so a preflight or a test never reaches the network).
    pub download: weights::DownloadOptions,
}

impl Default for ModelOptions {
    fn default() -> Self {
        Self {
            weights_dir: None,
            steps: 50,
            guidance: 7.0,
            tokens: 1024,
            sd_steps: 1,
            keep_images: false,
            force_cpu: false,
            extract_depth: 8,
            fp16_vae: false,
            revisions: Vec::new(),
            download: weights::DownloadOptions::default(),
        }
    }
}

pub use crate::device::select_device;

pub struct PartCrafterGenerator {
    text_to_image: Box<dyn TextToImage>,
    background: Box<dyn BackgroundRemoval>,
    image_to_parts: Box<dyn ImageToParts>,
    models: Vec<ModelInfo>,
    options: ModelOptions,
    /// The device the stages run on (the clocks synchronise it) and what the asset records
    /// of it and of each stage's precision.
    device: Device,
    device_settings: serde_json::Map<String, serde_json::Value>,
    /// One concept at a time through the model stages (a batch has one device worker; this
    /// keeps any other caller to the same rule). CPU phases never take it.
    device_phase: Mutex<()>,
}

impl PartCrafterGenerator {
    pub fn from_stages(
        text_to_image: Box<dyn TextToImage>,
        background: Box<dyn BackgroundRemoval>,
        image_to_parts: Box<dyn ImageToParts>,
        models: Vec<ModelInfo>,
        options: ModelOptions,
    ) -> Self {
        Self {
            text_to_image,
            background,
            image_to_parts,
            models,
            options,
            device: Device::Cpu,
            device_settings: serde_json::Map::new(),
            device_phase: Mutex::new(()),
        }
    }

    /// Records the device the stages run on and each stage's dtype (logged once, and kept in
    /// every asset's `pipeline.settings`).
    pub fn with_device(mut self, device: &Device, stage_dtypes: &[(&str, DType)]) -> Self {
        let info = crate::device::describe(device);
        tracing::info!("{}", info.summary());
        let dtypes: serde_json::Map<String, serde_json::Value> = stage_dtypes
            .iter()
            .map(|(stage, dt)| (stage.to_string(), serde_json::Value::from(crate::device::dtype_name(*dt))))
            .collect();
        tracing::info!(
            "stage precision: {}",
            stage_dtypes.iter().map(|(s, d)| format!("{s} {}", d.as_str())).collect::<Vec<_>>().join(", ")
        );
        self.device_settings.insert("device".into(), info.kind.clone().into());
        self.device_settings.insert("device_name".into(), info.name.clone().into());
        self.device_settings.insert("dtypes".into(), dtypes.into());
        self.device = device.clone();
        self
    }

    /// Loads every stage's weights (see `weights.rs` for where they are looked up and when
    /// they are downloaded): fp16 on CUDA where the stage supports it, f32 on the CPU.
    pub fn load(options: &ModelOptions) -> Result<Self> {
        let source = WeightsSource::from_env(options.weights_dir.clone()).with_revisions(&options.revisions);
        let device = select_device(options.force_cpu)?;
        // Every missing file of every stage first, in one go: one download plan, or one error
        // that lists them all.
        source.ensure(weights::DeviceKind::of(&device), options.fp16_vae, options.download)?;
        let dtype = crate::device::model_dtype(&device);

        // Headers first (seconds): a damaged or foreign checkpoint is named by file and tensor
        // before gigabytes are mapped, with the same message preflight gives.
        crate::checkpoint::check_pipeline(&source, dtype != DType::F32, options.fp16_vae)?;

        let sd_options = SdxlOptions {
            steps: options.sd_steps,
            keep_images: options.keep_images,
            fp16_fix_vae: options.fp16_vae,
            ..SdxlOptions::default()
        };
        let sdxl_repo = source.resolve(weights::SDXL_TURBO, "unet/config.json").context("SDXL Turbo stage")?;
        let sdxl = SdxlTurbo::load(&source, &device, &sd_options).context("SDXL Turbo stage")?;
        let rmbg_repo = source.resolve(weights::RMBG, "model.safetensors").context("background removal stage")?;
        let rmbg = RmbgStage::load(&source, &device).context("background removal stage")?;
        let pc_repo = source.resolve(weights::PARTCRAFTER, "transformer/config.json").context("PartCrafter stage")?;
        let latents = PartCrafterLatents::load(&pc_repo.dir, &device, dtype).context("PartCrafter stage")?;
        let decoder = SdfDecoder::load(&pc_repo.dir.join("vae"), &device, dtype).context("PartCrafter SDF decoder")?;

        let models = [&sdxl_repo, &rmbg_repo, &pc_repo]
            .iter()
            .map(|r| ModelInfo {
                id: r.repo.id.to_string(),
                revision: r.commit.clone(),
                license: Some(r.repo.license.id.to_string()),
            })
            .collect();
        let parts = PartCrafter {
            latents,
            decoder: SurfaceExtractor {
                decoder,
                options: ExtractOptions {
                    fast_depth: options.extract_depth,
                    fast_coarse_depth: ExtractOptions::default().fast_coarse_depth.min(options.extract_depth),
                    ..ExtractOptions::default()
                },
            },
            options: SamplerOptions {
                steps: options.steps,
                guidance: options.guidance,
                tokens: options.tokens,
                ..SamplerOptions::default()
            },
        };
        let (sd_dtype, vae_dtype) = sdxl.dtypes();
        let stage_dtypes = [
            ("sdxl_text_encoders", sd_dtype),
            ("sdxl_unet", sd_dtype),
            ("sdxl_vae", vae_dtype),
            ("rmbg", DType::F32),
            ("partcrafter_encode", dtype),
            ("partcrafter_sample", dtype),
            ("sdf_decoder", dtype),
        ];
        // Weights were uploaded from this thread; a batch's device worker is another one.
        device.synchronize().context("finishing the weight uploads")?;
        Ok(Self::from_stages(Box::new(sdxl), Box::new(rmbg), Box::new(parts), models, options.clone())
            .with_device(&device, &stage_dtypes))
    }
}

/// The settings every asset of this pipeline records that change what a shape looks like
/// (the per-concept prompt and part count are added beside them). `stale` compares the same
/// map, built from the current flags, so the two never disagree.
pub fn generation_settings(options: &ModelOptions) -> std::collections::BTreeMap<String, serde_json::Value> {
    let mut settings = std::collections::BTreeMap::new();
    settings.insert("steps".into(), options.steps.into());
    settings.insert("guidance".into(), options.guidance.into());
    settings.insert("tokens".into(), options.tokens.into());
    settings.insert("sd_steps".into(), options.sd_steps.into());
    settings.insert("extract_depth".into(), options.extract_depth.into());
    settings.insert("fp16_vae".into(), options.fp16_vae.into());
    settings
}

impl PartCrafterGenerator {
    /// SDXL Turbo → BriaRMBG → PartCrafter (latents and decoded fields) for one concept.
    fn model_stages(&self, request: &ShapeRequest, num_parts: usize, timings: &mut Timings) -> Result<DeviceOutput> {
        let prompt = canonical_prompt(&request.concept.normalized);
        let reference = self.text_to_image.generate(&prompt, request.seed, timings).context("text → image")?;
        let prepared = self.background.prepare(&reference, timings).context("background removal")?;
        let (parts, tokens, retries) = self.parts_within_memory(&prepared.image, num_parts, request.seed, timings)?;
        let mut images = Vec::new();
        if self.options.keep_images {
            images.push(("reference.png".to_string(), image::DynamicImage::ImageRgb8(reference)));
            images.push(("mask.png".to_string(), image::DynamicImage::ImageLuma8(prepared.mask.clone())));
            images.push(("prepared.png".to_string(), image::DynamicImage::ImageRgb8(prepared.image)));
        }
        let mut settings = generation_settings(&self.options);
        settings.insert("prompt".into(), serde_json::Value::from(prompt));
        // The tokens per part the parts were made with (fewer after running out of memory).
        settings.insert("tokens".into(), tokens.into());
        settings.insert("parts_requested".into(), num_parts.into());
        if !retries.is_empty() {
            settings.insert("memory_retry".into(), serde_json::to_value(&retries)?);
        }
        settings.extend(self.device_settings.clone());
        Ok(DeviceOutput {
            parts,
            pipeline: PipelineInfo { name: "partcrafter".into(), models: self.models.clone(), settings },
            images,
            mask: Some(prepared.mask),
            parts_requested: Some(num_parts),
        })
    }

    /// The image→parts stage at the configured tokens per part, and again with fewer after
    /// running out of device memory where that helps (see `pipeline::memory`). Returns the
    /// parts, the tokens per part they were made with, and the retries.
    fn parts_within_memory(
        &self,
        image: &RgbImage,
        num_parts: usize,
        seed: u64,
        timings: &mut Timings,
    ) -> Result<(Vec<PartOutcome>, usize, Vec<MemoryRetry>)> {
        let mut tokens = self.options.tokens;
        let mut retries = Vec::new();
        loop {
            let request = PartsRequest { num_parts, seed, tokens: Some(tokens) };
            let error = match self.image_to_parts.parts(image, request, timings).context("image → parts") {
                Ok(parts) => return Ok((parts, tokens, retries)),
                Err(e) => e,
            };
            let stage = timings.last_stage().unwrap_or("image → parts").to_string();
            let retry = crate::device::is_out_of_memory(&error).then(|| retry_tokens(&stage, tokens)).flatten();
            let Some(fewer) = retry else {
                return Err(self.explain_out_of_memory(error, &stage, num_parts, tokens));
            };
            let memory = crate::device::memory_info(&self.device);
            tracing::warn!(
                stage = %stage,
                tokens_from = tokens,
                tokens_to = fewer,
                "out of device memory in {stage} ({num_parts} parts, {tokens} tokens per part; {}); \
                 retrying with {fewer} tokens per part: {error:#}",
                describe_memory(memory)
            );
            retries.push(MemoryRetry::new(&stage, tokens, fewer, memory));
            // The failed attempt's buffers are dropped; let the device finish freeing them.
            let _ = self.device.synchronize();
            tokens = fewer;
        }
    }

    /// An out-of-memory error gets its stage, size and the device's memory in front (once);
    /// any other error is returned as it is.
    fn explain_out_of_memory(&self, error: anyhow::Error, stage: &str, parts: usize, tokens: usize) -> anyhow::Error {
        if !crate::device::is_out_of_memory(&error) || error.downcast_ref::<OutOfDeviceMemory>().is_some() {
            return error;
        }
        let memory = crate::device::memory_info(&self.device);
        error.context(OutOfDeviceMemory { stage: stage.to_string(), parts, tokens, memory })
    }
}

impl ShapeGenerator for PartCrafterGenerator {
    fn name(&self) -> &'static str {
        "partcrafter"
    }

    fn device_kind(&self) -> &str {
        self.device_settings.get("device").and_then(|d| d.as_str()).unwrap_or("cpu")
    }

    fn run_device(&self, request: &ShapeRequest, timings: &mut Timings) -> Result<Option<DeviceOutput>> {
        let _one_at_a_time = self.device_phase.lock().unwrap_or_else(|p| p.into_inner());
        timings.sync_with(&self.device);
        let num_parts = request.parts.unwrap_or(crate::concept::DEFAULT_PARTS);
        match self.model_stages(request, num_parts, timings) {
            Ok(output) => Ok(Some(output)),
            Err(e) => {
                let stage = timings.last_stage().unwrap_or("the model stages").to_string();
                Err(self.explain_out_of_memory(e, &stage, num_parts, self.options.tokens))
            }
        }
    }

    fn finish_on_cpu(
        &self,
        _: &ShapeRequest,
        device: Option<DeviceOutput>,
        timings: &mut Timings,
    ) -> Result<GeneratedShape> {
        let device = device.context("the partcrafter pipeline's CPU phase needs its device phase's output")?;
        let (parts, dropped) = mesh_parts(device.parts, timings);
        let images = device
            .images
            .iter()
            .map(|(name, image)| Ok((name.clone(), png_bytes(image)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(GeneratedShape {
            parts,
            dropped,
            pipeline: device.pipeline,
            images,
            mask: device.mask,
            parts_requested: device.parts_requested,
        })
    }
}
