//! The software splat renderer: orthographic views of a point cloud, painter's order.
//!
//! Points are drawn far to near as small disks, each pixel shaded by the point's depth in
//! the view (near is bright) and by its place in the disk (a sphere-like rim), quantised to
//! the palette's levels so every pixel is exactly one part's shaded colour. Sorting uses a
//! total order with the point index as tie-break, so the same cloud gives the same pixels.

use super::canvas::Canvas;
use super::palette;
use crate::asset::PointData;

/// Where the camera looks from. +Y is up, the object faces +Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Front,
    Side,
    Top,
    ThreeQuarter,
}

impl View {
    pub const ALL: [View; 4] = [View::Front, View::Side, View::Top, View::ThreeQuarter];

    pub fn label(self) -> &'static str {
        match self {
            View::Front => "front",
            View::Side => "side",
            View::Top => "top",
            View::ThreeQuarter => "three-quarter",
        }
    }

    /// Screen right, screen up and toward the viewer (larger = nearer), orthonormal.
    fn basis(self) -> [[f32; 3]; 3] {
        match self {
            View::Front => [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            View::Side => [[0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
            View::Top => [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
            View::ThreeQuarter => {
                // 45° around the vertical, then looking 30° down.
                let (yaw, pitch) = (std::f32::consts::FRAC_PI_4, std::f32::consts::FRAC_PI_6);
                let toward = [yaw.sin() * pitch.cos(), pitch.sin(), yaw.cos() * pitch.cos()];
                let right = [yaw.cos(), 0.0, -yaw.sin()];
                [right, cross(toward, right), toward]
            }
        }
    }
}

fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn dot(a: [f32; 3], b: [f32; 3]) -> f32 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The centre and radius every view of one cloud shares, so the views have one scale.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    centre: [f32; 3],
    radius: f32,
}

impl Frame {
    /// The bounding box's centre and the farthest point's distance from it.
    pub fn of(positions: &[[f32; 3]]) -> Self {
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for p in positions {
            for a in 0..3 {
                lo[a] = lo[a].min(p[a]);
                hi[a] = hi[a].max(p[a]);
            }
        }
        if positions.is_empty() {
            return Self { centre: [0.0; 3], radius: 1.0 };
        }
        let centre = [(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, (lo[2] + hi[2]) / 2.0];
        let radius =
            positions.iter().map(|p| dot(sub(*p, centre), sub(*p, centre)).sqrt()).fold(0.0f32, f32::max).max(1e-3);
        Self { centre, radius }
    }
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// Splat radius in pixels for `n` points in a `size`² view: dense enough to read as a
/// surface, small enough that parts stay apart.
fn splat_radius(size: u32, n: usize) -> f32 {
    (size as f32 * 0.5 / (n.max(1) as f32).sqrt()).clamp(1.0, 4.0)
}

/// Draws `view` of the cloud into the `size`² square at (`x0`, `y0`) of `canvas`.
pub fn draw_view(canvas: &mut Canvas, x0: u32, y0: u32, size: u32, points: &PointData, frame: Frame, view: View) {
    let [right, up, toward] = view.basis();
    let margin = (size as f32 * 0.06).max(2.0);
    let scale = (size as f32 / 2.0 - margin) / frame.radius;
    let (cx, cy) = (x0 as f32 + size as f32 / 2.0, y0 as f32 + size as f32 / 2.0);
    let projected: Vec<(f32, f32, f32)> = points
        .positions
        .iter()
        .map(|&p| {
            let q = sub(p, frame.centre);
            (cx + scale * dot(q, right), cy - scale * dot(q, up), dot(q, toward))
        })
        .collect();
    let mut order: Vec<usize> = (0..projected.len()).collect();
    order.sort_by(|&a, &b| projected[a].2.total_cmp(&projected[b].2).then(a.cmp(&b)));
    let (dmin, dmax) = (-frame.radius, frame.radius);
    let r = splat_radius(size, projected.len());
    let reach = r.ceil() as i64;
    let (xmin, ymin, xmax, ymax) = (x0 as i64, y0 as i64, (x0 + size) as i64, (y0 + size) as i64);
    let top = (palette::LEVELS - 1) as f32;
    for i in order {
        let (sx, sy, d) = projected[i];
        let near = ((d - dmin) / (dmax - dmin)).clamp(0.0, 1.0);
        let base = palette::part(points.part_ids[i]);
        let (px, py) = (sx.round() as i64, sy.round() as i64);
        for dy in -reach..=reach {
            for dx in -reach..=reach {
                let dist2 = (dx * dx + dy * dy) as f32;
                if dist2 > r * r + 0.5 {
                    continue;
                }
                let (x, y) = (px + dx, py + dy);
                if x < xmin || y < ymin || x >= xmax || y >= ymax {
                    continue;
                }
                let sphere = (1.0 - dist2 / ((r + 0.5) * (r + 0.5))).max(0.0).sqrt();
                let level = ((0.6 * near + 0.4 * sphere) * top).round() as usize;
                canvas.put(x, y, palette::shade(base, level));
            }
        }
    }
}
