//! `lumen stats`: what a store holds, read from the assets themselves (the manifest is
//! only compared against them), so a damaged manifest or blob is reported, not trusted.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::{emit, emit_json};
use crate::asset::Asset;
use crate::error::exit;
use crate::store::{Manifest, ManifestEntry, Store, StoreOptions};

#[derive(Debug, Default, Serialize)]
pub struct StatsReport {
    pub store: String,
    pub assets: usize,
    pub total_bytes: u64,
    pub size_bytes: Percentiles,
    pub pipelines: BTreeMap<String, usize>,
    /// "model@revision" → count.
    pub models: BTreeMap<String, usize>,
    pub timings_ms: BTreeMap<String, Percentiles>,
    pub collisions: Vec<CollisionReport>,
    pub invalid: Vec<InvalidBlob>,
    pub manifest: ManifestCheck,
}

#[derive(Debug, Default, Serialize, Clone, PartialEq)]
pub struct Percentiles {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(values: &mut [f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Self { min: values[0], p50: at(0.5), p90: at(0.9), max: values[values.len() - 1] }
    }
}

#[derive(Debug, Serialize)]
pub struct CollisionReport {
    pub key: String,
    pub texts: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct InvalidBlob {
    pub key: String,
    pub error: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ManifestCheck {
    pub entries: usize,
    /// Stored assets the manifest does not list.
    pub missing: Vec<String>,
    /// Manifest entries without a stored asset.
    pub stale: Vec<String>,
    pub repaired: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn run(store_url: &str, json: bool, repair: bool) -> Result<u8> {
    let store = Store::open(store_url, &StoreOptions::from_env())?;
    let report = collect(&store, repair)?;
    if json {
        emit_json(&serde_json::to_value(&report)?);
    } else {
        print_human(&report);
    }
    if !report.invalid.is_empty() {
        tracing::warn!("{} invalid blob(s) in {}", report.invalid.len(), report.store);
        return Ok(exit::USAGE);
    }
    Ok(exit::OK)
}

pub fn collect(store: &Store, repair: bool) -> Result<StatsReport> {
    let (manifest, manifest_error) = match store.read_manifest() {
        Ok(m) => (m, None),
        Err(e) => (Manifest::default(), Some(format!("{e:#}"))),
    };
    let mut report = StatsReport { store: store.url().to_string(), ..Default::default() };
    let mut sizes = Vec::new();
    let mut timings: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut rebuilt: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    let shapes = store.list_shapes()?;
    for (key, size) in &shapes {
        let bytes = match store.get(&Store::shape_rel(key))? {
            Some(b) => b,
            None => continue, // deleted while listing
        };
        let asset = match Asset::decode(&bytes) {
            Ok((a, _)) if a.key == *key => a,
            Ok((a, _)) => {
                report.invalid.push(InvalidBlob {
                    key: key.clone(),
                    error: format!("stored under {key} but its key is {}", a.key),
                });
                continue;
            }
            Err(e) => {
                report.invalid.push(InvalidBlob { key: key.clone(), error: e.to_string() });
                continue;
            }
        };
        report.assets += 1;
        report.total_bytes += size;
        sizes.push(*size as f64);
        *report.pipelines.entry(asset.pipeline.name.clone()).or_default() += 1;
        for m in &asset.pipeline.models {
            *report.models.entry(format!("{}@{}", m.id, m.revision)).or_default() += 1;
        }
        for (stage, ms) in &asset.timings_ms {
            timings.entry(stage.clone()).or_default().push(*ms);
        }
        let texts = manifest.entries.get(key).map(|e| e.texts.clone()).unwrap_or_default();
        rebuilt.insert(
            key.clone(),
            ManifestEntry {
                text: asset.text,
                normalized: asset.normalized,
                size: *size,
                pipeline: asset.pipeline.name,
                created_at: asset.created_at,
                texts,
            },
        );
    }
    report.size_bytes = Percentiles::of(&mut sizes);
    report.timings_ms = timings.into_iter().map(|(k, mut v)| (k, Percentiles::of(&mut v))).collect();
    report.collisions = manifest
        .entries
        .iter()
        .filter(|(_, e)| e.texts.len() > 1)
        .map(|(k, e)| CollisionReport { key: k.clone(), texts: e.texts.clone() })
        .collect();
    report.manifest = ManifestCheck {
        entries: manifest.entries.len(),
        missing: rebuilt.keys().filter(|k| !manifest.entries.contains_key(*k)).cloned().collect(),
        stale: manifest.entries.keys().filter(|k| !rebuilt.contains_key(*k)).cloned().collect(),
        repaired: false,
        error: manifest_error,
    };
    if repair {
        store.write_manifest(&Manifest { entries: rebuilt, ..Default::default() })?;
        report.manifest.repaired = true;
    }
    Ok(report)
}

fn print_human(r: &StatsReport) {
    emit(&format!("store        {}", r.store));
    emit(&format!("assets       {} ({} bytes in all)", r.assets, r.total_bytes));
    if r.assets > 0 {
        let s = &r.size_bytes;
        emit(&format!("asset size   min {:.0}  median {:.0}  p90 {:.0}  max {:.0} bytes", s.min, s.p50, s.p90, s.max));
    }
    for (p, n) in &r.pipelines {
        emit(&format!("pipeline     {p}: {n}"));
    }
    for (m, n) in &r.models {
        emit(&format!("model        {m}: {n}"));
    }
    for (stage, t) in &r.timings_ms {
        emit(&format!("time {stage:<12} p50 {:.1}  p90 {:.1}  max {:.1} ms", t.p50, t.p90, t.max));
    }
    for c in &r.collisions {
        emit(&format!("collision    {}: {:?}", c.key, c.texts));
    }
    for b in &r.invalid {
        emit(&format!("INVALID      shapes/{}.json: {}", b.key, b.error));
    }
    let m = &r.manifest;
    emit(&format!(
        "manifest     {} entries, {} assets missing from it, {} stale entries{}",
        m.entries,
        m.missing.len(),
        m.stale.len(),
        if m.repaired { " (rebuilt)" } else { "" }
    ));
    if let Some(e) = &m.error {
        emit(&format!("manifest     error: {e}"));
    }
}
