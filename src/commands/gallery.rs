//! `lumen gallery`: writes the static gallery of a store (see `gallery`), optionally serves it.

use std::path::PathBuf;

use anyhow::Result;

use super::{emit, emit_json};
use crate::cli::GalleryArgs;
use crate::error::exit;
use crate::store::{Store, StoreOptions};

#[derive(Debug, Clone)]
pub struct GalleryOptions {
    pub store: String,
    pub out: PathBuf,
    pub page_size: usize,
    pub serve: Option<String>,
    pub json: bool,
}

impl GalleryOptions {
    pub fn from_args(a: GalleryArgs) -> Self {
        Self { store: a.store.store, out: a.out, page_size: a.page_size as usize, serve: a.serve, json: a.json }
    }
}

pub fn run(opts: GalleryOptions) -> Result<u8> {
    // Bind first: a busy port is reported before minutes of rendering.
    let listener = opts.serve.as_deref().map(crate::gallery::serve::bind).transpose()?;
    let store = Store::open(&opts.store, &StoreOptions::from_env())?;
    let report = crate::gallery::build(&store, &opts.out, opts.page_size)?;
    if opts.json {
        let mut v = serde_json::to_value(&report)?;
        // The entries are in gallery.json; stdout stays short for thousands of assets.
        v.as_object_mut().map(|o| o.remove("entries"));
        emit_json(&v);
    } else {
        emit(&format!(
            "gallery {}: {} assets, {} invalid, {} collisions, {} index page(s); open {}",
            report.out,
            report.assets,
            report.invalid,
            report.collisions,
            report.pages.len(),
            opts.out.join("index.html").display()
        ));
        for e in report.entries.iter().filter(|e| e.status != "ok") {
            emit(&format!("  INVALID shapes/{}.json: {}", e.key, e.error.as_deref().unwrap_or("")));
        }
    }
    if let Some(e) = &report.manifest_error {
        tracing::warn!("{e}");
    }
    if report.invalid > 0 {
        tracing::warn!("{} invalid blob(s) in {}", report.invalid, report.store);
    }
    if let Some((listener, addr)) = listener {
        tracing::info!(%addr, "serving {} on http://{addr}/ (Ctrl-C to stop)", opts.out.display());
        crate::gallery::serve::serve(listener, &opts.out)?;
    }
    Ok(if report.invalid > 0 { exit::USAGE } else { exit::OK })
}
