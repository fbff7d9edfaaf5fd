//! Generating concepts, in the library so that every command, test and bench runs the same
//! code: which generators a run uses (primary and fallback), the request for one concept,
//! one concept from request to stored asset, and the outcome records the commands print.
//! The manifest bookkeeping of a batch is in [`manifest`]. Commands only turn options into
//! these calls.

pub mod batch;
pub mod manifest;

use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::concept::{default_seed, Catalog, Concept};
use crate::pipeline::partcrafter::{ModelOptions, PartCrafterGenerator};
use crate::shape::{build_asset, ProceduralGenerator, ShapeGenerator, ShapeRequest};
use crate::store::{PutOutcome, Store};

/// Which pipeline, as the work sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineKind {
    PartCrafter,
    Procedural,
}

/// The primary generator and the optional fallback. A primary that cannot even load is
/// replaced by the fallback (with a warning) or reported as an error.
pub struct Generators {
    pub primary: Option<Arc<dyn ShapeGenerator>>,
    pub primary_error: Option<String>,
    pub fallback: Option<Arc<dyn ShapeGenerator>>,
}

pub fn make_generator(kind: PipelineKind, model: &ModelOptions) -> Result<Arc<dyn ShapeGenerator>> {
    Ok(match kind {
        PipelineKind::Procedural => Arc::new(ProceduralGenerator),
        PipelineKind::PartCrafter => {
            Arc::new(PartCrafterGenerator::load(model).context("the partcrafter pipeline cannot run")?)
        }
    })
}

pub fn load_generators(kind: PipelineKind, fallback: Option<PipelineKind>, model: &ModelOptions) -> Result<Generators> {
    let (primary, primary_error) = match make_generator(kind, model) {
        Ok(g) => (Some(g), None),
        Err(e) if fallback.is_some() => {
            tracing::warn!("{e:#}; using the fallback pipeline");
            (None, Some(format!("{e:#}")))
        }
        Err(e) => return Err(e),
    };
    let fallback = match fallback {
        Some(k) if k != kind => Some(make_generator(k, model)?),
        _ => None,
    };
    Ok(Generators { primary, primary_error, fallback })
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
    /// Retries with fewer tokens after running out of device memory (as in the asset's
    /// `pipeline.settings.memory_retry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_retry: Option<serde_json::Value>,
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
            memory_retry: None,
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

/// Generates one concept with the primary generator, then the fallback, and stores it: the
/// sequential path (both phases on this thread), which a batch ([`batch::run_batch`]) must
/// match result for result.
pub fn generate_one(request: &ShapeRequest, gens: &Generators, store: &Store, force: bool) -> ConceptResult {
    let c = &request.concept;
    let attempt = |g: &dyn ShapeGenerator| -> Result<crate::asset::Asset> {
        let mut timings = crate::stage::Timings::default();
        let shape = g.generate(request, &mut timings)?;
        if !shape.images.is_empty() {
            store_images(store, &c.key, &shape.images)?;
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
            tracing::error!(key = %c.key, "{}: {} pipeline failed: {e:#}", c.text, g.name());
            errors.push(format!("{}: {e:#}", g.name()));
            None
        }
    });
    match asset {
        Some(asset) => store_asset(c, asset, store, force),
        None => ConceptResult::failed(c, errors.join("; ")),
    }
}

/// Writes a concept's asset (unless stored and not `force`) and reports the outcome.
pub fn store_asset(c: &Concept, asset: crate::asset::Asset, store: &Store, force: bool) -> ConceptResult {
    let rel = Store::shape_rel(&c.key);
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
            memory_retry: asset.pipeline.settings.get("memory_retry").cloned(),
        },
        Err(e) => ConceptResult::failed(c, format!("{e:#}")),
    }
}

/// The exit code of a batch: 1 when any concept failed or the manifest was not updated.
pub fn batch_exit_code(results: &[ConceptResult], manifest_error: Option<&str>) -> u8 {
    if results.iter().any(|r| r.status == "failed") || manifest_error.is_some() {
        crate::error::exit::FAILED
    } else {
        crate::error::exit::OK
    }
}

/// Writes kept images next to the asset: `images/<key>/<name>`.
pub fn store_images(store: &crate::store::Store, key: &str, images: &[(String, Vec<u8>)]) -> Result<()> {
    for (name, bytes) in images {
        store.put(&format!("images/{key}/{name}"), bytes.clone(), true)?;
    }
    Ok(())
}

/// The default catalogue when it exists (part counts, seeds and names of known concepts).
pub fn optional_catalog(path: &std::path::Path) -> Result<Option<crate::concept::Catalog>> {
    if path.is_file() {
        Ok(Some(crate::concept::Catalog::load(path)?))
    } else {
        Ok(None)
    }
}

/// `generate --preview`, `pregenerate --preview`: the stored asset's preview, next to it.
/// A failure is logged and noted on the result; the asset itself stays stored.
pub fn add_preview(store: &Store, result: &mut ConceptResult) {
    if result.status == "failed" {
        return;
    }
    match crate::preview::store_preview(store, &result.key) {
        Ok(location) => result.preview = Some(location),
        Err(e) => {
            tracing::warn!(key = %result.key, "{}: preview not written: {e:#}", result.text);
            result.error = Some(format!("preview not written: {e:#}"));
        }
    }
}
