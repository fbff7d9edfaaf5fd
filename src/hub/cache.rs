//! The Hugging Face cache on disk, in the Python client's layout so that Python tools and
//! lumen share one copy of the weights:
//!
//! ```text
//! models--{owner}--{name}/
//!   refs/{revision}               the commit a branch or tag resolved to
//!   blobs/{etag}                  file contents, named by the hub's checksum
//!   blobs/{etag}.incomplete       a download in progress (resumed with a Range request)
//!   snapshots/{commit}/{path}     relative symlinks into blobs/
//! .locks/models--{owner}--{name}/{etag}.lock
//! ```
//!
//! The etag of a Git-LFS file is the sha256 of its contents, that of a plain git file the git
//! blob sha1; either can be checked against the bytes (see [`verify_file`]).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::Digest;

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub root: PathBuf,
    locks: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo_id: &str) -> Self {
        let folder = format!("models--{}", repo_id.replace('/', "--"));
        Self { root: cache_dir.join(&folder), locks: cache_dir.join(".locks").join(folder) }
    }

    /// The commit `revision` stands for locally: itself when it is a commit hash, else what
    /// `refs/{revision}` holds (None when the revision was never fetched).
    pub fn commit_for(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.root.join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| !c.is_empty())
    }

    pub fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        if is_commit_hash(revision) {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        std::fs::write(&path, commit).with_context(|| format!("writing {}", path.display()))
    }

    pub fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.root.join("snapshots").join(commit)
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    /// The etag of a file already in a snapshot (the name of the blob its link points to),
    /// when the link resolves.
    pub fn cached_etag(&self, commit: &str, path: &str) -> Option<String> {
        let link = self.snapshot_dir(commit).join(path);
        if !link.is_file() {
            return None;
        }
        let target = std::fs::read_link(&link).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// Links `snapshots/{commit}/{path}` to `blobs/{etag}` with a relative symlink, as the
    /// Python client does (a copied or mounted cache keeps working).
    pub fn link(&self, commit: &str, path: &str, etag: &str) -> Result<PathBuf> {
        let link = self.snapshot_dir(commit).join(path);
        let parent = link.parent().context("snapshot path has no parent")?;
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        // snapshots/{commit}/a/b/file → ../../../blobs/{etag}: one `..` per folder below the repo root.
        let depth = path.matches('/').count() + 2;
        let target = format!("{}blobs/{etag}", "../".repeat(depth));
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("linking {}", link.display()))?;
        Ok(link)
    }

    /// Holds the download lock of one blob (the lock file the Python client uses too), so two
    /// processes filling one cache never write the same `.incomplete` file.
    pub fn lock(&self, etag: &str) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.locks).with_context(|| format!("creating {}", self.locks.display()))?;
        let path = self.locks.join(format!("{etag}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a file descriptor this function owns; released when `file` closes.
        let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("locking {}", path.display()));
        }
        Ok(file)
    }
}

pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What an etag lets us check: the sha256 of an LFS file or the git blob sha1 of a small one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256(String),
    GitSha1(String),
}

impl Checksum {
    /// From a hub etag (quotes and a weak `W/` prefix already stripped).
    pub fn from_etag(etag: &str) -> Option<Self> {
        let hex = etag.bytes().all(|b| b.is_ascii_hexdigit());
        match etag.len() {
            64 if hex => Some(Self::Sha256(etag.to_ascii_lowercase())),
            40 if hex => Some(Self::GitSha1(etag.to_ascii_lowercase())),
            _ => None,
        }
    }

    pub fn expected(&self) -> &str {
        match self {
            Self::Sha256(h) | Self::GitSha1(h) => h,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sha256(_) => "sha256",
            Self::GitSha1(_) => "git sha1",
        }
    }
}

/// Hashes `path` the way `sum` says and compares. Err when it cannot be read; Ok(Some(actual))
/// when it differs.
pub fn verify_file(path: &Path, sum: &Checksum) -> Result<Option<String>> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut feed = |update: &mut dyn FnMut(&[u8])| -> Result<()> {
        loop {
            let n = file.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                return Ok(());
            }
            update(&buf[..n]);
        }
    };
    let actual = match sum {
        Checksum::Sha256(_) => {
            let mut h = sha2::Sha256::new();
            feed(&mut |b| h.update(b))?;
            hex(&h.finalize())
        }
        Checksum::GitSha1(_) => {
            let mut h = sha1::Sha1::new();
            h.update(format!("blob {len}\0").as_bytes());
            feed(&mut |b| h.update(b))?;
            hex(&h.finalize())
        }
    };
    Ok((actual != sum.expected()).then_some(actual))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fails unless `path` matches `sum`, naming the file and both values.
pub fn check_file(path: &Path, sum: &Checksum, what: &str) -> Result<()> {
    if let Some(actual) = verify_file(path, sum)? {
        bail!("{what}: {} mismatch (expected {}, got {actual})", sum.kind(), sum.expected());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_of_both_kinds() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"hello\n").unwrap();
        // `git hash-object` of "hello\n" and `sha256sum` of the same bytes.
        let git = Checksum::from_etag("ce013625030ba8dba906f756967f9e9ca394464a").unwrap();
        let sha = Checksum::from_etag("5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03").unwrap();
        assert_eq!(verify_file(&f, &git).unwrap(), None);
        assert_eq!(verify_file(&f, &sha).unwrap(), None);
        std::fs::write(&f, b"hellO\n").unwrap();
        assert!(verify_file(&f, &sha).unwrap().is_some());
        assert!(check_file(&f, &git, "f").unwrap_err().to_string().contains("git sha1 mismatch"));
        assert_eq!(Checksum::from_etag("not-a-hash"), None);
    }

    #[test]
    fn links_are_relative_and_resolve() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(tmp.path(), "owner/name");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(cache.root.join("blobs")).unwrap();
        std::fs::write(cache.blob("e1"), b"x").unwrap();
        let link = cache.link(commit, "a/b/file.json", "e1").unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), PathBuf::from("../../../../blobs/e1"));
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
        assert_eq!(cache.cached_etag(commit, "a/b/file.json").as_deref(), Some("e1"));
        cache.write_ref("main", commit).unwrap();
        assert_eq!(cache.commit_for("main").as_deref(), Some(commit));
        assert_eq!(cache.commit_for("v2"), None);
        assert!(tmp.path().join("models--owner--name/refs/main").is_file());
    }
}
