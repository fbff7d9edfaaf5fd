//! lumen: text concept → part-labeled 3D point cloud, stored as a prebaked asset.
//!
//! The library holds the whole pipeline so that tests and benches drive exactly what the
//! `lumen` binary runs; `main.rs` only parses arguments, installs the log subscriber and
//! calls [`commands::run`].
//!
//! Layers, bottom first; a module names only its own layer or lower ones, and no two
//! modules name each other in a cycle (`tests/layers.rs` checks both from the sources):
//! 1. **base**: `error`, `time`, `rng`, `progress`, `env_vars`, `concept`, `quality` (signals,
//!    verdicts, the retry policy), `asset`, `store`, `geometry`, `device`, `cuda`: no model, no
//!    pipeline.
//! 2. **compute**: `attention`, `conv`: the one entry point per op every model calls.
//! 3. **weights**: `synth` (synthetic checkpoints), `hub` (downloads), `weights` (where files are).
//! 4. **models**: `stage` (the stage traits and their clock), `models`, `checkpoint`.
//! 5. **pipelines**: `procedural`, `shape`, `pipeline`: stages put together into assets.
//! 6. **products**: `preview`, `generation` (what the commands share), `stale` (what a store's
//!    assets were made with against the current settings), `gallery`.
//! 7. **diagnostics**: `diagnostics` (benchmarks, golden cases, device self-check).
//! 8. **interface**: `cli` (clap types), `logging` (the subscriber `main` installs), `commands`.
//!
//! Only what the binary and the integration tests use is public.

pub mod asset;
mod attention;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod concept;
mod conv;
mod cuda;
mod device;
mod diagnostics;
pub mod env_vars;
pub mod error;
mod gallery;
pub mod generation;
pub mod geometry;
mod hub;
pub mod logging;
pub mod models;
pub mod pipeline;
pub mod preview;
mod procedural;
pub mod progress;
pub mod quality;
pub mod rng;
pub mod shape;
pub mod stage;
mod stale;
pub mod store;
pub mod synth;
mod time;
pub mod weights;
