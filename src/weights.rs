//! Where model weights come from, and how they are opened.
//!
//! Resolution order, the same for every stage:
//! 1. `--weights DIR`: `DIR/<repo name>/…` (e.g. `DIR/PartCrafter/transformer/…`), a plain
//!    folder laid out like the hub repo; a folder that *is* the repo also works when only
//!    one repo is needed.
//! 2. The Hugging Face cache (the Python client's layout, shared with Python tools):
//!    `models--{owner}--{name}/refs/{revision}` → `snapshots/{commit}/…`. Read directly,
//!    no network code involved.
//! 3. The network, only in builds with the `hub` feature and only when `HF_HUB_OFFLINE`
//!    is not set (hf-hub does not read that variable itself, so it is honoured here).
//!
//! Opening: safetensors files are memory-mapped into a candle `VarBuilder`; sharded
//! checkpoints are followed through their `*.safetensors.index.json`. Errors name the
//! file or tensor and say how to fetch what is missing; weights that cannot be found are a
//! configuration error (exit 2).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::error::UsageError;

/// A Hugging Face model repository the pipeline reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repo {
    pub id: &'static str,
    pub revision: &'static str,
}

impl Repo {
    /// Last path component of the id: the sub-folder name under `--weights DIR`.
    pub fn name(&self) -> &'static str {
        self.id.rsplit('/').next().unwrap_or(self.id)
    }
}

pub const SDXL_TURBO: Repo = Repo { id: "stabilityai/sdxl-turbo", revision: "main" };
pub const SDXL_VAE_FP16_FIX: Repo = Repo { id: "madebyollin/sdxl-vae-fp16-fix", revision: "main" };
pub const RMBG: Repo = Repo { id: "briaai/RMBG-1.4", revision: "main" };
pub const PARTCRAFTER: Repo = Repo { id: "wgsxm/PartCrafter", revision: "main" };

/// Where to look for weights: built once from the command line and the environment.
#[derive(Debug, Clone)]
pub struct WeightsSource {
    pub weights_dir: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub offline: bool,
}

/// A resolved repository: a local folder holding its files, and the commit it came from.
#[derive(Debug, Clone)]
pub struct RepoDir {
    pub repo: Repo,
    pub dir: PathBuf,
    /// The 40-hex commit when read from the hub cache; `local` for a `--weights` folder.
    pub commit: String,
}

impl WeightsSource {
    /// From `--weights` and the usual environment variables (same order as the Python client):
    /// `HF_HUB_CACHE`, `HUGGINGFACE_HUB_CACHE`, `$HF_HOME/hub`, `$XDG_CACHE_HOME/huggingface/hub`,
    /// `~/.cache/huggingface/hub`.
    pub fn from_env(weights_dir: Option<PathBuf>) -> Self {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
            .or_else(|| var("XDG_CACHE_HOME").map(|h| h.join("huggingface").join("hub")))
            .or_else(|| var("HOME").map(|h| h.join(".cache").join("huggingface").join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let offline = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| is_truthy(&v));
        Self { weights_dir, cache_dir, offline }
    }

    /// Finds a local folder for `repo` that contains `required` (a file path inside the repo
    /// used to recognise a usable copy, e.g. `model.safetensors` or `transformer/config.json`).
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
        self.download(repo, required)
    }

    fn repo_cache_dir(&self, repo: Repo) -> PathBuf {
        self.cache_dir.join(format!("models--{}", repo.id.replace('/', "--")))
    }

    /// Looks the repo up in the hub cache without touching the network.
    fn lookup_cache(&self, repo: Repo, required: &str) -> Result<Option<RepoDir>> {
        let root = self.repo_cache_dir(repo);
        let commit = if is_commit_hash(repo.revision) {
            repo.revision.to_string()
        } else {
            match std::fs::read_to_string(root.join("refs").join(repo.revision)) {
                Ok(s) => s.trim().to_string(),
                Err(_) => return Ok(None),
            }
        };
        let dir = root.join("snapshots").join(&commit);
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

    #[cfg(feature = "hub")]
    fn download(&self, repo: Repo, required: &str) -> Result<RepoDir> {
        if self.offline {
            return Err(UsageError(self.missing_message(repo, required)).into());
        }
        crate::hub::snapshot(&self.cache_dir, repo)?;
        self.lookup_cache(repo, required)?
            .with_context(|| format!("{} downloaded but {required} is still missing", repo.id))
    }

    #[cfg(not(feature = "hub"))]
    fn download(&self, repo: Repo, required: &str) -> Result<RepoDir> {
        Err(UsageError(self.missing_message(repo, required)).into())
    }

    fn missing_message(&self, repo: Repo, required: &str) -> String {
        format!(
            "weights for {} ({required}) are not in the Hugging Face cache {} nor given with --weights; \
             fetch them on a machine with network access (`huggingface-cli download {}`, or a lumen build \
             with `--features hub` and HF_HUB_OFFLINE unset) and copy the cache with symlinks preserved",
            repo.id,
            self.cache_dir.display(),
            repo.id
        )
    }
}

/// `HF_HUB_OFFLINE` values the Python client treats as true.
fn is_truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
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
    /// symlinks from `snapshots/<commit>/…`, `refs/main` holding the commit.
    fn hub_cache(root: &Path, repo: Repo, files: &[(&str, &[u8])]) {
        let base = root.join(format!("models--{}", repo.id.replace('/', "--")));
        std::fs::create_dir_all(base.join("blobs")).unwrap();
        std::fs::create_dir_all(base.join("refs")).unwrap();
        std::fs::write(base.join("refs/main"), COMMIT).unwrap();
        for (i, (path, bytes)) in files.iter().enumerate() {
            let etag = format!("etag{i:04}");
            std::fs::write(base.join("blobs").join(&etag), bytes).unwrap();
            let link = base.join("snapshots").join(COMMIT).join(path);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            let depth = path.matches('/').count() + 2;
            let target = format!("{}blobs/{etag}", "../".repeat(depth));
            symlink(target, &link).unwrap();
        }
    }

    fn source(cache: &Path, weights_dir: Option<PathBuf>) -> WeightsSource {
        WeightsSource { weights_dir, cache_dir: cache.to_path_buf(), offline: true }
    }

    #[test]
    fn resolves_the_python_clients_cache_layout() {
        let tmp = tempfile::tempdir().unwrap();
        hub_cache(tmp.path(), RMBG, &[("model.safetensors", b"x"), ("config.json", b"{}")]);
        let found = source(tmp.path(), None).resolve(RMBG, "model.safetensors").unwrap();
        assert_eq!(found.commit, COMMIT);
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
        assert!(crate::error::is_usage(&err) && err.to_string().contains("huggingface-cli download"), "{err:#}");
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
        let err = open_safetensors(&[bad.clone()], DType::F32, &Device::Cpu).err().expect("corrupt file rejected");
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
