//! Preview pictures of stored assets, for looking at shapes without writing a script.
//!
//! A preview is one PNG: four orthographic views (front, side, top, three-quarter) of the
//! point cloud coloured by part, a header with the concept text, pipeline and quality
//! verdict, and a legend of part names and point counts. A contact sheet puts every asset's three-quarter view in
//! a grid with its name (a CI artifact for a whole store).
//!
//! Everything is drawn in software from fixed tables (palette, 5×7 font) with no clock and
//! no randomness, so the same asset gives the same bytes on any machine.

pub mod canvas;
pub mod font;
pub mod palette;
pub mod render;

use anyhow::{Context, Result};
use image::RgbImage;

use crate::asset::{Asset, PointData};
use crate::quality::Verdict;
use crate::store::Store;
use canvas::{fit, Canvas};
pub use render::{Frame, View};

/// One view's side in a preview, in pixels.
pub const VIEW: u32 = 256;
/// Title and subtitle above the views.
pub const HEADER: u32 = 40;
pub const LEGEND_WIDTH: u32 = 232;
pub const WIDTH: u32 = 2 * VIEW + LEGEND_WIDTH;
pub const HEIGHT: u32 = HEADER + 2 * VIEW;
/// Legend rows: the first row's text top, and the distance between rows.
pub const LEGEND_TOP: u32 = HEADER + 28;
pub const LEGEND_ROW: u32 = 14;
/// Left edge of a legend row's name (its swatch sits to the left).
pub const LEGEND_NAME_X: u32 = 2 * VIEW + 26;

/// Top of the quality badge (right-aligned 10 px from the picture's right edge).
pub const BADGE_Y: u32 = 8;

/// The header's quality badge: `quality ok|weak|bad`, or `quality unknown` for an asset made
/// before verdicts were recorded.
pub fn quality_badge(asset: &Asset) -> String {
    format!("quality {}", asset.quality.as_ref().map_or("unknown", |q| q.verdict.as_str()))
}

/// Where a preview goes in a store.
pub fn preview_rel(key: &str) -> String {
    format!("previews/{key}.png")
}

/// The top-left corner of `view`'s square in a preview.
pub fn view_origin(view: View) -> (u32, u32) {
    let i = View::ALL.iter().position(|&v| v == view).expect("a known view") as u32;
    ((i % 2) * VIEW, HEADER + (i / 2) * VIEW)
}

/// One legend line: part id (0 = unassigned), name and point count.
#[derive(Debug, Clone, PartialEq)]
pub struct LegendRow {
    pub id: u8,
    pub name: String,
    pub points: usize,
}

/// The legend of an asset: every named part, then unassigned points if there are any.
pub fn legend(asset: &Asset, points: &PointData) -> Vec<LegendRow> {
    let mut counts = vec![0usize; asset.part_names.len() + 1];
    for &id in &points.part_ids {
        if let Some(c) = counts.get_mut(id as usize) {
            *c += 1;
        }
    }
    let mut rows: Vec<LegendRow> = asset
        .part_names
        .iter()
        .enumerate()
        .map(|(i, name)| LegendRow { id: i as u8 + 1, name: name.clone(), points: counts[i + 1] })
        .collect();
    if counts[0] > 0 {
        rows.push(LegendRow { id: 0, name: "unassigned".into(), points: counts[0] });
    }
    rows
}

/// The preview picture of a decoded asset.
pub fn render(asset: &Asset, points: &PointData) -> RgbImage {
    let mut c = Canvas::new(WIDTH, HEIGHT, palette::BACKGROUND);
    // The verdict at the header's right; the title gets what is left of the line.
    let badge = quality_badge(asset);
    let badge_w = font::text_width(&badge, 1);
    let colour = match asset.quality.as_ref().map(|q| q.verdict) {
        Some(Verdict::Ok) => palette::TEXT,
        Some(Verdict::Weak) => palette::WEAK_TEXT,
        Some(Verdict::Bad) => palette::WARN_TEXT,
        None => palette::DIM_TEXT,
    };
    c.text(WIDTH - 10 - badge_w, BADGE_Y, &badge, 1, colour);
    let title_chars = ((WIDTH - 30 - badge_w) / (font::ADVANCE * 2)) as usize;
    c.text(10, 8, &fit(&asset.text, title_chars), 2, palette::TEXT);
    let subtitle = format!(
        "{} pipeline  {} points  {} parts  key {}",
        asset.pipeline.name,
        asset.num_points,
        asset.part_names.len(),
        asset.key
    );
    c.text(10, 26, &fit(&subtitle, ((WIDTH - 20) / font::ADVANCE) as usize), 1, palette::DIM_TEXT);

    let frame = Frame::of(&points.positions);
    for view in View::ALL {
        let (x, y) = view_origin(view);
        render::draw_view(&mut c, x, y, VIEW, points, frame, view);
        c.text(x + 6, y + 6, view.label(), 1, palette::DIM_TEXT);
    }
    // Panel rules: between the views and around the legend.
    c.rect(0, HEADER, WIDTH, 1, palette::RULE);
    c.rect(VIEW, HEADER, 1, 2 * VIEW, palette::RULE);
    c.rect(2 * VIEW, HEADER, 1, 2 * VIEW, palette::RULE);
    c.rect(0, HEADER + VIEW, 2 * VIEW, 1, palette::RULE);

    draw_legend(&mut c, asset, points);
    c.img
}

fn draw_legend(c: &mut Canvas, asset: &Asset, points: &PointData) {
    let x = 2 * VIEW + 12;
    c.text(x, HEADER + 10, "parts", 1, palette::DIM_TEXT);
    let right = WIDTH - 10;
    let rows = legend(asset, points);
    let max_rows = ((HEIGHT - LEGEND_TOP - 40) / LEGEND_ROW) as usize;
    let mut y = LEGEND_TOP;
    for row in rows.iter().take(max_rows) {
        c.rect(x, y - 1, 9, 9, palette::part(row.id));
        let count = row.points.to_string();
        let count_w = font::text_width(&count, 1);
        let room = (right - count_w - 6 - LEGEND_NAME_X) / font::ADVANCE;
        c.text(LEGEND_NAME_X, y, &fit(&row.name, room as usize), 1, palette::TEXT);
        c.text(right - count_w, y, &count, 1, palette::DIM_TEXT);
        y += LEGEND_ROW;
    }
    if rows.len() > max_rows {
        c.text(x, y, &format!("+{} more", rows.len() - max_rows), 1, palette::DIM_TEXT);
        y += LEGEND_ROW;
    }
    y += 6;
    c.text(x, y, &format!("{} points in all", points.positions.len()), 1, palette::DIM_TEXT);
    if !asset.dropped_parts.is_empty() {
        y += LEGEND_ROW;
        c.text(x, y, &format!("{} part(s) dropped", asset.dropped_parts.len()), 1, palette::WARN_TEXT);
    }
}

/// The three-quarter view alone, `size`² (thumbnails and contact sheets).
pub fn thumbnail(points: &PointData, size: u32) -> RgbImage {
    let mut c = Canvas::new(size, size, palette::BACKGROUND);
    render::draw_view(&mut c, 0, 0, size, points, Frame::of(&points.positions), View::ThreeQuarter);
    c.img
}

/// PNG bytes of a picture (the encoder is deterministic).
pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png).expect("encoding a PNG in memory");
    out
}

/// One cell of a contact sheet: the asset's name and its thumbnail (`None`: invalid blob).
pub struct SheetTile {
    pub label: String,
    pub image: Option<RgbImage>,
}

/// Tile side for a sheet of `n` assets: large for a handful, small enough for thousands.
pub fn sheet_tile_size(n: usize) -> u32 {
    match n {
        0..=100 => 160,
        101..=1000 => 96,
        _ => 64,
    }
}

const SHEET_HEADER: u32 = 26;
const CAPTION: u32 = 14;

/// A grid of tiles (made at [`sheet_tile_size`]) with captions, and a header counting them.
pub fn contact_sheet(tiles: &[SheetTile]) -> RgbImage {
    let t = sheet_tile_size(tiles.len());
    let max_cols = (2400 / t) as usize;
    let cols = ((tiles.len() as f64).sqrt().ceil() as usize).clamp(1, max_cols);
    let rows = tiles.len().div_ceil(cols).max(1);
    let width = (cols as u32 * t).max(320);
    let mut c = Canvas::new(width, SHEET_HEADER + rows as u32 * (t + CAPTION), palette::BACKGROUND);
    let invalid = tiles.iter().filter(|x| x.image.is_none()).count();
    let head = format!("lumen contact sheet  {} assets  {} invalid", tiles.len() - invalid, invalid);
    c.text(8, 9, &head, 1, palette::TEXT);
    let chars = (t / font::ADVANCE) as usize;
    for (i, tile) in tiles.iter().enumerate() {
        let (x, y) = ((i % cols) as u32 * t, SHEET_HEADER + (i / cols) as u32 * (t + CAPTION));
        match &tile.image {
            Some(img) => c.paste(img, x, y),
            None => {
                c.rect(x + 2, y + 2, t - 4, t - 4, [70, 24, 24]);
                c.text(x + 6, y + t / 2 - 3, "INVALID", 1, palette::WARN_TEXT);
            }
        }
        let colour = if tile.image.is_some() { palette::TEXT } else { palette::WARN_TEXT };
        c.text(x + 2, y + t + 3, &fit(&tile.label, chars), 1, colour);
    }
    c.img
}

/// Reads the asset stored under `key`, renders its preview and stores it beside the asset
/// (`previews/<key>.png`, overwritten). Returns the preview's location.
pub fn store_preview(store: &Store, key: &str) -> Result<String> {
    let bytes = store.get(&Store::shape_rel(key))?.with_context(|| format!("no asset stored under {key}"))?;
    let (asset, points) = Asset::decode(&bytes)?;
    let rel = preview_rel(key);
    store.put(&rel, png(&render(&asset, &points)), true)?;
    Ok(format!("{}/{rel}", store.url().trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asset::{encode_positions, encode_u8, PartSummary, PipelineInfo, ToolInfo, FORMAT};

    /// Two parts side by side facing the camera: a 3×3 grid of points each.
    fn two_squares() -> (Asset, PointData) {
        let mut pos = Vec::new();
        let mut ids = Vec::new();
        for (id, x0) in [(1u8, -0.8f32), (2, 0.3)] {
            for i in 0..3 {
                for j in 0..3 {
                    pos.push([x0 + i as f32 * 0.2, -0.2 + j as f32 * 0.2, 0.0]);
                    ids.push(id);
                }
            }
        }
        let normalized = "squares".to_string();
        let summary = |id: u8, name: &str| PartSummary {
            id,
            name: name.into(),
            points: 9,
            centroid: [0.0; 3],
            bbox_min: [0.0; 3],
            bbox_max: [0.0; 3],
            area_share: 0.5,
        };
        let asset = Asset {
            format: FORMAT.into(),
            text: "Squares".into(),
            key: crate::concept::key_of(&normalized),
            normalized,
            num_points: pos.len(),
            positions: encode_positions(&pos),
            part_ids: encode_u8(&ids),
            part_names: vec!["left".into(), "right".into()],
            parts: vec![summary(1, "left"), summary(2, "right")],
            attachment: encode_u8(&vec![0; pos.len()]),
            pipeline: PipelineInfo { name: "procedural".into(), models: vec![], settings: Default::default() },
            seed: 1,
            created_at: "2026-01-01T00:00:00Z".into(),
            timings_ms: Default::default(),
            tool: ToolInfo::current(),
            dropped_parts: vec![],
            quality: None,
        };
        let points = asset.validate().unwrap();
        (asset, points)
    }

    #[test]
    fn front_view_puts_each_part_where_it_is() {
        let (asset, points) = two_squares();
        let img = render(&asset, &points);
        assert_eq!((img.width(), img.height()), (WIDTH, HEIGHT));
        let (x0, y0) = view_origin(View::Front);
        let left_of = |id: u8| {
            let mut xs = Vec::new();
            for y in y0..y0 + VIEW {
                for x in x0..x0 + VIEW {
                    let p = img.get_pixel(x, y).0;
                    if (0..palette::LEVELS).any(|l| palette::shade(palette::part(id), l) == p) {
                        xs.push(x);
                    }
                }
            }
            assert!(!xs.is_empty(), "part {id} not drawn");
            xs.iter().sum::<u32>() as f64 / xs.len() as f64
        };
        assert!(left_of(1) < left_of(2), "part 1 (x < 0) is left of part 2 in the front view");
    }

    #[test]
    fn legend_counts_points_and_lists_unassigned() {
        let (asset, mut points) = two_squares();
        points.part_ids[0] = 0;
        let rows = legend(&asset, &points);
        assert_eq!(rows.iter().map(|r| (r.id, r.points)).collect::<Vec<_>>(), vec![(1, 8), (2, 9), (0, 1)]);
    }

    #[test]
    fn same_asset_same_bytes_and_sheets_grow_with_the_store() {
        let (asset, points) = two_squares();
        assert_eq!(png(&render(&asset, &points)), png(&render(&asset, &points)));
        let tiles: Vec<SheetTile> = (0..5)
            .map(|i| SheetTile { label: format!("a{i}"), image: (i != 2).then(|| thumbnail(&points, 160)) })
            .collect();
        let sheet = contact_sheet(&tiles);
        assert_eq!(sheet.width(), 3 * 160);
        assert_eq!(sheet.height(), SHEET_HEADER + 2 * (160 + CAPTION));
        assert_eq!(sheet_tile_size(5000), 64);
    }
}
