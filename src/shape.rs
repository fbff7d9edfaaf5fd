//! From a concept to a stored asset: the generator interface (a device phase and a CPU
//! phase, so a batch can overlap one concept's model stages with another's CPU work), the
//! procedural generator, and the final sampling + asset assembly shared by every pipeline.

use anyhow::{bail, Result};

use crate::asset::{self, Asset, DroppedPart, ModelInfo, PartSummary, PipelineInfo, ToolInfo};
use crate::concept::Concept;
use crate::geometry::mesh::TriMesh;
use crate::geometry::sampling::{sample_parts, SampleOptions};
use crate::stage::{PartOutcome, Timings};

/// Everything that decides what one concept's shape looks like.
#[derive(Debug, Clone)]
pub struct ShapeRequest {
    pub concept: Concept,
    /// Requested part count (None: the generator's own default).
    pub parts: Option<usize>,
    pub seed: u64,
    pub points: usize,
    /// Catalogue names for part ids 1..N, in canonical order.
    pub part_names: Vec<String>,
}

/// A part mesh with the name its generator gives it (PartCrafter's parts are unnamed).
#[derive(Debug, Clone)]
pub struct GeneratedPart {
    pub name: Option<String>,
    pub mesh: TriMesh,
}

/// What a generator returns: usable parts, parts it had to drop, and how it was made.
#[derive(Debug, Clone)]
pub struct GeneratedShape {
    pub parts: Vec<GeneratedPart>,
    pub dropped: Vec<DroppedPart>,
    pub pipeline: PipelineInfo,
    /// Intermediate images (name, PNG bytes) kept with `--keep-images`.
    pub images: Vec<(String, Vec<u8>)>,
}

/// What a generator's device phase hands its CPU phase: host data only, never a tensor, so
/// the CPU phase can run on another thread while the device takes the next concept.
#[derive(Debug, Clone)]
pub struct DeviceOutput {
    /// Per part, in the model's order: a mesh, its decoded field still to be meshed, or why
    /// it failed.
    pub parts: Vec<PartOutcome>,
    pub pipeline: PipelineInfo,
    /// Intermediate images kept with `--keep-images` (file name, picture); PNG encoding is
    /// CPU work, left to the CPU phase.
    pub images: Vec<(String, image::DynamicImage)>,
}

/// A pipeline that turns a request into part meshes, in two phases: everything that touches
/// the device ([`run_device`](Self::run_device), on a batch's one device worker) and what is
/// left for the CPU ([`finish_on_cpu`](Self::finish_on_cpu), on any CPU worker, at the same
/// time as the device's next concept). A generator without model stages does all its work in
/// the CPU phase.
pub trait ShapeGenerator: Send + Sync {
    /// `"procedural"` or `"partcrafter"`.
    fn name(&self) -> &'static str;

    /// Where the device phase runs (`"cpu"`, `"cuda"`), for logs.
    fn device_kind(&self) -> &str {
        "cpu"
    }

    /// The model stages of one concept. `None`: this generator has no device phase.
    fn run_device(&self, request: &ShapeRequest, timings: &mut Timings) -> Result<Option<DeviceOutput>>;

    /// The rest of one concept, from what [`run_device`](Self::run_device) returned; never
    /// touches the device (`timings` synchronises nothing here).
    fn finish_on_cpu(
        &self,
        request: &ShapeRequest,
        device: Option<DeviceOutput>,
        timings: &mut Timings,
    ) -> Result<GeneratedShape>;

    /// Both phases, one after the other (one concept outside a batch: preflight, tests).
    fn generate(&self, request: &ShapeRequest, timings: &mut Timings) -> Result<GeneratedShape> {
        let device = self.run_device(request, timings)?;
        timings.detach_device();
        self.finish_on_cpu(request, device, timings)
    }
}

/// The weight-free generator (see `procedural.rs`): all CPU.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProceduralGenerator;

impl ShapeGenerator for ProceduralGenerator {
    fn name(&self) -> &'static str {
        "procedural"
    }

    fn run_device(&self, _: &ShapeRequest, _: &mut Timings) -> Result<Option<DeviceOutput>> {
        Ok(None)
    }

    fn finish_on_cpu(
        &self,
        request: &ShapeRequest,
        _: Option<DeviceOutput>,
        timings: &mut Timings,
    ) -> Result<GeneratedShape> {
        let parts = timings
            .time("procedural", || crate::procedural::build(&request.concept.normalized, request.parts, request.seed));
        let template = crate::procedural::template_name(&request.concept.normalized).unwrap_or("generic");
        let mut settings = std::collections::BTreeMap::new();
        settings.insert("template".to_string(), serde_json::Value::from(template));
        Ok(GeneratedShape {
            parts: parts.into_iter().map(|p| GeneratedPart { name: Some(p.name), mesh: p.mesh }).collect(),
            dropped: vec![],
            pipeline: PipelineInfo { name: "procedural".into(), models: Vec::<ModelInfo>::new(), settings },
            images: vec![],
        })
    }
}

/// A device phase's parts as meshes: decoded fields go through marching cubes (timed as
/// `marching_cubes`); a part without a usable surface is dropped with its reason, as a part
/// the device could not make is.
pub fn mesh_parts(parts: Vec<PartOutcome>, timings: &mut Timings) -> (Vec<GeneratedPart>, Vec<DroppedPart>) {
    let mut meshes = Vec::new();
    let mut dropped = Vec::new();
    for (index, outcome) in parts.into_iter().enumerate() {
        let mesh = match outcome {
            PartOutcome::Mesh(mesh) => Ok(mesh),
            PartOutcome::Lattice(lattice) => {
                timings.time("marching_cubes", || lattice.extract_mesh()).map_err(|e| format!("part {index}: {e:#}"))
            }
            PartOutcome::Failed(reason) => Err(reason),
        };
        match mesh {
            Ok(mesh) => meshes.push(GeneratedPart { name: None, mesh }),
            Err(reason) => dropped.push(DroppedPart { index, reason }),
        }
    }
    (meshes, dropped)
}

/// PNG bytes of a kept image.
pub fn png_bytes(image: &image::DynamicImage) -> Result<Vec<u8>> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// Drops parts without a usable surface (reported, never sampled), samples the rest and
/// assembles the asset. Fails when no part is left.
pub fn build_asset(request: &ShapeRequest, shape: GeneratedShape, mut timings: Timings) -> Result<Asset> {
    let mut dropped = shape.dropped;
    let mut usable = Vec::new();
    for (i, p) in shape.parts.into_iter().enumerate() {
        let problem = match p.mesh.validate() {
            Err(e) => Some(e),
            Ok(()) if p.mesh.is_empty() => Some("empty surface".to_string()),
            Ok(()) if p.mesh.area().is_nan() || p.mesh.area() <= 1e-12 => {
                Some("degenerate surface (zero area)".to_string())
            }
            Ok(()) => None,
        };
        match problem {
            Some(reason) => dropped.push(DroppedPart { index: i, reason }),
            None => usable.push(p),
        }
    }
    if usable.is_empty() {
        let reasons: Vec<String> = dropped.iter().map(|d| format!("part {}: {}", d.index, d.reason)).collect();
        bail!("every part failed, nothing to sample ({})", reasons.join("; "));
    }
    let meshes: Vec<TriMesh> = usable.iter().map(|p| p.mesh.clone()).collect();
    let cloud =
        timings.time("sampling", || sample_parts(&meshes, &SampleOptions::new(request.points, request.seed)))?;

    let default_name = |rank: usize, src: usize| -> String {
        usable[src].name.clone().unwrap_or_else(|| if rank == 0 { "body".into() } else { format!("part {}", rank + 1) })
    };
    let part_names: Vec<String> = cloud
        .parts
        .iter()
        .enumerate()
        .map(|(rank, p)| request.part_names.get(rank).cloned().unwrap_or_else(|| default_name(rank, p.source)))
        .collect();
    let parts = cloud
        .parts
        .iter()
        .enumerate()
        .map(|(rank, p)| PartSummary {
            id: rank as u8 + 1,
            name: part_names[rank].clone(),
            points: p.points,
            centroid: p.centroid,
            bbox_min: p.bbox_min,
            bbox_max: p.bbox_max,
            area_share: p.area_share,
        })
        .collect();
    let timings_ms = timings.0.into_iter().map(|(k, v)| (k, (v * 1000.0).round() / 1000.0)).collect();
    let asset = Asset {
        format: asset::FORMAT.into(),
        text: request.concept.text.clone(),
        normalized: request.concept.normalized.clone(),
        key: request.concept.key.clone(),
        num_points: request.points,
        positions: asset::encode_positions(&cloud.positions),
        part_ids: asset::encode_u8(&cloud.part_ids),
        part_names,
        parts,
        attachment: asset::encode_u8(&cloud.attachment),
        pipeline: shape.pipeline,
        seed: request.seed,
        created_at: crate::time::now_rfc3339(),
        timings_ms,
        tool: ToolInfo::current(),
        dropped_parts: dropped,
    };
    asset.validate().map_err(|e| anyhow::anyhow!("internal error, produced {e}"))?;
    Ok(asset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> ShapeRequest {
        let concept = Concept::parse(text).unwrap();
        ShapeRequest {
            seed: crate::concept::default_seed(&concept.key),
            concept,
            parts: None,
            points: 2048,
            part_names: vec![],
        }
    }

    #[test]
    fn procedural_chair_becomes_a_valid_asset() {
        let req = request("chair");
        let mut t = Timings::default();
        let shape = ProceduralGenerator.generate(&req, &mut t).unwrap();
        let asset = build_asset(&req, shape, t).unwrap();
        let (_, pts) = Asset::decode(&asset.to_json_bytes()).unwrap();
        assert_eq!(pts.positions.len(), 2048);
        assert_eq!(asset.part_names.len(), 6);
        assert!(asset.part_names.contains(&"seat".to_string()));
        assert!(asset.timings_ms.contains_key("sampling"));
        assert_eq!(asset.pipeline.name, "procedural");
    }

    #[test]
    fn failed_parts_are_dropped_and_all_failed_is_an_error() {
        let req = request("thing");
        let good = crate::geometry::primitives::sphere([0.0; 3], 1.0);
        let shape = GeneratedShape {
            parts: vec![
                GeneratedPart { name: None, mesh: TriMesh::default() },
                GeneratedPart { name: None, mesh: good },
            ],
            dropped: vec![DroppedPart { index: 2, reason: "decoder failed".into() }],
            pipeline: PipelineInfo { name: "partcrafter".into(), models: vec![], settings: Default::default() },
            images: vec![],
        };
        let asset = build_asset(&req, shape, Timings::default()).unwrap();
        assert_eq!(asset.part_names, vec!["body"]);
        assert_eq!(asset.dropped_parts.len(), 2);
        let none = GeneratedShape {
            parts: vec![GeneratedPart { name: None, mesh: TriMesh::default() }],
            dropped: vec![],
            pipeline: PipelineInfo { name: "partcrafter".into(), models: vec![], settings: Default::default() },
            images: vec![],
        };
        assert!(build_asset(&req, none, Timings::default()).unwrap_err().to_string().contains("every part failed"));
    }
}
