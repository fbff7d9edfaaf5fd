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
use crate::generation::batch::{default_cpu_workers, run_batch, BatchOptions, BatchReport, BatchStats, Progress};
use crate::generation::manifest::manifest_update;
use crate::generation::{batch_exit_code, load_generators, request_for, ConceptResult, PipelineKind};
use crate::pipeline::partcrafter::ModelOptions;
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
    /// Store a preview picture beside each asset.
    pub preview: bool,
    pub json: bool,
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
            preview: a.preview,
            json: a.json,
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

    let progress = BatchProgress::new(mine.len(), stderr_is_tty() && !opts.json, !opts.json);
    let batch = BatchOptions { jobs: opts.jobs, force: opts.force, preview: opts.preview, review: None };
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
    Summary {
        catalog: opts.catalog_path.display().to_string(),
        store: store.url(),
        shard: format!("{}/{}", opts.shard.index, opts.shard.count),
        total_in_shard: results.len(),
        done: count("created") + count("overwritten"),
        skipped: count("exists"),
        failed: failures.len(),
        failures,
        collisions,
        manifest_error,
        batch: &report.stats,
        results: results.iter().collect(),
    }
}

fn print_summary(summary: &Summary) {
    emit(&format!(
        "pregenerate {} shard {}: {} done, {} skipped (already stored), {} failed, of {}",
        summary.catalog, summary.shard, summary.done, summary.skipped, summary.failed, summary.total_in_shard
    ));
    for f in &summary.failures {
        emit(&format!("  failed: {} ({}): {}", f.text, f.key, f.error));
    }
    for c in &summary.collisions {
        emit(&format!("  collision: {:?} share key {}", c.texts, c.key));
    }
}
