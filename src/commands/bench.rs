//! `lumen bench`: runs the registered benchmark suites and prints a table or JSON.

use anyhow::{bail, Result};

use super::{emit, emit_json};
use crate::cli::BenchArgs;
use crate::diagnostics::bench::{reset_peak, BenchOptions, BenchRow, SUITES};
use crate::error::{exit, UsageError};

pub fn run(a: BenchArgs) -> Result<u8> {
    if a.list {
        for (name, _) in SUITES {
            emit(name);
        }
        return Ok(exit::OK);
    }
    let mut opts = BenchOptions::new(a.iters, a.cpu, a.full)?;
    if a.quick {
        opts.quick = true;
    }
    let chosen: Vec<_> = if a.suites.is_empty() {
        SUITES.iter().collect()
    } else {
        a.suites
            .iter()
            .map(|s| {
                SUITES.iter().find(|(n, _)| n == s).ok_or_else(|| {
                    let names: Vec<_> = SUITES.iter().map(|(n, _)| *n).collect();
                    UsageError(format!("unknown bench suite {s:?}; available: {}", names.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?
    };
    if chosen.is_empty() {
        bail!("no benchmark suites are registered");
    }
    let device = crate::device::label(&opts.device);
    let sizes = if opts.quick { "reduced sizes" } else { "released sizes" };
    let dtype = crate::device::dtype_name(opts.dtype).to_string();
    let mut rows = Vec::new();
    if !a.json {
        emit(&header());
    }
    for (name, suite) in chosen {
        tracing::info!(
            "running bench suite {name} on {device} ({dtype}, {sizes}; {} iterations after a warm-up)",
            opts.iters
        );
        reset_peak();
        let mut got = suite(&opts)?;
        for r in &mut got {
            if r.device.is_empty() {
                r.device = device.clone();
            }
            if r.dtype.is_empty() {
                r.dtype = dtype.clone();
            }
            if r.peak_mem_mib.is_none() {
                r.peak_mem_mib = crate::diagnostics::bench::peak_mem_mib(&opts.device);
            }
            if !a.json {
                emit(&table_line(r));
            }
        }
        rows.extend(got);
    }
    if a.json {
        emit_json(&serde_json::to_value(&rows)?);
    }
    Ok(exit::OK)
}

fn header() -> String {
    format!(
        "{:<20} {:<48} {:<7} {:<5} {:>11} {:>11} {:>9} {:>10} {:>7}  note",
        "suite", "row", "device", "dtype", "median ms", "min ms", "peak MiB", "ref ms", "ratio"
    )
}

fn table_line(r: &BenchRow) -> String {
    let opt = |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |x| format!("{x:.digits$}"));
    format!(
        "{:<20} {:<48} {:<7} {:<5} {:>11.3} {:>11.3} {:>9} {:>10} {:>7}  {}",
        r.suite,
        r.name,
        r.device,
        r.dtype,
        r.median_ms,
        r.min_ms,
        opt(r.peak_mem_mib, 0),
        opt(r.reference_ms, 1),
        opt(r.ratio, 2),
        r.note
    )
}
