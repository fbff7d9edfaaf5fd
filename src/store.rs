//! Where assets live: one interface over `object_store` for local folders, Google Cloud
//! Storage and memory.
//!
//! Layout under a store's root: `shapes/<key>.json` (one asset per concept) and
//! `manifest.json` (key → text, size, pipeline, created_at, quality verdict) so a server can
//! warm its cache, and skip shapes graded bad, with one read.
//!
//! Guarantees: whole-object writes only (local writes go through a staging file and a
//! rename inside object_store; GCS puts are atomic), no overwrite without `force`
//! (conditional create: `PutMode::Create`, which GCS sends as `x-goog-if-generation-match: 0`),
//! and bounded retries with a per-request timeout on remote stores.
//!
//! object_store is async; lumen's work is CPU-bound and synchronous, so a store owns a small
//! tokio runtime and blocks on it. Any thread (rayon workers included) may call it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    UpdateVersion,
};
use serde::{Deserialize, Serialize};

use crate::error::UsageError;

/// Network behaviour of remote stores.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Retries of a failed or timed-out request (5xx, connection errors).
    pub max_retries: usize,
    /// GCS service-account key JSON given in code rather than through the environment
    /// (tests point the client at a local server this way).
    pub gcs_service_account_key: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), max_retries: 4, gcs_service_account_key: None }
    }
}

impl StoreOptions {
    /// Defaults, with `LUMEN_STORE_TIMEOUT_MS` and `LUMEN_STORE_RETRIES` overrides.
    pub fn from_env() -> Self {
        let mut o = Self::default();
        if let Some(ms) = std::env::var("LUMEN_STORE_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()) {
            o.timeout = Duration::from_millis(ms);
        }
        if let Some(n) = std::env::var("LUMEN_STORE_RETRIES").ok().and_then(|v| v.parse().ok()) {
            o.max_retries = n;
        }
        o
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    Created,
    Overwritten,
    /// Not written: the key exists and `force` was not given.
    Exists,
}

/// A store opened from a URL.
pub struct Store {
    url: String,
    inner: Arc<dyn ObjectStore>,
    root: ObjPath,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

/// `manifest.json`: one entry per stored key.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    pub updated_at: String,
    pub entries: BTreeMap<String, ManifestEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestEntry {
    pub text: String,
    pub normalized: String,
    pub size: u64,
    pub pipeline: String,
    pub created_at: String,
    /// Every distinct text that was asked for under this key (more than one = a collision).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub texts: Vec<String>,
    /// The asset's verdict and reasons (absent for assets made before quality was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<crate::quality::QualitySummary>,
}

pub const MANIFEST_FORMAT: &str = "lumen.manifest/1";

impl Store {
    /// Opens `url`: a plain path or `file://` URL, `gs://bucket[/prefix]`, or `memory://`.
    pub fn open(url: &str, opts: &StoreOptions) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the I/O runtime")?;
        let (inner, root): (Arc<dyn ObjectStore>, ObjPath) = if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(UsageError(format!("store URL {url:?} names no bucket (use gs://BUCKET/PREFIX)")).into());
            }
            let retry = RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(5),
                    base: 2.0,
                },
                max_retries: opts.max_retries,
                retry_timeout: opts.timeout * (opts.max_retries as u32 + 1) + Duration::from_secs(10),
            };
            // from_env: GOOGLE_SERVICE_ACCOUNT(_PATH), GOOGLE_SERVICE_ACCOUNT_KEY,
            // GOOGLE_APPLICATION_CREDENTIALS, else application default credentials
            // (parse_url would ignore the environment).
            let mut builder = GoogleCloudStorageBuilder::from_env();
            if let Some(key) = &opts.gcs_service_account_key {
                builder = builder.with_service_account_key(key);
            }
            let gcs = builder
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_client_options(
                    ClientOptions::new()
                        .with_timeout(opts.timeout)
                        .with_connect_timeout(opts.timeout.min(Duration::from_secs(10)))
                        .with_allow_http(true),
                )
                .build()
                .map_err(|e| UsageError(format!("cannot configure Google Cloud Storage for {url}: {e}")))?;
            (Arc::new(gcs), ObjPath::from(prefix.trim_matches('/')))
        } else if url == "memory://" || url.starts_with("memory://") {
            (Arc::new(InMemory::new()), ObjPath::from(url.trim_start_matches("memory://").trim_matches('/')))
        } else if url.contains("://") && !url.starts_with("file://") {
            let scheme = url.split("://").next().unwrap_or("");
            return Err(UsageError(format!(
                "unknown store URL scheme {scheme:?} in {url:?}: use a folder path, file://PATH, gs://BUCKET/PREFIX or memory://"
            ))
            .into());
        } else {
            let dir = match url.strip_prefix("file://") {
                Some(p) => url::Url::parse(url)
                    .ok()
                    .and_then(|u| u.to_file_path().ok())
                    .unwrap_or_else(|| std::path::PathBuf::from(p)),
                None => std::path::PathBuf::from(url),
            };
            std::fs::create_dir_all(dir.join("shapes"))
                .map_err(|e| UsageError(format!("store folder {} is not writable: {e}", dir.display())))?;
            let fs = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| UsageError(format!("store folder {}: {e}", dir.display())))?;
            (Arc::new(fs), ObjPath::default())
        };
        Ok(Self { url: url.to_string(), inner, root, rt })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> ObjPath {
        let mut p = self.root.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Relative location of a concept's asset.
    pub fn shape_rel(key: &str) -> String {
        format!("shapes/{key}.json")
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Writes an object atomically. Without `force`, an existing object is left untouched.
    pub fn put(&self, rel: &str, bytes: Vec<u8>, force: bool) -> Result<PutOutcome> {
        let path = self.path(rel);
        let payload = PutPayload::from(Bytes::from(bytes));
        if force {
            let existed = self.exists(rel)?;
            self.block(self.inner.put_opts(&path, payload, PutOptions::from(PutMode::Overwrite)))
                .with_context(|| format!("writing {rel} to {}", self.url))?;
            return Ok(if existed { PutOutcome::Overwritten } else { PutOutcome::Created });
        }
        match self.block(self.inner.put_opts(&path, payload, PutOptions::from(PutMode::Create))) {
            Ok(_) => Ok(PutOutcome::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(PutOutcome::Exists),
            Err(e) => Err(anyhow!(e).context(format!("writing {rel} to {}", self.url))),
        }
    }

    /// Reads an object; `None` when it does not exist.
    pub fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        let path = self.path(rel);
        let got = self.block(async {
            match self.inner.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        got.with_context(|| format!("reading {rel} from {}", self.url))
    }

    pub fn exists(&self, rel: &str) -> Result<bool> {
        match self.block(self.inner.head(&self.path(rel))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(anyhow!(e).context(format!("checking {rel} in {}", self.url))),
        }
    }

    pub fn delete(&self, rel: &str) -> Result<()> {
        match self.block(self.inner.delete(&self.path(rel))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow!(e).context(format!("deleting {rel} from {}", self.url))),
        }
    }

    /// Every object under `rel_prefix` (recursively) as (relative path, size), sorted.
    pub fn list(&self, rel_prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix = self.path(rel_prefix);
        let metas: Vec<object_store::ObjectMeta> = self
            .block(self.inner.list(Some(&prefix)).try_collect())
            .with_context(|| format!("listing {rel_prefix} in {}", self.url))?;
        let root = self.root.as_ref();
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| {
                let full = m.location.as_ref();
                let rel = full.strip_prefix(root).unwrap_or(full).trim_start_matches('/');
                (percent_decode(rel), m.size)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Keys of stored shapes with their sizes.
    pub fn list_shapes(&self) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list("shapes")?
            .into_iter()
            .filter_map(|(rel, size)| {
                let key = rel.strip_prefix("shapes/")?.strip_suffix(".json")?;
                (!key.contains('/')).then(|| (key.to_string(), size))
            })
            .collect())
    }

    /// Reads `manifest.json` (empty when absent; an unreadable one is an error).
    pub fn read_manifest(&self) -> Result<Manifest> {
        Ok(self.read_manifest_versioned()?.0)
    }

    fn read_manifest_versioned(&self) -> Result<(Manifest, Option<UpdateVersion>)> {
        let path = self.path("manifest.json");
        let got = self.block(async {
            match self.inner.get(&path).await {
                Ok(r) => {
                    let version = UpdateVersion { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone() };
                    r.bytes().await.map(|b| Some((b, version)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        });
        match got.with_context(|| format!("reading manifest.json from {}", self.url))? {
            None => Ok((Manifest { format: MANIFEST_FORMAT.into(), ..Default::default() }, None)),
            Some((bytes, version)) => {
                let m: Manifest = serde_json::from_slice(&bytes).with_context(|| {
                    format!("manifest.json in {} is corrupt (rebuild it with `lumen stats --repair`)", self.url)
                })?;
                Ok((m, Some(version)))
            }
        }
    }

    /// Read-modify-write of the manifest. Where the store supports conditional updates
    /// (GCS generations, memory) a concurrent writer (another shard) makes this retry on
    /// the fresh manifest instead of losing its entries; a local folder is overwritten.
    pub fn update_manifest(&self, edit: impl Fn(&mut Manifest)) -> Result<Manifest> {
        for _ in 0..8 {
            let (mut m, version) = self.read_manifest_versioned()?;
            edit(&mut m);
            m.format = MANIFEST_FORMAT.into();
            m.updated_at = crate::time::now_rfc3339();
            let bytes = Bytes::from(serde_json::to_vec_pretty(&m)?);
            let mode = match version {
                Some(v) if v.e_tag.is_some() || v.version.is_some() => PutMode::Update(v),
                _ => PutMode::Create,
            };
            let path = self.path("manifest.json");
            match self.block(self.inner.put_opts(&path, PutPayload::from(bytes.clone()), PutOptions::from(mode))) {
                Ok(_) => return Ok(m),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => continue,
                Err(object_store::Error::NotImplemented { .. }) => {
                    self.block(self.inner.put_opts(
                        &path,
                        PutPayload::from(bytes),
                        PutOptions::from(PutMode::Overwrite),
                    ))
                    .with_context(|| format!("writing manifest.json to {}", self.url))?;
                    return Ok(m);
                }
                Err(e) => return Err(anyhow!(e).context(format!("writing manifest.json to {}", self.url))),
            }
        }
        Err(anyhow!(
            "manifest.json in {} kept changing under concurrent writers; rerun `lumen stats --repair`",
            self.url
        ))
    }

    /// Replaces the manifest outright (`stats --repair`).
    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let mut m = m.clone();
        m.format = MANIFEST_FORMAT.into();
        m.updated_at = crate::time::now_rfc3339();
        self.put("manifest.json", serde_json::to_vec_pretty(&m)?, true)?;
        Ok(())
    }
}

/// Decodes `%XX` escapes (invalid ones are kept as they are; a result that is not UTF-8
/// leaves the text undecoded). object_store paths keep characters outside its safe set
/// percent-encoded; callers of `list` get back the names they wrote.
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8().map_or_else(|_| s.to_string(), |d| d.into_owned())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%20b+c%2Fd"), "a b+c/d");
        assert_eq!(percent_decode("%E2%82%AC%41"), "€A");
        // A multi-byte character right after `%` (the gallery's `GET /%aé`), a bare `%`,
        // and an escape that decodes to invalid UTF-8.
        assert_eq!(percent_decode("/%aé"), "/%aé");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%FF"), "%FF");
    }
}
