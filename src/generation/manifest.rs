//! The store's `manifest.json` after a batch: new and overwritten assets, every text asked
//! for under a key (collisions), entries rebuilt from blobs a killed run left unrecorded.

use anyhow::Result;

use super::ConceptResult;
use crate::store::{ManifestEntry, Store};

/// Adds the outcome of a batch to the manifest: new and overwritten assets, and every text
/// asked for under a key (two different texts under one key are a collision). An existing
/// asset missing from the manifest (say, after a killed run) is read back to fill its entry.
pub fn record_in_manifest(store: &Store, results: &[(ConceptResult, String, String)]) -> Result<()> {
    store.update_manifest(|m| {
        for (r, normalized, created_at) in results {
            if r.status == "failed" {
                continue;
            }
            if !m.entries.contains_key(&r.key) {
                let entry = if r.status == "exists" {
                    match entry_from_blob(store, &r.key) {
                        Some(e) => e,
                        None => continue,
                    }
                } else {
                    new_entry(r, normalized, created_at)
                };
                m.entries.insert(r.key.clone(), entry);
            } else if r.status != "exists" {
                let texts = std::mem::take(&mut m.entries.get_mut(&r.key).unwrap().texts);
                m.entries.insert(r.key.clone(), ManifestEntry { texts, ..new_entry(r, normalized, created_at) });
            }
            let entry = m.entries.get_mut(&r.key).unwrap();
            for t in [entry.text.clone(), r.text.clone()] {
                if !entry.texts.contains(&t) {
                    entry.texts.push(t);
                }
            }
        }
    })?;
    Ok(())
}

/// Updates the manifest after a batch. A failure (say, a full disk) does not hide the
/// batch's results: it is logged, returned for the summary, and makes the exit code 1; the
/// assets themselves are stored and `stats --repair` rebuilds the manifest from them.
pub fn manifest_update(store: &Store, results: &[(ConceptResult, String, String)]) -> Option<String> {
    match record_in_manifest(store, results) {
        Ok(()) => None,
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("manifest.json not updated: {msg} (run `lumen stats --repair` once the store is healthy)");
            Some(msg)
        }
    }
}

fn new_entry(r: &ConceptResult, normalized: &str, created_at: &str) -> ManifestEntry {
    ManifestEntry {
        text: r.text.clone(),
        normalized: normalized.to_string(),
        size: r.bytes.unwrap_or(0) as u64,
        pipeline: r.pipeline.clone().unwrap_or_default(),
        created_at: created_at.to_string(),
        texts: vec![],
        quality: r.quality.clone(),
    }
}

/// The manifest entry of a stored asset, read from the asset itself (`None` if unreadable).
pub fn entry_from_blob(store: &Store, key: &str) -> Option<ManifestEntry> {
    let bytes = store.get(&Store::shape_rel(key)).ok()??;
    let (asset, _) = crate::asset::Asset::decode(&bytes).ok()?;
    Some(ManifestEntry {
        text: asset.text,
        normalized: asset.normalized,
        size: bytes.len() as u64,
        pipeline: asset.pipeline.name,
        created_at: asset.created_at,
        texts: vec![],
        quality: asset.quality.as_ref().map(crate::quality::QualitySummary::from),
    })
}
