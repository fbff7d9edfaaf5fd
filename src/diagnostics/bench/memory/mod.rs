//! `lumen bench memory`: predicted peak device memory of every stage at the released sizes
//! for N = 1 … 16 parts, the whole pipeline's peak on one card, and whether it fits an NVIDIA
//! L4; on CUDA the measured peak of each stage beside its prediction.
//!
//! Why: the pregeneration job runs on Cloud Run L4s (24 GB). Whether the released pipeline
//! fits at 16 parts must be known before a card is paid for, and a first GPU run must be able
//! to say which prediction was wrong. [`predict`] works from tensor shapes alone (any device,
//! no weights); [`measure`] (CUDA builds, on a GPU) builds each stage with synthetic weights
//! and reads the stream allocator's counters.
//!
//! Rows: the `peak MiB` column holds the **prediction** (weights + activations, at the
//! pipeline's CUDA dtypes) on every device; `predicted_mib` and, on CUDA, `measured_mib`
//! (resident weights + the run's peak above them) are in the JSON and the note. Predictions
//! are for CUDA f16 whatever the bench device: on the CPU nothing is measured, and the rows
//! say so. `--quick` on CUDA measures the DiT at 1, 4, 8 and 16 parts only and leaves out the
//! UNet (the largest synthetic weights); without it every stage and every part count runs.

pub mod predict;

#[cfg(feature = "cuda")]
mod measure;

use anyhow::Result;

use super::{BenchOptions, BenchRow};
use crate::attention::plan::Path;
use predict::{Stage, GIB, L4_USABLE_BYTES, MIB};

/// Part counts the pipeline accepts (`sampler::MAX_PARTS`).
const PARTS: std::ops::RangeInclusive<usize> = 1..=crate::models::partcrafter::sampler::MAX_PARTS;

/// Measured bytes per stage and per DiT part count; empty where nothing was measured.
#[derive(Default)]
struct Measurements {
    stages: Vec<(Stage, (u64, f64))>,
    dit: Vec<(usize, (u64, f64))>,
}

impl Measurements {
    fn stage(&self, s: Stage) -> Option<(u64, f64)> {
        self.stages.iter().find(|(x, _)| *x == s).map(|(_, m)| *m)
    }

    fn dit(&self, n: usize) -> Option<(u64, f64)> {
        self.dit.iter().find(|(x, _)| *x == n).map(|(_, m)| *m)
    }
}

#[cfg(feature = "cuda")]
fn measurements(opts: &BenchOptions) -> Result<Measurements> {
    if !opts.device.is_cuda() {
        return Ok(Measurements::default());
    }
    let skip: &[Stage] = if opts.quick { &[Stage::Unet] } else { &[] };
    let parts: Vec<usize> = if opts.quick { vec![1, 4, 8, 16] } else { PARTS.collect() };
    let peak = |m: measure::Measured| (m.peak(), m.ms);
    Ok(Measurements {
        stages: measure::stages(opts, skip)?.into_iter().map(|(s, m)| (s, peak(m))).collect(),
        dit: measure::dit(opts, &parts)?.into_iter().map(|(n, m)| (n, peak(m))).collect(),
    })
}

#[cfg(not(feature = "cuda"))]
fn measurements(_: &BenchOptions) -> Result<Measurements> {
    Ok(Measurements::default())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// A prediction row: `peak MiB` = predicted, measured beside it when there is one.
fn row(
    opts: &BenchOptions,
    name: String,
    dtype: candle_core::DType,
    predicted: u64,
    measured: Option<(u64, f64)>,
    note: String,
) -> BenchRow {
    let (ms, iters) = measured.map_or((0.0, 0), |(_, ms)| (ms, 1));
    let seen = match measured {
        Some((m, _)) => format!("measured {:.0} MiB ({:+.0} %)", mib(m), 100.0 * (m as f64 / predicted as f64 - 1.0)),
        None if opts.device.is_cuda() => "not measured in this run".into(),
        None => "prediction only (CPU: nothing measured)".into(),
    };
    BenchRow {
        suite: "memory".into(),
        name,
        iters,
        median_ms: ms,
        min_ms: ms,
        dtype: crate::device::dtype_name(dtype).to_string(),
        peak_mem_mib: Some(mib(predicted)),
        predicted_mib: Some(mib(predicted)),
        measured_mib: measured.map(|(m, _)| mib(m)),
        note: format!("predicted {:.0} MiB: {note}; {seen}", mib(predicted)),
        ..Default::default()
    }
}

/// `lumen bench memory`.
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let measured = measurements(opts)?;
    let mut rows = Vec::new();
    for (stage, act) in predict::all_stages(1, None) {
        if stage == Stage::DitSampling {
            continue;
        }
        let note = format!(
            "weights {:.0} MiB ({:.1} M params) + activations {:.0} MiB ({})",
            mib(stage.weight_bytes()),
            stage.params() as f64 / 1e6,
            mib(act.bytes),
            act.summary()
        );
        let predicted = stage.weight_bytes() + act.bytes;
        rows.push(row(
            opts,
            format!("predicted {}", stage.name()),
            stage.cuda_dtype(),
            predicted,
            measured.stage(stage),
            note,
        ));
    }
    let dit = crate::models::partcrafter::dit::DitConfig::released();
    for n in PARTS {
        let fused = predict::dit_sampling(&dit, n, 1024, true, None);
        let safe = predict::dit_sampling(&dit, n, 1024, true, Some(Path::Safe));
        let global = predict::dit_attention_dims(&dit, 2 * n, n, 1024)[0];
        let materialised = predict::materialised_scores_bytes(candle_core::DType::F16, &global);
        let note = format!(
            "weights {:.0} MiB + activations {:.0} MiB on the fused path ({}); safe path {:.0} MiB; a global block's scores unblocked would be {:.0} MiB",
            mib(Stage::DitSampling.weight_bytes()),
            mib(fused.bytes),
            fused.summary(),
            mib(safe.bytes),
            mib(materialised)
        );
        let predicted = Stage::DitSampling.weight_bytes() + fused.bytes;
        rows.push(row(
            opts,
            format!("predicted dit sampling cfg N={n}"),
            candle_core::DType::F16,
            predicted,
            measured.dit(n),
            note,
        ));
    }
    rows.extend(pipeline_rows(opts));
    Ok(rows)
}

/// The whole pipeline per part count, and the L4 verdict.
fn pipeline_rows(opts: &BenchOptions) -> Vec<BenchRow> {
    let mut rows = Vec::new();
    let mut too_big = Vec::new();
    for n in PARTS {
        let p = predict::pipeline(n, None);
        let fits = p.fits(L4_USABLE_BYTES);
        if !fits {
            too_big.push(n);
        }
        let note = format!(
            "all weights {:.0} + largest stage ({}) {:.0} + cuDNN workspace cap {:.0} + context {:.0} MiB; L4 ({:.1} GiB usable): {}",
            mib(p.weights),
            p.largest.0.name(),
            mib(p.largest.1),
            mib(p.workspace),
            mib(p.context),
            L4_USABLE_BYTES as f64 / GIB,
            if fits {
                format!("fits, {:.1} GiB to spare", (L4_USABLE_BYTES - p.total()) as f64 / GIB)
            } else {
                format!("does NOT fit, {:.1} GiB over", (p.total() - L4_USABLE_BYTES) as f64 / GIB)
            }
        );
        rows.push(row(opts, format!("predicted pipeline N={n}"), candle_core::DType::F16, p.total(), None, note));
    }
    let worst = predict::pipeline(*PARTS.end(), None);
    let verdict = if too_big.is_empty() {
        format!(
            "the released pipeline fits an L4 at every N ≤ {} (N={} needs {:.1} of {:.1} GiB): no part batching needed",
            PARTS.end(),
            PARTS.end(),
            worst.total() as f64 / GIB,
            L4_USABLE_BYTES as f64 / GIB
        )
    } else {
        format!("does NOT fit an L4 at N = {too_big:?}: nothing in the pipeline splits the parts or the CFG halves yet")
    };
    rows.push(row(opts, "predicted L4 verdict".into(), candle_core::DType::F16, worst.total(), None, verdict));
    rows
}

#[cfg(test)]
mod tests;
