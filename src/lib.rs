//! lumen: text concept → part-labeled 3D point cloud, stored as a prebaked asset.
//!
//! The library holds the whole pipeline so that tests and benches drive exactly what the
//! `lumen` binary runs; `main.rs` only parses arguments and calls [`commands`].

pub mod attention;
pub mod bench;
pub mod geometry;
pub mod models;
pub mod pipeline;
pub mod rng;
pub mod synth;
pub mod weights;
