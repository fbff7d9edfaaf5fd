//! `lumen generate`: concepts given on the command line, one after the other.

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use super::{emit, emit_json, load_generators, log, PipelineKind};
use crate::cli::GenerateArgs;
use crate::concept::{check_parts, default_seed, Catalog, Concept};
use crate::error::{exit, UsageError};
use crate::pipeline::partcrafter::ModelOptions;
use crate::shape::{build_asset, ShapeGenerator, ShapeRequest};
use crate::store::{PutOutcome, Store, StoreOptions};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub concepts: Vec<Concept>,
    pub parts: Option<usize>,
    pub seed: Option<u64>,
    pub points: usize,
    pub store: String,
    pub pipeline: PipelineKind,
    pub fallback: Option<PipelineKind>,
    pub force: bool,
    /// Store a preview picture beside each asset.
    pub preview: bool,
    pub json: bool,
    pub catalog: PathBuf,
    pub model: ModelOptions,
}

impl GenerateOptions {
    /// Validates everything before any work starts: one bad concept stops the command
    /// with exit 2 and nothing is written.
    pub fn from_args(a: GenerateArgs) -> Result<Self> {
        let concepts = a.concepts.iter().map(|t| Concept::parse(t)).collect::<Result<Vec<_>, UsageError>>()?;
        let parts = a.parts.map(|p| check_parts(p as usize)).transpose()?;
        Ok(Self {
            concepts,
            parts,
            seed: a.seed,
            points: a.points as usize,
            store: a.store.store,
            pipeline: a.pipeline.into(),
            fallback: a.fallback.map(Into::into),
            force: a.force,
            preview: a.preview,
            json: a.json,
            catalog: a.catalog,
            model: ModelOptions::from(&a.model),
        })
    }
}

/// The outcome for one concept, as printed (and as `--json` emits it).
#[derive(Debug, Clone, Serialize)]
pub struct ConceptResult {
    pub text: String,
    pub key: String,
    /// created | overwritten | exists | failed
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings_ms: Option<std::collections::BTreeMap<String, f64>>,
    /// Where the preview picture went (`--preview`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// Unless `force`, a concept already stored is reported as `exists` without generating it
/// (generation is the slow part); an error asking the store fails that concept only.
pub fn stored_result(c: &Concept, store: &Store, force: bool) -> Option<ConceptResult> {
    if force {
        return None;
    }
    match store.exists(&Store::shape_rel(&c.key)) {
        Ok(false) => None,
        Ok(true) => Some(ConceptResult {
            status: "exists".into(),
            location: Some(format!("{}/{}", store.url().trim_end_matches('/'), Store::shape_rel(&c.key))),
            error: None,
            ..ConceptResult::failed(c, String::new())
        }),
        Err(e) => Some(ConceptResult::failed(c, format!("{e:#}"))),
    }
}

impl ConceptResult {
    pub fn failed(c: &Concept, err: String) -> Self {
        Self {
            text: c.text.clone(),
            key: c.key.clone(),
            status: "failed".into(),
            location: None,
            pipeline: None,
            parts: None,
            bytes: None,
            error: Some(err),
            timings_ms: None,
            preview: None,
        }
    }
}

/// Builds the request for a concept from the command line, then the catalogue, then defaults.
pub fn request_for(
    c: &Concept,
    catalog: Option<&Catalog>,
    parts: Option<usize>,
    seed: Option<u64>,
    points: usize,
) -> ShapeRequest {
    let entry = catalog.and_then(|cat| cat.find(c));
    ShapeRequest {
        concept: c.clone(),
        parts: parts.or(entry.and_then(|e| e.parts)),
        seed: seed.or(entry.and_then(|e| e.seed)).unwrap_or_else(|| default_seed(&c.key)),
        points,
        part_names: entry.map(|e| e.part_names.clone()).unwrap_or_default(),
    }
}

/// Generates one concept with the primary generator, then the fallback, and stores it.
pub fn generate_one(request: &ShapeRequest, gens: &super::Generators, store: &Store, force: bool) -> ConceptResult {
    let c = &request.concept;
    let rel = Store::shape_rel(&c.key);
    let attempt = |g: &dyn ShapeGenerator| -> Result<crate::asset::Asset> {
        let mut timings = crate::pipeline::Timings::default();
        let shape = g.generate(request, &mut timings)?;
        if !shape.images.is_empty() {
            super::store_images(store, &c.key, &shape.images)?;
        }
        build_asset(request, shape, timings)
    };
    let mut errors = Vec::new();
    if let Some(e) = &gens.primary_error {
        errors.push(e.clone());
    }
    let asset = gens.primary.iter().chain(gens.fallback.iter()).find_map(|g| match attempt(g.as_ref()) {
        Ok(a) => Some(a),
        Err(e) => {
            log(&format!("{}: {} pipeline failed: {e:#}", c.text, g.name()));
            errors.push(format!("{}: {e:#}", g.name()));
            None
        }
    });
    let Some(asset) = asset else {
        return ConceptResult::failed(c, errors.join("; "));
    };
    let bytes = asset.to_json_bytes();
    let size = bytes.len();
    match store.put(&rel, bytes, force) {
        Ok(outcome) => ConceptResult {
            text: c.text.clone(),
            key: c.key.clone(),
            status: match outcome {
                PutOutcome::Created => "created",
                PutOutcome::Overwritten => "overwritten",
                PutOutcome::Exists => "exists",
            }
            .into(),
            location: Some(format!("{}/{rel}", store.url().trim_end_matches('/'))),
            pipeline: Some(asset.pipeline.name.clone()),
            parts: Some(asset.part_names.len()),
            bytes: Some(size),
            error: None,
            timings_ms: Some(asset.timings_ms.clone()),
            preview: None,
        },
        Err(e) => ConceptResult::failed(c, format!("{e:#}")),
    }
}

/// Adds the outcome of a batch to the manifest: new and overwritten assets, and every text
/// asked for under a key (two different texts under one key are a collision). An existing
/// asset missing from the manifest (say, after a killed run) is read back to fill its entry.
pub fn record_in_manifest(store: &Store, results: &[(ConceptResult, String, String)]) -> Result<()> {
    store.update_manifest(|m| {
        for (r, normalized, created_at) in results {
            if r.status == "failed" {
                continue;
            }
            if !m.entries.contains_key(&r.key) {
                let entry = if r.status == "exists" {
                    match entry_from_blob(store, &r.key) {
                        Some(e) => e,
                        None => continue,
                    }
                } else {
                    new_entry(r, normalized, created_at)
                };
                m.entries.insert(r.key.clone(), entry);
            } else if r.status != "exists" {
                let texts = std::mem::take(&mut m.entries.get_mut(&r.key).unwrap().texts);
                m.entries.insert(
                    r.key.clone(),
                    crate::store::ManifestEntry { texts, ..new_entry(r, normalized, created_at) },
                );
            }
            let entry = m.entries.get_mut(&r.key).unwrap();
            for t in [entry.text.clone(), r.text.clone()] {
                if !entry.texts.contains(&t) {
                    entry.texts.push(t);
                }
            }
        }
    })?;
    Ok(())
}

/// Updates the manifest after a batch. A failure (say, a full disk) does not hide the
/// batch's results: it is logged, returned for the summary, and makes the exit code 1; the
/// assets themselves are stored and `stats --repair` rebuilds the manifest from them.
pub fn manifest_update(store: &Store, results: &[(ConceptResult, String, String)]) -> Option<String> {
    match record_in_manifest(store, results) {
        Ok(()) => None,
        Err(e) => {
            let msg = format!("{e:#}");
            log(&format!(
                "error: manifest.json not updated: {msg} (run `lumen stats --repair` once the store is healthy)"
            ));
            Some(msg)
        }
    }
}

fn new_entry(r: &ConceptResult, normalized: &str, created_at: &str) -> crate::store::ManifestEntry {
    crate::store::ManifestEntry {
        text: r.text.clone(),
        normalized: normalized.to_string(),
        size: r.bytes.unwrap_or(0) as u64,
        pipeline: r.pipeline.clone().unwrap_or_default(),
        created_at: created_at.to_string(),
        texts: vec![],
    }
}

/// The manifest entry of a stored asset, read from the asset itself (`None` if unreadable).
pub fn entry_from_blob(store: &Store, key: &str) -> Option<crate::store::ManifestEntry> {
    let bytes = store.get(&Store::shape_rel(key)).ok()??;
    let (asset, _) = crate::asset::Asset::decode(&bytes).ok()?;
    Some(crate::store::ManifestEntry {
        text: asset.text,
        normalized: asset.normalized,
        size: bytes.len() as u64,
        pipeline: asset.pipeline.name,
        created_at: asset.created_at,
        texts: vec![],
    })
}

pub fn run(opts: GenerateOptions) -> Result<u8> {
    let store = Store::open(&opts.store, &StoreOptions::from_env())?;
    let catalog = super::optional_catalog(&opts.catalog)?;
    let gens = match load_generators(opts.pipeline, opts.fallback, &opts.model) {
        Ok(g) => g,
        // Weights that cannot be found are a configuration error (exit 2). Weights that are
        // there but damaged fail each concept that needs them, with the reason (file, tensor,
        // what to do); concepts already stored are still reported and nothing stored is touched.
        Err(e) if !crate::error::is_usage(&e) => {
            super::Generators { primary: None, primary_error: Some(format!("{e:#}")), fallback: None }
        }
        Err(e) => return Err(e),
    };
    let mut results = Vec::new();
    for c in &opts.concepts {
        let request = request_for(c, catalog.as_ref(), opts.parts, opts.seed, opts.points);
        // A model run takes seconds on a GPU and minutes on a CPU: show that it is alive.
        let spinner = if super::stderr_is_tty() && !opts.json {
            let s = indicatif::ProgressBar::new_spinner().with_message(format!("generating {}", c.text));
            s.enable_steady_tick(std::time::Duration::from_millis(120));
            s
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut result =
            stored_result(c, &store, opts.force).unwrap_or_else(|| generate_one(&request, &gens, &store, opts.force));
        if opts.preview {
            super::preview::add_preview(&store, &mut result);
        }
        spinner.finish_and_clear();
        if !opts.json {
            emit(&human_line(&result));
        }
        results.push((result, c.normalized.clone(), crate::time::now_rfc3339()));
    }
    let manifest_error = manifest_update(&store, &results);
    let failed = results.iter().filter(|(r, _, _)| r.status == "failed").count();
    if opts.json {
        let list: Vec<&ConceptResult> = results.iter().map(|(r, _, _)| r).collect();
        emit_json(&serde_json::json!({ "results": list, "failed": failed, "manifest_error": manifest_error }));
    }
    Ok(if failed > 0 || manifest_error.is_some() { exit::FAILED } else { exit::OK })
}

pub fn human_line(r: &ConceptResult) -> String {
    match r.status.as_str() {
        "failed" => format!("FAILED  {:<24} {}", r.text, r.error.as_deref().unwrap_or("")),
        "exists" => {
            format!("exists  {:<24} {} (use --force to regenerate)", r.text, r.location.as_deref().unwrap_or(""))
        }
        s => format!(
            "{s:<7} {:<24} {} ({} parts, {} pipeline, {} bytes)",
            r.text,
            r.location.as_deref().unwrap_or(""),
            r.parts.unwrap_or(0),
            r.pipeline.as_deref().unwrap_or("?"),
            r.bytes.unwrap_or(0)
        ),
    }
}
