//! The partcrafter pipeline's silent failures, forced: `PartCrafterGenerator::from_stages`
//! with stage doubles that return a chosen mask and chosen part meshes (the models' outputs
//! in the cases users report: one part holding nearly everything, an empty mask, every part
//! dropped), run through the real pipeline driver, the batch runner (device phase, CPU
//! phase, grading, the gate's retries) and the store.

mod common;

use std::sync::{Arc, Mutex};

use anyhow::Result;
use image::{GrayImage, Luma, RgbImage};
use lumen::asset::Asset;
use lumen::generation::batch::{run_batch, BatchOptions, BatchReport};
use lumen::generation::{ConceptResult, Generators};
use lumen::geometry::mesh::TriMesh;
use lumen::geometry::primitives::{cuboid, sphere};
use lumen::pipeline::partcrafter::{ModelOptions, PartCrafterGenerator};
use lumen::quality::retry::{attempt_seed, RetryPolicy};
use lumen::quality::{MaskSignal, MinQuality, QualityOptions, Verdict};
use lumen::shape::ShapeRequest;
use lumen::stage::{BackgroundRemoval, ImageToParts, PartOutcome, PartsRequest, PreparedImage, TextToImage, Timings};
use lumen::store::{Store, StoreOptions};

struct Picture;
impl TextToImage for Picture {
    fn generate(&self, _: &str, _: u64, _: &mut Timings) -> Result<RgbImage> {
        Ok(RgbImage::from_pixel(512, 512, image::Rgb([255, 255, 255])))
    }
}

/// Hands on the picture with a fixed mask.
struct Mask(GrayImage);
impl BackgroundRemoval for Mask {
    fn prepare(&self, image: &RgbImage, _: &mut Timings) -> Result<PreparedImage> {
        Ok(PreparedImage { image: image.clone(), mask: self.0.clone() })
    }
}

/// Part outcomes chosen per seed.
struct Parts(Box<dyn Fn(u64) -> Vec<PartOutcome> + Send + Sync>);
impl ImageToParts for Parts {
    fn parts(&self, _: &RgbImage, r: PartsRequest, _: &mut Timings) -> Result<Vec<PartOutcome>> {
        Ok((self.0)(r.seed))
    }
}

/// A 512² mask with a centred `side`² square of foreground.
fn square_mask(side: u32) -> GrayImage {
    let lo = 256 - side / 2;
    GrayImage::from_fn(512, 512, |x, y| {
        Luma([if (lo..lo + side).contains(&x) && (lo..lo + side).contains(&y) { 255 } else { 0 }])
    })
}

fn meshes(m: Vec<TriMesh>) -> Vec<PartOutcome> {
    m.into_iter().map(PartOutcome::Mesh).collect()
}

/// Four touching parts of sensible sizes.
fn sound() -> Vec<PartOutcome> {
    let mut m = vec![cuboid([0.0, 1.0, 0.0], [1.0, 0.05, 0.6])];
    for x in [-0.9, -0.3, 0.3] {
        m.push(cuboid([x, 0.5, 0.0], [0.05, 0.45, 0.05]));
    }
    meshes(m)
}

/// One part holds nearly all the surface; the other three are specks.
fn collapsed() -> Vec<PartOutcome> {
    let mut m = vec![sphere([0.0; 3], 1.0)];
    for i in 0..3 {
        m.push(sphere([1.2 + 0.1 * i as f32, 0.0, 0.0], 0.03));
    }
    meshes(m)
}

fn generators(mask: GrayImage, parts: impl Fn(u64) -> Vec<PartOutcome> + Send + Sync + 'static) -> Generators {
    let g = PartCrafterGenerator::from_stages(
        Box::new(Picture),
        Box::new(Mask(mask)),
        Box::new(Parts(Box::new(parts))),
        vec![],
        ModelOptions::default(),
    );
    Generators { primary: Some(Arc::new(g)), primary_error: None, fallback: None }
}

fn request() -> ShapeRequest {
    let concept = lumen::concept::Concept::parse("chair").unwrap();
    ShapeRequest {
        seed: lumen::concept::default_seed(&concept.key),
        concept,
        parts: Some(4),
        points: 2048,
        part_names: vec![],
    }
}

/// The concept through the batch runner (two CPU workers) into a fresh store.
fn generate(gens: &Generators, quality: QualityOptions) -> (Store, BatchReport) {
    let store = Store::open("memory://", &StoreOptions::default()).unwrap();
    let opts = BatchOptions { quality, ..BatchOptions::new(2) };
    let report = run_batch(&[request()], gens, &store, &opts, &|_: usize, _: &ConceptResult| {});
    (store, report)
}

fn gated(gate: MinQuality, retries: usize) -> QualityOptions {
    QualityOptions { policy: RetryPolicy { gate: Some(gate), retries }, ..Default::default() }
}

/// Warnings and up the library logs, from every thread.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    common::logs::captured(tracing::Level::INFO)
}

fn stored(store: &Store) -> Asset {
    let bytes = store.get(&Store::shape_rel(&request().concept.key)).unwrap().expect("stored");
    Asset::decode(&bytes).unwrap().0
}

#[test]
fn a_collapse_into_one_part_is_bad_and_a_sound_shape_ok() {
    let gens = generators(square_mask(220), |_| collapsed());
    let (store, report) = generate(&gens, QualityOptions::default());
    let r = &report.results[0];
    assert_eq!(r.status, "created", "ungated: stored with its verdict");
    assert_eq!(report.stats.device_passes, 1, "ungated: never retried");
    let q = stored(&store).quality.unwrap();
    println!("collapse: {:?}", q.signals);
    assert_eq!(q.verdict, Verdict::Bad, "{:?}", q.reasons);
    assert!(q.reasons.iter().any(|r| r.contains("collapse")), "{:?}", q.reasons);
    // The RMBG mask reached the asset through GeneratedShape.
    let MaskSignal::Measured { coverage, components } = q.signals.mask else { panic!("{:?}", q.signals.mask) };
    assert_eq!(components, 1);
    assert!((coverage - 220.0 * 220.0 / (512.0 * 512.0)).abs() < 1e-6, "{coverage}");

    let (store, _) = generate(&generators(square_mask(220), |_| sound()), QualityOptions::default());
    let q = stored(&store).quality.unwrap();
    assert_eq!(q.verdict, Verdict::Ok, "{:?} {:?}", q.reasons, q.signals);
}

#[test]
fn an_empty_mask_is_bad() {
    let (store, _) = generate(&generators(GrayImage::new(512, 512), |_| sound()), QualityOptions::default());
    let q = stored(&store).quality.unwrap();
    assert_eq!(q.verdict, Verdict::Bad);
    assert_eq!(q.signals.mask, MaskSignal::Measured { coverage: 0.0, components: 0 });
    assert!(q.reasons[0].starts_with("mask covers 0.0 % of the frame"), "{:?}", q.reasons);
}

#[test]
fn every_part_dropped_is_a_bad_attempt_and_a_failed_concept() {
    let logs = captured_logs();
    let seeds = Arc::new(Mutex::new(Vec::new()));
    let asked = seeds.clone();
    let dropped = move |seed| {
        asked.lock().unwrap().push(seed);
        (0..4).map(|i| PartOutcome::Failed(format!("part {i}: no surface"))).collect()
    };
    let gens = generators(square_mask(200), dropped);
    let (store, report) = generate(&gens, gated(MinQuality::Weak, 1));
    let r = &report.results[0];
    assert_eq!(r.status, "failed", "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("every part failed"), "{r:?}");
    assert!(store.list_shapes().unwrap().is_empty(), "nothing stored");
    let base = request().seed;
    assert_eq!(*seeds.lock().unwrap(), [base, attempt_seed(base, 1)], "retried once with the next seed, then given up");
    assert_eq!(report.stats.device_passes, 2);
    // Each attempt is logged as bad, with the reason.
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    for (k, seed) in [(0, base), (1, attempt_seed(base, 1))] {
        let line = format!("chair: attempt {k} (seed {seed}): bad: every part dropped (4 of 4)");
        assert!(log.lines().any(|l| l.contains("WARN") && l.contains(&line)), "{line:?} not in\n{log}");
    }

    // Ungated: one attempt, the concept fails.
    let (store, report) = generate(&gens, QualityOptions::default());
    assert_eq!(report.results[0].status, "failed");
    assert_eq!(report.stats.device_passes, 1);
    assert!(store.list_shapes().unwrap().is_empty(), "nothing stored");
}

#[test]
fn a_retry_changes_the_seed_and_keeps_the_better_attempt() {
    let base = request().seed;
    // The first seed collapses; any other seed gives a sound shape.
    let gens = generators(square_mask(220), move |seed| if seed == base { collapsed() } else { sound() });
    let (store, report) = generate(&gens, gated(MinQuality::Ok, 3));
    let r = &report.results[0];
    assert_eq!(r.status, "created");
    assert_eq!(report.stats.device_passes, 2, "stops at the first pass");
    assert!(r.retried() && !r.below_gate());
    let a = stored(&store);
    let q = a.quality.unwrap();
    assert_eq!(a.seed, attempt_seed(base, 1), "the kept asset is the second attempt's");
    assert_ne!(a.seed, base);
    let got: Vec<(u64, Option<Verdict>)> = q.attempts.iter().map(|t| (t.seed, t.verdict)).collect();
    assert_eq!(got, [(base, Some(Verdict::Bad)), (attempt_seed(base, 1), Some(Verdict::Ok))]);
    assert_eq!((q.verdict, q.gate.unwrap().passed), (Verdict::Ok, true));

    // When every seed collapses, the best (earliest of equals) is kept and marked below the gate.
    let gens = generators(square_mask(220), |_| collapsed());
    let (store, report) = generate(&gens, gated(MinQuality::Ok, 3));
    let r = &report.results[0];
    assert!(r.below_gate(), "{r:?}");
    assert_eq!(report.stats.device_passes, 4, "1 + 3 retries");
    let a = stored(&store);
    assert_eq!(a.seed, base);
    assert_eq!(a.quality.as_ref().unwrap().attempts.len(), 4);
    assert!(!a.quality.unwrap().gate.unwrap().passed);
}
