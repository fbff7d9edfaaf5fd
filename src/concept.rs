//! Concepts: validation, normalisation, store keys and catalogues.
//!
//! The key of a concept is derived from its *normalised* text so that "Chair",
//! " chair " and "chair." share one asset. Normalisation (PRODUCT.md): Unicode NFKC,
//! lower case, trimmed, inner whitespace collapsed, surrounding punctuation removed.
//! Two different texts that normalise alike are a *collision*: reported, never silent.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::error::UsageError;

/// Longest concept text accepted, in characters: a concept is a short noun phrase.
pub const MAX_CONCEPT_CHARS: usize = 200;
/// Part counts PartCrafter supports.
pub const MAX_PARTS: usize = 16;
/// Part count used when neither the command line nor the catalogue gives one.
pub const DEFAULT_PARTS: usize = 4;

/// Lower-cased NFKC text with whitespace collapsed and surrounding punctuation removed.
pub fn normalize(text: &str) -> String {
    let nfkc: String = text.nfkc().collect::<String>().to_lowercase();
    let collapsed = nfkc.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed
        .trim_matches(|c: char| c.is_ascii_punctuation() || is_unicode_punctuation(c) || c.is_whitespace())
        .to_string()
}

fn is_unicode_punctuation(c: char) -> bool {
    // Common non-ASCII punctuation after NFKC (quotes, dashes, ellipsis, CJK marks).
    matches!(c, '\u{2010}'..='\u{2027}' | '\u{3001}'..='\u{3003}' | '«' | '»' | '¡' | '¿' | '·')
}

/// The store key: the first 16 hex digits of SHA-256 over the normalised text.
pub fn key_of(normalized: &str) -> String {
    let digest = Sha256::digest(normalized.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A validated concept ready for generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concept {
    pub text: String,
    pub normalized: String,
    pub key: String,
}

impl Concept {
    /// Validates user text: not empty, not absurdly long, no control characters.
    pub fn parse(text: &str) -> Result<Self, UsageError> {
        if text.chars().any(|c| c.is_control()) {
            return Err(UsageError(format!("concept {:?} contains control characters", preview(text))));
        }
        let chars = text.chars().count();
        if chars > MAX_CONCEPT_CHARS {
            return Err(UsageError(format!(
                "concept is {chars} characters long; at most {MAX_CONCEPT_CHARS} are accepted (a concept is a short noun phrase like \"office chair\")"
            )));
        }
        let normalized = normalize(text);
        if normalized.is_empty() {
            return Err(UsageError(format!(
                "concept {:?} is empty once whitespace and punctuation are removed",
                preview(text)
            )));
        }
        let key = key_of(&normalized);
        Ok(Self { text: text.trim().to_string(), normalized, key })
    }
}

fn preview(text: &str) -> String {
    let p: String = text.chars().take(40).collect();
    if text.chars().count() > 40 {
        format!("{p}…")
    } else {
        p
    }
}

/// Validates a part count (1–16).
pub fn check_parts(parts: usize) -> Result<usize, UsageError> {
    if (1..=MAX_PARTS).contains(&parts) {
        Ok(parts)
    } else {
        Err(UsageError(format!("--parts must be between 1 and {MAX_PARTS}, got {parts}")))
    }
}

/// The default seed of a concept: stable across runs and machines, different per key.
pub fn default_seed(key: &str) -> u64 {
    u64::from_str_radix(&key[..key.len().min(16)], 16).unwrap_or(0) & 0x7fff_ffff
}

/// One catalogue entry (`concepts/*.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Names for part ids 1..N in canonical order (largest part first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub part_names: Vec<String>,
}

/// A catalogue file: either a bare array of entries or `{"concepts": [...]}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum CatalogFile {
    List(Vec<CatalogEntry>),
    Object {
        #[serde(default)]
        #[allow(dead_code)]
        description: Option<String>,
        concepts: Vec<CatalogEntry>,
    },
}

/// A parsed, validated catalogue.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub entries: Vec<CatalogEntry>,
}

/// Texts that normalise to the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Collision {
    pub key: String,
    pub normalized: String,
    pub texts: Vec<String>,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| UsageError(format!("cannot read catalogue {}: {e}", path.display())))?;
        Self::parse(&text).with_context(|| format!("catalogue {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self> {
        let file: CatalogFile =
            serde_json::from_str(text).map_err(|e| UsageError(format!("malformed catalogue JSON: {e}")))?;
        let entries = match file {
            CatalogFile::List(e) => e,
            CatalogFile::Object { concepts, .. } => concepts,
        };
        if entries.is_empty() {
            bail!(UsageError("the catalogue lists no concepts".into()));
        }
        for (i, e) in entries.iter().enumerate() {
            Concept::parse(&e.name).map_err(|err| UsageError(format!("entry {i}: {}", err.0)))?;
            if let Some(p) = e.parts {
                check_parts(p).map_err(|err| UsageError(format!("entry {i} ({}): {}", e.name, err.0)))?;
            }
            if e.part_names.len() > MAX_PARTS {
                bail!(UsageError(format!("entry {i} ({}): more than {MAX_PARTS} part names", e.name)));
            }
        }
        Ok(Self { entries })
    }

    /// Entries whose names (or aliases) normalise to the same key as another entry's.
    pub fn collisions(&self) -> Vec<Collision> {
        let mut by_key: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
        for e in &self.entries {
            if let Ok(c) = Concept::parse(&e.name) {
                let slot = by_key.entry(c.key.clone()).or_insert_with(|| (c.normalized.clone(), Vec::new()));
                slot.1.push(e.name.clone());
            }
        }
        by_key
            .into_iter()
            .filter(|(_, (_, texts))| texts.len() > 1)
            .map(|(key, (normalized, texts))| Collision { key, normalized, texts })
            .collect()
    }

    /// Looks up the entry for a concept by key (name or alias).
    pub fn find(&self, concept: &Concept) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| {
            std::iter::once(&e.name).chain(&e.aliases).any(|t| Concept::parse(t).is_ok_and(|c| c.key == concept.key))
        })
    }
}

/// `--shard I/N` parsing and membership (by key, so shards never share a key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn parse(s: &str) -> Result<Self, UsageError> {
        let bad = || UsageError(format!("--shard takes INDEX/COUNT with 0 <= INDEX < COUNT (e.g. 0/4), got {s:?}"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }

    /// From the job engines' index variables: Cloud Run Jobs (`CLOUD_RUN_TASK_INDEX`,
    /// `CLOUD_RUN_TASK_COUNT`) or Kubernetes Indexed Jobs (`JOB_COMPLETION_INDEX`, with the
    /// count from `LUMEN_SHARD_COUNT` since Kubernetes does not export `completions`).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, UsageError> {
        let num = |k: &str| -> Result<Option<usize>, UsageError> {
            get(k).map(|v| v.trim().parse().map_err(|_| UsageError(format!("{k}={v:?} is not a number")))).transpose()
        };
        if let (Some(index), Some(count)) = (num("CLOUD_RUN_TASK_INDEX")?, num("CLOUD_RUN_TASK_COUNT")?) {
            return Self::parse(&format!("{index}/{count}")).map(Some);
        }
        if let Some(index) = num("JOB_COMPLETION_INDEX")? {
            let count = num("LUMEN_SHARD_COUNT")?.ok_or_else(|| {
                UsageError("JOB_COMPLETION_INDEX is set but LUMEN_SHARD_COUNT (the job's completions) is not".into())
            })?;
            return Self::parse(&format!("{index}/{count}")).map(Some);
        }
        Ok(None)
    }

    pub fn contains(&self, key: &str) -> bool {
        let k = u64::from_str_radix(&key[..key.len().min(16)], 16).unwrap_or(0);
        (k % self.count as u64) as usize == self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_folds_case_width_space_and_punctuation() {
        assert_eq!(normalize("  Office   Chair. "), "office chair");
        assert_eq!(normalize("ＣＨＡＩＲ"), "chair");
        assert_eq!(normalize("\"chair!\""), "chair");
        assert_eq!(normalize("rock'n'roll guitar"), "rock'n'roll guitar");
        assert_eq!(key_of("chair"), Concept::parse(" Chair ").unwrap().key);
        assert_ne!(key_of("chair"), key_of("chairs"));
        assert_eq!(key_of("chair").len(), 16);
    }

    #[test]
    fn rejects_bad_concepts() {
        assert!(Concept::parse("").is_err());
        assert!(Concept::parse("   ").is_err());
        assert!(Concept::parse("...").is_err());
        assert!(Concept::parse("a\u{7}b").is_err());
        assert!(Concept::parse(&"x".repeat(10_000)).is_err());
        assert!(Concept::parse("chair").is_ok());
        assert!(check_parts(0).is_err() && check_parts(17).is_err() && check_parts(16).is_ok());
    }

    #[test]
    fn shards_partition_keys() {
        assert!(Shard::parse("1/0").is_err() && Shard::parse("2/2").is_err() && Shard::parse("x").is_err());
        let shards: Vec<_> = (0..3).map(|i| Shard { index: i, count: 3 }).collect();
        for t in ["chair", "eagle", "car", "tree", "lamp"] {
            let k = Concept::parse(t).unwrap().key;
            assert_eq!(shards.iter().filter(|s| s.contains(&k)).count(), 1);
        }
        let env = |k: &str| match k {
            "CLOUD_RUN_TASK_INDEX" => Some("2".to_string()),
            "CLOUD_RUN_TASK_COUNT" => Some("5".to_string()),
            _ => None,
        };
        assert_eq!(Shard::from_env(env).unwrap(), Some(Shard { index: 2, count: 5 }));
        assert!(Shard::from_env(|k| (k == "JOB_COMPLETION_INDEX").then(|| "1".to_string())).is_err());
    }

    #[test]
    fn catalogue_collisions_and_errors() {
        let c = Catalog::parse(r#"[{"name":"Chair"},{"name":"chair."},{"name":"eagle","parts":3}]"#).unwrap();
        let col = c.collisions();
        assert_eq!(col.len(), 1);
        assert_eq!(col[0].texts, vec!["Chair", "chair."]);
        assert!(Catalog::parse(r#"[{"name":"x","parts":17}]"#).is_err());
        assert!(Catalog::parse(r#"{"concepts":[]}"#).is_err());
        assert!(Catalog::parse("not json").is_err());
        assert!(Catalog::parse(r#"[{"name":"chair","color":"red"}]"#).is_err());
    }
}
