//! The retry policy of a quality gate, as pure functions: which seed attempt k uses, which
//! attempt is best, whether to try again, and what the concept's outcome is.
//!
//! No side effects, so the policy is tested alone and any runner (the sequential
//! `generation::generate_one` loop, a worker pool) can drive it the same way:
//! `seed = attempt_seed(base, k)`, run, record, then ask [`next_step`].
//!
//! Choices: attempt 0 uses the request's own seed, so an ungated run and the first attempt
//! of a gated one make the same shape; later seeds are derived from the base seed, so a rerun
//! retries the same seeds. The best attempt is the one that produced an asset with the best
//! verdict, then the fewest reasons, then the earliest. When no attempt passes, the best is
//! kept and stored, marked as under the gate (`quality.gate.passed: false`), and the run
//! exits 1; when no attempt produced an asset at all the concept fails, as before.

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::rng::Rng;

/// `--min-quality`: the worst verdict a run accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinQuality {
    Weak,
    Ok,
}

impl MinQuality {
    pub fn verdict(self) -> Verdict {
        match self {
            Self::Weak => Verdict::Weak,
            Self::Ok => Verdict::Ok,
        }
    }

    pub fn accepts(self, v: Verdict) -> bool {
        v >= self.verdict()
    }
}

/// A run's gate and how many extra attempts a concept under it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryPolicy {
    pub gate: Option<MinQuality>,
    pub retries: usize,
}

/// One attempt as the asset and the logs record it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub attempt: usize,
    pub seed: u64,
    /// None: the attempt produced no verdict (a pipeline error).
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Whether the attempt produced an asset (every part dropped, say, gives a verdict but none).
    pub produced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The seed of attempt `k`: the request's own for 0, derived from it after that. Derived
/// seeds are 31-bit like the default seeds (`concept::default_seed`), so a JavaScript client
/// reading an asset's `seed` gets it exactly.
pub fn attempt_seed(base: u64, k: usize) -> u64 {
    if k == 0 {
        base
    } else {
        Rng::derive(base, &format!("quality retry {k}")).next_u64() >> 33
    }
}

/// What a runner does after recording an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run attempt `attempt` with `seed`.
    Retry {
        attempt: usize,
        seed: u64,
    },
    Stop,
}

fn passes(policy: &RetryPolicy, a: &AttemptRecord) -> bool {
    match (policy.gate, a.verdict) {
        (_, _) if !a.produced => false,
        (None, _) => true,
        (Some(g), Some(v)) => g.accepts(v),
        (Some(_), None) => false,
    }
}

/// Retry while the gate is not met and attempts remain. Without a gate a run never retries
/// (a failed attempt falls back as it always did, in the runner).
pub fn next_step(policy: &RetryPolicy, base_seed: u64, attempts: &[AttemptRecord]) -> Step {
    let Some(last) = attempts.last() else { return Step::Retry { attempt: 0, seed: base_seed } };
    if policy.gate.is_none() || passes(policy, last) || attempts.len() > policy.retries {
        return Step::Stop;
    }
    let k = attempts.len();
    Step::Retry { attempt: k, seed: attempt_seed(base_seed, k) }
}

/// Index of the best attempt that produced an asset.
pub fn best(attempts: &[AttemptRecord]) -> Option<usize> {
    attempts
        .iter()
        .enumerate()
        .filter(|(_, a)| a.produced)
        // max_by keeps the last of equals; reversing the index keeps the earliest instead.
        .max_by(|(i, a), (j, b)| a.verdict.cmp(&b.verdict).then(b.reasons.len().cmp(&a.reasons.len())).then(j.cmp(i)))
        .map(|(i, _)| i)
}

/// How a concept ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The kept attempt meets the gate (or there was none).
    Passed { kept: usize },
    /// The best attempt is under the gate; it is kept and marked.
    BelowGate { kept: usize },
    /// No attempt produced an asset.
    Failed,
}

pub fn outcome(policy: &RetryPolicy, attempts: &[AttemptRecord]) -> Outcome {
    match best(attempts) {
        None => Outcome::Failed,
        Some(kept) if passes(policy, &attempts[kept]) => Outcome::Passed { kept },
        Some(kept) => Outcome::BelowGate { kept },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(attempt: usize, verdict: Option<Verdict>, reasons: usize, produced: bool) -> AttemptRecord {
        AttemptRecord {
            attempt,
            seed: attempt_seed(7, attempt),
            verdict,
            reasons: (0..reasons).map(|i| format!("r{i}")).collect(),
            produced,
            error: None,
        }
    }

    #[test]
    fn attempt_zero_keeps_the_seed_and_later_attempts_derive_distinct_stable_ones() {
        assert_eq!(attempt_seed(42, 0), 42);
        let seeds: Vec<u64> = (0..6).map(|k| attempt_seed(42, k)).collect();
        let unique: std::collections::HashSet<_> = seeds.iter().collect();
        assert_eq!(unique.len(), 6, "{seeds:?}");
        assert_eq!(seeds, (0..6).map(|k| attempt_seed(42, k)).collect::<Vec<_>>());
        assert_ne!(attempt_seed(42, 1), attempt_seed(43, 1));
        assert!(seeds.iter().all(|&s| s <= 0x7fff_ffff), "{seeds:?}");
    }

    #[test]
    fn best_prefers_verdict_then_fewer_reasons_then_the_earliest() {
        let a = [
            rec(0, Some(Verdict::Bad), 1, true),
            rec(1, Some(Verdict::Weak), 2, true),
            rec(2, Some(Verdict::Weak), 1, true),
            rec(3, Some(Verdict::Weak), 1, true),
            rec(4, Some(Verdict::Ok), 0, false),
        ];
        assert_eq!(best(&a), Some(2), "an attempt without an asset is never kept");
        assert_eq!(best(&a[..1]), Some(0));
        assert_eq!(best(&[rec(0, None, 0, false)]), None);
    }

    #[test]
    fn stops_when_the_gate_passes_or_attempts_run_out_and_never_retries_ungated() {
        let gated = RetryPolicy { gate: Some(MinQuality::Ok), retries: 2 };
        assert_eq!(next_step(&gated, 7, &[]), Step::Retry { attempt: 0, seed: 7 });
        let bad = rec(0, Some(Verdict::Bad), 1, true);
        assert_eq!(
            next_step(&gated, 7, std::slice::from_ref(&bad)),
            Step::Retry { attempt: 1, seed: attempt_seed(7, 1) }
        );
        let ok = rec(1, Some(Verdict::Ok), 0, true);
        assert_eq!(next_step(&gated, 7, &[bad.clone(), ok]), Step::Stop);
        let three = [bad.clone(), rec(1, Some(Verdict::Weak), 1, true), rec(2, None, 0, false)];
        assert_eq!(next_step(&gated, 7, &three), Step::Stop, "1 + 2 retries made");
        let ungated = RetryPolicy { gate: None, retries: 5 };
        assert_eq!(next_step(&ungated, 7, std::slice::from_ref(&bad)), Step::Stop);
        let weak_gate = RetryPolicy { gate: Some(MinQuality::Weak), retries: 3 };
        assert_eq!(next_step(&weak_gate, 7, &[rec(0, Some(Verdict::Weak), 1, true)]), Step::Stop);
    }

    #[test]
    fn outcome_passes_marks_below_the_gate_or_fails() {
        let gated = RetryPolicy { gate: Some(MinQuality::Ok), retries: 2 };
        let tries = [rec(0, Some(Verdict::Bad), 2, true), rec(1, Some(Verdict::Weak), 1, true)];
        assert_eq!(outcome(&gated, &tries), Outcome::BelowGate { kept: 1 });
        let weak_gate = RetryPolicy { gate: Some(MinQuality::Weak), ..gated };
        assert_eq!(outcome(&weak_gate, &tries), Outcome::Passed { kept: 1 });
        assert_eq!(outcome(&gated, &[rec(0, None, 0, false)]), Outcome::Failed);
        assert_eq!(outcome(&RetryPolicy::default(), &tries[..1]), Outcome::Passed { kept: 0 });
    }
}
