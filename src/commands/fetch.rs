//! `lumen fetch`: downloads and verifies every file a pipeline reads, and generates nothing.
//! For container image builds and shared cache volumes, so that no model download happens
//! when a service starts. The file list is `weights::pipeline_files`, the same table that
//! generation downloads from and that the missing-weights error names.

use anyhow::Result;

use super::{emit, emit_json};
use crate::cli::{DeviceArg, FetchArgs};
use crate::error::{exit, UsageError};
use crate::generation::PipelineKind;
use crate::hub::{self, client::human_bytes, Fetched};
use crate::weights::{license_lines, pipeline_files, repos_missing, DeviceKind, Repo, WeightsSource};

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub pipeline: PipelineKind,
    /// None: the device this machine would run on.
    pub device: Option<DeviceKind>,
    pub fp16_vae: bool,
    pub revisions: Vec<(String, String)>,
    pub dry_run: bool,
    pub json: bool,
}

impl From<FetchArgs> for FetchOptions {
    fn from(a: FetchArgs) -> Self {
        Self {
            pipeline: a.pipeline.into(),
            device: a.device.map(|d| match d {
                DeviceArg::Cpu => DeviceKind::Cpu,
                DeviceArg::Cuda => DeviceKind::Cuda,
            }),
            fp16_vae: a.fp16_vae,
            revisions: a.revisions,
            dry_run: a.dry_run,
            json: a.json,
        }
    }
}

/// What a run on this machine would use: CUDA in a CUDA build that sees a GPU, else the CPU.
pub fn local_device_kind() -> DeviceKind {
    match crate::device::select_device(false) {
        Ok(d) => DeviceKind::of(&d),
        Err(_) => DeviceKind::Cpu,
    }
}

pub fn run(opts: FetchOptions) -> Result<u8> {
    if opts.pipeline == PipelineKind::Procedural {
        if opts.json {
            emit_json(&serde_json::json!({ "pipeline": "procedural", "files": [] }));
        } else {
            emit("the procedural pipeline reads no model files: nothing to fetch");
        }
        return Ok(exit::OK);
    }
    let device = opts.device.unwrap_or_else(local_device_kind);
    let source = WeightsSource::from_env(None).with_revisions(&opts.revisions);
    let needs = pipeline_files(device, opts.fp16_vae);
    let repos: Vec<Repo> = needs.iter().map(|f| f.repo).collect();
    // Said where files are about to be downloaded (offline, the missing-files message says it;
    // the report lists every repo's licence either way).
    if !opts.dry_run && !source.offline {
        crate::weights::warn_restricted(&repos_missing(&needs, &source.missing(&needs)));
    }
    let wants = source.wants(&needs);
    let files = if source.offline {
        tracing::info!("HF_HUB_OFFLINE is set: verifying the cache {} only", source.cache_dir.display());
        match hub::verify_offline(&source.cache_dir, &wants)? {
            Ok(files) => files,
            Err(problems) => {
                let missing = source.missing(&needs);
                let mut msg = format!(
                    "the cache {} is not usable offline:\n  {}",
                    source.cache_dir.display(),
                    problems.join("\n  ")
                );
                if !missing.is_empty() {
                    msg = source.missing_message(&missing, device, opts.fp16_vae, "HF_HUB_OFFLINE is set");
                }
                return Err(UsageError(msg).into());
            }
        }
    } else {
        let config = hub::client::HubConfig::from_env()?;
        let progress = super::stderr_is_tty() && !opts.json;
        let fetch = hub::FetchOptions { verify_cached: true, dry_run: opts.dry_run, progress };
        hub::fetch(&source.cache_dir, config, &wants, fetch)?
    };
    report(&files, device, &source, &repos, &opts);
    Ok(exit::OK)
}

fn report(files: &[Fetched], device: DeviceKind, source: &WeightsSource, repos: &[Repo], opts: &FetchOptions) {
    let total: u64 = files.iter().map(|f| f.size).sum();
    let sum_of = |status: &str| files.iter().filter(|f| f.status == status).map(|f| f.size).sum::<u64>();
    let (downloaded, missing) = (sum_of("downloaded"), sum_of("missing"));
    if opts.json {
        emit_json(&serde_json::json!({
            "pipeline": "partcrafter",
            "device": device.as_str(),
            "cache": source.cache_dir,
            "dry_run": opts.dry_run,
            "files": files,
            "total_bytes": total,
            "downloaded_bytes": downloaded,
            "missing_bytes": missing,
            "licenses": repos.iter().map(|r| serde_json::json!({
                "repo": r.id, "license": r.license.id, "terms": r.license.terms,
                "commercial_use": r.license.commercial_use,
            })).collect::<Vec<_>>(),
        }));
        return;
    }
    for f in files {
        let check = if f.verified { "verified" } else { "" };
        emit(&format!("{:<10} {:<30} {:<48} {:>10}  {check}", f.status, f.repo, f.path, human_bytes(f.size)));
    }
    let mut line = format!(
        "{} files, {} for a {} run, in {}",
        files.len(),
        human_bytes(total),
        device.as_str(),
        source.cache_dir.display()
    );
    if opts.dry_run {
        line.push_str(&format!("; {} to download", human_bytes(missing)));
    } else {
        line.push_str(&format!("; downloaded {} now", human_bytes(downloaded)));
    }
    emit(&line);
    for l in license_lines(repos) {
        emit(&format!("license    {l}"));
    }
}
