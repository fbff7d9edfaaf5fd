//! The pipelines that turn a concept into part meshes: the model pipeline
//! ([`partcrafter`]: SDXL Turbo → BriaRMBG → PartCrafter, assembled from the stage traits of
//! [`crate::stage`]). The weight-free procedural generator lives in `crate::shape`.

pub mod memory;
pub mod partcrafter;
