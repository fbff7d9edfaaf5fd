//! One concept under a quality gate: attempts with derived seeds until one passes or the
//! retries run out, every attempt logged with its verdict, the best one kept.
//!
//! The decisions (seed of attempt k, best attempt, when to stop) are the pure policy of
//! [`crate::quality::retry`]; this file is only the loop that follows it around one attempt
//! (primary generator, then the fallback), so a batch runner can drive the same loop.

use anyhow::Result;

use super::Generators;
use crate::asset::Asset;
use crate::quality::retry::{self, Outcome, Step};
use crate::quality::{signals, AttemptRecord, GateRecord, Quality, QualityOptions};
use crate::shape::{build_graded_asset, NothingToSample, ShapeGenerator, ShapeRequest};

/// An attempt's asset and the intermediate images it kept.
pub struct Built {
    pub asset: Asset,
    pub images: Vec<(String, Vec<u8>)>,
}

/// What the attempts of one concept came to.
pub struct Gated {
    /// The best attempt's asset, its quality marked with the gate and the attempts.
    pub kept: Option<Built>,
    pub attempts: Vec<AttemptRecord>,
    pub outcome: Outcome,
    /// Every error of every attempt, for a concept that failed.
    pub errors: Vec<String>,
}

/// Runs the attempts [`retry::next_step`] asks for and keeps the [`retry::best`] one.
pub fn generate_gated(request: &ShapeRequest, gens: &Generators, quality: &QualityOptions) -> Gated {
    let mut attempts = Vec::new();
    let mut kept = None;
    let mut errors: Vec<String> = gens.primary_error.iter().cloned().collect();
    while let Step::Retry { attempt, seed } = retry::next_step(&quality.policy, request.seed, &attempts) {
        let req = ShapeRequest { seed, ..request.clone() };
        let (built, record) = attempt_once(&req, gens, quality, attempt, &mut errors);
        log_attempt(request, &record, quality.policy.gate.is_some());
        attempts.push(record);
        if retry::best(&attempts) == Some(attempt) {
            kept = built;
        }
    }
    let outcome = retry::outcome(&quality.policy, &attempts);
    if let (Some(b), Some(gate)) = (kept.as_mut(), quality.policy.gate) {
        if let Some(q) = b.asset.quality.as_mut() {
            q.gate = Some(GateRecord { min: gate.verdict(), passed: matches!(outcome, Outcome::Passed { .. }) });
            q.attempts = attempts.clone();
        }
    }
    Gated { kept, attempts, outcome, errors }
}

/// One attempt: the primary generator, then the fallback when it fails.
fn attempt_once(
    request: &ShapeRequest,
    gens: &Generators,
    quality: &QualityOptions,
    attempt: usize,
    errors: &mut Vec<String>,
) -> (Option<Built>, AttemptRecord) {
    let c = &request.concept;
    let mut record =
        AttemptRecord { attempt, seed: request.seed, verdict: None, reasons: vec![], produced: false, error: None };
    for g in gens.primary.iter().chain(gens.fallback.iter()) {
        match build(g.as_ref(), request, quality) {
            Ok(built) => {
                let q = built.asset.quality.as_ref().expect("assembly grades every asset");
                (record.verdict, record.reasons, record.produced) = (Some(q.verdict), q.reasons.clone(), true);
                record.error = None;
                return (Some(built), record);
            }
            Err(e) => {
                tracing::error!(key = %c.key, attempt, "{}: {} pipeline failed: {e:#}", c.text, g.name());
                // Every part dropped is a verdict (bad, with the reason), not only an error.
                if let Some(n) = e.downcast_ref::<NothingToSample>() {
                    let q = Quality::grade(signals::nothing_usable(n.facts, n.dropped), &quality.thresholds);
                    (record.verdict, record.reasons) = (Some(q.verdict), q.reasons);
                }
                record.error = Some(format!("{}: {e:#}", g.name()));
                errors.push(format!("{}: {e:#}", g.name()));
            }
        }
    }
    (None, record)
}

fn build(g: &dyn ShapeGenerator, request: &ShapeRequest, quality: &QualityOptions) -> Result<Built> {
    let mut timings = crate::stage::Timings::default();
    let mut shape = g.generate(request, &mut timings)?;
    let images = std::mem::take(&mut shape.images);
    let asset = build_graded_asset(request, shape, timings, &quality.thresholds)?;
    Ok(Built { asset, images })
}

/// Every gated attempt is logged (info when it passes, warn when not); an ungated run logs
/// only verdicts that are not ok.
fn log_attempt(request: &ShapeRequest, r: &AttemptRecord, gated: bool) {
    let c = &request.concept;
    let verdict = r.verdict.map_or("none", |v| v.as_str());
    let label = match r.verdict {
        Some(v) => crate::quality::label(v, &r.reasons),
        None => "no asset".to_string(),
    };
    let ok = r.verdict == Some(crate::quality::Verdict::Ok) && r.produced;
    match (gated, ok) {
        (true, true) => {
            tracing::info!(key = %c.key, attempt = r.attempt, seed = r.seed, verdict, "{}: attempt {} (seed {}): {label}", c.text, r.attempt, r.seed)
        }
        (_, false) => {
            tracing::warn!(key = %c.key, attempt = r.attempt, seed = r.seed, verdict, "{}: attempt {} (seed {}): {label}", c.text, r.attempt, r.seed)
        }
        (false, true) => {}
    }
}
