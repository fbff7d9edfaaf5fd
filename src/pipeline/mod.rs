//! The per-concept pipeline as stages behind traits.
//!
//! text → prompt → [`TextToImage`] → [`BackgroundRemoval`] → [`ImageToParts`] → sampling.
//! Each stage is a trait so the model stages (SDXL Turbo, BriaRMBG, PartCrafter) and the
//! procedural generator plug into the same driver, and so tests can run a stage alone.
//! Every stage's wall time is recorded in [`Timings`] and ends up in the asset.

pub mod partcrafter;

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Result;
use image::{GrayImage, RgbImage};

use crate::geometry::mesh::TriMesh;

/// Per-stage wall times in milliseconds, in insertion order of first use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timings(pub BTreeMap<String, f64>);

impl Timings {
    /// Runs `f`, adding its wall time to `stage`.
    pub fn time<T>(&mut self, stage: &str, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        *self.0.entry(stage.to_string()).or_insert(0.0) += start.elapsed().as_secs_f64() * 1e3;
        out
    }

    pub fn add(&mut self, stage: &str, ms: f64) {
        *self.0.entry(stage.to_string()).or_insert(0.0) += ms;
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

/// One part as an image→parts stage returns it: a mesh, or why it could not be made.
#[derive(Debug, Clone)]
pub enum PartOutcome {
    Mesh(TriMesh),
    Failed(String),
}

/// Prepared image → N part meshes (in the model's own frame).
pub trait ImageToParts: Send + Sync {
    fn parts(&self, image: &RgbImage, num_parts: usize, seed: u64, timings: &mut Timings) -> Result<Vec<PartOutcome>>;
}
