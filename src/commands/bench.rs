//! `lumen bench`: runs the registered benchmark suites and prints a table or JSON.

use anyhow::{bail, Result};

use super::{emit, emit_json, log};
use crate::bench::{BenchOptions, SUITES};
use crate::cli::BenchArgs;
use crate::error::{exit, UsageError};

pub fn run(a: BenchArgs) -> Result<u8> {
    if a.list {
        for (name, _) in SUITES {
            emit(name);
        }
        return Ok(exit::OK);
    }
    let opts = BenchOptions { iters: a.iters.max(1), quick: a.quick };
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
    let mut rows = Vec::new();
    for (name, suite) in chosen {
        log(&format!("running bench suite {name} ({} iterations after a warm-up)", opts.iters));
        let got = suite(&opts)?;
        if !a.json {
            for r in &got {
                emit(&format!(
                    "{:<16} {:<44} median {:>10.3} ms  min {:>10.3} ms  {}",
                    r.suite, r.name, r.median_ms, r.min_ms, r.note
                ));
            }
        }
        rows.extend(got);
    }
    if a.json {
        emit_json(&serde_json::to_value(&rows)?);
    }
    Ok(exit::OK)
}
