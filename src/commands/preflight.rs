//! `lumen preflight`: fast proof, before a deploy or a slow GPU batch, that the store
//! round-trips, the device computes, the catalogue is valid, the weights resolve and load,
//! and a tiny end-to-end run produces a valid asset. Exit 3 when any check fails.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde::Serialize;

use super::{emit, emit_json};
use crate::asset::Asset;
use crate::cli::{DtypeArg, PreflightArgs};
use crate::concept::{Catalog, Concept};
use crate::diagnostics::goldens::CaseResult;
use crate::error::exit;
use crate::generation::PipelineKind;
use crate::pipeline::partcrafter::{select_device, ModelOptions, PartCrafterGenerator};
use crate::shape::{build_asset, ProceduralGenerator, ShapeGenerator, ShapeRequest};
use crate::store::{Store, StoreOptions};

#[derive(Debug, Clone)]
pub struct PreflightOptions {
    pub store: String,
    pub weights: Option<PathBuf>,
    pub pipeline: PipelineKind,
    pub catalog: PathBuf,
    pub force_cpu: bool,
    /// Golden folder to check the models' numerics against, and the precisions to run.
    pub goldens: Option<PathBuf>,
    pub goldens_dtypes: Vec<DType>,
    pub json: bool,
}

impl PreflightOptions {
    pub fn from_args(a: PreflightArgs) -> Self {
        Self {
            store: a.store.store,
            weights: a.weights,
            pipeline: a.pipeline.into(),
            catalog: a.catalog,
            force_cpu: a.cpu,
            goldens: a.goldens,
            goldens_dtypes: a
                .goldens_dtype
                .iter()
                .map(|d| match d {
                    DtypeArg::F32 => DType::F32,
                    DtypeArg::F16 => DType::F16,
                    DtypeArg::Bf16 => DType::BF16,
                })
                .collect(),
            json: a.json,
        }
    }
}

const LICENSE_CHECK: &str = "model licences";
const HEADERS_CHECK: &str = "partcrafter weights (safetensors headers)";
const LOAD_CHECK: &str = "partcrafter pipeline (weights resolve and load)";
const RUN_CHECK: &str = "partcrafter tiny end-to-end run";

/// Each model's licence as its card names it; restrictions are named, not failed: whether a
/// use is allowed is the user's agreement with the maker, not something a check can know.
fn license_summary(model: &ModelOptions) -> String {
    let device = select_device(model.force_cpu).map(|d| crate::weights::DeviceKind::of(&d));
    let repos = crate::weights::pipeline_repos(device.unwrap_or(crate::weights::DeviceKind::Cpu), model.fp16_vae);
    let restricted: Vec<&str> = repos.iter().filter(|r| !r.license.commercial_use).map(|r| r.id).collect();
    let mut s = crate::weights::license_lines(&repos).join("; ");
    if !restricted.is_empty() {
        s.push_str(&format!(" — not for commercial use without the maker's agreement: {}", restricted.join(", ")));
    }
    s
}

/// Every weights file the pipeline would load, from its header only (seconds, no weights
/// read): present, complete, every tensor each stage's constructor asks for with the right
/// shape and a float dtype. See `checkpoint.rs`.
fn weights_headers(model: &ModelOptions) -> Result<String> {
    let source = crate::weights::WeightsSource::from_env(model.weights_dir.clone());
    let half = select_device(model.force_cpu)?.is_cuda();
    let reports = crate::checkpoint::check_pipeline(&source, half, model.fp16_vae)?;
    let files: usize = reports.iter().map(|r| r.files.len()).sum();
    let tensors: usize = reports.iter().map(|r| r.tensors).sum();
    let params: u64 = reports.iter().map(|r| r.params).sum();
    Ok(format!("{files} files, {tensors} tensors, {:.2} G parameters as the stages expect", params as f64 / 1e9))
}

/// One concept through every model stage at the smallest settings (1 part, 1 step, 16 tokens,
/// a 32³ extraction lattice): proves the device runs each stage, in seconds on a GPU.
fn tiny_model_run(generator: &PartCrafterGenerator) -> Result<String> {
    let concept = Concept::parse("chair")?;
    let request = ShapeRequest { concept, parts: Some(1), seed: 1, points: 256, part_names: vec![] };
    let mut timings = crate::stage::Timings::default();
    let shape = generator.generate(&request, &mut timings)?;
    let asset = build_asset(&request, shape, timings)?;
    Asset::decode(&asset.to_json_bytes())?;
    let total: f64 = asset.timings_ms.values().sum();
    Ok(format!("chair → {} part(s), {} points in {:.0} ms", asset.part_names.len(), asset.num_points, total))
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    /// ok | fail | skipped
    pub status: String,
    pub detail: String,
    pub ms: f64,
}

fn check(name: &str, f: impl FnOnce() -> Result<String>) -> Check {
    let start = Instant::now();
    let (status, detail) = match f() {
        Ok(d) => ("ok", d),
        Err(e) => ("fail", format!("{e:#}")),
    };
    Check { name: name.into(), status: status.into(), detail, ms: start.elapsed().as_secs_f64() * 1e3 }
}

fn skipped(name: &str, why: &str) -> Check {
    Check { name: name.into(), status: "skipped".into(), detail: why.into(), ms: 0.0 }
}

/// `--goldens DIR`: every model's golden cases on the pipeline's device, once per precision
/// (f32 and the pipeline's dtype unless `--goldens-dtype` says otherwise). One check per
/// precision; the per-case results go to the report.
fn goldens_checks(opts: &PreflightOptions, dir: &std::path::Path, cases: &mut Vec<CaseResult>) -> Vec<Check> {
    let device = match select_device(opts.force_cpu) {
        Ok(d) => d,
        Err(e) => return vec![check("goldens", || Err(e))],
    };
    let mut dtypes = opts.goldens_dtypes.clone();
    if dtypes.is_empty() {
        dtypes.push(DType::F32);
        dtypes.push(crate::device::model_dtype(&device));
    }
    dtypes.dedup();
    dtypes
        .into_iter()
        .map(|dtype| {
            let name = format!("goldens {} on {}", crate::device::dtype_name(dtype), crate::device::label(&device));
            check(&name, || {
                let got = crate::diagnostics::goldens::run(dir, &device, dtype)?;
                let failed: Vec<String> = got
                    .iter()
                    .filter(|c| !c.pass)
                    .map(|c| format!("{}/{} {}", c.component, c.case, c.worst.output))
                    .collect();
                let worst = got
                    .iter()
                    .max_by(|a, b| (a.worst.error / a.worst.tol).total_cmp(&(b.worst.error / b.worst.tol)))
                    .map(|c| format!("{}/{} at {:.2e} of tol {:.1e}", c.component, c.case, c.worst.error, c.worst.tol))
                    .unwrap_or_default();
                let n = got.len();
                cases.extend(got);
                if !failed.is_empty() {
                    bail!("{} of {n} golden cases outside tolerance: {}", failed.len(), failed.join(", "));
                }
                Ok(format!("{n} golden cases within tolerance; closest to its limit: {worst}"))
            })
        })
        .collect()
}

fn golden_line(c: &CaseResult) -> String {
    format!(
        "  {:<4} {:<12} {:<24} {:<7} {:<5} {:<28} {:<15} {:>10.3e} {:>9.1e}",
        if c.pass { "ok" } else { "FAIL" },
        c.component,
        c.case,
        c.device,
        c.dtype,
        c.worst.output,
        c.worst.metric,
        c.worst.error,
        c.worst.tol
    )
}

pub fn run(opts: PreflightOptions) -> Result<u8> {
    let mut checks = vec![
        check("store", || store_round_trip(&opts.store)),
        check("device", || device_check(opts.force_cpu)),
        check("catalog", || catalog_check(&opts.catalog)),
        check("procedural end-to-end", procedural_end_to_end),
    ];
    checks.extend(model_checks(&opts));
    let mut golden_cases = Vec::new();
    if let Some(dir) = &opts.goldens {
        checks.extend(goldens_checks(&opts, dir, &mut golden_cases));
    }
    let failed = checks.iter().filter(|c| c.status == "fail").count();
    if opts.json {
        emit_json(&serde_json::json!({ "ok": failed == 0, "checks": checks, "goldens": golden_cases }));
    } else {
        print_report(&checks, &golden_cases, failed);
    }
    Ok(if failed == 0 { exit::OK } else { exit::PREFLIGHT })
}

/// Writes, reads back and deletes one small object.
fn store_round_trip(url: &str) -> Result<String> {
    let store = Store::open(url, &StoreOptions::from_env())?;
    let rel = format!("preflight/{}-{}.json", std::process::id(), crate::time::now_rfc3339().replace(':', ""));
    let body = format!("{{\"preflight\":\"{}\"}}", crate::time::now_rfc3339()).into_bytes();
    store.put(&rel, body.clone(), true)?;
    let back = store.get(&rel)?.context("the object written was not found when read back")?;
    store.delete(&rel)?;
    if back.as_ref() != body.as_slice() {
        bail!("read back {} bytes that differ from the {} written", back.len(), body.len());
    }
    Ok(format!("{}: write, read back and delete round trip", store.url()))
}

fn device_check(force_cpu: bool) -> Result<String> {
    let device = select_device(force_cpu)?;
    let info = crate::device::describe(&device);
    let summary = crate::diagnostics::self_check::self_check(&device)?;
    Ok(format!("{} — {summary}", info.summary().trim_start_matches("device: ")))
}

fn catalog_check(path: &std::path::Path) -> Result<String> {
    let c = Catalog::load(path)?;
    let collisions = c.collisions();
    if !collisions.is_empty() {
        bail!("{} collision(s): {:?}", collisions.len(), collisions.iter().map(|c| &c.texts).collect::<Vec<_>>());
    }
    Ok(format!("{}: {} concepts, no collisions", path.display(), c.entries.len()))
}

fn procedural_end_to_end() -> Result<String> {
    let concept = Concept::parse("chair")?;
    let request = ShapeRequest { concept, parts: None, seed: 1, points: 2048, part_names: vec![] };
    let mut timings = crate::stage::Timings::default();
    let shape = ProceduralGenerator.generate(&request, &mut timings)?;
    let asset = build_asset(&request, shape, timings)?;
    let bytes = asset.to_json_bytes();
    Asset::decode(&bytes)?;
    Ok(format!("chair → {} parts, {} points, {} bytes, decodes", asset.part_names.len(), asset.num_points, bytes.len()))
}

/// Weights headers, then loading every stage, then one tiny concept; each needs the one
/// before it, and all three are skipped for the procedural pipeline.
fn model_checks(opts: &PreflightOptions) -> Vec<Check> {
    if opts.pipeline != PipelineKind::PartCrafter {
        let mut checks = vec![skipped(LICENSE_CHECK, "--pipeline procedural (no models)")];
        checks.extend([HEADERS_CHECK, LOAD_CHECK, RUN_CHECK].iter().map(|n| skipped(n, "--pipeline procedural")));
        return checks;
    }
    let model = ModelOptions {
        weights_dir: opts.weights.clone(),
        force_cpu: opts.force_cpu,
        steps: 1,
        tokens: 16,
        extract_depth: 5,
        ..Default::default()
    };
    let license = check(LICENSE_CHECK, || Ok(license_summary(&model)));
    let headers = check(HEADERS_CHECK, || weights_headers(&model));
    let headers_ok = headers.status == "ok";
    let mut checks = vec![license, headers];
    let mut loaded = None;
    if headers_ok {
        checks.push(check(LOAD_CHECK, || {
            loaded = Some(PartCrafterGenerator::load(&model)?);
            Ok("every stage loaded".into())
        }));
    } else {
        checks.push(skipped(LOAD_CHECK, "the weights headers did not pass"));
    }
    checks.push(match loaded {
        Some(generator) => check(RUN_CHECK, || tiny_model_run(&generator)),
        None => skipped(RUN_CHECK, "the pipeline did not load"),
    });
    checks
}

fn print_report(checks: &[Check], golden_cases: &[CaseResult], failed: usize) {
    for c in checks {
        emit(&format!("{:<8} {:<48} {:>8.1} ms  {}", c.status.to_uppercase(), c.name, c.ms, c.detail));
    }
    if !golden_cases.is_empty() {
        emit(&format!(
            "  {:<4} {:<12} {:<24} {:<7} {:<5} {:<28} {:<15} {:>10} {:>9}",
            "", "component", "case", "device", "dtype", "worst output", "metric", "error", "tol"
        ));
        for c in golden_cases {
            emit(&golden_line(c));
        }
    }
    emit(if failed == 0 { "preflight passed" } else { "preflight FAILED" });
}
