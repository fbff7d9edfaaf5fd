//! The stored asset, format `lumen.shape/1` (PRODUCT.md), and its validating decoder.
//!
//! One JSON object per concept, the same body the server returns to the client, so it is
//! served as is. Binary channels are base64 of little-endian arrays the web client reads
//! straight into typed arrays (`Float32Array` positions, `Uint8Array` ids and attachment).
//! The decoder checks everything a client would trip over and names the first problem.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Serialize};

pub const FORMAT: &str = "lumen.shape/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Asset {
    pub format: String,
    pub text: String,
    pub normalized: String,
    pub key: String,
    pub num_points: usize,
    /// base64 of f32 LE x,y,z per point, in [-1, 1]³.
    pub positions: String,
    /// base64 of one u8 per point; 1-based part ids, 0 = unassigned.
    pub part_ids: String,
    /// Names of part ids 1..N.
    pub part_names: Vec<String>,
    pub parts: Vec<PartSummary>,
    /// base64 of one u8 per point: 0 at a joint with another part, 255 at the farthest extremity.
    pub attachment: String,
    pub pipeline: PipelineInfo,
    pub seed: u64,
    pub created_at: String,
    pub timings_ms: BTreeMap<String, f64>,
    pub tool: ToolInfo,
    /// Parts the model produced but that could not be turned into a surface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_parts: Vec<DroppedPart>,
    /// Quality signals and verdict (`crate::quality`); absent in assets made before they
    /// existed, which count as unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::quality::Quality>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PartSummary {
    pub id: u8,
    pub name: String,
    pub points: usize,
    pub centroid: [f32; 3],
    pub bbox_min: [f32; 3],
    pub bbox_max: [f32; 3],
    /// This part's share of the total surface area, in [0, 1].
    pub area_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PipelineInfo {
    /// `"partcrafter"` or `"procedural"`.
    pub name: String,
    #[serde(default)]
    pub models: Vec<ModelInfo>,
    /// Stage settings worth knowing when a shape looks wrong (steps, guidance, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    pub revision: String,
    /// The licence the model card names (e.g. `mit`, `bria-rmbg-1.4`); absent in older assets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

impl ToolInfo {
    pub fn current() -> Self {
        Self { name: "lumen".into(), version: env!("CARGO_PKG_VERSION").into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DroppedPart {
    pub index: usize,
    pub reason: String,
}

/// Decoded per-point data.
#[derive(Debug, Clone, PartialEq)]
pub struct PointData {
    pub positions: Vec<[f32; 3]>,
    pub part_ids: Vec<u8>,
    pub attachment: Vec<u8>,
}

/// Why a blob is not a valid asset.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid asset: {0}")]
pub struct InvalidAsset(pub String);

fn invalid(msg: impl Into<String>) -> InvalidAsset {
    InvalidAsset(msg.into())
}

pub fn encode_positions(p: &[[f32; 3]]) -> String {
    let bytes: Vec<u8> = p.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
    B64.encode(bytes)
}

pub fn encode_u8(v: &[u8]) -> String {
    B64.encode(v)
}

impl Asset {
    pub fn to_json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("asset serialises")
    }

    /// Parses and validates a stored blob.
    pub fn decode(bytes: &[u8]) -> Result<(Asset, PointData), InvalidAsset> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON ({e})")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => return Err(invalid(format!("format {other:?}, expected {FORMAT:?}"))),
            None => return Err(invalid("no \"format\" field")),
        }
        let asset: Asset = serde_json::from_value(value).map_err(|e| invalid(format!("bad field ({e})")))?;
        let points = asset.validate()?;
        Ok((asset, points))
    }

    /// Checks lengths, id ranges, coordinates and summaries; returns the decoded channels.
    pub fn validate(&self) -> Result<PointData, InvalidAsset> {
        let n = self.num_points;
        if n == 0 {
            return Err(invalid("num_points is 0"));
        }
        let expected_key = crate::concept::key_of(&self.normalized);
        if self.key != expected_key {
            return Err(invalid(format!("key {} does not match normalized text (expected {expected_key})", self.key)));
        }
        let raw = B64.decode(&self.positions).map_err(|e| invalid(format!("positions: bad base64 ({e})")))?;
        if raw.len() != n * 12 {
            return Err(invalid(format!("positions: {} bytes, expected {} for {n} points", raw.len(), n * 12)));
        }
        let coords: Vec<f32> = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = coords.iter().position(|x| !x.is_finite()) {
            return Err(invalid(format!("positions: point {} has a non-finite coordinate", i / 3)));
        }
        // Normalisation puts points in [-1, 1]³; allow float rounding only.
        if let Some(i) = coords.iter().position(|x| x.abs() > 1.0 + 1e-4) {
            return Err(invalid(format!("positions: point {} lies outside [-1, 1]³ ({})", i / 3, coords[i])));
        }
        let positions: Vec<[f32; 3]> = coords.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect();

        let part_ids = B64.decode(&self.part_ids).map_err(|e| invalid(format!("part_ids: bad base64 ({e})")))?;
        if part_ids.len() != n {
            return Err(invalid(format!("part_ids: {} entries, expected {n}", part_ids.len())));
        }
        let num_parts = self.part_names.len();
        if num_parts == 0 || num_parts > 255 {
            return Err(invalid(format!("part_names: {num_parts} names")));
        }
        if let Some((i, id)) = part_ids.iter().enumerate().find(|(_, &id)| id as usize > num_parts) {
            return Err(invalid(format!("part_ids: point {i} has id {id} but only {num_parts} parts are named")));
        }
        let attachment = B64.decode(&self.attachment).map_err(|e| invalid(format!("attachment: bad base64 ({e})")))?;
        if attachment.len() != n {
            return Err(invalid(format!("attachment: {} entries, expected {n}", attachment.len())));
        }
        if self.parts.len() != num_parts {
            return Err(invalid(format!("parts: {} summaries for {num_parts} part names", self.parts.len())));
        }
        let mut counts = vec![0usize; num_parts + 1];
        for &id in &part_ids {
            counts[id as usize] += 1;
        }
        for (i, p) in self.parts.iter().enumerate() {
            if p.id as usize != i + 1 {
                return Err(invalid(format!("parts[{i}]: id {} out of order (expected {})", p.id, i + 1)));
            }
            if p.points != counts[i + 1] {
                return Err(invalid(format!("parts[{i}]: says {} points, part_ids has {}", p.points, counts[i + 1])));
            }
            if !(0.0..=1.0 + 1e-9).contains(&p.area_share) {
                return Err(invalid(format!("parts[{i}]: area_share {} outside [0, 1]", p.area_share)));
            }
        }
        if self.pipeline.name != "partcrafter" && self.pipeline.name != "procedural" {
            return Err(invalid(format!("pipeline {:?} is unknown", self.pipeline.name)));
        }
        Ok(PointData { positions, part_ids, attachment })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_asset() -> Asset {
        let normalized = "chair".to_string();
        Asset {
            format: FORMAT.into(),
            text: "Chair".into(),
            key: crate::concept::key_of(&normalized),
            normalized,
            num_points: 3,
            positions: encode_positions(&[[0.0, 0.5, -1.0], [1.0, 0.0, 0.0], [0.2, 0.2, 0.2]]),
            part_ids: encode_u8(&[1, 2, 1]),
            part_names: vec!["seat".into(), "leg".into()],
            parts: vec![
                PartSummary {
                    id: 1,
                    name: "seat".into(),
                    points: 2,
                    centroid: [0.0; 3],
                    bbox_min: [0.0; 3],
                    bbox_max: [0.0; 3],
                    area_share: 0.7,
                },
                PartSummary {
                    id: 2,
                    name: "leg".into(),
                    points: 1,
                    centroid: [0.0; 3],
                    bbox_min: [0.0; 3],
                    bbox_max: [0.0; 3],
                    area_share: 0.3,
                },
            ],
            attachment: encode_u8(&[0, 255, 12]),
            pipeline: PipelineInfo { name: "procedural".into(), models: vec![], settings: Default::default() },
            seed: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            timings_ms: Default::default(),
            tool: ToolInfo::current(),
            dropped_parts: vec![],
            quality: None,
        }
    }

    #[test]
    fn round_trips() {
        let a = sample_asset();
        let (b, pts) = Asset::decode(&a.to_json_bytes()).unwrap();
        assert_eq!(a, b);
        assert_eq!(pts.part_ids, vec![1, 2, 1]);
        assert_eq!(pts.positions[1], [1.0, 0.0, 0.0]);
    }

    #[test]
    fn rejects_each_kind_of_damage() {
        let check = |f: &dyn Fn(&mut Asset), want: &str| {
            let mut a = sample_asset();
            f(&mut a);
            let err = Asset::decode(&a.to_json_bytes()).unwrap_err().0;
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        };
        check(&|a| a.format = "lumen.shape/2".into(), "format");
        check(&|a| a.positions = encode_positions(&[[0.0; 3]; 2]), "positions");
        check(&|a| a.positions = encode_positions(&[[f32::NAN, 0.0, 0.0], [0.0; 3], [0.0; 3]]), "non-finite");
        check(&|a| a.positions = encode_positions(&[[3.0, 0.0, 0.0], [0.0; 3], [0.0; 3]]), "outside");
        check(&|a| a.part_ids = encode_u8(&[1, 3, 1]), "id 3");
        check(&|a| a.part_ids = encode_u8(&[1, 2]), "part_ids");
        check(&|a| a.attachment = "@@".into(), "attachment");
        check(&|a| a.parts[0].points = 5, "parts[0]");
        check(&|a| a.key = "0000000000000000".into(), "key");
        check(&|a| a.pipeline.name = "magic".into(), "pipeline");
        assert!(Asset::decode(b"{\"format\": 1").unwrap_err().0.contains("not JSON"));
        assert!(Asset::decode(b"{}").unwrap_err().0.contains("format"));
    }
}
