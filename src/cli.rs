//! Command-line arguments (clap types only). The work never sees clap: `commands::run`
//! turns these into plain option structs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 some concepts failed, 2 usage or configuration error, 3 preflight failed.
Logs go to stderr, results to stdout (--json for machines). Logs: INFO and up; -q errors only,
-v debug (stage timings, GCS and hub client events), -vv more; RUST_LOG replaces the level choice.
--log-format text|json (LUMEN_LOG_FORMAT): text on a terminal, else json, one object per line
with severity, message, timestamp and the fields of its spans (key, stage, ...), which Cloud
Logging reads from a Cloud Run job's stderr.

Examples:
  lumen generate chair \"office chair\" --pipeline procedural
  lumen pregenerate concepts/top50.json --store gs://my-bucket/shapes-v1 --jobs 4
  lumen fetch --pipeline partcrafter --device cuda
  lumen preflight --store out --json
  lumen stats --store out
  lumen preview --all --store out
  lumen gallery --store out --out gallery";

#[derive(Debug, Parser)]
#[command(
    name = "lumen",
    version,
    about = "Turns text concepts into part-labeled 3D point clouds and stores them as prebaked assets",
    long_about = "Turns text concepts (\"chair\", \"eagle\") into part-labeled 3D point clouds: \
SDXL Turbo draws the object, BriaRMBG removes the background, PartCrafter builds one mesh per part, \
and 2048 surface points with part ids are stored as a lumen.shape/1 asset on local disk or \
Google Cloud Storage. The procedural pipeline builds shapes from primitives without weights or a GPU.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How much is logged on stderr, and in what form (every command).
#[derive(Debug, Args)]
pub struct LogArgs {
    /// More detail on stderr: -v debug events (stage timings, GCS and hub clients), -vv all crates' debug, -vvv trace.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Errors only on stderr (no progress bars); results on stdout are unchanged.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log line format; default: text when stderr is a terminal, json otherwise (Cloud Logging).
    #[arg(long, value_enum, value_name = "FORMAT", global = true, env = "LUMEN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event for a person: the message, "warning:"/"error:" in front by level.
    Text,
    /// One JSON object per line: severity, message, timestamp, target and span fields.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate and store the shapes of one or more concepts.
    #[command(
        after_help = "Examples:\n  lumen generate chair\n  lumen generate \"red sports car\" --parts 6 --seed 7 --force\n  lumen generate eagle --pipeline partcrafter --fallback procedural --json"
    )]
    Generate(GenerateArgs),
    /// Generate every concept of a catalogue that is not stored yet (idempotent, resumable, shardable).
    #[command(
        after_help = "Sharding: --shard I/N, else CLOUD_RUN_TASK_INDEX/CLOUD_RUN_TASK_COUNT (Cloud Run Jobs),\nelse JOB_COMPLETION_INDEX with LUMEN_SHARD_COUNT (Kubernetes Indexed Jobs).\nShards split by key, so two shards never write the same asset; rerun a failed shard as is.\nQuality: --min-quality ok|weak retries a concept under it with derived seeds (--retries N) and keeps the best;\none still under it is stored marked and the run exits 1. --stale regenerates only what an older model or setting made.\n\nExamples:\n  lumen pregenerate concepts/top50.json --pipeline procedural\n  lumen pregenerate concepts/top50.json --store gs://bucket/prefix --shard 0/4 --json\n  lumen pregenerate concepts/top50.json --min-quality ok --retries 3\n  lumen pregenerate concepts/top50.json --stale"
    )]
    Pregenerate(PregenerateArgs),
    /// Check, fast, that the store, device, catalogue, weights and a tiny end-to-end run work.
    #[command(
        after_help = "Exits 3 when any check fails; each check's status is printed (or emitted with --json).\n\nExamples:\n  lumen preflight\n  lumen preflight --store gs://bucket/prefix --weights /models --json\n  lumen preflight --pipeline procedural --goldens tests/goldens"
    )]
    Preflight(PreflightArgs),
    /// Summarise what a store holds: counts, sizes, pipelines, timings, collisions, invalid blobs.
    #[command(
        after_help = "Exits 2 when the store holds invalid blobs (they are listed, never fatal to the report).\nStale: assets whose recorded model revisions or settings differ from what the given pipeline and\nmodel flags would record now (revisions are resolved from the cache or --weights, no weights load).\n\nExamples:\n  lumen stats\n  lumen stats --store gs://bucket/prefix --json\n  lumen stats --pipeline partcrafter --steps 50 --catalog concepts/top50.json\n  lumen stats --repair    # rebuild manifest.json from the stored assets"
    )]
    Stats(StatsArgs),
    /// Download and verify the model files a pipeline needs, without generating anything.
    #[command(
        after_help = "Fetches exactly the files a run reads on the given device (the .fp16 weights for cuda, f32 for cpu) into\nthe Hugging Face cache (HF_HOME / HF_HUB_CACHE), resuming partial downloads and checking every file against\nthe hub's checksum; files already cached are hashed again. With HF_HUB_OFFLINE=1 it only verifies the cache.\nExits 2 when a file is missing offline or the hub refuses it (401/403/404), 1 on network or checksum failures.\n\nExamples:\n  lumen fetch                                  # this machine's device\n  lumen fetch --device cuda                    # in a container build without a GPU\n  lumen fetch --dry-run --json                 # what would be downloaded, and how big\n  lumen fetch --revision stabilityai/sdxl-turbo=main"
    )]
    Fetch(FetchArgs),
    /// Render preview pictures (four views, parts coloured, a legend) of stored assets, or a contact sheet of a store.
    #[command(
        after_help = "Pictures go beside the assets as previews/<key>.png. Exits 2 when an invalid blob was met (it\nis listed, the others are still rendered, as in `lumen stats`), 1 when a named concept is not stored.\n\nExamples:\n  lumen preview chair \"office chair\" --store out\n  lumen preview 3f2a9c0d1e4b5a67        # a key\n  lumen preview --all --store gs://bucket/prefix --json\n  lumen preview --contact-sheet sheet.png   # every asset of the store in one grid"
    )]
    Preview(PreviewArgs),
    /// Write a self-contained static gallery of a store: an index page and a WebGL viewer per asset.
    #[command(
        after_help = "The folder opens from disk (file://): each viewer embeds its asset, nothing is fetched from the\nnetwork. Invalid blobs are listed and shown as invalid. Exits 2 when the store holds invalid\nblobs (the gallery is still written, as `lumen stats` reports them).\n\nExamples:\n  lumen gallery --store out --out gallery\n  lumen gallery --store gs://bucket/prefix --out gallery --page-size 200 --json\n  lumen gallery --store out --out gallery --serve 127.0.0.1:8000"
    )]
    Gallery(GalleryArgs),
    /// Measure the speed of each stage on the pipeline's device (prints a table; never part of the tests).
    #[command(
        after_help = "Each row: device, dtype, median and min after a warm-up, peak memory, and the peer baseline's\ntime and ratio where the row ran at the baseline's size. Released sizes on CUDA, reduced on the CPU.\n\nExamples:\n  lumen bench --list\n  lumen bench sdxl rmbg --iters 3\n  lumen bench concept --json\n  lumen bench concept --cpu --full"
    )]
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// f32 weights.
    Cpu,
    /// f16 weights where the repo has them (the SDXL VAE stays f32).
    Cuda,
}

/// `REPO=REV` for `--revision`.
fn revision_arg(s: &str) -> Result<(String, String), String> {
    crate::weights::parse_revision(s).map_err(|e| e.0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PipelineArg {
    /// SDXL Turbo → BriaRMBG → PartCrafter (needs the model weights; fast on a GPU).
    Partcrafter,
    /// Primitive assemblies: no weights, no GPU, deterministic.
    Procedural,
}

#[derive(Debug, Args)]
pub struct StoreArg {
    /// Where assets go: a folder path or file://PATH, gs://BUCKET/PREFIX, or memory://.
    #[arg(long, default_value = "out", env = "LUMEN_STORE")]
    pub store: String,
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Folder holding the model repos as sub-folders (sdxl-turbo/, RMBG-1.4/, PartCrafter/), instead of the Hugging Face cache.
    #[arg(long, value_name = "DIR", env = "LUMEN_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// PartCrafter denoising steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub steps: u32,
    /// PartCrafter classifier-free guidance scale.
    #[arg(long, default_value_t = 7.0)]
    pub guidance: f64,
    /// Latent tokens per part (PartCrafter was trained with 1024; fewer is faster and coarser).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub tokens: u32,
    /// SDXL Turbo steps (1 is what Turbo is made for; up to 4).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4))]
    pub sd_steps: u32,
    /// Surface-extraction lattice depth: 2^DEPTH cells per axis (8 = 256³; lower is faster and
    /// coarser, parts thinner than a cell can be lost).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(3..=10))]
    pub extract_depth: u32,
    /// Save the SDXL image, the mask and the prepared image beside the asset (images/<key>/).
    #[arg(long)]
    pub keep_images: bool,
    /// Decode SDXL latents with madebyollin/sdxl-vae-fp16-fix in half precision (CUDA) instead
    /// of the checkpoint's VAE in f32.
    #[arg(long)]
    pub fp16_vae: bool,
    /// Run on the CPU even in a CUDA build.
    #[arg(long)]
    pub cpu: bool,
    /// Read REPO at revision REV (branch, tag or commit) instead of the pinned one; repeatable.
    /// Also LUMEN_REVISION=REPO=REV,… for every command.
    #[arg(long = "revision", value_name = "REPO=REV", value_parser = revision_arg)]
    pub revisions: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MinQualityArg {
    /// Accept weak shapes; retry bad ones.
    Weak,
    /// Accept only ok shapes; retry weak and bad ones.
    Ok,
}

#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Retry a concept whose verdict is under this (with the next derived seed), keeping the
    /// best attempt; one still under it is stored marked as such and makes the exit code 1.
    #[arg(long, value_enum, value_name = "weak|ok")]
    pub min_quality: Option<MinQualityArg>,
    /// Extra attempts per concept under --min-quality.
    #[arg(long, default_value_t = 2, requires = "min_quality", value_parser = clap::value_parser!(u32).range(0..=20))]
    pub retries: u32,
    /// JSON file overriding quality thresholds (any subset of the fields the README lists).
    #[arg(long, value_name = "FILE.json", env = "LUMEN_QUALITY_THRESHOLDS")]
    pub quality_thresholds: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// Pipeline whose files to fetch (`procedural` needs none).
    #[arg(long, value_enum, default_value = "partcrafter")]
    pub pipeline: PipelineArg,
    /// Device the runs will use; default: this machine's (cuda in a CUDA build with a GPU, else cpu).
    #[arg(long, value_enum)]
    pub device: Option<DeviceArg>,
    /// Also fetch madebyollin/sdxl-vae-fp16-fix for `--fp16-vae` runs (instead of sdxl-turbo's VAE).
    #[arg(long)]
    pub fp16_vae: bool,
    /// Fetch REPO at revision REV instead of the pinned one; repeatable.
    #[arg(long = "revision", value_name = "REPO=REV", value_parser = revision_arg)]
    pub revisions: Vec<(String, String)>,
    /// Ask the hub what is missing and how big it is; download nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the file list as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Concept texts, e.g. chair "office chair" eagle.
    #[arg(required = true, value_name = "CONCEPT")]
    pub concepts: Vec<String>,
    /// Number of parts (1–16); default: the catalogue's, else the template's or 4.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..))]
    pub parts: Option<u64>,
    /// Random seed; default: derived from the concept, so reruns are reproducible.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Points per shape.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub points: u32,
    #[command(flatten)]
    pub store: StoreArg,
    /// Which pipeline makes the shape.
    #[arg(long, value_enum, default_value = "partcrafter")]
    pub pipeline: PipelineArg,
    /// Pipeline to use for a concept when the chosen one cannot run or fails.
    #[arg(long, value_enum)]
    pub fallback: Option<PipelineArg>,
    /// Overwrite assets that are already stored.
    #[arg(long)]
    pub force: bool,
    /// Also store a preview picture of each asset (previews/<key>.png; see `lumen preview`).
    #[arg(long)]
    pub preview: bool,
    /// Print results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Catalogue used for part counts, seeds and part names of known concepts.
    #[arg(long, value_name = "CATALOG.json", default_value = "concepts/top50.json")]
    pub catalog: PathBuf,
    #[command(flatten)]
    pub quality: QualityArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct PregenerateArgs {
    /// Catalogue file: a JSON array of {"name", "parts"?, "seed"?, "aliases"?, "part_names"?}.
    #[arg(value_name = "CATALOG.json")]
    pub catalog: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(long, value_enum, default_value = "partcrafter")]
    pub pipeline: PipelineArg,
    /// Pipeline to use for a concept when the chosen one cannot run or fails.
    #[arg(long, value_enum)]
    pub fallback: Option<PipelineArg>,
    /// This machine's shard, INDEX/COUNT (e.g. 0/4).
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// CPU workers (marching cubes, sampling, encoding, previews, store writes) beside the one
    /// device worker that runs the model stages; default one per core. Never more device memory.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: Option<u32>,
    /// Points per shape.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub points: u32,
    /// Regenerate and overwrite concepts that are already stored.
    #[arg(long)]
    pub force: bool,
    /// Regenerate (overwrite) only the stored assets whose recorded model revisions or
    /// settings differ from this run's (see `lumen stats`); missing ones are generated as usual.
    #[arg(long, conflicts_with = "force")]
    pub stale: bool,
    /// Also store a preview picture of each asset (previews/<key>.png; see `lumen preview`).
    #[arg(long)]
    pub preview: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub quality: QualityArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Folder holding the model repos (see `generate --help`).
    #[arg(long, value_name = "DIR", env = "LUMEN_WEIGHTS")]
    pub weights: Option<PathBuf>,
    /// Pipeline to check; `procedural` skips the model checks.
    #[arg(long, value_enum, default_value = "partcrafter")]
    pub pipeline: PipelineArg,
    /// Catalogue to validate.
    #[arg(long, value_name = "CATALOG.json", default_value = "concepts/top50.json")]
    pub catalog: PathBuf,
    /// Run on the CPU even in a CUDA build.
    #[arg(long)]
    pub cpu: bool,
    /// Also run every model's golden cases from this folder (tests/goldens) on the device and
    /// compare with the reference's outputs: proves this GPU, driver and build compute the
    /// reference's function.
    #[arg(long, value_name = "DIR")]
    pub goldens: Option<PathBuf>,
    /// Precisions for --goldens (comma-separated); default: f32 and the pipeline's dtype.
    #[arg(long, value_enum, value_delimiter = ',', requires = "goldens")]
    pub goldens_dtype: Vec<DtypeArg>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DtypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(long)]
    pub json: bool,
    /// Rebuild manifest.json from the valid assets in the store.
    #[arg(long)]
    pub repair: bool,
    /// Count as stale what this pipeline would not make now (default: each asset against its
    /// own pipeline's current settings).
    #[arg(long, value_enum)]
    pub pipeline: Option<PipelineArg>,
    /// Points per shape a current run makes.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(16..=1_000_000))]
    pub points: u32,
    /// Compare part counts and seeds with this catalogue too.
    #[arg(long, value_name = "CATALOG.json")]
    pub catalog: Option<PathBuf>,
    /// Weakest assets to list.
    #[arg(long, default_value_t = 10)]
    pub weakest: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Args)]
pub struct PreviewArgs {
    /// Concept texts or 16-hex-digit keys of stored assets.
    #[arg(value_name = "CONCEPT|KEY")]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub store: StoreArg,
    /// Every asset in the store.
    #[arg(long, conflicts_with = "targets")]
    pub all: bool,
    /// Also write a contact sheet (every chosen asset's three-quarter view in a grid; the whole
    /// store when no concept is named) to this local PNG file.
    #[arg(long, value_name = "FILE.png")]
    pub contact_sheet: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GalleryArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// Folder to write (created; files lumen wrote there before are replaced).
    #[arg(long, value_name = "DIR", default_value = "gallery")]
    pub out: PathBuf,
    /// Assets per index page.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,
    /// After writing, serve the folder over HTTP on this address (e.g. 127.0.0.1:8000) until stopped.
    #[arg(long, value_name = "ADDR")]
    pub serve: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Suites to run (default: all). `lumen bench --list` names them.
    pub suites: Vec<String>,
    /// Timed repetitions after one warm-up.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Reduced sizes (the default on the CPU).
    #[arg(long, conflicts_with = "full")]
    pub quick: bool,
    /// Released sizes on the CPU too (the default on CUDA; hours on a small CPU).
    #[arg(long)]
    pub full: bool,
    /// Run on the CPU even in a CUDA build.
    #[arg(long)]
    pub cpu: bool,
    /// List the suites and exit.
    #[arg(long)]
    pub list: bool,
    #[arg(long)]
    pub json: bool,
}
