//! `lumen stats`: what a store holds, read from the assets themselves (the manifest is
//! only compared against them), so a damaged manifest or blob is reported, not trusted.
//! Also how good the assets are (verdict counts, the weakest ones) and which are stale
//! against the settings of the flags given (see `stale.rs`; no weights are loaded).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::{emit, emit_json};
use crate::asset::Asset;
use crate::cli::StatsArgs;
use crate::error::exit;
use crate::pipeline::partcrafter::ModelOptions;
use crate::quality::{QualitySummary, Verdict};
use crate::stale::{Against, Current};
use crate::store::{Manifest, ManifestEntry, Store, StoreOptions};

#[derive(Debug, Clone)]
pub struct StatsOptions {
    pub store: String,
    pub json: bool,
    pub repair: bool,
    /// How many of the weakest assets to list.
    pub weakest: usize,
    pub current: Current,
}

impl StatsOptions {
    pub fn from_args(a: StatsArgs) -> Result<Self> {
        let catalog = a.catalog.as_deref().map(crate::concept::Catalog::load).transpose()?;
        let model = ModelOptions::from(&a.model);
        Ok(Self {
            store: a.store.store,
            json: a.json,
            repair: a.repair,
            weakest: a.weakest,
            current: Current::new(a.pipeline.map(Into::into), &model, a.points as usize, catalog),
        })
    }
}

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
    pub quality: QualityReport,
    pub stale: StaleReport,
}

#[derive(Debug, Default, Serialize)]
pub struct QualityReport {
    /// ok | weak | bad | unknown (assets without a quality object) → count.
    pub verdicts: BTreeMap<String, usize>,
    /// Assets stored with their best attempt under the run's --min-quality.
    pub below_gate: usize,
    /// Assets that took more than one attempt.
    pub retried: usize,
    /// The weakest assets, bad first (unknown ones are not listed).
    pub weakest: Vec<WeakAsset>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WeakAsset {
    pub key: String,
    pub text: String,
    pub verdict: Verdict,
    pub reasons: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct StaleReport {
    pub count: usize,
    /// Reason → how many assets it applies to.
    pub reasons: BTreeMap<String, usize>,
    pub assets: Vec<StaleAsset>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<Against>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StaleAsset {
    pub key: String,
    pub text: String,
    pub reasons: Vec<String>,
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

pub fn run(opts: StatsOptions) -> Result<u8> {
    let store = Store::open(&opts.store, &StoreOptions::from_env())?;
    let report = collect(&store, opts.repair, &opts.current, opts.weakest)?;
    if opts.json {
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

pub fn collect(store: &Store, repair: bool, current: &Current, weakest: usize) -> Result<StatsReport> {
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
        count_quality(&mut report.quality, key, &asset);
        count_stale(&mut report.stale, key, &asset, current);
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
                quality: asset.quality.as_ref().map(QualitySummary::from),
            },
        );
    }
    report.size_bytes = Percentiles::of(&mut sizes);
    let w = &mut report.quality.weakest;
    w.sort_by(|a, b| a.verdict.cmp(&b.verdict).then(b.reasons.len().cmp(&a.reasons.len())).then(a.text.cmp(&b.text)));
    w.truncate(weakest);
    report.stale.against = Some(current.against());
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

/// Verdict counts and the candidates for the weakest list (sorted and cut after the scan).
fn count_quality(r: &mut QualityReport, key: &str, asset: &Asset) {
    let Some(q) = &asset.quality else {
        *r.verdicts.entry("unknown".into()).or_default() += 1;
        return;
    };
    *r.verdicts.entry(q.verdict.to_string()).or_default() += 1;
    r.below_gate += usize::from(q.gate.is_some_and(|g| !g.passed));
    r.retried += usize::from(q.attempts.len() > 1);
    if q.verdict != Verdict::Ok {
        let text = asset.text.clone();
        r.weakest.push(WeakAsset { key: key.into(), text, verdict: q.verdict, reasons: q.reasons.clone() });
    }
}

fn count_stale(r: &mut StaleReport, key: &str, asset: &Asset, current: &Current) {
    let why = current.why_stale(asset);
    if why.is_empty() {
        return;
    }
    r.count += 1;
    for reason in &why {
        *r.reasons.entry(reason.clone()).or_default() += 1;
    }
    r.assets.push(StaleAsset { key: key.into(), text: asset.text.clone(), reasons: why });
}

fn print_quality(r: &StatsReport) {
    let q = &r.quality;
    let count = |v: &str| q.verdicts.get(v).copied().unwrap_or(0);
    emit(&format!(
        "quality      {} ok, {} weak, {} bad, {} unknown (made before verdicts); {} below the gate, {} retried",
        count("ok"),
        count("weak"),
        count("bad"),
        count("unknown"),
        q.below_gate,
        q.retried
    ));
    for w in &q.weakest {
        emit(&format!("weakest      {} ({}): {}", w.text, w.key, crate::quality::label(w.verdict, &w.reasons)));
    }
    let s = &r.stale;
    if let Some(a) = &s.against {
        let models = if a.models.is_empty() { String::new() } else { format!(", models {}", a.models.join(" ")) };
        emit(&format!(
            "stale        {} of {} against {} pipeline, {} points{models}",
            s.count, r.assets, a.pipeline, a.points
        ));
        if let Some(why) = &a.models_unknown {
            emit(&format!("stale        current model revisions unknown, not compared: {why}"));
        }
    }
    for (reason, n) in &s.reasons {
        emit(&format!("stale        {n}: {reason}"));
    }
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
    print_quality(r);
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
