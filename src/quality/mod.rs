//! Quality of a generated shape: measured signals, a verdict (`ok`, `weak`, `bad`) with the
//! reasons, and the retry policy that gates on it.
//!
//! PartCrafter and BriaRMBG fail in ways that raise no error (every part empty, most
//! geometry in one part, a mask of nothing or of the whole frame), so every asset carries a
//! `quality` object measured from what every pipeline produces ([`signals`]), graded with
//! documented, overridable thresholds ([`thresholds`]). The verdict is the worst reason's;
//! no reason is `ok`. Assets made before this existed have no `quality` object and count as
//! *unknown*, never as bad. [`retry`] decides, without side effects, which seed an attempt
//! uses, which attempt is best and when to stop; the generation loop only follows it.

pub mod mask;
pub mod retry;
pub mod signals;
pub mod thresholds;

use serde::{Deserialize, Serialize};

pub use mask::{mask_stats, MaskStats};
pub use retry::{AttemptRecord, MinQuality, RetryPolicy};
pub use signals::{MaskSignal, PartMeasure, ShapeFacts, Signals};
pub use thresholds::Thresholds;

/// The grade of a shape, worst first (so `Bad < Weak < Ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Bad,
    Weak,
    Ok,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bad => "bad",
            Self::Weak => "weak",
            Self::Ok => "ok",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an asset met the run's `--min-quality`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    pub min: Verdict,
    pub passed: bool,
}

/// The asset's `quality` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub verdict: Verdict,
    /// Why the verdict is not `ok`, worst first (empty when ok).
    #[serde(default)]
    pub reasons: Vec<String>,
    pub signals: Signals,
    /// The thresholds the verdict was graded with.
    #[serde(default)]
    pub thresholds: Thresholds,
    /// The run's gate, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateRecord>,
    /// Every attempt of a gated run, the kept one included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
}

impl Quality {
    /// Grades `signals` with `thresholds`.
    pub fn grade(signals: Signals, thresholds: &Thresholds) -> Self {
        let (verdict, reasons) = thresholds.grade(&signals);
        Self { verdict, reasons, signals, thresholds: thresholds.clone(), gate: None, attempts: vec![] }
    }

    /// `ok`, or `weak: reason; reason`.
    pub fn label(&self) -> String {
        label(self.verdict, &self.reasons)
    }
}

/// `ok`, or `verdict: reason; reason`.
pub fn label(verdict: Verdict, reasons: &[String]) -> String {
    if reasons.is_empty() {
        verdict.to_string()
    } else {
        format!("{verdict}: {}", reasons.join("; "))
    }
}

/// What a generating run does about quality: how it grades, and its gate and retries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QualityOptions {
    pub thresholds: Thresholds,
    pub policy: retry::RetryPolicy,
}

/// The verdict and reasons as a manifest entry and a command's result carry them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualitySummary {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// False when the asset is the best of its attempts but still under the run's gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed_gate: Option<bool>,
    /// Attempts made (more than 1: retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<usize>,
}

impl From<&Quality> for QualitySummary {
    fn from(q: &Quality) -> Self {
        Self {
            verdict: q.verdict,
            reasons: q.reasons.clone(),
            passed_gate: q.gate.map(|g| g.passed),
            attempts: (!q.attempts.is_empty()).then_some(q.attempts.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shares just over a limit read as over it: one decimal, not `98 % (weak above 98 %)`.
    #[test]
    fn reasons_show_a_share_just_over_its_limit_as_over_it() {
        let s = Signals {
            mask: MaskSignal::NotApplicable,
            parts_requested: 3,
            parts_produced: 3,
            parts_dropped: 0,
            smallest_area_share: 0.01,
            largest_area_share: 0.9849,
            largest_point_share: 0.9,
            overlap: 0.8049,
            bbox_aspect: 2.0,
        };
        let q = Quality::grade(s, &Thresholds::default());
        assert_eq!(q.verdict, Verdict::Weak);
        assert_eq!(
            q.reasons,
            [
                "one part holds 98.5 % of the surface (weak above 98.0 %)",
                "80.5 % of points lie inside another part's box (weak above 80.0 %)"
            ]
        );
    }

    #[test]
    fn verdicts_order_worst_first_and_label_with_reasons() {
        assert!(Verdict::Bad < Verdict::Weak && Verdict::Weak < Verdict::Ok);
        assert_eq!(label(Verdict::Ok, &[]), "ok");
        assert_eq!(label(Verdict::Weak, &["a".into(), "b".into()]), "weak: a; b");
        assert_eq!(serde_json::to_string(&Verdict::Weak).unwrap(), "\"weak\"");
    }
}
