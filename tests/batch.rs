//! The batch runner (one device worker, CPU workers beside it) on the CPU: the same assets as
//! the sequential path for the same seeds, a failing CPU step or device stage fails that
//! concept only, running out of device memory is retried with fewer tokens or reported with
//! its stage and size, a quality gate sends a concept back to the device, and the order of the
//! results never depends on worker timing. Stages that fail on purpose are built here, through
//! `PartCrafterGenerator::from_stages` and the `ShapeGenerator` trait: nothing in the binary.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use image::{GrayImage, Luma, Rgb, RgbImage};
use lumen::asset::Asset;
use lumen::concept::{Catalog, Concept};
use lumen::generation::batch::{run_batch, BatchOptions, BatchReport, InOrder};
use lumen::generation::{batch_exit_code, generate_one, request_for, ConceptResult, Generators};
use lumen::geometry::lattice::LatticeSurface;
use lumen::pipeline::partcrafter::{ModelOptions, PartCrafterGenerator};
use lumen::shape::{DeviceOutput, GeneratedShape, ProceduralGenerator, ShapeGenerator, ShapeRequest};
use lumen::stage::{BackgroundRemoval, ImageToParts, PartOutcome, PartsRequest, PreparedImage, TextToImage, Timings};
use lumen::store::{Store, StoreOptions};

fn memory_store() -> Store {
    Store::open("memory://", &StoreOptions::default()).unwrap()
}

fn only(g: Arc<dyn ShapeGenerator>) -> Generators {
    Generators { primary: Some(g), primary_error: None, fallback: None }
}

fn options(jobs: usize) -> BatchOptions<'static> {
    BatchOptions::new(jobs)
}

fn request(text: &str, seed: u64) -> ShapeRequest {
    ShapeRequest { concept: Concept::parse(text).unwrap(), parts: Some(3), seed, points: 512, part_names: vec![] }
}

fn batch(requests: &[ShapeRequest], gens: &Generators, store: &Store, opts: &BatchOptions) -> BatchReport {
    run_batch(requests, gens, store, opts, &|_: usize, _: &ConceptResult| {})
}

/// A stored asset as JSON without what differs between runs (creation time, stage times).
fn stored(store: &Store, key: &str) -> serde_json::Value {
    let bytes = store.get(&Store::shape_rel(key)).unwrap().unwrap_or_else(|| panic!("{key} not stored"));
    Asset::decode(&bytes).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("created_at");
    obj.remove("timings_ms");
    v
}

/// Runs `requests` through the batch and, on another store, one by one through the sequential
/// path; every asset must be the same.
fn assert_batch_matches_sequential(requests: &[ShapeRequest], gens: &Generators, jobs: usize) {
    let (batched, sequential) = (memory_store(), memory_store());
    let report = batch(requests, gens, &batched, &options(jobs));
    for (r, req) in report.results.iter().zip(requests) {
        assert_eq!(r.status, "created", "{r:?}");
        let one = generate_one(req, gens, &sequential, false);
        assert_eq!(one.status, "created", "{one:?}");
        assert_eq!(stored(&batched, &r.key), stored(&sequential, &r.key), "{} differs", r.text);
    }
}

#[test]
fn procedural_batch_matches_the_sequential_path() {
    let catalog = Catalog::load(concat!(env!("CARGO_MANIFEST_DIR"), "/concepts/top50.json").as_ref()).unwrap();
    let requests: Vec<ShapeRequest> = catalog
        .entries
        .iter()
        .map(|e| request_for(&Concept::parse(&e.name).unwrap(), Some(&catalog), None, None, 2048))
        .collect();
    assert_batch_matches_sequential(&requests, &only(Arc::new(ProceduralGenerator)), 3);
}

/// The model pipeline with the goldens' tiny synthetic SDXL Turbo and PartCrafter (real
/// stages, real SDF decoding, marching cubes on the CPU workers). Background removal passes
/// the image through: the full-size BriaRMBG takes about 40 s per image on a CPU, and
/// `tests/pipeline_e2e.rs` already runs it through the binary, which uses this runner.
#[test]
fn synthetic_partcrafter_batch_matches_the_sequential_path() {
    let dir = common::tempdir();
    let (sdxl_dir, _) = common::component("sdxl");
    lumen::models::sdxl::synthetic::write_synthetic_repo(&sdxl_dir, &dir.path().join("sdxl-turbo")).unwrap();
    common::write_partcrafter_repo(&dir.path().join("PartCrafter"), None);
    let generator = synthetic_partcrafter(dir.path());
    let requests: Vec<ShapeRequest> =
        ["chair", "mug", "eagle"].iter().enumerate().map(|(i, t)| request(t, 11 + i as u64)).collect();
    assert_batch_matches_sequential(&requests, &only(Arc::new(generator)), 2);
}

fn synthetic_partcrafter(dir: &std::path::Path) -> PartCrafterGenerator {
    use candle_core::{DType, Device};
    use lumen::models::partcrafter::extract::{ExtractOptions, SurfaceExtractor};
    use lumen::models::partcrafter::vae::SdfDecoder;
    use lumen::models::partcrafter::{PartCrafter, PartCrafterLatents, SamplerOptions};
    use lumen::models::sdxl::{SdxlOptions, SdxlTurbo};
    let source = common::local_weights(dir);
    let sdxl = SdxlTurbo::load(&source, &Device::Cpu, &SdxlOptions::default()).unwrap();
    let pc = dir.join("PartCrafter");
    let latents = PartCrafterLatents::load(&pc, &Device::Cpu, DType::F32).unwrap();
    let decoder = SdfDecoder::load(&pc.join("vae"), &Device::Cpu, DType::F32).unwrap();
    let tokens = common::component("partcrafter").1["config"]["pipeline_call"]["num_tokens"].as_u64().unwrap();
    let sampler = SamplerOptions { steps: 2, tokens: tokens as usize, ..SamplerOptions::default() };
    let extract = ExtractOptions { fast_depth: 5, fast_coarse_depth: 5, ..ExtractOptions::default() };
    let parts = PartCrafter { latents, decoder: SurfaceExtractor { decoder, options: extract }, options: sampler };
    let model = ModelOptions { tokens: tokens as usize, steps: 2, ..ModelOptions::default() };
    PartCrafterGenerator::from_stages(Box::new(sdxl), Box::new(AsIs), Box::new(parts), vec![], model)
}

// ---- stages that misbehave on purpose -------------------------------------------------------

/// The error candle passes on when a CUDA allocation fails.
fn cuda_out_of_memory() -> anyhow::Error {
    candle_core::Error::Cuda(r#"DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")"#.into()).into()
}

/// Seeds that make the stages below fail, one way each.
const OOM_IN_SDXL: u64 = 901;
const OOM_ABOVE_512_TOKENS: u64 = 902;
const OOM_ALWAYS: u64 = 903;
const NO_SURFACE: u64 = 904;

/// Text → a flat picture, timed as `sdxl_unet`; runs out of memory for [`OOM_IN_SDXL`].
struct Flat;
impl TextToImage for Flat {
    fn generate(&self, _: &str, seed: u64, timings: &mut Timings) -> Result<RgbImage> {
        timings.time("sdxl_unet", || {
            if seed == OOM_IN_SDXL {
                return Err(cuda_out_of_memory());
            }
            Ok(RgbImage::from_pixel(64, 64, Rgb([200, 40, (seed % 255) as u8])))
        })
    }
}

/// The image as the object, nothing removed.
struct AsIs;
impl BackgroundRemoval for AsIs {
    fn prepare(&self, image: &RgbImage, _: &mut Timings) -> Result<PreparedImage> {
        Ok(PreparedImage {
            image: image.clone(),
            mask: GrayImage::from_pixel(image.width(), image.height(), Luma([255])),
        })
    }
}

/// One sphere's decoded field per part, left for the CPU to mesh; out of memory or empty
/// fields for the seeds above. Records the tokens of every call.
#[derive(Default)]
struct Spheres {
    calls: Mutex<Vec<(u64, usize)>>,
}

impl ImageToParts for Spheres {
    fn parts(&self, _: &RgbImage, r: PartsRequest, timings: &mut Timings) -> Result<Vec<PartOutcome>> {
        let tokens = r.tokens.expect("the pipeline always says how many tokens");
        self.calls.lock().unwrap().push((r.seed, tokens));
        timings.time("partcrafter_sample", || match r.seed {
            OOM_ALWAYS => Err(cuda_out_of_memory()),
            OOM_ABOVE_512_TOKENS if tokens > 512 => Err(cuda_out_of_memory()),
            _ => Ok(()),
        })?;
        Ok((0..r.num_parts).map(|p| PartOutcome::Lattice(sphere_field(p, r.seed == NO_SURFACE))).collect())
    }
}

fn sphere_field(part: usize, empty: bool) -> LatticeSurface {
    let n = 20;
    let cx = -0.5 + 0.5 * part as f32;
    let values = (0..n * n * n)
        .map(|i| {
            let p = [i / (n * n), (i / n) % n, i % n].map(|c| c as f32 / n as f32 * 2.0 - 1.0);
            let d = ((p[0] - cx).powi(2) + p[1] * p[1] + p[2] * p[2]).sqrt();
            if empty {
                -1.0
            } else {
                0.3 - d
            }
        })
        .collect();
    LatticeSurface::Dense { values, n, bounds: 1.0 }
}

fn misbehaving_pipeline(parts: impl ImageToParts + 'static) -> PartCrafterGenerator {
    PartCrafterGenerator::from_stages(Box::new(Flat), Box::new(AsIs), Box::new(parts), vec![], ModelOptions::default())
}

/// Warnings and errors the library logs, from every thread.
fn captured_logs() -> &'static Mutex<Vec<u8>> {
    common::logs::captured(tracing::Level::WARN)
}

#[test]
fn out_of_memory_fails_one_concept_or_is_retried_with_fewer_tokens_never_silently() {
    let logs = captured_logs();
    let spheres = Arc::new(Spheres::default());
    let generator: Arc<dyn ShapeGenerator> = Arc::new(misbehaving_pipeline(SharedSpheres(spheres.clone())));
    let requests = vec![
        request("chair", 1),
        request("lamp", OOM_ABOVE_512_TOKENS),
        request("eagle", OOM_ALWAYS),
        request("mug", OOM_IN_SDXL),
        request("table", 2),
    ];
    let store = memory_store();
    let report = batch(&requests, &only(generator.clone()), &store, &options(2));
    let by_text: BTreeMap<&str, &ConceptResult> = report.results.iter().map(|r| (r.text.as_str(), r)).collect();
    for text in ["chair", "table"] {
        assert_eq!(by_text[text].status, "created", "{:?}", by_text[text]);
        assert!(by_text[text].memory_retry.is_none());
    }

    // Retried at 512 tokens: stored, and the retry is in the asset, the result and the log.
    let lamp = by_text["lamp"];
    assert_eq!(lamp.status, "created", "{lamp:?}");
    let retry = serde_json::json!([{"stage": "partcrafter_sample", "tokens_from": 1024, "tokens_to": 512}]);
    assert_eq!(lamp.memory_retry.as_ref(), Some(&retry));
    let asset = stored(&store, &lamp.key);
    assert_eq!(asset["pipeline"]["settings"]["memory_retry"], retry);
    assert_eq!(asset["pipeline"]["settings"]["tokens"], 512);
    assert_eq!(asset["part_names"].as_array().unwrap().len(), 3, "fewer tokens keep the part count");
    let log = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let warning = log.lines().find(|l| l.contains("WARN") && l.contains(&lamp.key)).unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains("out of device memory in partcrafter_sample"), "{warning}");
    assert!(warning.contains("retrying with 512 tokens per part"), "{warning}");

    // Out of memory at every size: failed after 1024 → 512 → 256, with stage, size, memory.
    let eagle = by_text["eagle"];
    assert_eq!(eagle.status, "failed");
    let error = eagle.error.as_deref().unwrap();
    assert!(
        error.contains(
            "out of device memory in partcrafter_sample (3 parts, 256 tokens per part; \
             device memory not reported on the CPU)"
        ),
        "{error}"
    );
    assert!(error.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{error}");
    // Out of memory in a stage fewer tokens do not help: failed at once.
    let mug = by_text["mug"].error.as_deref().unwrap();
    assert!(mug.contains("out of device memory in sdxl_unet (3 parts, 1024 tokens per part"), "{mug}");
    assert!(store.get(&Store::shape_rel(&by_text["eagle"].key)).unwrap().is_none());
    assert_eq!(batch_exit_code(&report.results, None), 1);

    // The retries ran with the tokens recorded, no more.
    let calls = |seed: u64| -> Vec<usize> {
        spheres.calls.lock().unwrap().iter().filter(|(s, _)| *s == seed).map(|(_, t)| *t).collect()
    };
    assert_eq!(calls(OOM_ABOVE_512_TOKENS), [1024, 512]);
    assert_eq!(calls(OOM_ALWAYS), [1024, 512, 256]);
    assert_eq!(calls(OOM_IN_SDXL), Vec::<usize>::new());

    // A batch whose only trouble was a successful retry exits 0.
    let report = batch(&requests[..2], &only(generator), &memory_store(), &options(2));
    assert!(report.results.iter().all(|r| r.status == "created"), "{:?}", report.results);
    assert_eq!(batch_exit_code(&report.results, None), 0);
}

#[test]
fn a_failing_cpu_step_fails_that_concept_only() {
    // A store write that fails for one key: its asset path is taken by a folder.
    let dir = common::tempdir();
    let store = Store::open(dir.path().to_str().unwrap(), &StoreOptions::default()).unwrap();
    let blocked = Concept::parse("mug").unwrap();
    std::fs::create_dir_all(dir.path().join(Store::shape_rel(&blocked.key)).join("occupied")).unwrap();
    let requests = vec![request("chair", 1), request("mug", 2), request("lamp", NO_SURFACE), request("table", 3)];
    let spheres = Arc::new(Spheres::default());
    let gens = only(Arc::new(misbehaving_pipeline(SharedSpheres(spheres.clone()))));
    let report = batch(&requests, &gens, &store, &BatchOptions { force: true, ..options(2) });
    let status: Vec<&str> = report.results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(status, ["created", "failed", "failed", "created"], "{:?}", report.results);
    assert!(report.results[1].error.as_deref().unwrap().contains("writing shapes/"), "{:?}", report.results[1]);
    // Every part of "lamp" has an empty field: marching cubes (on a CPU worker) finds no surface.
    let lamp = report.results[2].error.as_deref().unwrap();
    assert!(lamp.contains("every part failed") && lamp.contains("part 0: no surface"), "{lamp}");
    for r in [&report.results[0], &report.results[3]] {
        Asset::decode(&std::fs::read(dir.path().join(Store::shape_rel(&r.key))).unwrap()).unwrap();
    }
    assert_eq!(batch_exit_code(&report.results, None), 1);

    // With a fallback, the concept goes back through the device queue to the next pipeline.
    let gens = Generators { fallback: Some(Arc::new(ProceduralGenerator)), ..gens };
    let report = batch(&requests[2..3], &gens, &memory_store(), &options(2));
    assert_eq!(report.results[0].status, "created");
    assert_eq!(report.results[0].pipeline.as_deref(), Some("procedural"));
    assert_eq!(report.stats.device_passes, 2, "one pass per pipeline");
}

/// Lets a test keep a handle on the stage it hands to the pipeline.
struct SharedSpheres(Arc<Spheres>);
impl ImageToParts for SharedSpheres {
    fn parts(&self, image: &RgbImage, r: PartsRequest, timings: &mut Timings) -> Result<Vec<PartOutcome>> {
        self.0.parts(image, r, timings)
    }
}

/// Every attempt of these stages is bad (the mask covers the whole frame), so a gate of
/// `weak` with one retry sends each concept back once with the next derived seed, and keeps
/// the first of the two equal attempts.
#[test]
fn a_gate_sends_a_concept_back_to_the_device_and_it_is_recorded_once() {
    use lumen::quality::retry::attempt_seed;
    use lumen::quality::{MinQuality, QualityOptions, RetryPolicy};
    let spheres = Arc::new(Spheres::default());
    let gens = only(Arc::new(misbehaving_pipeline(SharedSpheres(spheres.clone()))));
    let requests = vec![request("chair", 10), request("table", 20)];
    let finished = AtomicUsize::new(0);
    let store = memory_store();
    let policy = RetryPolicy { gate: Some(MinQuality::Weak), retries: 1 };
    let opts = BatchOptions { quality: QualityOptions { policy, ..Default::default() }, ..options(2) };
    let report = run_batch(&requests, &gens, &store, &opts, &|_: usize, _: &ConceptResult| {
        finished.fetch_add(1, Ordering::SeqCst);
    });
    assert_eq!(finished.load(Ordering::SeqCst), 2, "one final result per concept");
    assert_eq!(report.stats.device_passes, 4);
    let mut seeds: Vec<u64> = spheres.calls.lock().unwrap().iter().map(|(s, _)| *s).collect();
    seeds.sort();
    let mut want = vec![10, attempt_seed(10, 1), 20, attempt_seed(20, 1)];
    want.sort();
    assert_eq!(seeds, want);
    for (r, want_seed) in report.results.iter().zip([10, 20]) {
        assert_eq!(r.status, "created");
        assert!(r.retried() && r.below_gate(), "{r:?}");
        let asset = stored(&store, &r.key);
        assert_eq!(asset["seed"], want_seed, "the kept attempt is the first of equals");
        let attempts = asset["quality"]["attempts"].as_array().unwrap();
        let tried: Vec<u64> = attempts.iter().map(|a| a["seed"].as_u64().unwrap()).collect();
        assert_eq!(tried, [want_seed, attempt_seed(want_seed, 1)]);
        assert!(attempts.iter().all(|a| a["verdict"] == "bad"), "{attempts:?}");
    }
    assert_eq!(batch_exit_code(&report.results, None), 1, "below the gate is not what the run asked for");
}

/// All CPU, with a CPU phase that takes longer the earlier the concept: later concepts finish
/// first whenever there is more than one worker.
struct SlowFirst;
impl ShapeGenerator for SlowFirst {
    fn name(&self) -> &'static str {
        "procedural"
    }
    fn run_device(&self, _: &ShapeRequest, _: &mut Timings) -> Result<Option<DeviceOutput>> {
        Ok(None)
    }
    fn finish_on_cpu(&self, r: &ShapeRequest, d: Option<DeviceOutput>, t: &mut Timings) -> Result<GeneratedShape> {
        std::thread::sleep(Duration::from_millis(5 * (8 - r.seed.min(8))));
        ProceduralGenerator.finish_on_cpu(r, d, t)
    }
}

#[test]
fn results_keep_the_concepts_order_whatever_the_worker_timing() {
    let texts = ["chair", "mug", "lamp", "table", "eagle", "car", "tree", "boat"];
    let requests: Vec<ShapeRequest> = texts.iter().enumerate().map(|(i, t)| request(t, i as u64)).collect();
    let finish_order = Mutex::new(Vec::new());
    let printed = Mutex::new(Vec::new());
    let in_order = InOrder::new(|r: &ConceptResult| printed.lock().unwrap().push(r.text.clone()));
    let progress = |i: usize, r: &ConceptResult| {
        finish_order.lock().unwrap().push(i);
        lumen::generation::batch::Progress::finished(&in_order, i, r);
    };
    let report = run_batch(&requests, &only(Arc::new(SlowFirst)), &memory_store(), &options(4), &progress);
    let finished = finish_order.into_inner().unwrap();
    println!("finish order {finished:?}");
    assert_ne!(finished, (0..8).collect::<Vec<_>>(), "the workers did finish out of order");
    let order: Vec<&str> = report.results.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(order, texts);
    assert_eq!(printed.into_inner().unwrap(), texts);
}
