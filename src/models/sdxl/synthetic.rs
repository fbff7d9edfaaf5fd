//! A synthetic SDXL checkpoint folder built from a golden manifest (`goldens/sdxl`):
//! the hub repo's layout, each module's `config.json` from the manifest's `config`, the
//! weights from the synthetic rule under the real tensor names, the goldens' tokenizer
//! files. Tests and `lumen generate --weights DIR` smoke runs load it through the same
//! loader as the real checkpoint.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::synth::{write_synthetic_safetensors, TensorSpec};

/// The manifest of a golden folder.
pub fn read_manifest(golden_dir: &Path) -> Result<Value> {
    let path = golden_dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Writes one module (`unet`, `vae`, `text_encoder`, `text_encoder_2`) under `repo_dir` at
/// its hub path, with its `config.json`; returns the module's folder.
pub fn write_module(repo_dir: &Path, manifest: &Value, module: &str) -> Result<PathBuf> {
    let rel =
        manifest["module_files"][module].as_str().with_context(|| format!("manifest has no module_files.{module}"))?;
    let file = repo_dir.join(rel);
    let folder = file.parent().context("module file without folder")?.to_path_buf();
    let specs = manifest["tensors"][module]
        .as_array()
        .with_context(|| format!("manifest has no tensors.{module}"))?
        .iter()
        .map(TensorSpec::from_json)
        .collect::<Result<Vec<_>>>()?;
    write_synthetic_safetensors(&specs, None, &file)?;
    std::fs::write(folder.join("config.json"), serde_json::to_string_pretty(&manifest["config"][module])?)?;
    Ok(folder)
}

/// The whole checkpoint folder: four modules, both tokenizers, the scheduler config.
/// Use `repo_dir = DIR/sdxl-turbo` for the `--weights DIR` layout.
pub fn write_synthetic_repo(golden_dir: &Path, repo_dir: &Path) -> Result<()> {
    let manifest = read_manifest(golden_dir)?;
    for m in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        write_module(repo_dir, &manifest, m)?;
    }
    for (folder, file) in [("tokenizer", "tokenizer.json"), ("tokenizer_2", "tokenizer_2.json")] {
        std::fs::create_dir_all(repo_dir.join(folder))?;
        std::fs::copy(golden_dir.join(file), repo_dir.join(folder).join("tokenizer.json"))
            .with_context(|| format!("copying {file}"))?;
    }
    std::fs::create_dir_all(repo_dir.join("scheduler"))?;
    std::fs::write(
        repo_dir.join("scheduler").join("scheduler_config.json"),
        serde_json::to_string_pretty(&manifest["config"]["scheduler"])?,
    )?;
    Ok(())
}
