//! Preview pictures checked pixel by pixel: size, background, one colour per part in
//! proportion to its points, the legend read back out of the picture, identical bytes on a
//! rerun, and contact sheets. Drives the real binary on procedural stores.

mod support;

use std::collections::HashMap;
use std::path::Path;

use image::RgbImage;
use lumen::asset::{encode_positions, encode_u8, Asset, PartSummary, PipelineInfo, ToolInfo, FORMAT};
use lumen::preview::{self, font, palette, View};
use support::{run_in, stderr, stdout, workdir};

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

fn load_png(path: &Path) -> RgbImage {
    image::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8()
}

/// Every point colour of the palette (part id, any shading level) → part id.
fn colour_table() -> HashMap<[u8; 3], u8> {
    let mut t = HashMap::new();
    for id in 0..=16u8 {
        for level in 0..palette::LEVELS {
            t.insert(palette::shade(palette::part(id), level), id);
        }
    }
    t
}

/// Pixels of each part id in the four view squares of a preview.
fn pixels_per_part(img: &RgbImage, views: &[View]) -> HashMap<u8, usize> {
    let table = colour_table();
    let mut counts = HashMap::new();
    for &v in views {
        let (x0, y0) = preview::view_origin(v);
        for y in y0..y0 + preview::VIEW {
            for x in x0..x0 + preview::VIEW {
                if let Some(&id) = table.get(&img.get_pixel(x, y).0) {
                    *counts.entry(id).or_default() += 1;
                }
            }
        }
    }
    counts
}

/// Reads `n` characters of built-in-font text whose top-left corner is (`x`, `y`): each cell's
/// ink (any pixel that is not background) must be exactly one glyph.
fn read_text(img: &RgbImage, x: u32, y: u32, scale: u32, n: usize) -> String {
    (0..n as u32)
        .map(|i| {
            let gx = x + i * font::ADVANCE * scale;
            let mut rows = [0u8; 7];
            for (row, bits) in rows.iter_mut().enumerate() {
                for col in 0..font::WIDTH {
                    let p = img.get_pixel(gx + col * scale, y + row as u32 * scale).0;
                    if p != palette::BACKGROUND {
                        *bits |= 1 << (font::WIDTH - 1 - col);
                    }
                }
            }
            font::char_of(rows).unwrap_or('?')
        })
        .collect()
}

fn stored_asset(store: &Path, key: &str) -> (Asset, lumen::asset::PointData) {
    Asset::decode(&std::fs::read(store.join(format!("shapes/{key}.json"))).unwrap()).unwrap()
}

#[test]
fn generate_preview_shows_every_part_the_legend_and_is_reproducible() {
    let w = workdir();
    let o = run_in(w.path(), &["generate", "chair", "Bald Eagle", "--pipeline", "procedural", "--preview", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = w.path().join("out");
    for r in json(&o)["results"].as_array().unwrap() {
        let key = r["key"].as_str().unwrap();
        assert!(r["preview"].as_str().unwrap().ends_with(&format!("previews/{key}.png")));
        let path = out.join(format!("previews/{key}.png"));
        let img = load_png(&path);
        let (asset, points) = stored_asset(&out, key);
        assert_eq!((img.width(), img.height()), (preview::WIDTH, preview::HEIGHT));

        // The background fills the corners and most of each view, yet each view shows the shape.
        for (x, y) in [(0, 0), (img.width() - 1, 0), (0, img.height() - 1), (img.width() - 1, img.height() - 1)] {
            assert_eq!(img.get_pixel(x, y).0, palette::BACKGROUND, "corner ({x}, {y})");
        }
        for v in View::ALL {
            let drawn: usize = pixels_per_part(&img, &[v]).values().sum();
            let area = (preview::VIEW * preview::VIEW) as usize;
            println!("{} {}: {drawn} point pixels of {area}", asset.text, v.label());
            assert!(drawn > area / 50 && drawn < area / 2, "{} view: {drawn} of {area} pixels drawn", v.label());
        }

        // One colour per part, every part present; large parts in proportion to their points
        // (small ones can hide behind others in every view: a chair's back leg does).
        let counts = pixels_per_part(&img, &View::ALL);
        let total_px: usize = counts.values().sum();
        for row in preview::legend(&asset, &points) {
            let px = counts.get(&row.id).copied().unwrap_or(0);
            let px_share = px as f64 / total_px as f64;
            let pt_share = row.points as f64 / asset.num_points as f64;
            println!(
                "{} part {} {:?}: {:.3} of the pixels, {:.3} of the points",
                asset.text, row.id, row.name, px_share, pt_share
            );
            assert!(px >= 10, "part {} ({}) has {px} pixels", row.id, row.name);
            assert!(
                pt_share < 0.1 || (px_share > pt_share / 1.5 && px_share < pt_share * 1.5),
                "part {} ({}): {px_share:.3} of the pixels for {pt_share:.3} of the points",
                row.id,
                row.name
            );
        }
        let ids: Vec<u8> = counts.keys().copied().collect();
        assert!(ids.iter().all(|&id| id >= 1 && id as usize <= asset.part_names.len()), "stray colours {ids:?}");

        // The legend and header read back as the asset's names, counts, text and pipeline.
        for (i, row) in preview::legend(&asset, &points).iter().enumerate() {
            let y = preview::LEGEND_TOP + i as u32 * preview::LEGEND_ROW;
            assert_eq!(read_text(&img, preview::LEGEND_NAME_X, y, 1, row.name.len() + 1), format!("{} ", row.name));
            let count = row.points.to_string();
            let x = preview::WIDTH - 10 - font::text_width(&count, 1);
            assert_eq!(read_text(&img, x, y, 1, count.len()), count);
        }
        assert_eq!(read_text(&img, 10, 8, 2, asset.text.len()), asset.text);
        assert_eq!(read_text(&img, 10, 26, 1, 19), "procedural pipeline");
        let badge = preview::quality_badge(&asset);
        assert_eq!(badge, "quality ok", "procedural catalogue shapes grade ok");
        let x = preview::WIDTH - 10 - font::text_width(&badge, 1);
        assert_eq!(read_text(&img, x, preview::BADGE_Y, 1, badge.len()), badge);

        // The same bytes from `lumen preview`, by text and by key.
        let before = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let o = run_in(w.path(), &["preview", &asset.text]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(std::fs::read(&path).unwrap(), before, "{}: rerendered bytes differ", asset.text);
        let o = run_in(w.path(), &["preview", key, "--json"]);
        assert_eq!(json(&o)["written"], 1);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}

/// Two flat parts facing the front view on one grid spacing, `a` and `b` columns wide.
fn two_panels(a: usize, b: usize) -> Asset {
    let step = 0.015f32;
    let mut pos = Vec::new();
    let mut ids = Vec::new();
    for (id, cols, x0) in [(1u8, a, -0.95f32), (2, b, -0.5)] {
        for i in 0..cols {
            for j in 0..20 {
                pos.push([x0 + i as f32 * step, -0.15 + j as f32 * step, 0.0]);
                ids.push(id);
            }
        }
    }
    let normalized = "two panels".to_string();
    let summary = |id: u8, name: &str, points: usize| PartSummary {
        id,
        name: name.into(),
        points,
        centroid: [0.0; 3],
        bbox_min: [0.0; 3],
        bbox_max: [0.0; 3],
        area_share: 0.5,
    };
    Asset {
        format: FORMAT.into(),
        text: "two panels".into(),
        key: lumen::concept::key_of(&normalized),
        normalized,
        num_points: pos.len(),
        positions: encode_positions(&pos),
        part_ids: encode_u8(&ids),
        part_names: vec!["small".into(), "large".into()],
        parts: vec![summary(1, "small", a * 20), summary(2, "large", b * 20)],
        attachment: encode_u8(&vec![0; pos.len()]),
        pipeline: PipelineInfo { name: "partcrafter".into(), models: vec![], settings: Default::default() },
        seed: 1,
        created_at: "2026-01-01T00:00:00Z".into(),
        timings_ms: Default::default(),
        tool: ToolInfo::current(),
        dropped_parts: vec![],
        quality: None,
    }
}

#[test]
fn colour_area_follows_point_count_when_nothing_hides_anything() {
    let w = workdir();
    let asset = two_panels(20, 60);
    let out = w.path().join("out");
    std::fs::create_dir_all(out.join("shapes")).unwrap();
    std::fs::write(out.join(format!("shapes/{}.json", asset.key)), asset.to_json_bytes()).unwrap();
    let o = run_in(w.path(), &["preview", "two panels"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let img = load_png(&out.join(format!("previews/{}.png", asset.key)));
    let front = pixels_per_part(&img, &[View::Front]);
    let ratio = front[&2] as f64 / front[&1] as f64;
    println!("front view: {front:?}, large/small pixel ratio {ratio:.2} for a point ratio of 3");
    assert!((2.4..3.6).contains(&ratio), "pixel ratio {ratio:.2}, point ratio 3");
    assert_eq!(read_text(&img, 10, 26, 1, 20), "partcrafter pipeline");
    // An asset from before verdicts were recorded: read, and shown as unknown (not bad).
    let x = preview::WIDTH - 10 - font::text_width("quality unknown", 1);
    assert_eq!(read_text(&img, x, preview::BADGE_Y, 1, 15), "quality unknown");
}

#[test]
fn preview_lists_corrupt_blobs_and_draws_a_contact_sheet() {
    let w = workdir();
    std::fs::write(w.path().join("c.json"), r#"[{"name":"chair"},{"name":"mug"}]"#).unwrap();
    let o = run_in(w.path(), &["pregenerate", "c.json", "--pipeline", "procedural", "--preview", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = w.path().join("out");
    assert_eq!(std::fs::read_dir(out.join("previews")).unwrap().count(), 2);
    std::fs::write(out.join("shapes/00000000deadbeef.json"), b"{\"format\":\"lumen.shape/1\",\"trunc").unwrap();

    let o = run_in(w.path(), &["preview", "--all", "--json", "--contact-sheet", "sheet.png"]);
    assert_eq!(o.status.code(), Some(2), "an invalid blob exits 2, as in stats: {}", stderr(&o));
    let v = json(&o);
    assert_eq!((v["written"].as_u64(), v["invalid"].as_u64()), (Some(2), Some(2)), "{v}");
    let bad: Vec<_> = v["results"].as_array().unwrap().iter().filter(|r| r["status"] == "invalid").collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0]["key"], "00000000deadbeef");
    assert!(bad[0]["error"].as_str().unwrap().contains("not JSON"));
    assert_eq!(v["contact_sheet"]["assets"], 2);
    assert_eq!(v["contact_sheet"]["invalid"], 1);

    let sheet = load_png(&w.path().join("sheet.png"));
    assert_eq!((sheet.width(), sheet.height()), (2 * 160, 26 + 2 * (160 + 14)), "3 tiles of 160 in 2 columns");
    assert_eq!(read_text(&sheet, 8, 9, 1, 40), "lumen contact sheet  2 assets  1 invalid");
    // Tiles in key order: the corrupt blob, chair, mug; each valid tile shows its parts.
    let table = colour_table();
    let mut chair = std::collections::BTreeSet::new();
    for y in 26..26 + 160 {
        for x in 160..320 {
            if let Some(&id) = table.get(&sheet.get_pixel(x, y).0) {
                chair.insert(id);
            }
        }
    }
    assert_eq!(chair.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6], "the chair tile shows its 6 parts");
    let sheet_bytes = std::fs::read(w.path().join("sheet.png")).unwrap();
    let o = run_in(w.path(), &["preview", "--contact-sheet", "sheet.png"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(std::fs::read(w.path().join("sheet.png")).unwrap(), sheet_bytes, "same store, same sheet bytes");

    // Usage: nothing named; a concept that is not stored.
    let o = run_in(w.path(), &["preview"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--all"), "{}", stderr(&o));
    let o = run_in(w.path(), &["preview", "table"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("MISSING"), "{}", stdout(&o));
    let o = run_in(w.path(), &["preview", "--help"]);
    assert!(stdout(&o).contains("--contact-sheet") && stdout(&o).contains("Examples"));
}
