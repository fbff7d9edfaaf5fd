//! The measurements behind a verdict, computed from what every pipeline produces: the
//! sampled cloud with its part summaries, the part counts, and the mask where there is one.
//!
//! Each signal targets one silent failure reported for PartCrafter and BriaRMBG:
//! - mask coverage / components: a background remover that kept almost nothing, the whole
//!   frame, or a scatter of pieces (the image→parts model then reconstructs the wrong thing);
//! - parts produced / dropped: parts that came back without a surface;
//! - largest part's share: "most geometry collapses into one part". Recorded as the point
//!   share and the area share; the verdict reads the area share, because the point budget
//!   gives every part at least 2 % of the points, so with many parts the point share of a
//!   total collapse stays low (16 parts: at most 70 %);
//! - smallest part's area share: a part that is a speck;
//! - overlap: the share of all points that lie inside (or on) another part's bounding box,
//!   weighted by points rather than taken per part, so a small part nested in a big one (a
//!   clock's hands on its face) weighs little. Parts that repeat one another (every part the
//!   whole object) put nearly every point inside another part's box, boundary included: a
//!   duplicate's points lie on the same faces, which is why the boxes are closed (grown by
//!   [`OVERLAP_TOLERANCE`] for rounding) rather than shrunk. Parts that only touch add just
//!   their contact points. Bounding boxes rather than hulls: cheap, stable, and already
//!   recorded in the asset's part summaries;
//! - bounding-box aspect: longest over shortest side of the whole cloud; a reconstruction
//!   that flattened into a sheet or a needle has a huge one.

use serde::{Deserialize, Serialize};

use super::mask::MaskStats;

/// How far (normalised units; the cloud spans [-1, 1]) another part's box is grown on each
/// side for the overlap test: float rounding of the normalisation, nothing more.
pub const OVERLAP_TOLERANCE: f32 = 1e-4;
/// The shortest side counted when computing the aspect (keeps a flat sheet's aspect finite).
const MIN_SIDE: f64 = 1e-3;

/// The mask signal: measured, or not applicable (the pipeline has no mask).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MaskSignal {
    NotApplicable,
    Measured { coverage: f64, components: usize },
}

impl From<Option<MaskStats>> for MaskSignal {
    fn from(m: Option<MaskStats>) -> Self {
        match m {
            Some(s) => Self::Measured { coverage: s.coverage, components: s.components },
            None => Self::NotApplicable,
        }
    }
}

/// Every measured signal of one asset (recorded in its `quality` object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signals {
    pub mask: MaskSignal,
    pub parts_requested: usize,
    pub parts_produced: usize,
    pub parts_dropped: usize,
    pub smallest_area_share: f64,
    pub largest_area_share: f64,
    pub largest_point_share: f64,
    pub overlap: f64,
    pub bbox_aspect: f64,
}

/// What the generator reported besides the cloud: the mask and how many parts it was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShapeFacts {
    pub mask: Option<MaskStats>,
    /// None: the generator chose its own count (procedural templates): the parts it made.
    pub parts_requested: Option<usize>,
}

/// One sampled part as the signals read it: what the asset's part summary records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartMeasure {
    /// Share of the total surface area, in [0, 1].
    pub area_share: f64,
    pub points: usize,
    pub bbox_min: [f32; 3],
    pub bbox_max: [f32; 3],
}

/// The signals of an assembled shape: its sampled `parts` (part id `i + 1` is `parts[i]`),
/// how many were `dropped`, and the cloud with each point's part id.
pub fn measure(
    parts: &[PartMeasure],
    dropped: usize,
    positions: &[[f32; 3]],
    part_ids: &[u8],
    facts: ShapeFacts,
) -> Signals {
    let produced = parts.len();
    let n = positions.len().max(1) as f64;
    let shares = parts.iter().map(|p| p.area_share);
    Signals {
        mask: facts.mask.into(),
        parts_requested: facts.parts_requested.unwrap_or(produced + dropped),
        parts_produced: produced,
        parts_dropped: dropped,
        smallest_area_share: round(shares.clone().fold(f64::INFINITY, f64::min).min(1.0)),
        largest_area_share: round(shares.fold(0.0, f64::max)),
        largest_point_share: round(parts.iter().map(|p| p.points).max().unwrap_or(0) as f64 / n),
        overlap: round(overlap(positions, part_ids, parts)),
        bbox_aspect: round(bbox_aspect(positions)),
    }
}

/// The signals of a shape that produced no asset because every part was dropped.
pub fn nothing_usable(facts: ShapeFacts, dropped: usize) -> Signals {
    Signals {
        mask: facts.mask.into(),
        parts_requested: facts.parts_requested.unwrap_or(dropped),
        parts_produced: 0,
        parts_dropped: dropped,
        smallest_area_share: 0.0,
        largest_area_share: 0.0,
        largest_point_share: 0.0,
        overlap: 0.0,
        bbox_aspect: 0.0,
    }
}

/// Six significant decimals: the stored numbers stay readable and identical across reruns.
fn round(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// Share of all points that lie inside or on the bounding box of a part other than their own.
pub fn overlap(positions: &[[f32; 3]], part_ids: &[u8], parts: &[PartMeasure]) -> f64 {
    let boxes: Vec<([f32; 3], [f32; 3])> = parts
        .iter()
        .map(|p| (p.bbox_min.map(|v| v - OVERLAP_TOLERANCE), p.bbox_max.map(|v| v + OVERLAP_TOLERANCE)))
        .collect();
    let inside = positions
        .iter()
        .zip(part_ids)
        .filter(|(p, &own)| {
            boxes
                .iter()
                .enumerate()
                .any(|(i, (lo, hi))| i + 1 != own as usize && (0..3).all(|k| p[k] >= lo[k] && p[k] <= hi[k]))
        })
        .count();
    inside as f64 / positions.len().max(1) as f64
}

/// Longest over shortest side of the cloud's bounding box.
pub fn bbox_aspect(positions: &[[f32; 3]]) -> f64 {
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for p in positions {
        for k in 0..3 {
            lo[k] = lo[k].min(p[k] as f64);
            hi[k] = hi[k].max(p[k] as f64);
        }
    }
    let sides: Vec<f64> = (0..3).map(|k| (hi[k] - lo[k]).max(0.0)).collect();
    let longest = sides.iter().copied().fold(0.0, f64::max);
    if longest <= 0.0 || !longest.is_finite() {
        return 0.0;
    }
    longest / sides.iter().copied().fold(f64::INFINITY, f64::min).max(MIN_SIDE)
}
