//! Where a signal turns a shape weak or bad, and the grading that applies them.
//!
//! The defaults are documented in the README (*Quality*) with the reason for each; a JSON
//! file (`--quality-thresholds FILE`, or `LUMEN_QUALITY_THRESHOLDS`) overrides any subset,
//! and an unknown or mistyped field is a usage error, so a typo never silently keeps a
//! default. The thresholds an asset was graded with are recorded beside its verdict.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::signals::{MaskSignal, Signals};
use super::Verdict;
use crate::error::UsageError;

/// Every threshold of the grading. Shares are fractions in [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Mask coverage below which the remover kept (almost) nothing: bad.
    pub mask_coverage_bad_below: f64,
    /// Coverage below which the object is a small patch of the picture: weak.
    pub mask_coverage_weak_below: f64,
    /// Coverage above which the object fills most of the frame (cropped or background kept): weak.
    pub mask_coverage_weak_above: f64,
    /// Coverage above which the mask is the whole frame: bad.
    pub mask_coverage_bad_above: f64,
    /// More mask components than this: weak (a scatter of pieces, not one object).
    pub mask_components_weak_above: usize,
    /// Share of the requested parts dropped above which the shape is bad.
    pub dropped_share_bad_above: f64,
    /// Largest part's area share above which most geometry sits in one part: weak / bad
    /// (only when two or more parts were requested).
    pub largest_area_share_weak_above: f64,
    pub largest_area_share_bad_above: f64,
    /// Smallest part's area share below which a part is a speck: weak.
    pub smallest_area_share_weak_below: f64,
    /// Share of points inside another part's bounding box above which parts repeat one another.
    pub overlap_weak_above: f64,
    pub overlap_bad_above: f64,
    /// Longest over shortest side of the cloud above which it is a sheet or needle.
    pub bbox_aspect_weak_above: f64,
    pub bbox_aspect_bad_above: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            mask_coverage_bad_below: 0.005,
            mask_coverage_weak_below: 0.02,
            mask_coverage_weak_above: 0.85,
            mask_coverage_bad_above: 0.98,
            mask_components_weak_above: 3,
            dropped_share_bad_above: 0.5,
            largest_area_share_weak_above: 0.98,
            largest_area_share_bad_above: 0.99,
            smallest_area_share_weak_below: 0.002,
            overlap_weak_above: 0.8,
            overlap_bad_above: 0.92,
            bbox_aspect_weak_above: 30.0,
            bbox_aspect_bad_above: 100.0,
        }
    }
}

impl Thresholds {
    /// The defaults with the fields `path` (a JSON object) sets replaced.
    pub fn load(path: &Path) -> Result<Self, UsageError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read quality thresholds {}: {e}", path.display())))?;
        let t: Self = serde_json::from_str(&text)
            .map_err(|e| UsageError(format!("quality thresholds {}: {e}", path.display())))?;
        t.check().map_err(|e| UsageError(format!("quality thresholds {}: {e}", path.display())))?;
        Ok(t)
    }

    /// Limits must be finite and ordered (weak before bad), so no shape is both and none neither.
    fn check(&self) -> Result<(), String> {
        let pairs = [
            (
                "mask_coverage_bad_below",
                self.mask_coverage_bad_below,
                "mask_coverage_weak_below",
                self.mask_coverage_weak_below,
            ),
            (
                "mask_coverage_weak_above",
                self.mask_coverage_weak_above,
                "mask_coverage_bad_above",
                self.mask_coverage_bad_above,
            ),
            (
                "largest_area_share_weak_above",
                self.largest_area_share_weak_above,
                "largest_area_share_bad_above",
                self.largest_area_share_bad_above,
            ),
            ("overlap_weak_above", self.overlap_weak_above, "overlap_bad_above", self.overlap_bad_above),
            (
                "bbox_aspect_weak_above",
                self.bbox_aspect_weak_above,
                "bbox_aspect_bad_above",
                self.bbox_aspect_bad_above,
            ),
        ];
        for (a, x, b, y) in pairs {
            if !x.is_finite() || !y.is_finite() || x < 0.0 || y < 0.0 {
                return Err(format!("{a} and {b} must be finite and not negative"));
            }
            if x > y {
                return Err(format!("{a} ({x}) must not exceed {b} ({y})"));
            }
        }
        Ok(())
    }

    /// The verdict of `s` and the reasons for it, worst first.
    pub fn grade(&self, s: &Signals) -> (Verdict, Vec<String>) {
        let mut found: Vec<(Verdict, String)> = Vec::new();
        self.grade_mask(s, &mut found);
        self.grade_parts(s, &mut found);
        self.grade_geometry(s, &mut found);
        found.sort_by_key(|(v, _)| *v);
        let verdict = found.first().map_or(Verdict::Ok, |(v, _)| *v);
        (verdict, found.into_iter().map(|(_, r)| r).collect())
    }

    fn grade_mask(&self, s: &Signals, out: &mut Vec<(Verdict, String)>) {
        let MaskSignal::Measured { coverage, components } = s.mask else { return };
        let pct = |x: f64| format!("{:.1} %", x * 100.0);
        if coverage < self.mask_coverage_bad_below {
            out.push((
                Verdict::Bad,
                format!("mask covers {} of the frame (bad below {})", pct(coverage), pct(self.mask_coverage_bad_below)),
            ));
        } else if coverage < self.mask_coverage_weak_below {
            out.push((
                Verdict::Weak,
                format!(
                    "mask covers {} of the frame (weak below {})",
                    pct(coverage),
                    pct(self.mask_coverage_weak_below)
                ),
            ));
        } else if coverage > self.mask_coverage_bad_above {
            out.push((
                Verdict::Bad,
                format!("mask covers {} of the frame (bad above {})", pct(coverage), pct(self.mask_coverage_bad_above)),
            ));
        } else if coverage > self.mask_coverage_weak_above {
            out.push((
                Verdict::Weak,
                format!(
                    "mask covers {} of the frame (weak above {})",
                    pct(coverage),
                    pct(self.mask_coverage_weak_above)
                ),
            ));
        }
        if components > self.mask_components_weak_above {
            out.push((
                Verdict::Weak,
                format!("mask has {components} separate pieces (weak above {})", self.mask_components_weak_above),
            ));
        }
    }

    fn grade_parts(&self, s: &Signals, out: &mut Vec<(Verdict, String)>) {
        let asked = s.parts_requested.max(s.parts_produced + s.parts_dropped).max(1);
        if s.parts_produced == 0 {
            out.push((Verdict::Bad, format!("every part dropped ({} of {asked})", s.parts_dropped)));
            return;
        }
        if s.parts_dropped > 0 {
            let share = s.parts_dropped as f64 / asked as f64;
            let v = if share > self.dropped_share_bad_above { Verdict::Bad } else { Verdict::Weak };
            out.push((v, format!("{} of {asked} parts dropped", s.parts_dropped)));
        }
        if s.parts_requested >= 2 {
            let share = s.largest_area_share;
            if share > self.largest_area_share_bad_above {
                out.push((
                    Verdict::Bad,
                    format!(
                        "one part holds {:.1} % of the surface (collapse; bad above {:.1} %)",
                        share * 100.0,
                        self.largest_area_share_bad_above * 100.0
                    ),
                ));
            } else if share > self.largest_area_share_weak_above {
                out.push((
                    Verdict::Weak,
                    format!(
                        "one part holds {:.1} % of the surface (weak above {:.1} %)",
                        share * 100.0,
                        self.largest_area_share_weak_above * 100.0
                    ),
                ));
            }
        }
        if s.parts_produced >= 2 && s.smallest_area_share < self.smallest_area_share_weak_below {
            out.push((
                Verdict::Weak,
                format!(
                    "smallest part is {:.2} % of the surface (weak below {:.2} %)",
                    s.smallest_area_share * 100.0,
                    self.smallest_area_share_weak_below * 100.0
                ),
            ));
        }
    }

    fn grade_geometry(&self, s: &Signals, out: &mut Vec<(Verdict, String)>) {
        if s.overlap > self.overlap_bad_above {
            out.push((
                Verdict::Bad,
                format!(
                    "{:.1} % of points lie inside another part's box (parts repeat each other; bad above {:.1} %)",
                    s.overlap * 100.0,
                    self.overlap_bad_above * 100.0
                ),
            ));
        } else if s.overlap > self.overlap_weak_above {
            out.push((
                Verdict::Weak,
                format!(
                    "{:.1} % of points lie inside another part's box (weak above {:.1} %)",
                    s.overlap * 100.0,
                    self.overlap_weak_above * 100.0
                ),
            ));
        }
        if s.bbox_aspect > self.bbox_aspect_bad_above {
            out.push((
                Verdict::Bad,
                format!(
                    "bounding box aspect {:.1} (flat or thin; bad above {})",
                    s.bbox_aspect, self.bbox_aspect_bad_above
                ),
            ));
        } else if s.bbox_aspect > self.bbox_aspect_weak_above {
            out.push((
                Verdict::Weak,
                format!("bounding box aspect {:.1} (weak above {})", s.bbox_aspect, self.bbox_aspect_weak_above),
            ));
        }
    }
}
