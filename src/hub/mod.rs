//! Downloads from the Hugging Face Hub into the shared cache, file by file.
//!
//! Only the files a pipeline reads are fetched (the caller names them: see
//! `weights::pipeline_files`), never whole repos: `stabilityai/sdxl-turbo` alone holds tens of
//! GB of ONNX exports, single-file checkpoints and a second precision. The client is our own
//! small one on reqwest (already in the tree through object_store) rather than hf-hub, which
//! would add the whole xet stack to the build for features lumen does not use.
//!
//! Order of work: every missing file is asked about first (`HEAD`), so a wrong revision, a
//! gated repo or a missing file is reported before any byte is downloaded and the total is
//! known; then each file is downloaded into `blobs/{etag}.incomplete` (resumed after an
//! interruption), checked against the hub's checksum, renamed into place and linked into the
//! snapshot. A file that fails its checksum is deleted, never linked.

pub mod cache;
pub mod client;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use cache::{Checksum, RepoCache};
use client::{file_bar, human_bytes, rate, Client, FileMeta, FileRef, HubConfig};

/// Files wanted from one repo at one revision (a branch, tag or commit).
#[derive(Debug, Clone)]
pub struct Want {
    pub repo: String,
    pub revision: String,
    pub files: Vec<String>,
}

/// The outcome for one file.
#[derive(Debug, Clone, Serialize)]
pub struct Fetched {
    pub repo: String,
    pub revision: String,
    pub commit: String,
    pub path: String,
    pub size: u64,
    /// The hub's etag: sha256 for LFS files, git blob sha1 otherwise.
    pub checksum: String,
    /// cached | downloaded | linked (the bytes were already in the cache under another name) |
    /// missing (`dry_run` only)
    pub status: &'static str,
    /// The bytes were hashed and matched `checksum` in this run.
    pub verified: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct FetchOptions {
    /// Hash files that are already cached too (and download again any that fail).
    pub verify_cached: bool,
    /// Ask the hub about missing files but download nothing.
    pub dry_run: bool,
    /// One progress bar per file on stderr.
    pub progress: bool,
}

/// What the cache already holds for `want`: the commit its revision stands for, and each
/// file's etag when it is there.
pub fn cached_state(cache_dir: &Path, want: &Want) -> (Option<String>, Vec<Option<String>>) {
    let rc = RepoCache::new(cache_dir, &want.repo);
    let commit = rc.commit_for(&want.revision);
    let etags = want.files.iter().map(|f| commit.as_ref().and_then(|c| rc.cached_etag(c, f))).collect();
    (commit, etags)
}

/// One file in the plan.
struct Item {
    want: usize,
    path: String,
    meta: Option<FileMeta>,
    fetched: Fetched,
}

/// Makes every wanted file present and verified in the cache at `cache_dir`.
pub fn fetch(cache_dir: &Path, config: HubConfig, wants: &[Want], opts: FetchOptions) -> Result<Vec<Fetched>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the downloader")?;
    rt.block_on(async {
        let client = Client::new(config)?;
        let mut items = plan(&client, cache_dir, wants, opts).await?;
        if opts.dry_run {
            return Ok(items.into_iter().map(|i| i.fetched).collect());
        }
        let caches: Vec<RepoCache> = wants.iter().map(|w| RepoCache::new(cache_dir, &w.repo)).collect();
        // Each blob once: both CLIP tokenizers share their vocab and merges.
        let mut todo = std::collections::BTreeMap::new();
        for i in items.iter().filter(|i| i.meta.is_some()) {
            if !caches[i.want].blob(&i.fetched.checksum).is_file() {
                todo.insert((i.want, i.fetched.checksum.as_str()), i.fetched.size);
            }
        }
        if !todo.is_empty() {
            let total: u64 = todo.values().sum();
            tracing::info!(
                "downloading {} file(s), {}, from {} into {}",
                todo.len(),
                human_bytes(total),
                client.endpoint(),
                cache_dir.display()
            );
        }
        for item in items.iter_mut().filter(|i| i.meta.is_some()) {
            let rc = &caches[item.want];
            download_one(&client, rc, item, opts.progress).await?;
            rc.link(&item.fetched.commit, &item.path, &item.fetched.checksum)?;
            rc.write_ref(&wants[item.want].revision, &item.fetched.commit)?;
        }
        Ok(items.into_iter().map(|i| i.fetched).collect())
    })
}

/// Phase 1: what is cached (hashed again with `verify_cached`), and `HEAD` for the rest. All
/// files of one repo come from one commit: the one already cached for that revision, else the
/// one the hub names for the first file asked about.
async fn plan(client: &Client, cache_dir: &Path, wants: &[Want], opts: FetchOptions) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for (w, want) in wants.iter().enumerate() {
        let rc = RepoCache::new(cache_dir, &want.repo);
        let (mut commit, etags) = cached_state(cache_dir, want);
        for (path, etag) in want.files.iter().zip(etags) {
            let fetched = |commit: &str, etag: &str, size, status| Fetched {
                repo: want.repo.clone(),
                revision: want.revision.clone(),
                commit: commit.to_string(),
                path: path.clone(),
                size,
                checksum: etag.to_string(),
                status,
                verified: false,
            };
            if let (Some(c), Some(etag)) = (&commit, &etag) {
                let blob = rc.blob(etag);
                let size = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
                let mut f = fetched(c, etag, size, "cached");
                if opts.verify_cached {
                    match verify_cached(&blob, etag, &want.repo, path)? {
                        true => f.verified = true,
                        false => {
                            // Corrupt: forget it and fetch it again below.
                            std::fs::remove_file(&blob).with_context(|| format!("removing {}", blob.display()))?;
                            let _ = std::fs::remove_file(rc.snapshot_dir(c).join(path));
                        }
                    }
                }
                if f.verified || !opts.verify_cached {
                    items.push(Item { want: w, path: path.clone(), meta: None, fetched: f });
                    continue;
                }
            }
            let rev = commit.clone().unwrap_or_else(|| want.revision.clone());
            let meta = client.head(FileRef { repo: &want.repo, revision: &rev, path }).await?;
            if commit.as_ref().is_some_and(|c| *c != meta.commit) {
                bail!("{}: the hub answered {path} at revision {rev} with commit {}", want.repo, meta.commit);
            }
            commit = Some(meta.commit.clone());
            let status = if opts.dry_run { "missing" } else { "downloaded" };
            let f = fetched(&meta.commit, &meta.etag, meta.size, status);
            items.push(Item { want: w, path: path.clone(), meta: Some(meta), fetched: f });
        }
    }
    Ok(items)
}

/// Hashes a cached blob; false (with a log line) when it does not match its name.
fn verify_cached(blob: &Path, etag: &str, repo: &str, path: &str) -> Result<bool> {
    let Some(sum) = Checksum::from_etag(etag) else { return Ok(true) };
    match cache::verify_file(blob, &sum)? {
        None => Ok(true),
        Some(actual) => {
            tracing::warn!(
                "{repo} {path}: cached file {} fails its {} check (got {actual}); fetching it again",
                blob.display(),
                sum.kind()
            );
            Ok(false)
        }
    }
}

/// Phase 2 for one file: under the blob's lock, download (resuming), verify, rename.
async fn download_one(client: &Client, rc: &RepoCache, item: &mut Item, progress: bool) -> Result<()> {
    let meta = item.meta.as_ref().expect("planned files have metadata");
    let f = &mut item.fetched;
    let blob = rc.blob(&meta.etag);
    if !blob.is_file() {
        std::fs::create_dir_all(blob.parent().unwrap_or(Path::new(".")))?;
    }
    let _lock = rc.lock(&meta.etag)?;
    if blob.is_file() {
        // The same bytes under another path or commit (e.g. both CLIP tokenizers' vocab), or
        // another process finished them while we waited for the lock: check, then link.
        f.status = "linked";
        if let Some(sum) = Checksum::from_etag(&meta.etag) {
            cache::check_file(&blob, &sum, &format!("{} {} (cached as {})", f.repo, item.path, blob.display()))?;
            f.verified = true;
        }
        return Ok(());
    }
    let part = rc.incomplete(&meta.etag);
    let file = FileRef { repo: &f.repo, revision: &f.commit, path: &item.path };
    let sum = Checksum::from_etag(&meta.etag);
    let what = format!("{} {}", f.repo, item.path);
    let resumed = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    if resumed > 0 {
        tracing::info!("{what}: resuming at {} of {}", human_bytes(resumed), human_bytes(meta.size));
    }
    // A checksum failure after a resume may come from the older part: one fresh try.
    for attempt in 0..2 {
        let start = Instant::now();
        let bar = file_bar(&format!("{}/{}", short_repo(&f.repo), item.path), meta.size, progress);
        client.download(file, meta, &part, &bar).await?;
        bar.finish();
        let Some(sum) = &sum else {
            tracing::warn!("{what}: etag {:?} is not a checksum; only the size was checked", meta.etag);
            break;
        };
        match cache::verify_file(&part, sum)? {
            None => {
                f.verified = true;
                if !progress {
                    tracing::info!(
                        "downloaded {what}: {} in {:.1} s ({}), {} verified",
                        human_bytes(meta.size),
                        start.elapsed().as_secs_f64(),
                        rate(meta.size, start),
                        sum.kind()
                    );
                }
                break;
            }
            Some(actual) => {
                std::fs::remove_file(&part).with_context(|| format!("removing {}", part.display()))?;
                if attempt == 1 {
                    bail!(
                        "{what} (commit {}): the downloaded bytes fail the hub's {} check (expected {}, got {actual}); \
                         the file was deleted and not used. Run again; if it repeats, something between you and {} \
                         (a proxy, a mirror) alters the file",
                        f.commit,
                        sum.kind(),
                        sum.expected(),
                        client.endpoint()
                    );
                }
                tracing::warn!("{what}: {} mismatch (got {actual}); downloading it again from the start", sum.kind());
            }
        }
    }
    std::fs::rename(&part, &blob).with_context(|| format!("moving {} into place", part.display()))?;
    check_file_size(&blob, meta.size)?;
    Ok(())
}

fn check_file_size(path: &Path, size: u64) -> Result<()> {
    let got = std::fs::metadata(path)?.len();
    if got != size {
        bail!("{} holds {got} bytes, the hub says {size}", path.display());
    }
    Ok(())
}

fn short_repo(repo: &str) -> &str {
    repo.rsplit('/').next().unwrap_or(repo)
}

/// Re-hashes the cached files of `wants` without any network: for `lumen fetch` offline.
/// Returns the files (verified) or the list of `(repo, path, problem)` that are not usable.
pub fn verify_offline(cache_dir: &Path, wants: &[Want]) -> Result<std::result::Result<Vec<Fetched>, Vec<String>>> {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for want in wants {
        let rc = RepoCache::new(cache_dir, &want.repo);
        let (commit, etags) = cached_state(cache_dir, want);
        for (path, etag) in want.files.iter().zip(etags) {
            let (Some(c), Some(etag)) = (&commit, etag) else {
                bad.push(format!("{} {path}: not in the cache", want.repo));
                continue;
            };
            let blob: PathBuf = rc.blob(&etag);
            let verified = match Checksum::from_etag(&etag) {
                Some(sum) => match cache::verify_file(&blob, &sum)? {
                    None => true,
                    Some(actual) => {
                        bad.push(format!(
                            "{} {path}: {} mismatch (blob {}, got {actual})",
                            want.repo,
                            sum.kind(),
                            etag
                        ));
                        continue;
                    }
                },
                None => false,
            };
            ok.push(Fetched {
                repo: want.repo.clone(),
                revision: want.revision.clone(),
                commit: c.clone(),
                path: path.clone(),
                size: std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0),
                checksum: etag,
                status: "cached",
                verified,
            });
        }
    }
    Ok(if bad.is_empty() { Ok(ok) } else { Err(bad) })
}
