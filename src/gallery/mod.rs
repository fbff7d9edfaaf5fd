//! A self-contained static gallery of a store: paginated index pages and one WebGL viewer
//! page per asset.
//!
//! Browsers refuse `fetch` from `file://` pages, so each viewer embeds its asset's blob
//! verbatim (as the server would send it) and decodes it in the page the way the web client
//! does; the folder then works opened from disk, from any static host, or from `serve`.
//! Nothing is fetched from the network: the viewer script, stylesheet and palette are
//! written into the folder from files compiled into lumen. Index pages are plain HTML with
//! lazily loaded thumbnails, a fixed number of assets per page, so a store of thousands stays
//! quick to open. A blob that does not decode is listed and its viewer says why.

pub mod serve;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::asset::Asset;
use crate::preview::{self, palette};
use crate::quality::QualitySummary;
use crate::store::Store;

const VIEWER_HTML: &str = include_str!("viewer.html");
const VIEWER_JS: &str = include_str!("viewer.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Side of the index thumbnails, in pixels.
const THUMB: u32 = 128;

/// One asset as the index lists it (also written to `gallery.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub text: String,
    /// ok | invalid
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub size: u64,
    pub pipeline: String,
    pub num_points: usize,
    /// (name, points) per part.
    pub parts: Vec<(String, usize)>,
    pub timings_ms: BTreeMap<String, f64>,
    pub created_at: String,
    /// Every text asked for under this key, when more than one (a collision).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub collision: Vec<String>,
    pub dropped_parts: usize,
    /// The verdict and reasons (None: invalid, or made before verdicts: shown as unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualitySummary>,
    /// The viewer page, relative to the gallery folder.
    pub page: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub store: String,
    pub out: String,
    pub assets: usize,
    pub invalid: usize,
    pub collisions: usize,
    pub pages: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_error: Option<String>,
    pub entries: Vec<Entry>,
}

/// Files of earlier builds that a rebuild replaces (only inside a folder that holds a
/// `gallery.json`, so an unrelated folder is never emptied).
fn clear_previous(out: &Path) -> Result<()> {
    if !out.join("gallery.json").is_file() {
        return Ok(());
    }
    for dir in ["assets", "thumbs", "previews"] {
        let d = out.join(dir);
        if d.is_dir() {
            std::fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
        }
    }
    for e in std::fs::read_dir(out)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.starts_with("page-") && name.ends_with(".html") {
            std::fs::remove_file(out.join(&name))?;
        }
    }
    Ok(())
}

/// Writes the gallery of `store` into `out`.
pub fn build(store: &Store, out: &Path, page_size: usize) -> Result<Report> {
    let mkdir = |d: &Path| {
        std::fs::create_dir_all(d)
            .map_err(|e| crate::error::UsageError(format!("gallery folder {} is not writable: {e}", d.display())))
    };
    mkdir(out)?;
    clear_previous(out)?;
    for sub in ["assets", "thumbs", "previews"] {
        mkdir(&out.join(sub))?;
    }
    write(out, "viewer.js", VIEWER_JS.as_bytes())?;
    write(out, "style.css", STYLE_CSS.as_bytes())?;
    write(out, "palette.js", palette_js().as_bytes())?;

    let (texts, manifest_error) = match store.read_manifest() {
        Ok(m) => (m.entries.into_iter().map(|(k, e)| (k, e.texts)).collect::<BTreeMap<_, _>>(), None),
        Err(e) => (BTreeMap::new(), Some(format!("{e:#}"))),
    };
    let shapes = store.list_shapes()?;
    let mut entries: Vec<Entry> = shapes
        .par_iter()
        .map(|(key, size)| {
            let texts = texts.get(key).filter(|t| t.len() > 1).cloned().unwrap_or_default();
            asset_pages(store, out, key, *size, texts)
        })
        .collect::<Result<_>>()?;
    entries.sort_by(|a, b| a.text.to_lowercase().cmp(&b.text.to_lowercase()).then(a.key.cmp(&b.key)));

    let pages = write_index(out, store.url(), &entries, page_size.max(1))?;
    let report = Report {
        store: store.url().to_string(),
        out: out.display().to_string(),
        assets: entries.iter().filter(|e| e.status == "ok").count(),
        invalid: entries.iter().filter(|e| e.status != "ok").count(),
        collisions: entries.iter().filter(|e| !e.collision.is_empty()).count(),
        pages,
        manifest_error,
        entries,
    };
    write(out, "gallery.json", &serde_json::to_vec_pretty(&report)?)?;
    Ok(report)
}

fn write(out: &Path, rel: &str, bytes: &[u8]) -> Result<()> {
    let path = out.join(rel);
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The viewer page, thumbnail and preview of one stored key.
fn asset_pages(store: &Store, out: &Path, key: &str, size: u64, collision: Vec<String>) -> Result<Entry> {
    let page = format!("assets/{key}.html");
    let mut entry = Entry {
        key: key.into(),
        text: key.into(),
        status: "invalid".into(),
        error: None,
        size,
        pipeline: String::new(),
        num_points: 0,
        parts: vec![],
        timings_ms: BTreeMap::new(),
        created_at: String::new(),
        collision,
        dropped_parts: 0,
        quality: None,
        page: page.clone(),
    };
    let bytes = match store.get(&Store::shape_rel(key)) {
        Ok(Some(b)) => b.to_vec(),
        Ok(None) => {
            entry.error = Some("deleted while the gallery was built".into());
            return Ok(entry);
        }
        Err(e) => {
            entry.error = Some(format!("unreadable: {e:#}"));
            Vec::new()
        }
    };
    match Asset::decode(&bytes) {
        Ok((asset, points)) if asset.key == key => {
            write(out, &format!("thumbs/{key}.png"), &preview::png(&preview::thumbnail(&points, THUMB)))?;
            write(out, &format!("previews/{key}.png"), &preview::png(&preview::render(&asset, &points)))?;
            entry.status = "ok".into();
            entry.text = asset.text.clone();
            entry.pipeline = asset.pipeline.name.clone();
            entry.num_points = asset.num_points;
            entry.parts = preview::legend(&asset, &points).into_iter().map(|r| (r.name, r.points)).collect();
            entry.timings_ms = asset.timings_ms.clone();
            entry.created_at = asset.created_at.clone();
            entry.dropped_parts = asset.dropped_parts.len();
            entry.quality = asset.quality.as_ref().map(QualitySummary::from);
        }
        Ok((asset, _)) => entry.error = Some(format!("stored under {key} but its key is {}", asset.key)),
        Err(e) if entry.error.is_none() => entry.error = Some(e.0),
        Err(_) => {}
    }
    write(out, &page, viewer_page(&entry, &bytes).as_bytes())?;
    Ok(entry)
}

/// The part colours for the viewer script, from the same table as the pictures.
fn palette_js() -> String {
    let list = |cs: &[[u8; 3]]| cs.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(",");
    format!(
        "// Written by lumen gallery: the preview pictures' colours.\nwindow.LUMEN_PALETTE = {{parts: [{}], unassigned: {:?}, background: {:?}}};\n",
        list(&palette::PARTS),
        palette::UNASSIGNED,
        palette::BACKGROUND
    )
}

/// HTML-escapes text for element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A blob as the body of a `<script type="application/json">`: every `<` becomes `\u003c`,
/// which leaves valid JSON unchanged (`<` only occurs inside strings) and keeps `</script>`
/// in a text from closing the element. Bytes that are not UTF-8 (a corrupt blob) are
/// replaced, which the page then reports as invalid JSON or a bad field.
fn script_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('<', "\\u003c")
}

fn viewer_page(entry: &Entry, blob: &[u8]) -> String {
    let preview_link = if entry.status == "ok" {
        format!("<a href=\"../previews/{}.png\">preview picture</a>", entry.key)
    } else {
        String::new()
    };
    VIEWER_HTML
        .replace("{{TITLE}}", &esc(&entry.text))
        .replace("{{KEY}}", &esc(&entry.key))
        .replace("{{PREVIEW_LINK}}", &preview_link)
        // Last, so nothing inside the blob is taken for a placeholder.
        .replace("{{BLOB}}", &script_text(blob))
}

fn page_name(i: usize) -> String {
    if i == 0 {
        "index.html".into()
    } else {
        format!("page-{}.html", i + 1)
    }
}

/// Writes the index pages; returns their names.
fn write_index(out: &Path, store_url: &str, entries: &[Entry], page_size: usize) -> Result<Vec<String>> {
    let chunks: Vec<&[Entry]> = if entries.is_empty() { vec![&[]] } else { entries.chunks(page_size).collect() };
    let names: Vec<String> = (0..chunks.len()).map(page_name).collect();
    let invalid: Vec<&Entry> = entries.iter().filter(|e| e.status != "ok").collect();
    let mut pipelines: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.status == "ok") {
        *pipelines.entry(&e.pipeline).or_default() += 1;
    }
    let pipelines: Vec<String> = pipelines.iter().map(|(p, n)| format!("{n} {}", esc(p))).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut h = String::new();
        h.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
        h.push_str(&format!("<title>lumen gallery · page {} of {}</title>", i + 1, chunks.len()));
        h.push_str("<link rel=\"stylesheet\" href=\"style.css\"></head>\n<body class=\"index\">\n");
        h.push_str(&format!(
            "<header><h1>lumen gallery</h1><span class=\"store\">{}</span></header>\n",
            esc(store_url)
        ));
        h.push_str(&format!(
            "<p id=\"summary\">{} assets ({}), <span class=\"{}\">{} invalid</span>, {} collisions; quality {}</p>\n",
            entries.len() - invalid.len(),
            if pipelines.is_empty() { "none".into() } else { pipelines.join(", ") },
            if invalid.is_empty() { "none" } else { "bad" },
            invalid.len(),
            entries.iter().filter(|e| !e.collision.is_empty()).count(),
            verdict_counts(entries)
        ));
        if i == 0 && !invalid.is_empty() {
            h.push_str("<ul id=\"problems\">");
            for e in &invalid {
                h.push_str(&format!(
                    "<li><a href=\"{}\">shapes/{}.json</a>: {}</li>",
                    e.page,
                    esc(&e.key),
                    esc(e.error.as_deref().unwrap_or(""))
                ));
            }
            h.push_str("</ul>\n");
        }
        let nav = pager(&names, i);
        h.push_str(&nav);
        h.push_str("<table id=\"assets\"><thead><tr><th></th><th>concept</th><th>parts</th><th>pipeline</th><th>quality</th><th>size</th><th>timings (ms)</th><th>flags</th></tr></thead><tbody>\n");
        for e in chunk.iter() {
            h.push_str(&index_row(e));
        }
        h.push_str("</tbody></table>\n");
        h.push_str(&nav);
        h.push_str("</body></html>\n");
        write(out, &names[i], h.as_bytes())?;
    }
    Ok(names)
}

/// `3 ok, 1 weak, 0 bad, 2 unknown` over the valid entries.
fn verdict_counts(entries: &[Entry]) -> String {
    let valid: Vec<&Entry> = entries.iter().filter(|e| e.status == "ok").collect();
    let n = |v: Option<&str>| valid.iter().filter(|e| e.quality.as_ref().map(|q| q.verdict.as_str()) == v).count();
    format!("{} ok, {} weak, {} bad, {} unknown", n(Some("ok")), n(Some("weak")), n(Some("bad")), n(None))
}

fn pager(names: &[String], current: usize) -> String {
    if names.len() < 2 {
        return String::new();
    }
    let mut s = String::from("<nav class=\"pager\">");
    if current > 0 {
        s.push_str(&format!("<a href=\"{}\">&larr; previous</a> ", names[current - 1]));
    }
    // Every page number would be thousands of links for a huge store: first, last, and nearby.
    for (i, n) in names.iter().enumerate() {
        let near = i.abs_diff(current) <= 3 || i == 0 || i + 1 == names.len();
        if i == current {
            s.push_str(&format!("<b>{}</b> ", i + 1));
        } else if near {
            s.push_str(&format!("<a href=\"{n}\">{}</a> ", i + 1));
        } else if i.abs_diff(current) == 4 {
            s.push_str("&hellip; ");
        }
    }
    if current + 1 < names.len() {
        s.push_str(&format!("<a href=\"{}\">next &rarr;</a>", names[current + 1]));
    }
    s.push_str("</nav>\n");
    s
}

/// The index's quality badge: the verdict, the reasons as its tooltip; `unknown` for an
/// asset made before verdicts were recorded.
fn quality_badge(e: &Entry) -> String {
    let Some(q) = &e.quality else {
        return "<span class=\"badge unknown\" title=\"made before quality verdicts were recorded\">unknown</span>"
            .into();
    };
    let mut s = format!(
        "<span class=\"badge {v}\" title=\"{}\">{v}</span>",
        esc(&q.reasons.join("; ")),
        v = q.verdict.as_str()
    );
    if q.passed_gate == Some(false) {
        s.push_str("<br><small class=\"bad\">below the gate</small>");
    }
    s
}

fn index_row(e: &Entry) -> String {
    let ok = e.status == "ok";
    let thumb = if ok {
        format!(
            "<img loading=\"lazy\" src=\"thumbs/{}.png\" width=\"{THUMB}\" height=\"{THUMB}\" alt=\"\">",
            esc(&e.key)
        )
    } else {
        "<div class=\"nothumb\">invalid</div>".into()
    };
    let parts = e.parts.iter().map(|(n, p)| format!("{} <small>{p}</small>", esc(n))).collect::<Vec<_>>().join("<br>");
    let total: f64 = e.timings_ms.values().sum();
    let timings = e.timings_ms.iter().map(|(k, v)| format!("{} {v:.1}", esc(k))).collect::<Vec<_>>().join("<br>");
    let mut flags = Vec::new();
    if let Some(err) = &e.error {
        flags.push(format!("<span class=\"bad\">invalid: {}</span>", esc(err)));
    }
    if !e.collision.is_empty() {
        let texts = e.collision.iter().map(|t| esc(&format!("{t:?}"))).collect::<Vec<_>>().join(", ");
        flags.push(format!("<span class=\"warn\">collision: {texts}</span>"));
    }
    if e.dropped_parts > 0 {
        flags.push(format!("<span class=\"warn\">{} part(s) dropped</span>", e.dropped_parts));
    }
    format!(
        "<tr class=\"{}\" data-key=\"{}\"><td>{thumb}</td><td><a href=\"{}\">{}</a><br><small>{}</small></td><td>{}<br>{parts}</td><td>{}</td><td>{}</td><td>{} B</td><td>{}{timings}</td><td>{}</td></tr>\n",
        if ok { "ok" } else { "invalid" },
        esc(&e.key),
        e.page,
        esc(&e.text),
        esc(&e.key),
        if ok { format!("{} parts, {} points", e.parts.len(), e.num_points) } else { String::new() },
        esc(&e.pipeline),
        if ok { quality_badge(e) } else { String::new() },
        e.size,
        if ok { format!("<b>{total:.1}</b> in all<br>") } else { String::new() },
        flags.join("<br>")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_blobs_cannot_close_their_script() {
        let blob = br#"{"text":"</script><script>alert(1)</script>"}"#;
        let s = script_text(blob);
        assert!(!s.contains('<'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["text"], "</script><script>alert(1)</script>");
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn pager_names_first_last_and_nearby_pages() {
        let names: Vec<String> = (0..20).map(page_name).collect();
        let nav = pager(&names, 10);
        assert!(nav.contains("href=\"index.html\"") && nav.contains("href=\"page-20.html\""));
        assert!(nav.contains("<b>11</b>") && nav.contains("href=\"page-14.html\"") && !nav.contains("page-16.html\">"));
        assert_eq!(pager(&names[..1], 0), "");
    }
}
