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
pub use signals::{MaskSignal, ShapeFacts, Signals};
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
    use crate::asset::PipelineInfo;
    use crate::concept::Concept;
    use crate::geometry::mesh::TriMesh;
    use crate::geometry::primitives::{cuboid, sphere};
    use crate::shape::{build_asset, GeneratedPart, GeneratedShape, ShapeRequest};
    use crate::stage::Timings;

    fn graded(meshes: Vec<TriMesh>, mask: Option<image::GrayImage>, asked: usize) -> Quality {
        let request = ShapeRequest {
            concept: Concept::parse("thing").unwrap(),
            parts: Some(asked),
            seed: 3,
            points: 2048,
            part_names: vec![],
        };
        let shape = GeneratedShape {
            parts: meshes.into_iter().map(|mesh| GeneratedPart { name: None, mesh }).collect(),
            dropped: vec![],
            pipeline: PipelineInfo { name: "partcrafter".into(), models: vec![], settings: Default::default() },
            images: vec![],
            mask,
            parts_requested: Some(asked),
        };
        build_asset(&request, shape, Timings::default()).unwrap().quality.unwrap()
    }

    /// A 512² mask with a centred square of `side` pixels.
    fn square_mask(side: u32) -> image::GrayImage {
        let lo = 256 - side / 2;
        image::GrayImage::from_fn(512, 512, |x, y| {
            image::Luma([if (lo..lo + side).contains(&x) && (lo..lo + side).contains(&y) { 255 } else { 0 }])
        })
    }

    /// A four-legged table: parts side by side, touching, of sensible sizes.
    fn table() -> Vec<TriMesh> {
        let mut parts = vec![cuboid([0.0, 1.0, 0.0], [1.0, 0.05, 0.6])];
        for (x, z) in [(-0.9, -0.5), (0.9, -0.5), (-0.9, 0.5), (0.9, 0.5)] {
            parts.push(cuboid([x, 0.5, z], [0.05, 0.45, 0.05]));
        }
        parts
    }

    #[test]
    fn a_sound_shape_with_a_sound_mask_is_ok() {
        let q = graded(table(), Some(square_mask(240)), 5);
        assert_eq!(q.verdict, Verdict::Ok, "{:?}", q);
        assert!(matches!(q.signals.mask, MaskSignal::Measured { components: 1, .. }), "{:?}", q.signals.mask);
        assert!(q.signals.overlap < 0.2, "{}", q.signals.overlap);
    }

    #[test]
    fn one_part_holding_nearly_everything_is_a_bad_collapse() {
        let mut parts = vec![sphere([0.0; 3], 1.0)];
        for i in 0..3 {
            parts.push(sphere([1.5 + i as f32 * 0.1, 0.0, 0.0], 0.03));
        }
        let q = graded(parts, None, 4);
        assert_eq!(q.verdict, Verdict::Bad, "{:?}", q);
        assert!(q.reasons[0].contains("collapse"), "{:?}", q.reasons);
        assert!(q.signals.largest_area_share > 0.99);
        // The point budget keeps the point share far lower, which is why the verdict reads area.
        assert!(q.signals.largest_point_share < 0.95, "{}", q.signals.largest_point_share);
        assert!(matches!(q.signals.mask, MaskSignal::NotApplicable));
    }

    #[test]
    fn parts_that_repeat_each_other_are_bad_and_a_flat_sheet_is_bad() {
        let cube = cuboid([0.0; 3], [0.5, 0.5, 0.5]);
        let q = graded(vec![cube.clone(), cube.clone(), cube], None, 3);
        assert!(q.signals.overlap > 0.99, "{}", q.signals.overlap);
        assert_eq!(q.verdict, Verdict::Bad, "{:?}", q);
        let sheet = graded(vec![cuboid([0.0; 3], [1.0, 0.002, 1.0])], None, 1);
        assert!(sheet.signals.bbox_aspect > 100.0, "{}", sheet.signals.bbox_aspect);
        assert_eq!(sheet.verdict, Verdict::Bad, "{:?}", sheet);
    }

    #[test]
    fn masks_of_nothing_of_everything_or_in_pieces_are_graded() {
        let empty = graded(table(), Some(image::GrayImage::new(512, 512)), 5);
        assert_eq!(empty.verdict, Verdict::Bad);
        assert!(empty.reasons[0].contains("mask covers 0.0 %"), "{:?}", empty.reasons);
        let full = graded(table(), Some(image::GrayImage::from_pixel(512, 512, image::Luma([255]))), 5);
        assert_eq!((full.verdict, full.reasons.len()), (Verdict::Bad, 1), "{:?}", full.reasons);
        let small = graded(table(), Some(square_mask(60)), 5);
        assert_eq!(small.verdict, Verdict::Weak, "{:?}", small.reasons);
        let mut pieces = square_mask(200);
        for i in 0..4 {
            for y in 0..20 {
                for x in 0..20 {
                    pieces.put_pixel(10 + i * 40 + x, 10 + y, image::Luma([255]));
                }
            }
        }
        let q = graded(table(), Some(pieces), 5);
        assert_eq!(q.verdict, Verdict::Weak, "{:?}", q.reasons);
        assert!(q.reasons[0].contains("5 separate pieces"), "{:?}", q.reasons);
    }

    #[test]
    fn thresholds_override_from_a_file_and_reject_typos_and_disorder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, r#"{"bbox_aspect_weak_above": 1.5, "bbox_aspect_bad_above": 200}"#).unwrap();
        let t = Thresholds::load(&path).unwrap();
        assert_eq!((t.bbox_aspect_weak_above, t.overlap_bad_above), (1.5, Thresholds::default().overlap_bad_above));
        let q = Quality::grade(graded(table(), None, 5).signals, &t);
        assert_eq!(q.verdict, Verdict::Weak, "the table's aspect is about 2: {:?}", q.reasons);
        std::fs::write(&path, r#"{"bbox_aspect_weak": 3}"#).unwrap();
        assert!(Thresholds::load(&path).unwrap_err().0.contains("unknown field"));
        std::fs::write(&path, r#"{"overlap_weak_above": 0.95, "overlap_bad_above": 0.9}"#).unwrap();
        assert!(Thresholds::load(&path).unwrap_err().0.contains("must not exceed"));
    }

    #[test]
    fn verdicts_order_worst_first_and_label_with_reasons() {
        assert!(Verdict::Bad < Verdict::Weak && Verdict::Weak < Verdict::Ok);
        assert_eq!(label(Verdict::Ok, &[]), "ok");
        assert_eq!(label(Verdict::Weak, &["a".into(), "b".into()]), "weak: a; b");
        assert_eq!(serde_json::to_string(&Verdict::Weak).unwrap(), "\"weak\"");
    }
}
