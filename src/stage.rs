//! The per-concept pipeline's stages as traits, and the clock that times them.
//!
//! Low in the crate: the models implement these traits and the pipelines drive them, so both
//! depend on this file and it depends on neither (only on geometry and device, below both).
//! Timing a stage also opens its log span, so every model stage has one.
//!
//! text → prompt → [`TextToImage`] → [`BackgroundRemoval`] → [`ImageToParts`] → sampling.
//! Each stage is a trait so the model stages (SDXL Turbo, BriaRMBG, PartCrafter) and the
//! procedural generator plug into the same driver, and so tests can run a stage alone.
//! Every stage's wall time is recorded in [`Timings`] and ends up in the asset.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use image::{GrayImage, RgbImage};

use crate::geometry::lattice::LatticeSurface;
use crate::geometry::mesh::TriMesh;

/// Per-stage wall times in milliseconds, in insertion order of first use.
///
/// On a GPU, kernels run asynchronously: a clock read right after a stage's last launch
/// would measure launches, not work. A `Timings` made [`for_device`](Self::for_device)
/// synchronises that device before it starts and before it stops each stage's clock, so a
/// stage's time holds all the work it queued (a no-op on the CPU).
/// Field 0 holds the stage → milliseconds map; field 1 the device to synchronise; field 2
/// the stage whose clock started last (the one an error comes from, e.g. out of memory).
#[derive(Debug, Clone, Default)]
pub struct Timings(pub BTreeMap<String, f64>, Option<candle_core::Device>, Option<String>);

impl PartialEq for Timings {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl Timings {
    /// Timings whose stages synchronise `device` around their clocks.
    pub fn for_device(device: &candle_core::Device) -> Self {
        Self(BTreeMap::new(), device.is_cuda().then(|| device.clone()), None)
    }

    /// From now on, synchronise `device` around every stage's clock.
    pub fn sync_with(&mut self, device: &candle_core::Device) {
        self.1 = device.is_cuda().then(|| device.clone());
    }

    /// From now on, synchronise nothing: for the CPU share of a concept, which must never
    /// wait on (or touch) the device the next concept is using.
    pub fn detach_device(&mut self) {
        self.1 = None;
    }

    /// The stage whose clock started last (`None` before any).
    pub fn last_stage(&self) -> Option<&str> {
        self.2.as_deref()
    }

    /// Runs `f` inside the stage's span (`stage`, `device`: every event `f` logs names its
    /// stage), adds its wall time (device work included) to `stage`, and logs that time at
    /// debug level.
    pub fn time<T>(&mut self, stage: &str, f: impl FnOnce() -> T) -> T {
        self.2 = Some(stage.to_string());
        let span = tracing::info_span!("stage", stage = %stage, device = %self.device_label());
        let _inside = span.enter();
        self.synchronize();
        let start = Instant::now();
        let out = f();
        self.synchronize();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        self.add(stage, ms);
        tracing::debug!(elapsed_ms = (ms * 10.0).round() / 10.0, "{stage}: {ms:.1} ms");
        out
    }

    pub fn add(&mut self, stage: &str, ms: f64) {
        *self.0.entry(stage.to_string()).or_insert(0.0) += ms;
    }

    /// Stage names, sorted.
    pub fn stage_names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }

    /// The device the stages' work runs on: the one synchronised, else the CPU (a `Timings`
    /// not told of a GPU only times host work).
    fn device_label(&self) -> String {
        self.1.as_ref().map_or_else(|| "cpu".to_string(), crate::device::label)
    }

    fn synchronize(&self) {
        if let Some(device) = &self.1 {
            // A failed synchronisation means a failed kernel: the stage's own next call
            // reports it with context, so the clock just goes on.
            let _ = device.synchronize();
        }
    }
}

/// Concept prompt → reference image (512×512 RGB for SDXL Turbo).
pub trait TextToImage: Send + Sync {
    fn generate(&self, prompt: &str, seed: u64, timings: &mut Timings) -> Result<RgbImage>;
}

/// What background removal hands on: the object composited on white, cropped and padded
/// the way the image→parts model expects, and the mask it came from.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub image: RgbImage,
    pub mask: GrayImage,
}

/// Reference image → object on white (fails when nothing is left to reconstruct).
pub trait BackgroundRemoval: Send + Sync {
    fn prepare(&self, image: &RgbImage, timings: &mut Timings) -> Result<PreparedImage>;
}

/// One part as an image→parts stage returns it: a mesh, its decoded field for the CPU to
/// mesh (marching cubes runs beside the device's next concept), or why it could not be made.
#[derive(Debug, Clone)]
pub enum PartOutcome {
    Mesh(TriMesh),
    Lattice(LatticeSurface),
    Failed(String),
}

/// What one image→parts call makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartsRequest {
    pub num_parts: usize,
    pub seed: u64,
    /// Latent tokens per part; `None`: the stage's configured count. A retry after running
    /// out of device memory asks for fewer.
    pub tokens: Option<usize>,
}

/// Prepared image → N part meshes (in the model's own frame).
pub trait ImageToParts: Send + Sync {
    fn parts(&self, image: &RgbImage, request: PartsRequest, timings: &mut Timings) -> Result<Vec<PartOutcome>>;
}
