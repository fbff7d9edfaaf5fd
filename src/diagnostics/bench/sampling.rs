//! Sampling benchmark: 2048 labelled points from part meshes totalling ~200 k triangles.

use anyhow::Result;

use super::{measure, BenchOptions, BenchRow};
use crate::geometry::primitives::four_part_test_meshes;
use crate::geometry::sampling::{attachment_weights, sample_parts, SampleOptions};

pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let meshes = four_part_test_meshes();
    let triangles: usize = meshes.iter().map(|m| m.faces.len()).sum();
    let sample = SampleOptions::new(2048, 7);
    let cloud = sample_parts(&meshes, &sample)?;
    let area: f64 = meshes.iter().map(|m| m.area()).sum();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    // CPU work whatever the bench device: the row says so, with the process's peak memory.
    let cpu = BenchOptions { device: candle_core::Device::Cpu, ..opts.clone() };
    let row = |name: &str, t: (f64, f64), note: String| {
        BenchRow::new("sampling", name, &cpu, opts.iters, t).no_dtype().note(note)
    };
    let whole = pool.install(|| measure(opts.iters, || sample_parts(&meshes, &sample).map(|_| ())))?;
    let attach = pool.install(|| {
        measure(opts.iters, || {
            std::hint::black_box(attachment_weights(&cloud.positions, &cloud.part_ids, area));
            Ok(())
        })
    })?;
    Ok(vec![
        row(
            "sample_parts 2048 pts (one core)",
            whole,
            format!("{triangles} triangles in 4 parts, attachment included"),
        ),
        row("attachment_weights 2048 pts (one core)", attach, "part of the row above".into()),
    ])
}
