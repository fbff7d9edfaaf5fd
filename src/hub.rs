//! Downloads from the Hugging Face Hub (builds with the `hub` feature only).
//!
//! Reading an existing cache needs no network code (`weights.rs` does it directly); this
//! module only fills the cache when a repo is missing, through hf-hub, which writes the
//! Python client's layout so the result is shared with Python tools.

use std::path::Path;

use anyhow::{Context, Result};

use crate::weights::Repo;

/// Downloads every file of `repo` at its revision into the cache at `cache_dir`.
pub fn snapshot(cache_dir: &Path, repo: Repo) -> Result<()> {
    let client = hf_hub::HFClient::builder()
        .cache_dir(cache_dir)
        .build_sync()
        .context("starting the Hugging Face Hub client")?;
    let (owner, name) = repo.id.split_once('/').unwrap_or(("", repo.id));
    crate::commands::log(&format!("downloading {} ({}) into {}", repo.id, repo.revision, cache_dir.display()));
    client
        .model(owner, name)
        .snapshot_download()
        .revision(repo.revision)
        .send()
        .with_context(|| format!("downloading {} from the Hugging Face Hub", repo.id))?;
    Ok(())
}
