//! `lumen pregenerate`: every concept of a catalogue that this shard owns and the store
//! lacks. Idempotent (stored keys are skipped without being rewritten), resumable after a
//! kill (assets are written whole, the manifest is reconciled on the next run), and it
//! keeps going past a failing concept, exiting 1 at the end with the summary. The batch
//! itself (one device worker, `--jobs` CPU workers) is `generation::batch`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::generate::human_line;
use super::{emit, emit_json, stderr_is_tty};
use crate::cli::PregenerateArgs;
use crate::concept::{Catalog, Collision, Concept, Shard};
use crate::generation::batch::{
    default_cpu_workers, run_batch, BatchOptions, BatchReport, BatchStats, Progress, Stored, Triage,
};
use crate::generation::manifest::manifest_update;
use crate::generation::{batch_exit_code, load_generators, request_for, stored_result, ConceptResult, PipelineKind};
use crate::pipeline::partcrafter::ModelOptions;
use crate::quality::QualityOptions;
use crate::stale::{check_stored, Current};
use crate::store::{Store, StoreOptions};

/// Fixed-width fields so the bar does not jump as counts grow.
const PROGRESS_TEMPLATE: &str = "{spinner} [{elapsed_precise}] {bar:30} {pos:>4}/{len:4} {wide_msg}";

#[derive(Debug, Clone)]
pub struct PregenerateOptions {
    pub catalog_path: PathBuf,
    pub catalog: Catalog,
    pub store: String,
    pub pipeline: PipelineKind,
    pub fallback: Option<PipelineKind>,
    pub shard: Shard,
    /// CPU workers beside the one device worker.
    pub jobs: usize,
    pub points: usize,
    pub force: bool,
    /// Regenerate only stored assets that are stale (and generate missing ones).
    pub stale: bool,
    /// Store a preview picture beside each asset.
    pub preview: bool,
    pub json: bool,
    pub quality: QualityOptions,
    pub model: ModelOptions,
}

impl PregenerateOptions {
    pub fn from_args(a: PregenerateArgs) -> Result<Self> {
        let catalog = Catalog::load(&a.catalog)?;
        let shard = match &a.shard {
            Some(s) => Shard::parse(s)?,
            None => Shard::from_env(|k| std::env::var(k).ok())?.unwrap_or(Shard::ALL),
        };
        let jobs = a.jobs.map_or_else(default_cpu_workers, |j| j as usize);
        Ok(Self {
            catalog_path: a.catalog,
            catalog,
            store: a.store.store,
            pipeline: a.pipeline.into(),
            fallback: a.fallback.map(Into::into),
            shard,
            jobs,
            points: a.points as usize,
            force: a.force,
            stale: a.stale,
            preview: a.preview,
            json: a.json,
            quality: a.quality.options()?,
            model: ModelOptions::from(&a.model),
        })
    }
}

#[derive(Debug, Serialize)]
struct Summary<'a> {
    catalog: String,
    store: &'a str,
    shard: String,
    total_in_shard: usize,
    done: usize,
    skipped: usize,
    failed: usize,
    /// Concepts that took more than one attempt (--min-quality).
    retried: usize,
    /// Concepts stored with their best attempt still under --min-quality.
    below_gate: usize,
    /// Stored assets regenerated because they were stale (--stale).
    regenerated_stale: usize,
    failures: Vec<Failure>,
    collisions: Vec<Collision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest_error: Option<String>,
    /// Wall time and the device and CPU workers' busy time.
    batch: &'a BatchStats,
    results: Vec<&'a ConceptResult>,
}

#[derive(Debug, Serialize)]
struct Failure {
    text: String,
    key: String,
    error: String,
}

pub fn run(opts: PregenerateOptions) -> Result<u8> {
    let store = Store::open(&opts.store, &StoreOptions::from_env())?;
    let collisions = opts.catalog.collisions();
    for c in &collisions {
        tracing::warn!(
            key = %c.key,
            "{:?} normalise to the same key {} ({:?}); only the first is generated",
            c.texts,
            c.key,
            c.normalized
        );
    }
    let (mine, duplicates) = shard_concepts(&opts.catalog, &opts.shard)?;
    let gens = load_generators(opts.pipeline, opts.fallback, &opts.model)?;
    let requests: Vec<_> = mine.iter().map(|c| request_for(c, Some(&opts.catalog), None, None, opts.points)).collect();

    // After loading, so that revisions resolve to what was just downloaded.
    let stale = opts.stale.then(|| StaleTriage { store: &store, current: current_settings(&opts) });

    let progress = BatchProgress::new(mine.len(), stderr_is_tty() && !opts.json, !opts.json);
    let batch = BatchOptions {
        jobs: opts.jobs,
        force: opts.force,
        preview: opts.preview,
        quality: opts.quality.clone(),
        triage: stale.as_ref().map(|t| t as &dyn Triage),
    };
    let report = run_batch(&requests, &gens, &store, &batch, &progress);
    progress.bar.finish_and_clear();

    let manifest_error = manifest_update(&store, &manifest_rows(&report.results, &mine, &duplicates));
    let summary = summarize(&opts, &store, collisions, manifest_error, &report);
    if opts.json {
        emit_json(&serde_json::to_value(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(batch_exit_code(&report.results, summary.manifest_error.as_deref()))
}

/// This shard's concepts, the first text per key, and the later texts of a key (collisions).
fn shard_concepts(catalog: &Catalog, shard: &Shard) -> Result<(Vec<Concept>, Vec<Concept>)> {
    let mut seen = std::collections::HashSet::new();
    let mut mine = Vec::new();
    let mut duplicates = Vec::new();
    for e in &catalog.entries {
        let c = Concept::parse(&e.name)?;
        if !shard.contains(&c.key) {
            continue;
        }
        if seen.insert(c.key.clone()) {
            mine.push(c);
        } else {
            duplicates.push(c);
        }
    }
    Ok((mine, duplicates))
}

/// What `--stale` compares stored assets with: the flags of this run.
fn current_settings(opts: &PregenerateOptions) -> Current {
    let current = Current::new(Some(opts.pipeline), &opts.model, opts.points, Some(opts.catalog.clone()));
    if let (PipelineKind::PartCrafter, Err(e)) = (opts.pipeline, current.models()) {
        tracing::warn!("--stale: current model revisions unknown, revisions not compared: {e}");
    }
    current
}

/// `--stale`: a stored asset is regenerated (overwritten) only when it is stale; a current
/// one is kept, a missing one generated. (Without `--stale`, a stored asset is kept unless
/// `--force`, which `--stale` excludes.)
struct StaleTriage<'a> {
    store: &'a Store,
    current: Current,
}

impl Triage for StaleTriage<'_> {
    fn triage(&self, c: &Concept) -> Stored {
        match check_stored(self.store, &c.key, &self.current) {
            Ok(None) => Stored::Generate { overwrite: false, stale: vec![] },
            Ok(Some(why)) if why.is_empty() => match stored_result(c, self.store, false) {
                Some(result) => Stored::Final(Box::new(result)),
                None => Stored::Generate { overwrite: false, stale: vec![] },
            },
            Ok(Some(why)) => {
                tracing::info!("{}: stale ({}), regenerating", c.text, why.join("; "));
                Stored::Generate { overwrite: true, stale: why }
            }
            Err(e) => Stored::Final(Box::new(ConceptResult::failed(c, format!("{e:#}")))),
        }
    }
}

/// The progress bar on a terminal; one log line per finished concept otherwise.
struct BatchProgress {
    bar: ProgressBar,
    lines: bool,
}

impl BatchProgress {
    fn new(total: usize, bar: bool, lines_without_bar: bool) -> Self {
        // In the shared set, so log lines suspend it.
        let bar = crate::progress::bar(total as u64, bar);
        bar.set_style(ProgressStyle::with_template(PROGRESS_TEMPLATE).expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(200));
        let lines = bar.is_hidden() && lines_without_bar;
        Self { bar, lines }
    }
}

impl Progress for BatchProgress {
    fn finished(&self, _: usize, result: &ConceptResult) {
        self.bar.inc(1);
        self.bar.set_message(result.text.clone());
        if self.lines {
            // Called inside the concept's span: the line carries its key.
            match result.status.as_str() {
                "failed" => tracing::error!("{}", human_line(result)),
                _ => tracing::info!("{}", human_line(result)),
            }
        }
    }
}

/// The batch's results for the manifest, plus each colliding text under its key so `stats`
/// can show them.
fn manifest_rows(
    results: &[ConceptResult],
    mine: &[Concept],
    duplicates: &[Concept],
) -> Vec<(ConceptResult, String, String)> {
    let now = crate::time::now_rfc3339();
    let mut rows: Vec<_> =
        results.iter().zip(mine).map(|(r, c)| (r.clone(), c.normalized.clone(), now.clone())).collect();
    for c in duplicates {
        if let Some(r) = results.iter().find(|r| r.key == c.key && r.status != "failed") {
            let dup = ConceptResult { text: c.text.clone(), status: "exists".into(), ..r.clone() };
            rows.push((dup, c.normalized.clone(), now.clone()));
        }
    }
    rows
}

fn summarize<'a>(
    opts: &PregenerateOptions,
    store: &'a Store,
    collisions: Vec<Collision>,
    manifest_error: Option<String>,
    report: &'a BatchReport,
) -> Summary<'a> {
    let results = &report.results;
    let count = |s: &str| results.iter().filter(|r| r.status == s).count();
    let failures: Vec<Failure> = results
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| Failure { text: r.text.clone(), key: r.key.clone(), error: r.error.clone().unwrap_or_default() })
        .collect();
    let retried = results.iter().filter(|r| r.retried()).count();
    let below_gate = results.iter().filter(|r| r.below_gate()).count();
    let regenerated_stale = results.iter().filter(|r| !r.stale.is_empty() && r.status != "failed").count();
    Summary {
        catalog: opts.catalog_path.display().to_string(),
        store: store.url(),
        shard: format!("{}/{}", opts.shard.index, opts.shard.count),
        total_in_shard: results.len(),
        done: count("created") + count("overwritten"),
        skipped: count("exists"),
        failed: failures.len(),
        retried,
        below_gate,
        regenerated_stale,
        failures,
        collisions,
        manifest_error,
        batch: &report.stats,
        results: results.iter().collect(),
    }
}

fn print_summary(summary: &Summary) {
    emit(&format!(
        "pregenerate {} shard {}: {} done, {} skipped (already stored), {} failed, of {}; {} retried, {} below the quality gate, {} stale regenerated",
        summary.catalog,
        summary.shard,
        summary.done,
        summary.skipped,
        summary.failed,
        summary.total_in_shard,
        summary.retried,
        summary.below_gate,
        summary.regenerated_stale
    ));
    for f in &summary.failures {
        emit(&format!("  failed: {} ({}): {}", f.text, f.key, f.error));
    }
    for c in &summary.collisions {
        emit(&format!("  collision: {:?} share key {}", c.texts, c.key));
    }
}
