//! The partcrafter pipeline's silent failures, forced: `PartCrafterGenerator::from_stages`
//! with stage doubles that return a chosen mask and chosen part meshes (the models' outputs
//! in the cases users report: one part holding nearly everything, an empty mask, every part
//! dropped), run through the real pipeline driver, assembly, grading, retry loop and store.

use std::sync::Arc;

use anyhow::Result;
use image::{GrayImage, Luma, RgbImage};
use lumen::asset::Asset;
use lumen::generation::{gated, generate_one, Generators};
use lumen::geometry::mesh::TriMesh;
use lumen::geometry::primitives::{cuboid, sphere};
use lumen::pipeline::partcrafter::{ModelOptions, PartCrafterGenerator};
use lumen::quality::retry::{attempt_seed, RetryPolicy};
use lumen::quality::{MaskSignal, MinQuality, QualityOptions, Verdict};
use lumen::shape::ShapeRequest;
use lumen::stage::{BackgroundRemoval, ImageToParts, PartOutcome, PreparedImage, TextToImage, Timings};
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
    fn parts(&self, _: &RgbImage, _: usize, seed: u64, _: &mut Timings) -> Result<Vec<PartOutcome>> {
        Ok((self.0)(seed))
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

fn stored(store: &Store) -> Asset {
    let bytes = store.get(&Store::shape_rel(&request().concept.key)).unwrap().expect("stored");
    Asset::decode(&bytes).unwrap().0
}

#[test]
fn a_collapse_into_one_part_is_bad_and_a_sound_shape_ok() {
    let store = Store::open("memory://", &StoreOptions::default()).unwrap();
    let gens = generators(square_mask(220), |_| collapsed());
    let r = generate_one(&request(), &gens, &store, false, &QualityOptions::default());
    assert_eq!(r.status, "created", "ungated: stored with its verdict");
    let q = stored(&store).quality.unwrap();
    println!("collapse: {:?}", q.signals);
    assert_eq!(q.verdict, Verdict::Bad, "{:?}", q.reasons);
    assert!(q.reasons.iter().any(|r| r.contains("collapse")), "{:?}", q.reasons);
    // The RMBG mask reached the asset through GeneratedShape.
    let MaskSignal::Measured { coverage, components } = q.signals.mask else { panic!("{:?}", q.signals.mask) };
    assert_eq!(components, 1);
    assert!((coverage - 220.0 * 220.0 / (512.0 * 512.0)).abs() < 1e-6, "{coverage}");

    let store = Store::open("memory://", &StoreOptions::default()).unwrap();
    generate_one(&request(), &generators(square_mask(220), |_| sound()), &store, false, &QualityOptions::default());
    let q = stored(&store).quality.unwrap();
    assert_eq!(q.verdict, Verdict::Ok, "{:?} {:?}", q.reasons, q.signals);
}

#[test]
fn an_empty_mask_is_bad() {
    let store = Store::open("memory://", &StoreOptions::default()).unwrap();
    generate_one(
        &request(),
        &generators(GrayImage::new(512, 512), |_| sound()),
        &store,
        false,
        &QualityOptions::default(),
    );
    let q = stored(&store).quality.unwrap();
    assert_eq!(q.verdict, Verdict::Bad);
    assert_eq!(q.signals.mask, MaskSignal::Measured { coverage: 0.0, components: 0 });
    assert!(q.reasons[0].starts_with("mask covers 0.0 % of the frame"), "{:?}", q.reasons);
}

#[test]
fn every_part_dropped_is_a_bad_attempt_and_a_failed_concept() {
    let dropped = |_| (0..4).map(|i| PartOutcome::Failed(format!("part {i}: no surface"))).collect();
    let gens = generators(square_mask(200), dropped);
    let policy = RetryPolicy { gate: Some(MinQuality::Weak), retries: 1 };
    let run = gated::generate_gated(&request(), &gens, &QualityOptions { policy, ..Default::default() });
    assert!(run.kept.is_none());
    assert_eq!(run.attempts.len(), 2, "retried once, then given up");
    for a in &run.attempts {
        assert_eq!(a.verdict, Some(Verdict::Bad), "{a:?}");
        assert!(!a.produced);
        assert_eq!(a.reasons[0], "every part dropped (4 of 4)", "{a:?}");
    }
    let store = Store::open("memory://", &StoreOptions::default()).unwrap();
    let r = generate_one(&request(), &gens, &store, false, &QualityOptions::default());
    assert_eq!(r.status, "failed");
    assert!(r.error.unwrap().contains("every part failed"));
    assert!(store.list_shapes().unwrap().is_empty(), "nothing stored");
}

#[test]
fn a_retry_changes_the_seed_and_keeps_the_better_attempt() {
    let base = request().seed;
    // The first seed collapses; any other seed gives a sound shape.
    let gens = generators(square_mask(220), move |seed| if seed == base { collapsed() } else { sound() });
    let store = Store::open("memory://", &StoreOptions::default()).unwrap();
    let quality =
        QualityOptions { policy: RetryPolicy { gate: Some(MinQuality::Ok), retries: 3 }, ..Default::default() };
    let r = generate_one(&request(), &gens, &store, false, &quality);
    assert_eq!(r.status, "created");
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
    let store = Store::open("memory://", &StoreOptions::default()).unwrap();
    let r = generate_one(&request(), &gens, &store, false, &quality);
    assert!(r.below_gate(), "{r:?}");
    let a = stored(&store);
    assert_eq!(a.seed, base);
    assert_eq!(a.quality.as_ref().unwrap().attempts.len(), 4);
    assert!(!a.quality.unwrap().gate.unwrap().passed);
}
