//! `lumen preview`: preview pictures of stored assets (`previews/<key>.png` beside each) and
//! contact sheets of a store. Assets are read back from the store and validated, so what is
//! pictured is what a client would get; an invalid blob is listed and the rest still drawn.

use std::path::PathBuf;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::{emit, emit_json};
use crate::asset::Asset;
use crate::cli::PreviewArgs;
use crate::concept::Concept;
use crate::error::{exit, UsageError};
use crate::preview::{self, SheetTile};
use crate::store::{Store, StoreOptions};

#[derive(Debug, Clone)]
pub struct PreviewOptions {
    pub store: String,
    /// Concept texts or keys; empty with `all` or a contact sheet of the whole store.
    pub targets: Vec<String>,
    pub all: bool,
    pub contact_sheet: Option<PathBuf>,
    pub json: bool,
}

impl PreviewOptions {
    pub fn from_args(a: PreviewArgs) -> Result<Self> {
        if a.targets.is_empty() && !a.all && a.contact_sheet.is_none() {
            return Err(
                UsageError("name concepts or keys to preview, or give --all or --contact-sheet FILE".into()).into()
            );
        }
        for t in &a.targets {
            if !is_key(t) {
                Concept::parse(t)?;
            }
        }
        Ok(Self { store: a.store.store, targets: a.targets, all: a.all, contact_sheet: a.contact_sheet, json: a.json })
    }
}

/// A store key: 16 lowercase hex digits.
fn is_key(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviewResult {
    /// The concept text (from the asset when it decodes, else as given or the key).
    pub text: String,
    pub key: String,
    /// written | invalid | missing
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
struct SheetReport {
    path: String,
    assets: usize,
    invalid: usize,
    width: u32,
    height: u32,
}

pub fn run(opts: PreviewOptions) -> Result<u8> {
    let store = Store::open(&opts.store, &StoreOptions::from_env())?;
    let stored: Vec<String> = store.list_shapes()?.into_iter().map(|(k, _)| k).collect();
    // (text as asked, key), in the order given.
    let chosen: Vec<(String, String)> = if opts.targets.is_empty() {
        stored.iter().map(|k| (k.clone(), k.clone())).collect()
    } else {
        opts.targets
            .iter()
            .map(|t| {
                if is_key(t) && stored.contains(t) {
                    Ok((t.clone(), t.clone()))
                } else {
                    Concept::parse(t).map(|c| (c.text, c.key))
                }
            })
            .collect::<Result<_, UsageError>>()?
    };

    let mut results = Vec::new();
    if !opts.targets.is_empty() || opts.all {
        results = chosen.par_iter().map(|(text, key)| write_one(&store, text, key)).collect();
        if !opts.json {
            results.iter().for_each(|r| emit(&human_line(r)));
        }
    }
    let sheet = match &opts.contact_sheet {
        Some(path) => {
            let on_sheet: Vec<(String, String)> = chosen.iter().filter(|(_, k)| stored.contains(k)).cloned().collect();
            Some(write_sheet(&store, &on_sheet, path)?)
        }
        None => None,
    };
    let invalid = results.iter().filter(|r| r.status == "invalid").count() + sheet.as_ref().map_or(0, |s| s.invalid);
    let missing = results.iter().filter(|r| r.status == "missing").count();
    if opts.json {
        let written = results.iter().filter(|r| r.status == "written").count();
        emit_json(&serde_json::json!({
            "store": store.url(), "results": results, "written": written, "invalid": invalid,
            "missing": missing, "contact_sheet": sheet,
        }));
    } else if let Some(s) = &sheet {
        emit(&format!(
            "contact sheet {} ({} assets, {} invalid, {}x{})",
            s.path, s.assets, s.invalid, s.width, s.height
        ));
    }
    if invalid > 0 {
        tracing::warn!("{invalid} invalid blob(s) in {}", store.url());
        return Ok(exit::USAGE);
    }
    Ok(if missing > 0 { exit::FAILED } else { exit::OK })
}

fn write_one(store: &Store, text: &str, key: &str) -> PreviewResult {
    let mut r =
        PreviewResult { text: text.into(), key: key.into(), status: "written".into(), location: None, error: None };
    let bytes = match store.get(&Store::shape_rel(key)) {
        Ok(Some(b)) => b,
        Ok(None) => {
            r.status = "missing".into();
            r.error = Some("not stored (generate it first)".into());
            return r;
        }
        Err(e) => {
            r.status = "invalid".into();
            r.error = Some(format!("{e:#}"));
            return r;
        }
    };
    let written = Asset::decode(&bytes).map_err(anyhow::Error::from).and_then(|(asset, points)| {
        r.text = asset.text.clone();
        let rel = preview::preview_rel(key);
        store.put(&rel, preview::png(&preview::render(&asset, &points)), true)?;
        Ok(format!("{}/{rel}", store.url().trim_end_matches('/')))
    });
    match written {
        Ok(location) => r.location = Some(location),
        Err(e) => {
            r.status = "invalid".into();
            r.error = Some(format!("{e:#}"));
        }
    }
    r
}

fn human_line(r: &PreviewResult) -> String {
    match r.status.as_str() {
        "written" => format!("written {:<24} {}", r.text, r.location.as_deref().unwrap_or("")),
        "missing" => format!("MISSING {:<24} {}", r.text, r.error.as_deref().unwrap_or("")),
        _ => format!("INVALID shapes/{}.json: {}", r.key, r.error.as_deref().unwrap_or("")),
    }
}

fn write_sheet(store: &Store, chosen: &[(String, String)], path: &std::path::Path) -> Result<SheetReport> {
    let size = preview::sheet_tile_size(chosen.len());
    let tiles: Vec<SheetTile> = chosen
        .par_iter()
        .map(|(text, key)| {
            let decoded = store.get(&Store::shape_rel(key)).ok().flatten().and_then(|b| Asset::decode(&b).ok());
            match decoded {
                Some((asset, points)) => {
                    SheetTile { label: asset.text, image: Some(preview::thumbnail(&points, size)) }
                }
                None => SheetTile { label: if text == key { key.clone() } else { text.clone() }, image: None },
            }
        })
        .collect();
    let img = preview::contact_sheet(&tiles);
    std::fs::write(path, preview::png(&img))
        .with_context(|| format!("writing the contact sheet {}", path.display()))?;
    let invalid = tiles.iter().filter(|t| t.image.is_none()).count();
    Ok(SheetReport {
        path: path.display().to_string(),
        assets: tiles.len() - invalid,
        invalid,
        width: img.width(),
        height: img.height(),
    })
}
