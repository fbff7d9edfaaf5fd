//! Where model weights come from, which files a run needs, and how they are opened.
//!
//! Resolution order, the same for every stage:
//! 1. `--weights DIR`: `DIR/<repo name>/…` (e.g. `DIR/PartCrafter/transformer/…`), a plain
//!    folder laid out like the hub repo; a folder that *is* the repo also works when only
//!    one repo is needed. Never downloads.
//! 2. The Hugging Face cache (the Python client's layout, shared with Python tools):
//!    `models--{owner}--{name}/refs/{revision}` → `snapshots/{commit}/…`.
//! 3. The Hub: files missing from the cache are downloaded into it ([`crate::hub`]), unless
//!    `HF_HUB_OFFLINE` is set, and only the files of [`pipeline_files`] for the device the run
//!    uses. The same table drives `lumen fetch` and the missing-weights message, so the three
//!    never disagree about what a pipeline reads.
//!
//! Revisions are pinned to audited commits where one is known and can be overridden with
//! `--revision REPO=REV` or `LUMEN_REVISION`.
//!
//! Opening: safetensors files are memory-mapped into a candle `VarBuilder`; sharded
//! checkpoints are followed through their `*.safetensors.index.json`. Errors name the
//! file or tensor and say how to fetch what is missing; weights that cannot be found are a
//! configuration error (exit 2).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::UsageError;
use crate::hub::{self, Want};

/// A Hugging Face model repository the pipeline reads, at its default revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repo {
    pub id: &'static str,
    pub revision: &'static str,
    /// The licence its model card names.
    pub license: License,
}

/// A model's licence as its model card gives it: the card's licence id and what it means
/// for a user of lumen in one sentence (shown by `fetch` and `preflight`, recorded in assets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct License {
    pub id: &'static str,
    pub terms: &'static str,
    /// False when the card restricts use to non-commercial purposes without an agreement.
    pub commercial_use: bool,
}

/// stabilityai/sdxl-turbo's card: `license: other`, `license_name: sai-nc-community`.
pub const SAI_NC_COMMUNITY: License = License {
    id: "sai-nc-community",
    terms: "Stability AI Non-Commercial Research Community License: commercial use needs Stability AI's commercial licence (see the model card)",
    commercial_use: false,
};
/// briaai/RMBG-1.4's card: `license: other`, `license_name: bria-rmbg-1.4`.
pub const BRIA_RMBG_1_4: License = License {
    id: "bria-rmbg-1.4",
    terms: "BRIA RMBG-1.4 licence: non-commercial use only; commercial use needs an agreement with BRIA AI",
    commercial_use: false,
};
/// wgsxm/PartCrafter's and madebyollin/sdxl-vae-fp16-fix's cards: `license: mit`.
pub const MIT: License = License { id: "mit", terms: "MIT licence", commercial_use: true };

impl Repo {
    /// Last path component of the id: the sub-folder name under `--weights DIR`.
    pub fn name(&self) -> &'static str {
        self.id.rsplit('/').next().unwrap_or(self.id)
    }
}

/// No audited commit is known for these two; they follow `main`, and the first download
/// records the commit in `refs/main` so later files of the repo come from the same one.
pub const SDXL_TURBO: Repo = Repo { id: "stabilityai/sdxl-turbo", revision: "main", license: SAI_NC_COMMUNITY };
pub const SDXL_VAE_FP16_FIX: Repo = Repo { id: "madebyollin/sdxl-vae-fp16-fix", revision: "main", license: MIT };
/// Audited revisions (the commits whose files were checked, see the README's weights section).
pub const RMBG: Repo =
    Repo { id: "briaai/RMBG-1.4", revision: "2ceba5a5efaec153162aedea169f76caf9b46cf8", license: BRIA_RMBG_1_4 };
pub const PARTCRAFTER: Repo =
    Repo { id: "wgsxm/PartCrafter", revision: "69a0ffc1dad5e48e7e5ed91c0609f2b1276eb31f", license: MIT };

pub const ALL_REPOS: [Repo; 4] = [SDXL_TURBO, SDXL_VAE_FP16_FIX, RMBG, PARTCRAFTER];

/// One line per repo: its licence and, where the card restricts use, what that means.
pub fn license_lines(repos: &[Repo]) -> Vec<String> {
    repos.iter().map(|r| format!("{}: {} ({})", r.id, r.license.id, r.license.terms)).collect()
}

/// The repos of `needs` with a file in `missing` (what [`WeightsSource::missing`] lists):
/// the ones a download is about to fetch.
pub fn repos_missing(needs: &[RepoFiles], missing: &[(String, String, String)]) -> Vec<Repo> {
    needs.iter().map(|f| f.repo).filter(|r| missing.iter().any(|(id, _, _)| id == r.id)).collect()
}

/// Warns, where a user downloads a model, that its card restricts commercial use.
pub fn warn_restricted(repos: &[Repo]) {
    for r in repos.iter().filter(|r| !r.license.commercial_use) {
        tracing::warn!(
            repo = r.id,
            license = r.license.id,
            "{} is licensed {}: {}",
            r.id,
            r.license.id,
            r.license.terms
        );
    }
}

/// The repos a pipeline run reads (`pipeline_files`), in order.
pub fn pipeline_repos(device: DeviceKind, fp16_vae: bool) -> Vec<Repo> {
    pipeline_files(device, fp16_vae).into_iter().map(|f| f.repo).collect()
}

/// The repo lumen reads under `id`, if any.
pub fn repo_by_id(id: &str) -> Option<Repo> {
    ALL_REPOS.iter().copied().find(|r| r.id == id)
}

/// The kind of device a run computes on; it decides which precision of the weights is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn of(device: &Device) -> Self {
        if device.is_cuda() {
            Self::Cuda
        } else {
            Self::Cpu
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
        }
    }
}

/// The files one repo contributes to a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoFiles {
    pub repo: Repo,
    pub files: Vec<&'static str>,
}

/// SDXL Turbo files every run reads: the scheduler and both tokenizers (vocab + merges; the
/// released repo has no `tokenizer.json`).
const SDXL_COMMON: &[&str] = &[
    "scheduler/scheduler_config.json",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
];
/// Text encoders and UNet where the stage runs in f32 (CPU).
const SDXL_F32: &[&str] = &[
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
];
/// The same in f16 (CUDA): the repo's `variant="fp16"` files, half the bytes.
const SDXL_F16: &[&str] = &[
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
];
/// SDXL's VAE overflows in f16 (`force_upcast`), so it runs in f32 on every device.
const SDXL_VAE: &[&str] = &["vae/config.json", "vae/diffusion_pytorch_model.safetensors"];

/// What the SDXL Turbo stage reads (`models::sdxl::SdxlTurbo::load_dirs`) on `device`; without
/// its own VAE when the fp16-fix VAE replaces it. Never the single-file checkpoints
/// (`sd_xl_turbo_1.0*.safetensors`) or the ONNX exports.
pub fn sdxl_turbo_files(device: DeviceKind, fp16_vae: bool) -> Vec<&'static str> {
    let weights = match device {
        DeviceKind::Cpu => SDXL_F32,
        DeviceKind::Cuda => SDXL_F16,
    };
    let vae: &[&str] = if fp16_vae { &[] } else { SDXL_VAE };
    [SDXL_COMMON, weights, vae].concat()
}

/// The fp16-fix VAE (`--fp16-vae`): one f32 file, run in f16 on CUDA.
pub fn sdxl_vae_fp16_fix_files() -> Vec<&'static str> {
    vec!["config.json", "diffusion_pytorch_model.safetensors"]
}

/// BriaRMBG runs in f32 on every device; the repo has no other precision. Not `model.pth`,
/// `pytorch_model.bin` or `onnx/`.
pub fn rmbg_files() -> Vec<&'static str> {
    vec!["config.json", "model.safetensors"]
}

/// PartCrafter ships one 16-bit file per component and no variants: the same files for
/// every device (converted to the run's dtype on load).
pub fn partcrafter_files() -> Vec<&'static str> {
    vec![
        "feature_extractor_dinov2/preprocessor_config.json",
        "image_encoder_dinov2/config.json",
        "image_encoder_dinov2/model.safetensors",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
}

/// Every file the `partcrafter` pipeline reads on `device`, repo by repo.
pub fn pipeline_files(device: DeviceKind, fp16_vae: bool) -> Vec<RepoFiles> {
    let mut out = vec![RepoFiles { repo: SDXL_TURBO, files: sdxl_turbo_files(device, fp16_vae) }];
    if fp16_vae {
        out.push(RepoFiles { repo: SDXL_VAE_FP16_FIX, files: sdxl_vae_fp16_fix_files() });
    }
    out.push(RepoFiles { repo: RMBG, files: rmbg_files() });
    out.push(RepoFiles { repo: PARTCRAFTER, files: partcrafter_files() });
    out
}

/// Parses `REPO=REV` (`--revision`, `LUMEN_REVISION`); the repo must be one lumen reads.
pub fn parse_revision(s: &str) -> Result<(String, String), UsageError> {
    let (repo, rev) = s.split_once('=').filter(|(r, v)| !r.is_empty() && !v.trim().is_empty()).ok_or_else(|| {
        UsageError(format!("--revision {s:?}: expected REPO=REVISION, e.g. stabilityai/sdxl-turbo=main"))
    })?;
    if !ALL_REPOS.iter().any(|r| r.id == repo) {
        let known: Vec<&str> = ALL_REPOS.iter().map(|r| r.id).collect();
        return Err(UsageError(format!(
            "--revision {s:?}: lumen reads no repo {repo:?} (it reads {})",
            known.join(", ")
        )));
    }
    Ok((repo.to_string(), rev.trim().to_string()))
}

/// Where to look for weights: built once from the command line and the environment.
#[derive(Debug, Clone)]
pub struct WeightsSource {
    pub weights_dir: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// Revision overrides by repo id.
    pub revisions: BTreeMap<String, String>,
}

/// A resolved repository: a local folder holding its files, and the commit it came from.
#[derive(Debug, Clone)]
pub struct RepoDir {
    pub repo: Repo,
    pub dir: PathBuf,
    /// The 40-hex commit when read from the hub cache; `local` for a `--weights` folder.
    pub commit: String,
}

/// How a run that may download shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct DownloadOptions {
    /// Download what is missing (false: report it, as offline does).
    pub enabled: bool,
    /// Progress bars on stderr.
    pub progress: bool,
}

impl WeightsSource {
    /// From `--weights` and the usual environment variables (same order as the Python client):
    /// `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`,
    /// `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE`; revision overrides from `LUMEN_REVISION`
    /// (`REPO=REV`, comma-separated).
    pub fn from_env(weights_dir: Option<PathBuf>) -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|h| h.join("huggingface").join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| is_truthy(&v));
        let revisions = std::env::var("LUMEN_REVISION")
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .filter_map(|s| match parse_revision(s.trim()) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!("LUMEN_REVISION ignored: {e}");
                    None
                }
            })
            .collect();
        Self { weights_dir, cache_dir, offline, revisions }
    }

    /// Adds `--revision` overrides (they win over `LUMEN_REVISION`).
    pub fn with_revisions(mut self, overrides: &[(String, String)]) -> Self {
        self.revisions.extend(overrides.iter().cloned());
        self
    }

    /// The revision used for `repo`: an override, else the pinned default.
    pub fn revision(&self, repo: Repo) -> String {
        self.revisions.get(repo.id).cloned().unwrap_or_else(|| repo.revision.to_string())
    }

    /// The hub requests for `needs` at the effective revisions.
    pub fn wants(&self, needs: &[RepoFiles]) -> Vec<Want> {
        needs
            .iter()
            .map(|n| Want {
                repo: n.repo.id.to_string(),
                revision: self.revision(n.repo),
                files: n.files.iter().map(|f| f.to_string()).collect(),
            })
            .collect()
    }

    /// `(repo, revision, path)` of each needed file the cache does not hold.
    pub fn missing(&self, needs: &[RepoFiles]) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for want in self.wants(needs) {
            let (_, etags) = hub::cached_state(&self.cache_dir, &want);
            for (f, e) in want.files.iter().zip(etags) {
                if e.is_none() {
                    out.push((want.repo.clone(), want.revision.clone(), f.clone()));
                }
            }
        }
        out
    }

    /// Makes every file the `partcrafter` pipeline reads on `device` present in the cache:
    /// nothing to do with `--weights DIR` or when all are cached; otherwise downloads them,
    /// or, offline, fails with the list of every missing file and the command that fetches it.
    pub fn ensure(&self, device: DeviceKind, fp16_vae: bool, download: DownloadOptions) -> Result<()> {
        if self.weights_dir.is_some() {
            return Ok(());
        }
        let needs = pipeline_files(device, fp16_vae);
        let missing = self.missing(&needs);
        if missing.is_empty() {
            return Ok(());
        }
        if self.offline || !download.enabled {
            let why = if self.offline { "HF_HUB_OFFLINE is set" } else { "this command does not download" };
            return Err(UsageError(self.missing_message(&missing, device, fp16_vae, why)).into());
        }
        warn_restricted(&repos_missing(&needs, &missing));
        let config = hub::client::HubConfig::from_env()?;
        let opts = hub::FetchOptions { progress: download.progress, ..Default::default() };
        hub::fetch(&self.cache_dir, config, &self.wants(&needs), opts)?;
        Ok(())
    }

    /// The `lumen fetch` command line that gets exactly what a run needs.
    pub fn fetch_command(&self, device: DeviceKind, fp16_vae: bool) -> String {
        let mut cmd = format!("lumen fetch --pipeline partcrafter --device {}", device.as_str());
        if fp16_vae {
            cmd.push_str(" --fp16-vae");
        }
        for (repo, rev) in &self.revisions {
            cmd.push_str(&format!(" --revision {repo}={rev}"));
        }
        cmd
    }

    /// Every missing file of every repo, and how to get exactly those.
    pub fn missing_message(
        &self,
        missing: &[(String, String, String)],
        device: DeviceKind,
        fp16_vae: bool,
        why: &str,
    ) -> String {
        let mut by_repo: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        for (repo, rev, path) in missing {
            by_repo.entry((repo, rev)).or_default().push(path);
        }
        let mut msg = format!(
            "{} model file(s) for a {} run are not in the Hugging Face cache {} and {why}:\n",
            missing.len(),
            device.as_str(),
            self.cache_dir.display()
        );
        for ((repo, rev), files) in &by_repo {
            msg.push_str(&format!("  {repo} (revision {rev}): {}\n", files.join(", ")));
        }
        msg.push_str(&format!(
            "Fetch exactly these where the Hub is reachable with `{}` (HF_HUB_OFFLINE unset), then use that cache \
             here (same HF_HOME / HF_HUB_CACHE, or copy it with symlinks preserved: cp -a); with the Python client:\n",
            self.fetch_command(device, fp16_vae)
        ));
        for ((repo, rev), files) in &by_repo {
            msg.push_str(&format!("  hf download {repo} {} --revision {rev}\n", files.join(" ")));
        }
        for (repo, _) in by_repo.keys() {
            if let Some(r) = repo_by_id(repo).filter(|r| !r.license.commercial_use) {
                msg.push_str(&format!("Licence: {} is {}: {}\n", r.id, r.license.id, r.license.terms));
            }
        }
        msg.trim_end().to_string()
    }

    /// Finds the local folder of `repo` that contains `required` (a file path inside the repo
    /// used to recognise a usable copy, e.g. `model.safetensors` or `transformer/config.json`).
    /// Never downloads: [`ensure`](Self::ensure) does, before the stages load.
    pub fn resolve(&self, repo: Repo, required: &str) -> Result<RepoDir> {
        if let Some(dir) = &self.weights_dir {
            for candidate in [dir.join(repo.name()), dir.join(repo.id), dir.clone()] {
                if candidate.join(required).is_file() {
                    return Ok(RepoDir { repo, dir: candidate, commit: "local".into() });
                }
            }
            return Err(UsageError(format!(
                "weights for {} not found under --weights {}: expected {}/{}/{required}",
                repo.id,
                dir.display(),
                dir.display(),
                repo.name()
            ))
            .into());
        }
        if let Some(found) = self.lookup_cache(repo, required)? {
            return Ok(found);
        }
        let revision = self.revision(repo);
        Err(UsageError(format!(
            "{} (revision {revision}) has no {required} in the Hugging Face cache {}; \
             `lumen fetch --pipeline partcrafter` downloads what the pipeline needs",
            repo.id,
            self.cache_dir.display()
        ))
        .into())
    }

    /// Looks the repo up in the hub cache without touching the network.
    fn lookup_cache(&self, repo: Repo, required: &str) -> Result<Option<RepoDir>> {
        let cache = hub::cache::RepoCache::new(&self.cache_dir, repo.id);
        let Some(commit) = cache.commit_for(&self.revision(repo)) else { return Ok(None) };
        let dir = cache.snapshot_dir(&commit);
        let file = dir.join(required);
        if file.is_file() {
            return Ok(Some(RepoDir { repo, dir, commit }));
        }
        if file.symlink_metadata().is_ok() {
            bail!(
                "hub cache entry {} is a broken link (was the cache copied without its blobs/? copy it with symlinks preserved)",
                file.display()
            );
        }
        Ok(None)
    }
}

/// `HF_HUB_OFFLINE` values the Python client treats as true.
fn is_truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

/// The safetensors files of one model folder: `model.safetensors`,
/// `diffusion_pytorch_model.safetensors`, or the shards named by an index json.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for index in ["model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json"] {
        let index = dir.join(index);
        if index.is_file() {
            let text = std::fs::read_to_string(&index)?;
            let json: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map =
                json["weight_map"].as_object().with_context(|| format!("{} has no weight_map", index.display()))?;
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            return Ok(shards.into_iter().map(|s| dir.join(s)).collect());
        }
    }
    let mut files: Vec<PathBuf> = ["model.safetensors", "diffusion_pytorch_model.safetensors"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect();
    if files.is_empty() {
        // Any single safetensors file (e.g. an fp16 variant) is accepted as the checkpoint.
        if let Ok(rd) = std::fs::read_dir(dir) {
            files = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
        }
    }
    if files.is_empty() {
        bail!("no .safetensors checkpoint in {}", dir.display());
    }
    Ok(files.into_iter().take(1).collect())
}

/// Opens safetensors files as a `VarBuilder` after checking each file's header, so that a
/// truncated or corrupt download is reported by name instead of as a panic deep in a model.
pub fn open_safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    for f in files {
        check_safetensors_file(f)?;
    }
    // SAFETY: the files are memory-mapped read-only; lumen never writes to them while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) }
        .with_context(|| format!("opening {}", display_list(files)))?;
    Ok(vb)
}

/// Opens the checkpoint of a model folder (`dir` holds `config.json` and its safetensors).
pub fn open_model_dir(dir: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let files = safetensors_files(dir)?;
    open_safetensors(&files, dtype, device)
}

/// Reads and parses a model folder's `config.json` into the model's config struct.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} does not match the expected configuration", path.display()))
}

/// Validates a safetensors header and that every tensor's bytes lie inside the file.
pub fn check_safetensors_file(path: &Path) -> Result<HashMap<String, (safetensors::Dtype, Vec<usize>)>> {
    let file = std::fs::File::open(path).with_context(|| format!("weights file {} is missing", path.display()))?;
    // SAFETY: read-only map of a file lumen does not modify.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&mmap)
        .map_err(|e| anyhow::anyhow!("weights file {} is corrupt or truncated: {e}", path.display()))?;
    Ok(st.tensors().into_iter().map(|(name, view)| (name, (view.dtype(), view.shape().to_vec()))).collect())
}

fn display_list(files: &[PathBuf]) -> String {
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    /// A cache laid out as the Python client writes it: blobs named by etag, relative
    /// symlinks from `snapshots/<commit>/…`, `refs/main` holding the commit (a pinned repo's
    /// snapshot is its pinned commit).
    fn hub_cache(root: &Path, repo: Repo, files: &[(&str, &[u8])]) -> String {
        let commit = if hub::cache::is_commit_hash(repo.revision) { repo.revision } else { COMMIT };
        let base = root.join(format!("models--{}", repo.id.replace('/', "--")));
        std::fs::create_dir_all(base.join("blobs")).unwrap();
        std::fs::create_dir_all(base.join("refs")).unwrap();
        std::fs::write(base.join("refs/main"), COMMIT).unwrap();
        for (i, (path, bytes)) in files.iter().enumerate() {
            let etag = format!("etag{i:04}");
            std::fs::write(base.join("blobs").join(&etag), bytes).unwrap();
            let link = base.join("snapshots").join(commit).join(path);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            let depth = path.matches('/').count() + 2;
            let target = format!("{}blobs/{etag}", "../".repeat(depth));
            symlink(target, &link).unwrap();
        }
        commit.to_string()
    }

    fn source(cache: &Path, weights_dir: Option<PathBuf>) -> WeightsSource {
        WeightsSource { weights_dir, cache_dir: cache.to_path_buf(), offline: true, revisions: BTreeMap::new() }
    }

    #[test]
    fn resolves_the_python_clients_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        hub_cache(tmp.path(), SDXL_TURBO, &[("unet/config.json", b"{}")]);
        let found = source(tmp.path(), None).resolve(SDXL_TURBO, "unet/config.json").unwrap();
        assert_eq!(found.commit, COMMIT, "a branch resolves through refs/main");
        let pinned = hub_cache(tmp.path(), RMBG, &[("model.safetensors", b"x"), ("config.json", b"{}")]);
        let found = source(tmp.path(), None).resolve(RMBG, "model.safetensors").unwrap();
        assert_eq!(found.commit, pinned, "a pinned repo is read at its commit");
        assert_eq!(std::fs::read(found.dir.join("model.safetensors")).unwrap(), b"x");
        // A nested file resolves through its relative link too.
        hub_cache(tmp.path(), PARTCRAFTER, &[("transformer/config.json", b"{\"a\":1}")]);
        let pc = source(tmp.path(), None).resolve(PARTCRAFTER, "transformer/config.json").unwrap();
        assert_eq!(std::fs::read(pc.dir.join("transformer/config.json")).unwrap(), b"{\"a\":1}");
    }

    #[test]
    fn weights_dir_wins_and_missing_weights_are_usage_errors() {
        let tmp = tempfile::tempdir().unwrap();
        hub_cache(tmp.path(), RMBG, &[("model.safetensors", b"cache")]);
        let dir = tmp.path().join("models");
        std::fs::create_dir_all(dir.join("RMBG-1.4")).unwrap();
        std::fs::write(dir.join("RMBG-1.4/model.safetensors"), b"local").unwrap();
        let found = source(tmp.path(), Some(dir.clone())).resolve(RMBG, "model.safetensors").unwrap();
        assert_eq!(found.commit, "local");
        assert_eq!(std::fs::read(found.dir.join("model.safetensors")).unwrap(), b"local");

        let err = source(tmp.path(), Some(dir)).resolve(SDXL_TURBO, "unet/config.json").unwrap_err();
        assert!(crate::error::is_usage(&err) && err.to_string().contains("sdxl-turbo"), "{err:#}");
        let err = source(&tmp.path().join("empty"), None).resolve(SDXL_TURBO, "unet/config.json").unwrap_err();
        assert!(crate::error::is_usage(&err) && err.to_string().contains("lumen fetch"), "{err:#}");
    }

    #[test]
    fn the_file_table_picks_the_precision_of_each_device() {
        let cpu = pipeline_files(DeviceKind::Cpu, false);
        let cuda = pipeline_files(DeviceKind::Cuda, false);
        let ids = |v: &[RepoFiles]| v.iter().map(|r| r.repo.id).collect::<Vec<_>>();
        assert_eq!(ids(&cpu), ["stabilityai/sdxl-turbo", "briaai/RMBG-1.4", "wgsxm/PartCrafter"]);
        let (sd_cpu, sd_cuda) = (&cpu[0].files, &cuda[0].files);
        assert!(sd_cpu.contains(&"unet/diffusion_pytorch_model.safetensors"));
        assert!(sd_cuda.contains(&"unet/diffusion_pytorch_model.fp16.safetensors"));
        assert!(sd_cuda.contains(&"text_encoder_2/model.fp16.safetensors"));
        assert!(!sd_cuda.contains(&"text_encoder_2/model.safetensors"));
        // The VAE runs in f32 on CUDA too.
        assert!(sd_cuda.contains(&"vae/diffusion_pytorch_model.safetensors"));
        for files in [sd_cpu, sd_cuda] {
            assert!(files.iter().all(|f| !f.ends_with(".onnx") && !f.starts_with("sd_xl_turbo")), "{files:?}");
            assert!(!files.contains(&"vae/diffusion_pytorch_model.fp16.safetensors"));
        }
        assert_eq!(cpu[1..], cuda[1..], "RMBG and PartCrafter have one precision");
        let fix = pipeline_files(DeviceKind::Cuda, true);
        assert_eq!(fix[1].repo, SDXL_VAE_FP16_FIX);
        assert!(fix[0].files.iter().all(|f| !f.starts_with("vae/")), "the fp16-fix VAE replaces vae/");
    }

    #[test]
    fn offline_errors_list_every_missing_file_and_the_exact_command() {
        let tmp = tempfile::tempdir().unwrap();
        hub_cache(tmp.path(), RMBG, &[("model.safetensors", b"x"), ("config.json", b"{}")]);
        let src = source(tmp.path(), None).with_revisions(&[("stabilityai/sdxl-turbo".into(), "v1".into())]);
        let err = src.ensure(DeviceKind::Cuda, false, DownloadOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(crate::error::is_usage(&err));
        assert!(
            msg.contains("lumen fetch --pipeline partcrafter --device cuda --revision stabilityai/sdxl-turbo=v1"),
            "{msg}"
        );
        assert!(
            msg.contains("unet/diffusion_pytorch_model.fp16.safetensors") && msg.contains("(revision v1)"),
            "{msg}"
        );
        assert!(msg.contains("transformer/diffusion_pytorch_model.safetensors"), "{msg}");
        assert!(!msg.contains("RMBG"), "RMBG is cached: {msg}");
        assert!(
            msg.contains("hf download wgsxm/PartCrafter feature_extractor_dinov2/preprocessor_config.json"),
            "{msg}"
        );
        assert!(src.ensure(DeviceKind::Cpu, false, DownloadOptions::default()).is_err());
        // --weights DIR never downloads and is checked by the loaders.
        assert!(source(tmp.path(), Some(tmp.path().into()))
            .ensure(DeviceKind::Cpu, false, DownloadOptions::default())
            .is_ok());
    }

    #[test]
    fn revision_overrides_are_checked() {
        assert_eq!(parse_revision("briaai/RMBG-1.4=main").unwrap(), ("briaai/RMBG-1.4".into(), "main".into()));
        assert!(parse_revision("briaai/RMBG-1.4").is_err());
        assert!(parse_revision("someone/else=main").unwrap_err().0.contains("lumen reads no repo"));
    }

    #[test]
    fn a_cache_copied_without_blobs_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        hub_cache(tmp.path(), RMBG, &[("model.safetensors", b"x")]);
        std::fs::remove_dir_all(tmp.path().join("models--briaai--RMBG-1.4/blobs")).unwrap();
        let err = source(tmp.path(), None).resolve(RMBG, "model.safetensors").unwrap_err();
        assert!(err.to_string().contains("broken link"), "{err:#}");
    }

    #[test]
    fn sharded_checkpoints_and_corrupt_files() {
        let tmp = tempfile::tempdir().unwrap();
        let index =
            r#"{"weight_map": {"a": "part-2.safetensors", "b": "part-1.safetensors", "c": "part-2.safetensors"}}"#;
        std::fs::write(tmp.path().join("diffusion_pytorch_model.safetensors.index.json"), index).unwrap();
        let files = safetensors_files(tmp.path()).unwrap();
        assert_eq!(files, vec![tmp.path().join("part-1.safetensors"), tmp.path().join("part-2.safetensors")]);

        let bad = tmp.path().join("bad.safetensors");
        std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":").unwrap();
        let err = open_safetensors(std::slice::from_ref(&bad), DType::F32, &Device::Cpu)
            .err()
            .expect("corrupt file rejected");
        assert!(
            err.to_string().contains("corrupt or truncated") && err.to_string().contains("bad.safetensors"),
            "{err:#}"
        );
        let err = open_safetensors(&[tmp.path().join("absent.safetensors")], DType::F32, &Device::Cpu)
            .err()
            .expect("missing file rejected");
        assert!(err.to_string().contains("is missing"), "{err:#}");
    }

    #[test]
    fn offline_flag_is_read_like_the_python_client() {
        for (v, want) in
            [("1", true), ("TRUE", true), (" yes ", true), ("on", true), ("0", false), ("", false), ("no", false)]
        {
            assert_eq!(is_truthy(v), want, "{v:?}");
        }
    }
}
