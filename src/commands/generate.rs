//! `lumen generate`: concepts given on the command line, through the same batch runner as
//! `pregenerate` (one device worker, CPU work beside it); results print in the order given.

use std::path::PathBuf;

use anyhow::Result;

use super::{emit, emit_json};
use crate::cli::GenerateArgs;
use crate::concept::{check_parts, Concept};
use crate::error::UsageError;
use crate::generation::batch::{default_cpu_workers, run_batch, BatchOptions, InOrder};
use crate::generation::manifest::manifest_update;
use crate::generation::{
    batch_exit_code, load_generators, optional_catalog, request_for, ConceptResult, Generators, PipelineKind,
};
use crate::pipeline::partcrafter::ModelOptions;
use crate::quality::QualityOptions;
use crate::store::{Store, StoreOptions};

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
    pub quality: QualityOptions,
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
            quality: a.quality.options()?,
            model: ModelOptions::from(&a.model),
        })
    }
}

pub fn run(opts: GenerateOptions) -> Result<u8> {
    let store = Store::open(&opts.store, &StoreOptions::from_env())?;
    let catalog = optional_catalog(&opts.catalog)?;
    let gens = match load_generators(opts.pipeline, opts.fallback, &opts.model) {
        Ok(g) => g,
        // Weights that cannot be found are a configuration error (exit 2). Weights that are
        // there but damaged fail each concept that needs them, with the reason (file, tensor,
        // what to do); concepts already stored are still reported and nothing stored is touched.
        Err(e) if !crate::error::is_usage(&e) => {
            Generators { primary: None, primary_error: Some(format!("{e:#}")), fallback: None }
        }
        Err(e) => return Err(e),
    };
    let requests: Vec<_> =
        opts.concepts.iter().map(|c| request_for(c, catalog.as_ref(), opts.parts, opts.seed, opts.points)).collect();
    // A model run takes seconds on a GPU and minutes on a CPU: show that it is alive.
    let spinner =
        crate::progress::spinner(format!("generating {}", opts.concepts[0].text), super::stderr_is_tty() && !opts.json);
    // One line per concept, in the order given, each as soon as it and those before it are done.
    let lines = InOrder::new(|r: &ConceptResult| {
        if !opts.json {
            // emit clears the spinner while it writes.
            emit(&human_line(r));
        }
    });
    let batch = BatchOptions {
        force: opts.force,
        preview: opts.preview,
        quality: opts.quality.clone(),
        ..BatchOptions::new(default_cpu_workers())
    };
    let report = run_batch(&requests, &gens, &store, &batch, &lines);
    spinner.finish_and_clear();
    let now = crate::time::now_rfc3339();
    let results: Vec<_> =
        report.results.into_iter().zip(&opts.concepts).map(|(r, c)| (r, c.normalized.clone(), now.clone())).collect();
    let manifest_error = manifest_update(&store, &results);
    let list: Vec<ConceptResult> = results.into_iter().map(|(r, _, _)| r).collect();
    if opts.json {
        let failed = list.iter().filter(|r| r.status == "failed").count();
        let retried = list.iter().filter(|r| r.retried()).count();
        let below_gate = list.iter().filter(|r| r.below_gate()).count();
        emit_json(&serde_json::json!({
            "results": list, "failed": failed, "retried": retried, "below_gate": below_gate,
            "manifest_error": manifest_error,
        }));
    }
    // A concept still under --min-quality did not get what the run asked for: exit 1.
    Ok(batch_exit_code(&list, manifest_error.as_deref()))
}

pub fn human_line(r: &ConceptResult) -> String {
    match r.status.as_str() {
        "failed" => format!("FAILED  {:<24} {}", r.text, r.error.as_deref().unwrap_or("")),
        "exists" => {
            format!("exists  {:<24} {} (use --force to regenerate)", r.text, r.location.as_deref().unwrap_or(""))
        }
        s => format!(
            "{s:<7} {:<24} {} ({} parts, {} pipeline, {} bytes{})",
            r.text,
            r.location.as_deref().unwrap_or(""),
            r.parts.unwrap_or(0),
            r.pipeline.as_deref().unwrap_or("?"),
            r.bytes.unwrap_or(0),
            quality_note(r)
        ),
    }
}

/// `, ok`, `, weak: … (2 attempts)`, `, bad: … (3 attempts, below the gate)`.
fn quality_note(r: &ConceptResult) -> String {
    let Some(q) = &r.quality else { return String::new() };
    let mut note = format!(", {}", crate::quality::label(q.verdict, &q.reasons));
    let mut extra = Vec::new();
    if let Some(n) = q.attempts.filter(|&n| n > 1) {
        extra.push(format!("{n} attempts"));
    }
    if q.passed_gate == Some(false) {
        extra.push("below the gate".to_string());
    }
    if !extra.is_empty() {
        note.push_str(&format!(" ({})", extra.join(", ")));
    }
    note
}
