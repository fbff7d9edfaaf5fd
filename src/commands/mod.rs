//! The subcommands. `run` turns parsed arguments into plain option structs and dispatches;
//! each command returns its exit code, and errors bubble up to `main` which picks 2 for
//! usage/configuration errors and 1 otherwise.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;

use crate::cli::{Cli, Command, MinQualityArg, ModelArgs, PipelineArg, QualityArgs};
use crate::generation::PipelineKind;
use crate::pipeline::partcrafter::ModelOptions;
use crate::quality::{MinQuality, QualityOptions, RetryPolicy, Thresholds};

pub mod bench;
pub mod fetch;
pub mod gallery;
pub mod generate;
pub mod preflight;
pub mod pregenerate;
pub mod preview;
pub mod stats;

pub fn run(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Generate(a) => generate::run(generate::GenerateOptions::from_args(a)?),
        Command::Pregenerate(a) => pregenerate::run(pregenerate::PregenerateOptions::from_args(a)?),
        Command::Preflight(a) => preflight::run(preflight::PreflightOptions::from_args(a)),
        Command::Stats(a) => stats::run(stats::StatsOptions::from_args(a)?),
        Command::Fetch(a) => fetch::run(fetch::FetchOptions::from(a)),
        Command::Preview(a) => preview::run(preview::PreviewOptions::from_args(a)?),
        Command::Gallery(a) => gallery::run(gallery::GalleryOptions::from_args(a)),
        Command::Bench(a) => bench::run(a),
    }
}

impl From<PipelineArg> for PipelineKind {
    fn from(p: PipelineArg) -> Self {
        match p {
            PipelineArg::Partcrafter => Self::PartCrafter,
            PipelineArg::Procedural => Self::Procedural,
        }
    }
}

impl From<&ModelArgs> for ModelOptions {
    fn from(m: &ModelArgs) -> Self {
        ModelOptions {
            weights_dir: m.weights.clone(),
            steps: m.steps as usize,
            guidance: m.guidance,
            tokens: m.tokens as usize,
            sd_steps: m.sd_steps as usize,
            keep_images: m.keep_images,
            force_cpu: m.cpu,
            extract_depth: m.extract_depth,
            fp16_vae: m.fp16_vae,
            revisions: m.revisions.clone(),
            // generate and pregenerate fetch missing weights (unless HF_HUB_OFFLINE is set).
            download: crate::weights::DownloadOptions { enabled: true, progress: stderr_is_tty() },
        }
    }
}

impl QualityArgs {
    /// The thresholds (defaults, or the file's overrides: a bad file is exit 2) and the gate.
    pub fn options(&self) -> Result<QualityOptions> {
        let thresholds = match &self.quality_thresholds {
            Some(path) => Thresholds::load(path)?,
            None => Thresholds::default(),
        };
        let gate = self.min_quality.map(|m| match m {
            MinQualityArg::Weak => MinQuality::Weak,
            MinQualityArg::Ok => MinQuality::Ok,
        });
        let retries = if gate.is_some() { self.retries as usize } else { 0 };
        Ok(QualityOptions { thresholds, policy: RetryPolicy { gate, retries } })
    }
}

/// Set once stdout is found closed: nothing more is printed.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Data on stdout. A closed pipe (`lumen generate a b | head -1`) stops the output, not the
/// work: it is remembered, nothing more is printed, and the command finishes (manifest,
/// exit code) as it would have.
pub fn emit(text: &str) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    // With every progress bar cleared (a line on a terminal never tears a spinner); any
    // warning after, outside that lock.
    let written = crate::progress::suspend(|| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}").and_then(|_| out.flush())
    });
    if let Err(e) = written {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::warn!("stdout: {e}; printing no more results");
        }
    }
}

pub fn emit_json(value: &serde_json::Value) {
    emit(&serde_json::to_string_pretty(value).expect("JSON value serialises"));
}

pub fn stderr_is_tty() -> bool {
    std::io::stderr().is_terminal()
}
