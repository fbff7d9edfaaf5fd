//! lumen: text concept → part-labeled 3D point cloud, stored as a prebaked asset.
//!
//! The library holds the whole pipeline so that tests and benches drive exactly what the
//! `lumen` binary runs; `main.rs` only parses arguments and calls [`commands::run`].

pub mod asset;
pub mod attention;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod concept;
pub mod conv;
pub mod cuda;
pub mod device;
pub mod diagnostics;
pub mod error;
pub mod gallery;
pub mod generation;
pub mod geometry;
pub mod hub;
pub mod logging;
pub mod models;
pub mod pipeline;
pub mod preview;
pub mod procedural;
pub mod progress;
pub mod rng;
pub mod shape;
pub mod stage;
pub mod store;
pub mod synth;
pub mod time;
pub mod weights;
