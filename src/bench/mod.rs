//! `lumen bench`: measured speed of each stage, printed as a table (or JSON).
//!
//! Benchmarks live here, not in tests: tests never assert wall-clock limits. Each stage
//! module contributes a `pub fn run(&BenchOptions) -> Result<Vec<BenchRow>>` registered in
//! [`SUITES`]; BENCHMARKS.md records what was run and on which machine.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

pub mod conv;
pub mod sampling;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Repetitions after one warm-up.
    pub iters: usize,
    /// Run at reduced sizes where a suite supports it (documented per row).
    pub quick: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub suite: String,
    pub name: String,
    pub iters: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// Free-form: sizes, throughput, FLOP rate.
    pub note: String,
}

/// Times `f` once to warm up, then `iters` times; returns median and min in ms.
pub fn measure(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    let mut samples = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((samples[samples.len() / 2], samples[0]))
}

pub type Suite = fn(&BenchOptions) -> Result<Vec<BenchRow>>;

/// Every benchmark suite by name (`lumen bench NAME`).
pub const SUITES: &[(&str, Suite)] = &[
    ("sampling", sampling::run),
    ("sdxl", crate::models::sdxl::bench::run),
    ("rmbg", crate::models::rmbg::bench::run),
    ("partcrafter_dit", crate::models::partcrafter::bench::run),
    ("partcrafter_geometry", crate::models::partcrafter::extract::bench),
    ("conv", conv::run),
    ("conv_check", conv::check),
];
