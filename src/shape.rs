//! From a concept to a stored asset: the generator interface (a device phase and a CPU
//! phase, so a batch can overlap one concept's model stages with another's CPU work), the
//! procedural generator, and the final sampling + asset assembly shared by every pipeline.
//! Assembly also grades the shape ([`crate::quality`]), so every pipeline's asset carries the
//! same `quality` object.

use anyhow::Result;
use image::GrayImage;

use crate::asset::{self, Asset, DroppedPart, ModelInfo, PartSummary, PipelineInfo, ToolInfo};
use crate::concept::Concept;
use crate::geometry::mesh::TriMesh;
use crate::geometry::sampling::{sample_parts, SampleOptions};
use crate::quality::{self, mask_stats, PartMeasure, Quality, ShapeFacts, Thresholds};
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
    /// The background remover's foreground mask (None: the pipeline has no mask).
    pub mask: Option<GrayImage>,
    /// Parts the generator was asked for (None: it chose its own count).
    pub parts_requested: Option<usize>,
}

impl GeneratedShape {
    /// What grading needs from the generator besides the cloud.
    pub fn facts(&self) -> ShapeFacts {
        ShapeFacts { mask: self.mask.as_ref().map(mask_stats), parts_requested: self.parts_requested }
    }
}

/// Every part of a shape was dropped: nothing to sample. Carries what grading needs, so a
/// gated run records the attempt as `bad` rather than as an unexplained error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("every part failed, nothing to sample ({reasons})")]
pub struct NothingToSample {
    pub reasons: String,
    pub facts: ShapeFacts,
    pub dropped: usize,
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
    /// The background remover's foreground mask, for grading (CPU work too).
    pub mask: Option<GrayImage>,
    /// Parts the model was asked for.
    pub parts_requested: Option<usize>,
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
        if let Some(n) = request.parts {
            settings.insert("parts_requested".to_string(), n.into());
        }
        Ok(GeneratedShape {
            parts: parts.into_iter().map(|p| GeneratedPart { name: Some(p.name), mesh: p.mesh }).collect(),
            dropped: vec![],
            pipeline: PipelineInfo { name: "procedural".into(), models: Vec::<ModelInfo>::new(), settings },
            images: vec![],
            mask: None,
            parts_requested: request.parts,
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
/// assembles the asset, graded with the default thresholds. Fails when no part is left.
pub fn build_asset(request: &ShapeRequest, shape: GeneratedShape, timings: Timings) -> Result<Asset> {
    build_graded_asset(request, shape, timings, &Thresholds::default())
}

/// [`build_asset`] graded with `thresholds`; no part left is a [`NothingToSample`] error.
pub fn build_graded_asset(
    request: &ShapeRequest,
    shape: GeneratedShape,
    mut timings: Timings,
    thresholds: &Thresholds,
) -> Result<Asset> {
    let facts = shape.facts();
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
        return Err(NothingToSample { reasons: reasons.join("; "), facts, dropped: dropped.len() }.into());
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
    let mut asset = Asset {
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
        quality: None,
    };
    let points = asset.validate().map_err(|e| anyhow::anyhow!("internal error, produced {e}"))?;
    let parts: Vec<PartMeasure> = asset
        .parts
        .iter()
        .map(|p| PartMeasure { area_share: p.area_share, points: p.points, bbox_min: p.bbox_min, bbox_max: p.bbox_max })
        .collect();
    let signals =
        quality::signals::measure(&parts, asset.dropped_parts.len(), &points.positions, &points.part_ids, facts);
    asset.quality = Some(Quality::grade(signals, thresholds));
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
            mask: None,
            parts_requested: None,
        };
        let asset = build_asset(&req, shape, Timings::default()).unwrap();
        assert_eq!(asset.part_names, vec!["body"]);
        assert_eq!(asset.dropped_parts.len(), 2);
        let none = GeneratedShape {
            parts: vec![GeneratedPart { name: None, mesh: TriMesh::default() }],
            dropped: vec![],
            pipeline: PipelineInfo { name: "partcrafter".into(), models: vec![], settings: Default::default() },
            images: vec![],
            mask: None,
            parts_requested: None,
        };
        assert!(build_asset(&req, none, Timings::default()).unwrap_err().to_string().contains("every part failed"));
    }
}

/// Grading on real meshes: [`build_asset`] measures the [`crate::quality`] signals of what it
/// assembled, so sound shapes are ok and the silent failures are weak or bad.
#[cfg(test)]
mod grading_tests {
    use super::*;
    use crate::geometry::primitives::{cuboid, sphere};
    use crate::quality::{MaskSignal, Verdict};

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
}
