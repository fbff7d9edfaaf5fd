//! `lumen pregenerate`: every concept of a catalogue that this shard owns and the store
//! lacks. Idempotent (stored keys are skipped without being rewritten), resumable after a
//! kill (assets are written whole, the manifest is reconciled on the next run), and it
//! keeps going past a failing concept, exiting 1 at the end with the summary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use indicatif::ProgressStyle;
use rayon::prelude::*;
use serde::Serialize;

use super::generate::human_line;
use super::{emit, emit_json, log, stderr_is_tty};
use crate::cli::PregenerateArgs;
use crate::concept::{Catalog, Collision, Concept, Shard};
use crate::error::exit;
use crate::generation::manifest::manifest_update;
use crate::generation::{
    add_preview, generate_one, load_generators, request_for, stored_result, ConceptResult, PipelineKind,
};
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
        let jobs =
            a.jobs.map(|j| j as usize).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
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
        log(&format!(
            "warning: {:?} normalise to the same key {} ({:?}); only the first is generated",
            c.texts, c.key, c.normalized
        ));
    }

    // This shard's concepts, first text per key.
    let mut seen = std::collections::HashSet::new();
    let mut mine = Vec::new();
    let mut duplicates = Vec::new();
    for e in &opts.catalog.entries {
        let c = Concept::parse(&e.name)?;
        if !opts.shard.contains(&c.key) {
            continue;
        }
        if seen.insert(c.key.clone()) {
            mine.push(c);
        } else {
            duplicates.push(c);
        }
    }

    let gens = load_generators(opts.pipeline, opts.fallback, &opts.model)?;
    // After loading, so that revisions resolve to what was just downloaded.
    let current = opts.stale.then(|| {
        let c = Current::new(Some(opts.pipeline), &opts.model, opts.points, Some(opts.catalog.clone()));
        if let (PipelineKind::PartCrafter, Err(e)) = (opts.pipeline, c.models()) {
            tracing::warn!("--stale: current model revisions unknown, revisions not compared: {e}");
        }
        c
    });
    let bar = crate::progress::bar(mine.len() as u64, stderr_is_tty() && !opts.json);
    bar.set_style(ProgressStyle::with_template(PROGRESS_TEMPLATE).expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let per_item_lines = bar.is_hidden();

    let pool = rayon::ThreadPoolBuilder::new().num_threads(opts.jobs).build()?;
    let results: Vec<(ConceptResult, String, String)> = pool.install(|| {
        mine.par_iter()
            .map(|c| {
                let mut result = existing(c, &store, &opts, current.as_ref()).unwrap_or_else(|(force, stale)| {
                    let request = request_for(c, Some(&opts.catalog), None, None, opts.points);
                    debug_delay();
                    ConceptResult { stale, ..generate_one(&request, &gens, &store, force, &opts.quality) }
                });
                if opts.preview {
                    add_preview(&store, &mut result);
                }
                bar.inc(1);
                bar.set_message(c.text.clone());
                if per_item_lines && !opts.json {
                    log(&human_line(&result));
                }
                (result, c.normalized.clone(), crate::time::now_rfc3339())
            })
            .collect()
    });
    bar.finish_and_clear();

    // Colliding texts are recorded under their key so `stats` can show them.
    let mut for_manifest = results.clone();
    for c in &duplicates {
        if let Some((r, _, _)) = results.iter().find(|(r, _, _)| r.key == c.key) {
            if r.status != "failed" {
                let mut dup = r.clone();
                dup.text = c.text.clone();
                dup.status = "exists".into();
                for_manifest.push((dup, c.normalized.clone(), crate::time::now_rfc3339()));
            }
        }
    }
    let manifest_error = manifest_update(&store, &for_manifest);

    let count = |s: &str| results.iter().filter(|(r, _, _)| r.status == s).count();
    let done = count("created") + count("overwritten");
    let skipped = count("exists");
    let failures: Vec<Failure> = results
        .iter()
        .filter(|(r, _, _)| r.status == "failed")
        .map(|(r, _, _)| Failure {
            text: r.text.clone(),
            key: r.key.clone(),
            error: r.error.clone().unwrap_or_default(),
        })
        .collect();
    let retried = results.iter().filter(|(r, _, _)| r.retried()).count();
    let below_gate = results.iter().filter(|(r, _, _)| r.below_gate()).count();
    let regenerated_stale = results.iter().filter(|(r, _, _)| !r.stale.is_empty() && r.status != "failed").count();
    let summary = Summary {
        catalog: opts.catalog_path.display().to_string(),
        store: store.url(),
        shard: format!("{}/{}", opts.shard.index, opts.shard.count),
        total_in_shard: mine.len(),
        done,
        skipped,
        failed: failures.len(),
        retried,
        below_gate,
        regenerated_stale,
        failures,
        collisions,
        manifest_error,
        results: results.iter().map(|(r, _, _)| r).collect(),
    };
    if opts.json {
        emit_json(&serde_json::to_value(&summary)?);
    } else {
        emit(&format!(
            "pregenerate {} shard {}: {} done, {} skipped (already stored), {} failed, of {}; {} retried, {} below the quality gate, {} stale regenerated",
            summary.catalog, summary.shard, done, skipped, summary.failed, summary.total_in_shard, retried, below_gate, regenerated_stale
        ));
        for f in &summary.failures {
            emit(&format!("  failed: {} ({}): {}", f.text, f.key, f.error));
        }
        for c in &summary.collisions {
            emit(&format!("  collision: {:?} share key {}", c.texts, c.key));
        }
    }
    let short = summary.failed > 0 || summary.below_gate > 0 || summary.manifest_error.is_some();
    Ok(if short { exit::FAILED } else { exit::OK })
}

/// The result for a concept that needs no generating, or `Err((force, stale reasons))` for
/// one that does. With `--stale`, a stored asset is regenerated (overwritten) only when it is
/// stale; otherwise, as always, a stored asset is kept unless `--force`.
fn existing(
    c: &Concept,
    store: &Store,
    opts: &PregenerateOptions,
    current: Option<&Current>,
) -> Result<ConceptResult, (bool, Vec<String>)> {
    let Some(current) = current else {
        return stored_result(c, store, opts.force).ok_or((opts.force, vec![]));
    };
    match check_stored(store, &c.key, current) {
        Ok(None) => Err((false, vec![])),
        Ok(Some(why)) if why.is_empty() => stored_result(c, store, false).ok_or((false, vec![])),
        Ok(Some(why)) => {
            tracing::info!(key = %c.key, "{}: stale ({}), regenerating", c.text, why.join("; "));
            Err((true, why))
        }
        Err(e) => Ok(ConceptResult::failed(c, format!("{e:#}"))),
    }
}

/// Test hook: `LUMEN_DEBUG_CONCEPT_DELAY_MS` slows each generated concept so integration
/// tests can kill a run in the middle. Never set in production.
fn debug_delay() {
    if let Some(ms) = std::env::var("LUMEN_DEBUG_CONCEPT_DELAY_MS").ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}
