//! One concept's attempts, as the batch runner's CPU workers record them: what each attempt
//! produced (an asset and its kept images, or an error), its verdict, and the best asset so
//! far. The decisions (the seed of attempt k, which attempt is best, whether to try again,
//! the concept's outcome) are the pure policy of [`crate::quality::retry`]; this is only the
//! bookkeeping that follows it, so no runner keeps a retry loop of its own.

use crate::asset::Asset;
use crate::quality::retry::{self, Outcome, RetryPolicy};
use crate::quality::{label, signals, AttemptRecord, GateRecord, Quality, Thresholds, Verdict};
use crate::shape::NothingToSample;

/// An attempt's asset (graded) and the intermediate images it kept.
pub struct Built {
    pub asset: Asset,
    pub images: Vec<(String, Vec<u8>)>,
}

/// What one attempt came to, once every generator of the chain had its turn.
pub enum AttemptResult {
    Built(Box<Built>),
    /// No asset. `error` is the last generator's; `grade` is set when a generator got as far
    /// as a shape with every part dropped (a `bad` verdict with its reason, not only an error).
    Failed {
        error: String,
        grade: Option<Box<Quality>>,
    },
}

impl AttemptResult {
    /// A generator's error, graded when it is a [`NothingToSample`].
    pub fn grade_failure(error: &anyhow::Error, thresholds: &Thresholds) -> Option<Quality> {
        let n = error.downcast_ref::<NothingToSample>()?;
        Some(Quality::grade(signals::nothing_usable(n.facts, n.dropped), thresholds))
    }
}

/// The attempts of one concept so far, and the asset of the best of them.
#[derive(Default)]
pub struct Attempts {
    records: Vec<AttemptRecord>,
    kept: Option<Built>,
}

impl Attempts {
    pub fn records(&self) -> &[AttemptRecord] {
        &self.records
    }

    /// Records the attempt just made with `seed`; its asset is kept (and the one kept before
    /// dropped) when it is the best so far, so a concept holds one asset however many tries.
    pub fn record(&mut self, seed: u64, result: AttemptResult) -> &AttemptRecord {
        let attempt = self.records.len();
        let mut record = AttemptRecord { attempt, seed, verdict: None, reasons: vec![], produced: false, error: None };
        let built = match result {
            AttemptResult::Built(built) => {
                let q = built.asset.quality.as_ref().expect("assembly grades every asset");
                (record.verdict, record.reasons, record.produced) = (Some(q.verdict), q.reasons.clone(), true);
                Some(*built)
            }
            AttemptResult::Failed { error, grade } => {
                if let Some(q) = grade {
                    (record.verdict, record.reasons) = (Some(q.verdict), q.reasons);
                }
                record.error = Some(error);
                None
            }
        };
        self.records.push(record);
        if built.is_some() && retry::best(&self.records) == Some(attempt) {
            self.kept = built;
        }
        self.records.last().expect("just pushed")
    }

    /// The concept's outcome and the kept asset; under a gate its `quality` records the gate
    /// and every attempt (an ungated run's asset is as it was built).
    pub fn finish(self, policy: &RetryPolicy) -> (Option<Built>, Outcome) {
        let outcome = retry::outcome(policy, &self.records);
        let mut kept = self.kept;
        if let (Some(b), Some(gate)) = (kept.as_mut(), policy.gate) {
            if let Some(q) = b.asset.quality.as_mut() {
                q.gate = Some(GateRecord { min: gate.verdict(), passed: matches!(outcome, Outcome::Passed { .. }) });
                q.attempts = self.records;
            }
        }
        (kept, outcome)
    }
}

/// Every gated attempt is logged (info when it passes, warn when not); an ungated run logs
/// only verdicts that are not ok. Called inside the concept's span, which carries its key.
pub fn log_attempt(text: &str, r: &AttemptRecord, gated: bool) {
    let verdict = r.verdict.map_or("none", |v| v.as_str());
    let what = match r.verdict {
        Some(v) => label(v, &r.reasons),
        None => "no asset".to_string(),
    };
    let ok = r.verdict == Some(Verdict::Ok) && r.produced;
    match (gated, ok) {
        (true, true) => tracing::info!(
            attempt = r.attempt,
            seed = r.seed,
            verdict,
            "{text}: attempt {} (seed {}): {what}",
            r.attempt,
            r.seed
        ),
        (_, false) => tracing::warn!(
            attempt = r.attempt,
            seed = r.seed,
            verdict,
            "{text}: attempt {} (seed {}): {what}",
            r.attempt,
            r.seed
        ),
        (false, true) => {}
    }
}
