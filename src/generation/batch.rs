//! The batch runner: one device worker, CPU workers beside it.
//!
//! A model run's stages (SDXL Turbo, BriaRMBG, PartCrafter and its SDF decoding) hold the
//! device, and the device does not go faster with two concepts on it, only fuller. The rest
//! of a concept (marching cubes, sampling, asset encoding, kept images, the preview picture,
//! the store write) needs only a CPU. So a batch is a pipeline:
//!
//! ```text
//! concepts ─ stored? (CPU pool) ─▶ device queue ─▶ 1 device thread ─▶ bounded channel (2)
//!                                       ▲                                   │
//!                                       └── re-queue ◀── `jobs` CPU workers ◀┘ ─▶ results[index]
//! ```
//!
//! Only the device thread calls [`ShapeGenerator::run_device`], so device memory holds one
//! concept whatever `jobs` is, and the channel's bound keeps at most a few concepts' decoded
//! fields waiting in host memory. A CPU worker can send a concept back to the device queue —
//! the fallback pipeline after a CPU-phase failure, or the next attempt of a quality gate —
//! and a concept's result is recorded exactly once, when it is final. Results are stored by
//! the concept's position, so the summary's order never depends on which worker finished
//! first. A panic inside one concept's work fails that concept only.
//!
//! Quality gates (`--min-quality`, `--retries`) run here too, and only here: a CPU worker
//! grades each attempt as it builds the asset, records it ([`Attempts`]) and asks the pure
//! policy ([`crate::quality::retry`]) what next. Below the gate with retries left, the
//! concept goes back to the device queue with the next derived seed; otherwise the best
//! attempt is stored, once, with every attempt in its `quality` object.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use rayon::prelude::*;
use serde::Serialize;
use tracing::Span;

use super::attempts::{log_attempt, AttemptResult, Attempts, Built};
use super::{add_preview, store_asset, store_images, stored_result, ConceptResult, Generators};
use crate::concept::Concept;
use crate::quality::retry::{self, Outcome, Step};
use crate::quality::{Quality, QualityOptions};
use crate::shape::{build_graded_asset, DeviceOutput, ShapeGenerator, ShapeRequest};
use crate::stage::Timings;
use crate::store::Store;

/// Concepts that have left the device and wait for a CPU worker. Two keeps the device busy
/// while a worker picks the next one up, and bounds the host memory they hold.
pub const DEVICE_TO_CPU_QUEUE: usize = 2;

/// The default number of CPU workers: one per core. They never touch the device (only the
/// one device worker does), so more of them never means more device memory.
pub fn default_cpu_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[derive(Clone)]
pub struct BatchOptions<'a> {
    /// CPU workers (the device has one worker, always).
    pub jobs: usize,
    /// Regenerate stored concepts and overwrite them.
    pub force: bool,
    /// Store a preview picture beside each asset.
    pub preview: bool,
    /// The thresholds every attempt is graded with, and the gate and retries.
    pub quality: QualityOptions,
    /// Decides, concept by concept, what a stored asset means (`pregenerate --stale`);
    /// None: a stored concept is kept unless `force`.
    pub triage: Option<&'a dyn Triage>,
}

impl BatchOptions<'_> {
    /// `jobs` CPU workers, nothing overwritten, no preview, graded with the default
    /// thresholds and no gate.
    pub fn new(jobs: usize) -> Self {
        Self { jobs, force: false, preview: false, quality: QualityOptions::default(), triage: None }
    }
}

/// What a batch does with a concept before generating anything.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Final as it is (already stored, or the store could not say).
    Final(Box<ConceptResult>),
    /// Generate it: `overwrite` replaces what is stored, `stale` says why (reported).
    Generate { overwrite: bool, stale: Vec<String> },
}

/// Looks at what is stored for each concept (from several threads at once).
pub trait Triage: Sync {
    fn triage(&self, concept: &Concept) -> Stored;
}

/// Told about each concept as its result becomes final (from any worker thread).
pub trait Progress: Sync {
    fn finished(&self, index: usize, result: &ConceptResult);
}

impl<F: Fn(usize, &ConceptResult) + Sync> Progress for F {
    fn finished(&self, index: usize, result: &ConceptResult) {
        self(index, result)
    }
}

/// Hands results on in the concepts' order, each as soon as every earlier one is final
/// (`generate` prints one line per concept in the order given).
pub struct InOrder<F> {
    state: Mutex<(usize, BTreeMap<usize, ConceptResult>, F)>,
}

impl<F: FnMut(&ConceptResult) + Send> InOrder<F> {
    pub fn new(emit: F) -> Self {
        Self { state: Mutex::new((0, BTreeMap::new(), emit)) }
    }
}

impl<F: FnMut(&ConceptResult) + Send> Progress for InOrder<F> {
    fn finished(&self, index: usize, result: &ConceptResult) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (next, waiting, emit) = &mut *guard;
        waiting.insert(index, result.clone());
        while let Some(r) = waiting.remove(next) {
            emit(&r);
            *next += 1;
        }
    }
}

/// Where a batch's time went: wall time, and the busy time of the device worker and of all
/// CPU workers together (CPU busy + device busy > wall means they overlapped).
#[derive(Debug, Clone, Serialize)]
pub struct BatchStats {
    pub wall_ms: f64,
    pub device_busy_ms: f64,
    pub cpu_busy_ms: f64,
    pub device_passes: usize,
    pub cpu_workers: usize,
}

pub struct BatchReport {
    /// One per request, in the requests' order.
    pub results: Vec<ConceptResult>,
    pub stats: BatchStats,
}

/// Runs every request: stored ones are reported (`exists`) unless `force`, the rest go
/// through the device worker and the CPU workers and are stored.
pub fn run_batch(
    requests: &[ShapeRequest],
    gens: &Generators,
    store: &Store,
    opts: &BatchOptions,
    progress: &dyn Progress,
) -> BatchReport {
    let start = Instant::now();
    let (to_device, device_queue) = channel::<Job>();
    let batch = Batch::new(gens, store, opts, progress, requests, to_device);
    let pending = batch.triage(requests);
    batch.send_to_device(pending);
    let workers = opts.jobs.max(1);
    let (to_cpu, cpu_queue) = sync_channel::<DevicePass>(DEVICE_TO_CPU_QUEUE);
    let cpu_queue = Mutex::new(cpu_queue);
    std::thread::scope(|scope| {
        let (batch, cpu_queue) = (&batch, &cpu_queue);
        let device = std::thread::Builder::new()
            .name("lumen-device".into())
            .spawn_scoped(scope, move || batch.device_worker(device_queue, to_cpu));
        if let Err(e) = device {
            tracing::error!("the device worker could not start: {e}");
            return;
        }
        // One CPU worker is this thread, so there is always one to drain the device.
        for i in 1..workers {
            let spawned = std::thread::Builder::new()
                .name(format!("lumen-cpu-{i}"))
                .spawn_scoped(scope, move || batch.cpu_worker(cpu_queue));
            if let Err(e) = spawned {
                tracing::warn!("CPU worker {i} could not start: {e}");
            }
        }
        batch.cpu_worker(cpu_queue);
    });
    batch.fail_unfinished("internal error: the batch's workers stopped before this concept was done");
    batch.report(start.elapsed(), workers)
}

/// One concept on its way through the batch.
struct Job {
    index: usize,
    request: ShapeRequest,
    /// The first attempt's seed, which the policy derives the others' from.
    base_seed: u64,
    /// Position in the generator chain (primary, then fallback) of the one to run next.
    generator: usize,
    /// Why earlier generators failed, as the result reports them.
    errors: Vec<String>,
    /// This attempt's grade from a generator that dropped every part (see [`AttemptResult`]).
    nothing_usable: Option<Quality>,
    /// The quality gate's attempts so far and the best asset among them.
    attempts: Attempts,
    /// Replace a stored asset ([`Stored::Generate`]).
    overwrite: bool,
    /// Why the stored asset is stale, for the result.
    stale: Vec<String>,
    /// The `concept` span: every event of its device and CPU work carries its key.
    span: Span,
}

/// A concept whose device phase is done: its output, or None when every generator's device
/// phase failed (the errors are in the job; the CPU worker records the failed attempt).
struct DevicePass {
    job: Job,
    output: Option<Option<DeviceOutput>>,
    timings: Timings,
}

struct Batch<'a> {
    concepts: Vec<Concept>,
    chain: Vec<&'a dyn ShapeGenerator>,
    first_errors: Vec<String>,
    store: &'a Store,
    opts: BatchOptions<'a>,
    progress: &'a dyn Progress,
    results: Mutex<Vec<Option<ConceptResult>>>,
    /// The device queue's sender while any concept is unfinished (taken when the last one
    /// finishes, which ends the device worker and then the CPU workers).
    to_device: Mutex<Option<Sender<Job>>>,
    unfinished: AtomicUsize,
    device_busy_ns: AtomicU64,
    cpu_busy_ns: AtomicU64,
    device_passes: AtomicUsize,
}

impl<'a> Batch<'a> {
    fn new(
        gens: &'a Generators,
        store: &'a Store,
        opts: &BatchOptions<'a>,
        progress: &'a dyn Progress,
        requests: &[ShapeRequest],
        to_device: Sender<Job>,
    ) -> Self {
        let count = requests.len();
        Self {
            concepts: requests.iter().map(|r| r.concept.clone()).collect(),
            chain: gens.primary.iter().chain(gens.fallback.iter()).map(|g| g.as_ref()).collect(),
            first_errors: gens.primary_error.iter().cloned().collect(),
            store,
            opts: opts.clone(),
            progress,
            results: Mutex::new(vec![None; count]),
            to_device: Mutex::new((count > 0).then_some(to_device)),
            unfinished: AtomicUsize::new(count),
            device_busy_ns: AtomicU64::new(0),
            cpu_busy_ns: AtomicU64::new(0),
            device_passes: AtomicUsize::new(0),
        }
    }

    /// Stored concepts (unless `force`) are final at once, with their preview when asked;
    /// the others become jobs. Store lookups run in parallel: on GCS each is a round trip.
    fn triage(&self, requests: &[ShapeRequest]) -> Vec<Job> {
        let check = |(index, request): (usize, &ShapeRequest)| {
            let mut job = self.job(index, request);
            let _in_concept = job.span.clone().entered();
            match self.stored(&request.concept) {
                Stored::Generate { overwrite, stale } => {
                    (job.overwrite, job.stale) = (overwrite, stale);
                    Some(job)
                }
                Stored::Final(mut result) => {
                    if self.opts.preview {
                        add_preview(self.store, &mut result);
                    }
                    self.finish(index, *result);
                    None
                }
            }
        };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(self.opts.jobs.max(1)).build();
        let jobs: Vec<Option<Job>> = match pool {
            Ok(pool) => pool.install(|| requests.par_iter().enumerate().map(check).collect()),
            Err(_) => requests.iter().enumerate().map(check).collect(),
        };
        let jobs: Vec<Job> = jobs.into_iter().flatten().collect();
        if self.chain.is_empty() {
            for job in jobs {
                let error = self.first_errors.join("; ");
                self.finish(job.index, ConceptResult::failed(&job.request.concept, error));
            }
            return vec![];
        }
        jobs
    }

    fn stored(&self, concept: &Concept) -> Stored {
        if let Some(triage) = self.opts.triage {
            return triage.triage(concept);
        }
        match stored_result(concept, self.store, self.opts.force) {
            Some(result) => Stored::Final(Box::new(result)),
            None => Stored::Generate { overwrite: self.opts.force, stale: vec![] },
        }
    }

    fn job(&self, index: usize, request: &ShapeRequest) -> Job {
        let device = self.chain.first().map_or("cpu", |g| g.device_kind());
        // At error level so every event inside carries the key at any verbosity.
        let span = tracing::error_span!(
            "concept",
            key = %request.concept.key,
            parts = request.parts,
            seed = request.seed,
            device = %device
        );
        Job {
            index,
            request: request.clone(),
            base_seed: request.seed,
            generator: 0,
            errors: self.first_errors.clone(),
            nothing_usable: None,
            attempts: Attempts::default(),
            overwrite: self.opts.force,
            stale: vec![],
            span,
        }
    }

    fn send_to_device(&self, jobs: Vec<Job>) {
        for job in jobs {
            self.requeue(job);
        }
    }

    /// Puts a job (back) on the device queue.
    fn requeue(&self, job: Job) {
        let sender = self.to_device.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let failed = match sender {
            Some(tx) => tx.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = failed {
            let error = "internal error: the device worker stopped".to_string();
            self.finish(job.index, ConceptResult::failed(&job.request.concept, error));
        }
    }

    /// Records a concept's final result (once) and tells the progress observer.
    fn finish(&self, index: usize, result: ConceptResult) {
        {
            let mut results = self.results.lock().unwrap_or_else(|p| p.into_inner());
            if results[index].is_some() {
                return;
            }
            results[index] = Some(result.clone());
        }
        self.progress.finished(index, &result);
        if self.unfinished.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.to_device.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
    }

    /// The device thread: one concept's device phase at a time, handed to the CPU workers.
    fn device_worker(&self, queue: Receiver<Job>, to_cpu: SyncSender<DevicePass>) {
        for job in queue {
            if let Some(pass) = self.device_pass(job) {
                if let Err(e) = to_cpu.send(pass) {
                    let job = e.0.job;
                    let error = "internal error: no CPU worker is running".to_string();
                    self.finish(job.index, ConceptResult::failed(&job.request.concept, error));
                }
            }
        }
    }

    /// The device phase with the job's generator, then the next in the chain if it fails.
    /// When every generator fails, the CPU workers record the failed attempt.
    fn device_pass(&self, mut job: Job) -> Option<DevicePass> {
        let span = job.span.clone();
        let _in_concept = span.enter();
        while let Some(generator) = self.chain.get(job.generator).copied() {
            let mut timings = Timings::default();
            let started = Instant::now();
            let output = guarded(|| generator.run_device(&job.request, &mut timings));
            add_ns(&self.device_busy_ns, started.elapsed());
            self.device_passes.fetch_add(1, Ordering::Relaxed);
            match output {
                Ok(output) => return Some(DevicePass { job, output: Some(output), timings }),
                Err(e) => self.note_failure(&mut job, generator, &e),
            }
        }
        Some(DevicePass { job, output: None, timings: Timings::default() })
    }

    fn note_failure(&self, job: &mut Job, generator: &dyn ShapeGenerator, error: &anyhow::Error) {
        let c = &job.request.concept;
        tracing::error!("{}: {} pipeline failed: {error:#}", c.text, generator.name());
        job.errors.push(format!("{}: {error:#}", generator.name()));
        job.generator += 1;
    }

    /// A CPU worker: takes concepts off the device as they come, until the device is done.
    fn cpu_worker(&self, queue: &Mutex<Receiver<DevicePass>>) {
        loop {
            let next = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(pass) = next else { return };
            let started = Instant::now();
            self.cpu_pass(pass);
            add_ns(&self.cpu_busy_ns, started.elapsed());
        }
    }

    /// One concept's CPU phase: meshes, kept images and the graded asset; then the gate's
    /// decision. A CPU-phase failure sends the concept to the next generator's device pass.
    fn cpu_pass(&self, pass: DevicePass) {
        let DevicePass { mut job, output, mut timings } = pass;
        let span = job.span.clone();
        let _in_concept = span.enter();
        let Some(output) = output else { return self.attempt_failed(job) };
        timings.detach_device();
        let generator = self.chain[job.generator];
        let request = &job.request;
        let thresholds = &self.opts.quality.thresholds;
        let built = guarded(|| {
            let mut shape = generator.finish_on_cpu(request, output, &mut timings)?;
            let images = std::mem::take(&mut shape.images);
            let asset = build_graded_asset(request, shape, timings, thresholds)?;
            Ok(Built { asset, images })
        });
        match built {
            Ok(built) => self.attempt_done(job, AttemptResult::Built(Box::new(built))),
            Err(e) => {
                if let Some(grade) = AttemptResult::grade_failure(&e, thresholds) {
                    job.nothing_usable = Some(grade);
                }
                self.note_failure(&mut job, generator, &e);
                if job.generator < self.chain.len() {
                    self.requeue(job);
                } else {
                    self.attempt_failed(job);
                }
            }
        }
    }

    /// Every generator failed this attempt.
    fn attempt_failed(&self, mut job: Job) {
        let error = job.errors.last().cloned().unwrap_or_else(|| "no generator ran".into());
        let grade = job.nothing_usable.take();
        self.attempt_done(job, AttemptResult::Failed { error, grade: grade.map(Box::new) });
    }

    /// Records an attempt, logs it with its verdict, and follows the policy: another device
    /// pass with the next seed, or the best attempt stored.
    fn attempt_done(&self, mut job: Job, result: AttemptResult) {
        let policy = self.opts.quality.policy;
        let record = job.attempts.record(job.request.seed, result);
        log_attempt(&job.request.concept.text, record, policy.gate.is_some());
        match retry::next_step(&policy, job.base_seed, job.attempts.records()) {
            Step::Retry { attempt, seed } => {
                tracing::info!(
                    attempt,
                    seed,
                    "{}: below the quality gate, attempt {attempt} with seed {seed}",
                    job.request.concept.text
                );
                job.request.seed = seed;
                job.generator = 0;
                job.nothing_usable = None;
                self.requeue(job);
            }
            Step::Stop => self.store_kept(job),
        }
    }

    /// Stores the best attempt (with its kept images), once; no attempt with an asset fails
    /// the concept with every attempt's errors.
    fn store_kept(&self, job: Job) {
        let Job { index, request, attempts, errors, overwrite, stale, .. } = job;
        let concept = &request.concept;
        let policy = self.opts.quality.policy;
        let tries = attempts.records().len();
        let (kept, outcome) = attempts.finish(&policy);
        let Some(Built { asset, images }) = kept else {
            return self.finish(index, ConceptResult { stale, ..ConceptResult::failed(concept, errors.join("; ")) });
        };
        if let (Some(_), Outcome::BelowGate { kept }) = (policy.gate, outcome) {
            tracing::warn!(
                attempt = kept,
                "{}: still below the quality gate after {tries} attempts; keeping attempt {kept}",
                concept.text
            );
        }
        let mut result = guarded(|| {
            if !images.is_empty() {
                store_images(self.store, &concept.key, &images)?;
            }
            Ok(store_asset(concept, asset, self.store, overwrite))
        })
        .unwrap_or_else(|e| ConceptResult::failed(concept, format!("{e:#}")));
        result.stale = stale;
        if self.opts.preview {
            add_preview(self.store, &mut result);
        }
        self.finish(index, result);
    }

    /// Concepts without a result (a worker died) fail, so the summary still has every one.
    fn fail_unfinished(&self, why: &str) {
        let missing: Vec<usize> = {
            let results = self.results.lock().unwrap_or_else(|p| p.into_inner());
            results.iter().enumerate().filter(|(_, r)| r.is_none()).map(|(i, _)| i).collect()
        };
        for index in missing {
            tracing::error!(key = %self.concepts[index].key, "{}: {why}", self.concepts[index].text);
            self.finish(index, ConceptResult::failed(&self.concepts[index], why.to_string()));
        }
    }

    fn report(self, wall: Duration, workers: usize) -> BatchReport {
        let ms = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e6;
        let stats = BatchStats {
            wall_ms: wall.as_secs_f64() * 1e3,
            device_busy_ms: ms(&self.device_busy_ns),
            cpu_busy_ms: ms(&self.cpu_busy_ns),
            device_passes: self.device_passes.load(Ordering::Relaxed),
            cpu_workers: workers,
        };
        let results: Vec<ConceptResult> = self
            .results
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .map(|r| r.expect("every concept has a result"))
            .collect();
        tracing::info!(
            wall_ms = stats.wall_ms,
            device_busy_ms = stats.device_busy_ms,
            cpu_busy_ms = stats.cpu_busy_ms,
            "batch of {}: {:.0} ms, device worker busy {:.0} ms, {} CPU worker(s) busy {:.0} ms",
            results.len(),
            stats.wall_ms,
            stats.device_busy_ms,
            workers,
            stats.cpu_busy_ms
        );
        BatchReport { results, stats }
    }
}

fn add_ns(counter: &AtomicU64, elapsed: Duration) {
    counter.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
}

/// Runs one concept's step; a panic becomes that concept's error instead of the batch's end.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Err(anyhow!("internal error (panic): {msg}"))
    })
}
