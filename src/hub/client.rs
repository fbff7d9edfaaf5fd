//! HTTP against the Hub's file endpoints, as the Python client uses them:
//!
//! * `HEAD {endpoint}/{repo}/resolve/{revision}/{path}` without following absolute redirects:
//!   the answer carries `X-Repo-Commit`, the etag (`X-Linked-Etag` for LFS files, the sha256;
//!   `ETag` otherwise, the git blob sha1), the size (`X-Linked-Size` / `Content-Length`) and,
//!   for LFS files, a redirect `Location` to where the bytes are. Relative redirects (a renamed
//!   repo) are followed.
//! * `GET` of that location with `Range: bytes=N-` to resume a partial file.
//!
//! 5xx, 429, timeouts and dropped connections are retried with exponential backoff (a dropped
//! body resumes where it stopped); 401, 403 and 404 become errors that name the repo, the file
//! and what to do. The token goes only to the endpoint's own origin, never to a redirect host.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::header::{HeaderMap, ACCEPT_ENCODING, AUTHORIZATION, LOCATION, RANGE};
use reqwest::{StatusCode, Url};

use crate::error::UsageError;

/// Attempts after the first one for a request that fails transiently.
const RETRIES: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Where and how to reach the hub: `HF_ENDPOINT` and the token, as the Python client reads them.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub endpoint: Url,
    pub token: Option<String>,
}

impl HubConfig {
    /// `HF_ENDPOINT` (default `https://huggingface.co`); token from `HF_TOKEN`, else the file
    /// `HF_TOKEN_PATH`, else `$HF_HOME/token` (`~/.cache/huggingface/token`), which is where
    /// `hf auth login` stores it.
    pub fn from_env() -> Result<Self> {
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| "https://huggingface.co".into());
        let endpoint = Url::parse(endpoint.trim_end_matches('/'))
            .map_err(|e| UsageError(format!("HF_ENDPOINT {endpoint:?} is not a URL: {e}")))?;
        let token_file = var("HF_TOKEN_PATH").map(std::path::PathBuf::from).or_else(|| {
            var("HF_HOME")
                .map(std::path::PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache/huggingface")))
                .map(|h| h.join("token"))
        });
        let token = var("HF_TOKEN").or_else(|| {
            let text = std::fs::read_to_string(token_file?).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        });
        Ok(Self { endpoint, token })
    }
}

/// What `HEAD …/resolve/…` says about one file.
#[derive(Debug, Clone)]
pub struct FileMeta {
    pub commit: String,
    pub etag: String,
    pub size: u64,
    /// Where the bytes are: the redirect target for LFS files, else the resolve URL.
    pub url: Url,
}

/// One file of one repo, for messages.
#[derive(Debug, Clone, Copy)]
pub struct FileRef<'a> {
    pub repo: &'a str,
    pub revision: &'a str,
    pub path: &'a str,
}

pub struct Client {
    config: HubConfig,
    /// No redirects: HEAD must see the LFS redirect's own headers.
    head_http: reqwest::Client,
    get_http: reqwest::Client,
}

impl Client {
    pub fn new(config: HubConfig) -> Result<Self> {
        let build = |policy| {
            reqwest::Client::builder()
                .redirect(policy)
                .connect_timeout(Duration::from_secs(20))
                .read_timeout(Duration::from_secs(60))
                .user_agent(concat!("lumen/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("starting the HTTP client")
        };
        Ok(Self {
            head_http: build(reqwest::redirect::Policy::none())?,
            get_http: build(reqwest::redirect::Policy::limited(5))?,
            config,
        })
    }

    pub fn endpoint(&self) -> &Url {
        &self.config.endpoint
    }

    fn resolve_url(&self, f: FileRef) -> Result<Url> {
        let base = self.config.endpoint.as_str().trim_end_matches('/');
        let rev = f.revision.replace('/', "%2F");
        Url::parse(&format!("{base}/{}/resolve/{rev}/{}", f.repo, f.path)).context("building the file URL")
    }

    /// The token, only for requests to the endpoint's own origin.
    fn auth(&self, url: &Url) -> Option<String> {
        let same = url.origin() == self.config.endpoint.origin();
        self.config.token.as_ref().filter(|_| same).map(|t| format!("Bearer {t}"))
    }

    /// Sends `make()` until it is answered with something other than a transient failure.
    async fn send(&self, what: &str, make: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let mut attempt = 0;
        loop {
            let failure = match make().send().await {
                Ok(r) if !is_transient(r.status()) => return Ok(r),
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => format!("{e:#}"),
            };
            attempt += 1;
            if attempt > RETRIES {
                bail!("{what}: {failure}, still failing after {RETRIES} retries");
            }
            backoff(what, &failure, attempt).await;
        }
    }

    /// `HEAD` of one file: its commit, checksum, size and download location.
    pub async fn head(&self, f: FileRef<'_>) -> Result<FileMeta> {
        let mut url = self.resolve_url(f)?;
        let what = format!("{} {} at {}", f.repo, f.path, f.revision);
        for _ in 0..5 {
            let resp = self
                .send(&what, || {
                    let mut r = self.head_http.head(url.clone()).header(ACCEPT_ENCODING, "identity");
                    if let Some(a) = self.auth(&url) {
                        r = r.header(AUTHORIZATION, a);
                    }
                    r
                })
                .await?;
            let status = resp.status();
            let headers = resp.headers();
            if status.is_redirection() {
                let loc =
                    header(headers, LOCATION.as_str()).with_context(|| format!("{what}: redirect without Location"))?;
                let relative = Url::parse(&loc).is_err();
                let next = url.join(&loc).with_context(|| format!("{what}: bad redirect {loc:?}"))?;
                if relative {
                    url = next;
                    continue;
                }
                return meta_from(headers, next, &what);
            }
            if status.is_success() {
                return meta_from(headers, url, &what);
            }
            return Err(status_error(status, headers, f, &self.config));
        }
        bail!("{what}: too many redirects")
    }

    /// Downloads `meta` into `dest`, appending to what `dest` already holds (a resumed
    /// download). Returns once `dest` holds `meta.size` bytes.
    pub async fn download(
        &self,
        f: FileRef<'_>,
        meta: &FileMeta,
        dest: &Path,
        bar: &indicatif::ProgressBar,
    ) -> Result<()> {
        let what = format!("downloading {} {}", f.repo, f.path);
        let mut attempt = 0;
        loop {
            let have = file_len(dest);
            if have == meta.size {
                return Ok(());
            }
            if have > meta.size {
                std::fs::File::create(dest).with_context(|| format!("truncating {}", dest.display()))?;
                continue;
            }
            bar.set_position(have);
            let resp = self
                .send(&what, || {
                    let mut r = self.get_http.get(meta.url.clone()).header(ACCEPT_ENCODING, "identity");
                    if have > 0 {
                        r = r.header(RANGE, format!("bytes={have}-"));
                    }
                    if let Some(a) = self.auth(&meta.url) {
                        r = r.header(AUTHORIZATION, a);
                    }
                    r
                })
                .await?;
            let status = resp.status();
            let mut file = match status {
                StatusCode::PARTIAL_CONTENT if have > 0 => std::fs::OpenOptions::new().append(true).open(dest),
                StatusCode::OK => std::fs::File::create(dest),
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    std::fs::File::create(dest).with_context(|| format!("truncating {}", dest.display()))?;
                    continue;
                }
                s if s.is_client_error() => return Err(status_error(s, resp.headers(), f, &self.config)),
                s => bail!("{what}: unexpected HTTP {s}"),
            }
            .with_context(|| format!("opening {}", dest.display()))?;
            if status == StatusCode::OK {
                bar.set_position(0);
            }
            let failure = match copy_body(resp, &mut file, bar).await {
                Ok(()) if file_len(dest) == meta.size => return Ok(()),
                Ok(()) if file_len(dest) > meta.size => {
                    std::fs::remove_file(dest).with_context(|| format!("removing {}", dest.display()))?;
                    bail!("{what}: the server sent more than the {} bytes the hub announced", meta.size)
                }
                Ok(()) => "the body ended early".to_string(),
                Err(BodyError::Disk(e)) => return Err(e.context(format!("writing {}", dest.display()))),
                Err(BodyError::Network(e)) => format!("{e}"),
            };
            // Bytes that arrived count as progress: only failures in a row use up the retries.
            attempt = if file_len(dest) > have { 1 } else { attempt + 1 };
            if attempt > RETRIES {
                bail!("{what}: {failure}, still failing after {RETRIES} retries");
            }
            backoff(&what, &failure, attempt).await;
        }
    }
}

enum BodyError {
    Disk(anyhow::Error),
    /// The connection failed.
    Network(reqwest::Error),
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

async fn copy_body(
    mut resp: reqwest::Response,
    file: &mut std::fs::File,
    bar: &indicatif::ProgressBar,
) -> Result<(), BodyError> {
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                file.write_all(&chunk).map_err(|e| BodyError::Disk(e.into()))?;
                bar.inc(chunk.len() as u64);
            }
            Ok(None) => return file.flush().map_err(|e| BodyError::Disk(e.into())),
            Err(e) => {
                let _ = file.flush();
                return Err(BodyError::Network(e));
            }
        }
    }
}

fn is_transient(s: StatusCode) -> bool {
    s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT
}

async fn backoff(what: &str, failure: &str, attempt: u32) {
    let wait = FIRST_BACKOFF * 2u32.pow(attempt - 1);
    tracing::warn!("{what}: {failure}; retry {attempt}/{RETRIES} in {} s", wait.as_secs());
    tokio::time::sleep(wait).await;
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(|s| s.trim().to_string())
}

/// `"abc"` / `W/"abc"` → `abc`.
fn clean_etag(s: &str) -> String {
    s.trim_start_matches("W/").trim_matches('"').to_string()
}

fn meta_from(h: &HeaderMap, url: Url, what: &str) -> Result<FileMeta> {
    let commit = header(h, "x-repo-commit").with_context(|| format!("{what}: the hub sent no X-Repo-Commit header"))?;
    let etag = header(h, "x-linked-etag")
        .or_else(|| header(h, "etag"))
        .map(|e| clean_etag(&e))
        .with_context(|| format!("{what}: the hub sent no ETag"))?;
    let size = header(h, "x-linked-size")
        .or_else(|| header(h, "content-length"))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{what}: the hub sent no size"))?;
    Ok(FileMeta { commit, etag, size, url })
}

/// 401, 403 and 404 in words: which repo and file, why, and what to do.
fn status_error(status: StatusCode, h: &HeaderMap, f: FileRef, config: &HubConfig) -> anyhow::Error {
    let code = header(h, "x-error-code").unwrap_or_default();
    let server = header(h, "x-error-message").map(|m| format!(" (hub: {m})")).unwrap_or_default();
    let page = format!("{}/{}", config.endpoint.as_str().trim_end_matches('/'), f.repo);
    let token = if config.token.is_some() { "the token in HF_TOKEN" } else { "no token (HF_TOKEN is not set)" };
    let file = format!("{} of {} at revision {}", f.path, f.repo, f.revision);
    let msg = match (status.as_u16(), code.as_str()) {
        (_, "RevisionNotFound") => format!(
            "HTTP {status} for {file}: {} has no revision {}{server}; fix the --revision override (or LUMEN_REVISION)",
            f.repo, f.revision
        ),
        (_, "EntryNotFound") | (404, "") => format!(
            "HTTP {status} for {file}: the file is not in that revision{server}; if the revision was overridden, pick one that has it"
        ),
        (401 | 404, "RepoNotFound") => format!(
            "HTTP {status} for {file}: the hub does not show the repo {} to {token}{server}; check the name, or set HF_TOKEN to a token that can read it",
            f.repo
        ),
        (401, _) | (403, "GatedRepo") => format!(
            "HTTP {status} for {file}: access refused with {token}{server}; the repo is gated or private: accept its terms at {page} and set HF_TOKEN to a read token of that account"
        ),
        (403, _) => format!(
            "HTTP {status} for {file}: {token} is not allowed to read this repo{server}; request access at {page} or use a token with read access"
        ),
        _ => format!("HTTP {status} for {file}{server}"),
    };
    UsageError(msg).into()
}

/// Progress of one file: a bar with bytes and rate on a terminal, nothing otherwise (the
/// caller logs one line per finished file instead).
pub fn file_bar(label: &str, size: u64, visible: bool) -> indicatif::ProgressBar {
    const TEMPLATE: &str =
        "{prefix:<44!} {bytes:>10} / {total_bytes:<10} {binary_bytes_per_sec:>12} [{bar:24}] {eta:>4}";
    let bar = crate::progress::bar(size, visible).with_prefix(label.to_string());
    bar.set_style(indicatif::ProgressStyle::with_template(TEMPLATE).expect("valid template").progress_chars("=> "));
    bar
}

/// `12.3 MB`, for log lines.
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.2} GB", n / 1e9),
        n if n >= 1e6 => format!("{:.1} MB", n / 1e6),
        n if n >= 1e3 => format!("{:.1} kB", n / 1e3),
        n => format!("{n} B"),
    }
}

/// `(bytes, seconds)` → `12.3 MB/s`.
pub fn rate(bytes: u64, since: Instant) -> String {
    let s = since.elapsed().as_secs_f64().max(1e-3);
    format!("{}/s", human_bytes((bytes as f64 / s) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(token: Option<&str>) -> HubConfig {
        HubConfig { endpoint: Url::parse("http://127.0.0.1:1").unwrap(), token: token.map(Into::into) }
    }

    fn headers(code: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if !code.is_empty() {
            h.insert("x-error-code", code.parse().unwrap());
        }
        h
    }

    #[test]
    fn refusals_name_the_repo_the_file_and_the_fix() {
        let f = FileRef { repo: "o/r", revision: "main", path: "unet/x.safetensors" };
        let e = status_error(StatusCode::UNAUTHORIZED, &headers("GatedRepo"), f, &cfg(None)).to_string();
        assert!(e.contains("o/r") && e.contains("unet/x.safetensors") && e.contains("HF_TOKEN is not set"), "{e}");
        let e = status_error(StatusCode::FORBIDDEN, &headers(""), f, &cfg(Some("t"))).to_string();
        assert!(e.contains("403") && e.contains("not allowed"), "{e}");
        let e = status_error(StatusCode::NOT_FOUND, &headers("EntryNotFound"), f, &cfg(None)).to_string();
        assert!(e.contains("not in that revision"), "{e}");
        let e = status_error(StatusCode::NOT_FOUND, &headers("RevisionNotFound"), f, &cfg(None)).to_string();
        assert!(e.contains("has no revision main"), "{e}");
        let e = status_error(StatusCode::UNAUTHORIZED, &headers("RepoNotFound"), f, &cfg(None));
        assert!(crate::error::is_usage(&e) && e.to_string().contains("does not show the repo"), "{e}");
    }

    #[test]
    fn etags_and_sizes() {
        assert_eq!(clean_etag("W/\"abc\""), "abc");
        assert_eq!(human_bytes(7_105_319_356), "7.11 GB");
        let mut h = HeaderMap::new();
        h.insert("x-repo-commit", "c".parse().unwrap());
        h.insert("etag", "\"git\"".parse().unwrap());
        h.insert("x-linked-etag", "\"lfs\"".parse().unwrap());
        h.insert("content-length", "10".parse().unwrap());
        h.insert("x-linked-size", "99".parse().unwrap());
        let m = meta_from(&h, Url::parse("http://h/x").unwrap(), "x").unwrap();
        assert_eq!((m.etag.as_str(), m.size), ("lfs", 99));
    }
}
