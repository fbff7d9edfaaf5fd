//! Area-weighted surface sampling of part meshes into the asset's point cloud.
//!
//! What the client needs from a shape: N points spread uniformly over the surface, each
//! with its part id and an attachment weight. Steps:
//! 1. Canonical part order: descending surface area, ties by centroid height (+Y up), so a
//!    regenerated concept keeps its numbering; id 1 is the largest part.
//! 2. Point budget: every part gets at least `min_share` of the points (small parts such as
//!    a cup's handle must stay visible), the rest is split by area (largest remainder).
//! 3. Within a part: face picked by its area (CDF + binary search), uniform barycentric point.
//! 4. The whole assembly is centred on its bounding box and scaled into [-1, 1]³.
//! 5. Attachment: 0 at the joint with other parts, rising with distance to 255 at the part's
//!    farthest point (a single part measures from its centroid instead).
//!
//! All randomness comes from one seeded stream: the same meshes and seed give the same cloud.

use anyhow::{bail, Result};

use super::mesh::TriMesh;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy)]
pub struct SampleOptions {
    pub num_points: usize,
    pub seed: u64,
    /// Minimum fraction of the points each part receives (capped at an equal split).
    pub min_share: f64,
}

impl SampleOptions {
    pub fn new(num_points: usize, seed: u64) -> Self {
        Self { num_points, seed, min_share: 0.02 }
    }
}

/// One part of the sampled cloud, in canonical order (index i ↔ part id i + 1).
#[derive(Debug, Clone, PartialEq)]
pub struct SampledPart {
    /// Index of this part in the input slice.
    pub source: usize,
    pub points: usize,
    pub centroid: [f32; 3],
    pub bbox_min: [f32; 3],
    pub bbox_max: [f32; 3],
    pub area_share: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampledCloud {
    pub positions: Vec<[f32; 3]>,
    /// 1-based, canonical order.
    pub part_ids: Vec<u8>,
    pub attachment: Vec<u8>,
    pub parts: Vec<SampledPart>,
}

/// Canonical order of parts: by area (descending), ties by centroid height (ascending y).
pub fn canonical_order(areas: &[f64], centroids: &[[f64; 3]]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..areas.len()).collect();
    let total: f64 = areas.iter().sum::<f64>().max(f64::MIN_POSITIVE);
    order.sort_by(|&a, &b| {
        let (sa, sb) = (areas[a] / total, areas[b] / total);
        if (sa - sb).abs() > 1e-9 {
            sb.total_cmp(&sa)
        } else {
            centroids[a][1].total_cmp(&centroids[b][1]).then(a.cmp(&b))
        }
    });
    order
}

/// Cumulative face areas (the CDF that picks faces by area; its last entry is the surface
/// area) and the area-weighted surface centroid, in one pass over the faces.
fn area_and_centroid(mesh: &TriMesh) -> (Vec<f64>, [f64; 3]) {
    let mut cdf = Vec::with_capacity(mesh.faces.len());
    let mut c = [0.0f64; 3];
    let mut total = 0.0;
    for f in &mesh.faces {
        let [p, q, r] = f.map(|i| mesh.vertices[i as usize]);
        // Per-face cross product in f32 (relative error ~1e-7 per face), sums in f64.
        let (u, v) = ([q[0] - p[0], q[1] - p[1], q[2] - p[2]], [r[0] - p[0], r[1] - p[1], r[2] - p[2]]);
        let n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
        let a = 0.5 * (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt() as f64;
        for k in 0..3 {
            c[k] += a * (p[k] + q[k] + r[k]) as f64;
        }
        total += a;
        cdf.push(total);
    }
    (cdf, c.map(|x| x / (3.0 * total).max(f64::MIN_POSITIVE)))
}

/// Splits `n` points over parts: `min_each` each, the rest by area, largest remainder first.
fn allocate(n: usize, areas: &[f64], min_share: f64) -> Vec<usize> {
    let k = areas.len();
    let min_each = ((min_share * n as f64).ceil() as usize).min(n / k);
    let rest = n - min_each * k;
    let total: f64 = areas.iter().sum();
    let exact: Vec<f64> = areas.iter().map(|a| a / total * rest as f64).collect();
    let mut alloc: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut left = rest - alloc.iter().sum::<usize>();
    let mut by_remainder: Vec<usize> = (0..k).collect();
    by_remainder
        .sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())).then(a.cmp(&b)));
    for &i in by_remainder.iter().cycle() {
        if left == 0 {
            break;
        }
        alloc[i] += 1;
        left -= 1;
    }
    alloc.iter().map(|a| a + min_each).collect()
}

/// Samples `count` points uniformly over `mesh`'s surface.
fn sample_mesh(mesh: &TriMesh, cdf: &[f64], count: usize, rng: &mut Rng, out: &mut Vec<[f32; 3]>) {
    let total = cdf[cdf.len() - 1];
    for _ in 0..count {
        let target = rng.uniform() * total;
        let f = cdf.partition_point(|&c| c <= target).min(cdf.len() - 1);
        let [a, b, c] = mesh.triangle(f);
        let (r1, r2) = (rng.uniform().sqrt(), rng.uniform());
        let (wa, wb, wc) = (1.0 - r1, r1 * (1.0 - r2), r1 * r2);
        out.push(std::array::from_fn(|k| (wa * a[k] as f64 + wb * b[k] as f64 + wc * c[k] as f64) as f32));
    }
}

/// Samples the parts into one normalised, labelled cloud. Every mesh must have positive area.
pub fn sample_parts(meshes: &[TriMesh], opts: &SampleOptions) -> Result<SampledCloud> {
    if meshes.is_empty() {
        bail!("no parts to sample");
    }
    if meshes.len() > 255 {
        bail!("{} parts: at most 255 fit in a u8 id", meshes.len());
    }
    if opts.num_points < meshes.len() {
        bail!("{} points cannot cover {} parts", opts.num_points, meshes.len());
    }
    let (cdfs, centroids): (Vec<Vec<f64>>, Vec<[f64; 3]>) = meshes.iter().map(area_and_centroid).unzip();
    let areas: Vec<f64> = cdfs.iter().map(|c| c.last().copied().unwrap_or(0.0)).collect();
    if let Some(i) = areas.iter().position(|a| !a.is_finite() || *a <= 0.0) {
        bail!("part {i} has no surface area");
    }
    let order = canonical_order(&areas, &centroids);
    let ordered_areas: Vec<f64> = order.iter().map(|&i| areas[i]).collect();
    let counts = allocate(opts.num_points, &ordered_areas, opts.min_share);

    let mut rng = Rng::derive(opts.seed, "surface-sampling");
    let mut positions = Vec::with_capacity(opts.num_points);
    let mut part_ids = Vec::with_capacity(opts.num_points);
    for (rank, (&src, &count)) in order.iter().zip(&counts).enumerate() {
        sample_mesh(&meshes[src], &cdfs[src], count, &mut rng, &mut positions);
        part_ids.extend(std::iter::repeat_n(rank as u8 + 1, count));
    }

    // Normalise on the union of the meshes' bounds, not the samples', so the frame does
    // not depend on the seed.
    let (mut lo, mut hi) = meshes[0].bounds().expect("non-empty mesh");
    for m in &meshes[1..] {
        let (l, h) = m.bounds().expect("non-empty mesh");
        for k in 0..3 {
            lo[k] = lo[k].min(l[k]);
            hi[k] = hi[k].max(h[k]);
        }
    }
    let center: [f64; 3] = std::array::from_fn(|k| (lo[k] as f64 + hi[k] as f64) / 2.0);
    let half = (0..3).map(|k| (hi[k] - lo[k]) as f64 / 2.0).fold(0.0, f64::max);
    if half.is_nan() || half <= 0.0 {
        bail!("the parts have zero extent");
    }
    for p in &mut positions {
        *p = std::array::from_fn(|k| ((p[k] as f64 - center[k]) / half).clamp(-1.0, 1.0) as f32);
    }

    let total_area: f64 = areas.iter().sum();
    let mut parts = Vec::with_capacity(order.len());
    let mut start = 0;
    for (&src, &count) in order.iter().zip(&counts) {
        let pts = &positions[start..start + count];
        start += count;
        let mut c = [0.0f64; 3];
        let (mut bmin, mut bmax) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]);
        for p in pts {
            for k in 0..3 {
                c[k] += p[k] as f64;
                bmin[k] = bmin[k].min(p[k]);
                bmax[k] = bmax[k].max(p[k]);
            }
        }
        parts.push(SampledPart {
            source: src,
            points: count,
            centroid: c.map(|x| (x / count.max(1) as f64) as f32),
            bbox_min: bmin,
            bbox_max: bmax,
            area_share: areas[src] / total_area,
        });
    }
    let scaled_area = total_area / (half * half);
    let attachment = attachment_weights(&positions, &part_ids, scaled_area);
    Ok(SampledCloud { positions, part_ids, attachment, parts })
}

fn dist2(a: &[f32; 3], b: &[f32; 3]) -> f32 {
    let d = [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
    d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
}

/// Structure-of-arrays copy of a point set, so the nearest-point scans below run over
/// contiguous lanes that the compiler vectorises.
struct Soa {
    x: Vec<f32>,
    y: Vec<f32>,
    z: Vec<f32>,
}

impl Soa {
    fn new<'a>(points: impl Iterator<Item = &'a [f32; 3]>) -> Self {
        let mut s = Soa { x: vec![], y: vec![], z: vec![] };
        for p in points {
            s.x.push(p[0]);
            s.y.push(p[1]);
            s.z.push(p[2]);
        }
        s
    }

    /// Axis-aligned bounds of the set (inverted infinities when empty).
    fn bounds(&self) -> ([f32; 3], [f32; 3]) {
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for (k, axis) in [&self.x, &self.y, &self.z].into_iter().enumerate() {
            for &v in axis.iter() {
                lo[k] = lo[k].min(v);
                hi[k] = hi[k].max(v);
            }
        }
        (lo, hi)
    }

    /// Squared distance from `p` to the nearest point of the set (infinity when empty).
    fn nearest2(&self, p: &[f32; 3]) -> f32 {
        const LANES: usize = 8;
        let mut best = [f32::INFINITY; LANES];
        let n = self.x.len() / LANES * LANES;
        for c in (0..n).step_by(LANES) {
            #[allow(clippy::needless_range_loop)] // one lane per index: the loop the compiler vectorises
            for l in 0..LANES {
                let (dx, dy, dz) = (self.x[c + l] - p[0], self.y[c + l] - p[1], self.z[c + l] - p[2]);
                let d = dx * dx + dy * dy + dz * dz;
                best[l] = if d < best[l] { d } else { best[l] };
            }
        }
        let mut m = best.iter().copied().fold(f32::INFINITY, f32::min);
        for i in n..self.x.len() {
            m = m.min(dist2(p, &[self.x[i], self.y[i], self.z[i]]));
        }
        m
    }
}

/// Squared distance from `p` to a box (0 inside): a lower bound for any point in it.
fn box_dist2(p: &[f32; 3], (lo, hi): &([f32; 3], [f32; 3])) -> f32 {
    (0..3).map(|k| (lo[k] - p[k]).max(p[k] - hi[k]).max(0.0).powi(2)).sum()
}

/// Attachment channel: per part, distance to its joint region, scaled to 0..=255.
///
/// The joint region of a part is the set of its points whose distance to the nearest point
/// of another part is within two sample spacings of the part's closest approach; a part that
/// touches nothing (or the only part) measures from its centroid instead.
pub fn attachment_weights(positions: &[[f32; 3]], part_ids: &[u8], surface_area: f64) -> Vec<u8> {
    let n = positions.len();
    let spacing = (surface_area / n.max(1) as f64).sqrt() as f32;
    let num_parts = part_ids.iter().copied().max().unwrap_or(0) as usize;
    let mut weights = vec![0u8; n];
    let members: Vec<Vec<usize>> =
        (1..=num_parts).map(|id| (0..n).filter(|&i| part_ids[i] as usize == id).collect()).collect();
    let sets: Vec<Soa> = members.iter().map(|idx| Soa::new(idx.iter().map(|&i| &positions[i]))).collect();
    let boxes: Vec<([f32; 3], [f32; 3])> = sets.iter().map(Soa::bounds).collect();
    // Nearest point of any other part: parts are visited from the nearest bounding box out
    // and skipped once their box is farther than the best point found.
    let nearest_other = |p: &[f32; 3], own: usize| -> f32 {
        let mut order: Vec<(f32, usize)> = (0..num_parts)
            .filter(|&j| j != own && !sets[j].x.is_empty())
            .map(|j| (box_dist2(p, &boxes[j]), j))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut best = f32::INFINITY;
        for (lower, j) in order {
            if lower >= best {
                break;
            }
            best = best.min(sets[j].nearest2(p));
        }
        best.sqrt()
    };
    for (pi, idx) in members.iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        // Anchor points: the joint region, or the centroid.
        let mut anchor_points: Vec<[f32; 3]> = if num_parts > 1 {
            let d_other: Vec<f32> = idx.iter().map(|&i| nearest_other(&positions[i], pi)).collect();
            let closest = d_other.iter().copied().fold(f32::INFINITY, f32::min);
            let reach = closest + 2.0 * spacing;
            idx.iter().zip(&d_other).filter(|(_, &d)| d <= reach).map(|(&i, _)| positions[i]).collect()
        } else {
            vec![]
        };
        if anchor_points.is_empty() {
            let mut c = [0.0f32; 3];
            for &i in idx {
                for k in 0..3 {
                    c[k] += positions[i][k] / idx.len() as f32;
                }
            }
            anchor_points.push(c);
        }
        let anchors = Soa::new(anchor_points.iter());
        let g: Vec<f32> = idx.iter().map(|&i| anchors.nearest2(&positions[i]).sqrt()).collect();
        let gmax = g.iter().copied().fold(0.0, f32::max);
        for (&i, &gi) in idx.iter().zip(&g) {
            weights[i] = if gmax > 0.0 { (255.0 * gi / gmax).round() as u8 } else { 0 };
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::primitives;

    fn two_boxes() -> Vec<TriMesh> {
        // A big box (body) and a small one on top (head), touching at y = 1.
        vec![
            primitives::cuboid([0.0, 0.0, 0.0], [1.0, 1.0, 1.0]),
            primitives::cuboid([0.0, 1.25, 0.0], [0.25, 0.25, 0.25]),
        ]
    }

    #[test]
    fn deterministic_normalised_and_labelled() {
        let meshes = two_boxes();
        let opts = SampleOptions::new(2048, 42);
        let a = sample_parts(&meshes, &opts).unwrap();
        let b = sample_parts(&meshes, &opts).unwrap();
        assert_eq!(a, b);
        let c = sample_parts(&meshes, &SampleOptions::new(2048, 43)).unwrap();
        assert_ne!(a.positions, c.positions);
        assert_eq!(a.positions.len(), 2048);
        assert!(a.positions.iter().flatten().all(|x| x.abs() <= 1.0));
        // Bounding box touches ±1 along the longest axis (y: from -1 to 1.5 → height 2.5).
        let ymax = a.positions.iter().map(|p| p[1]).fold(f32::MIN, f32::max);
        assert!(ymax > 0.98, "{ymax}");
        // Part 1 is the big box; shares follow areas (24 vs 1.5) with the minimum for the head.
        assert_eq!(a.parts[0].source, 0);
        assert_eq!(a.parts[0].points + a.parts[1].points, 2048);
        let expected_head = (0.02f64 * 2048.0).ceil() as usize + ((2048 - 2 * 41) as f64 * 1.5 / 25.5).round() as usize;
        assert!((a.parts[1].points as i64 - expected_head as i64).abs() <= 1, "{}", a.parts[1].points);
        assert!((a.parts[0].area_share - 24.0 / 25.5).abs() < 1e-9);
    }

    #[test]
    fn uniform_over_area() {
        // One 2×2×2 cube: each face gets ~1/6 of the points.
        let mesh = primitives::cuboid([0.0; 3], [1.0; 3]);
        let cloud = sample_parts(&[mesh], &SampleOptions::new(60_000, 1)).unwrap();
        let top = cloud.positions.iter().filter(|p| p[1] > 0.999).count() as f64 / 60_000.0;
        assert!((top - 1.0 / 6.0).abs() < 0.01, "{top}");
    }

    #[test]
    fn attachment_is_zero_at_the_joint_and_255_at_the_far_end() {
        let cloud = sample_parts(&two_boxes(), &SampleOptions::new(4096, 3)).unwrap();
        for (p, (&id, &w)) in cloud.positions.iter().zip(cloud.part_ids.iter().zip(&cloud.attachment)) {
            // In normalised units the joint plane y = 1 sits at y = 0.2.
            if id == 1 && p[1] > 0.19 && p[0].abs() < 0.05 && p[2].abs() < 0.05 {
                assert!(w < 20, "body point at the joint has weight {w}");
            }
            if id == 1 && p[1] < -0.99 {
                assert!(w > 150, "body bottom has weight {w}");
            }
        }
        assert!(cloud.attachment.contains(&255) && cloud.attachment.contains(&0));
    }

    #[test]
    fn vectorised_nearest_matches_plain_scan() {
        let mut rng = Rng::new(5);
        let pts: Vec<[f32; 3]> = (0..1003).map(|_| std::array::from_fn(|_| rng.uniform() as f32 * 2.0 - 1.0)).collect();
        let set = Soa::new(pts[..997].iter());
        for q in &pts[997..] {
            let plain = pts[..997].iter().map(|p| dist2(q, p)).fold(f32::INFINITY, f32::min);
            assert_eq!(set.nearest2(q), plain);
        }
        assert_eq!(Soa::new(std::iter::empty()).nearest2(&[0.0; 3]), f32::INFINITY);
    }

    /// The pruned nearest-other-part search against a plain scan over every pair.
    #[test]
    fn attachment_matches_brute_force() {
        let cloud =
            sample_parts(&crate::geometry::primitives::four_part_test_meshes(), &SampleOptions::new(1500, 9)).unwrap();
        let (pos, ids) = (&cloud.positions, &cloud.part_ids);
        let area = 1.7;
        let spacing = (area / pos.len() as f64).sqrt() as f32;
        let mut want = vec![0u8; pos.len()];
        for id in 1..=ids.iter().copied().max().unwrap() {
            let idx: Vec<usize> = (0..pos.len()).filter(|&i| ids[i] == id).collect();
            let d: Vec<f32> = idx
                .iter()
                .map(|&i| {
                    (0..pos.len())
                        .filter(|&j| ids[j] != id)
                        .map(|j| dist2(&pos[i], &pos[j]))
                        .fold(f32::INFINITY, f32::min)
                        .sqrt()
                })
                .collect();
            let closest = d.iter().copied().fold(f32::INFINITY, f32::min);
            let anchors: Vec<usize> =
                idx.iter().zip(&d).filter(|(_, &x)| x <= closest + 2.0 * spacing).map(|(&i, _)| i).collect();
            let g: Vec<f32> = idx
                .iter()
                .map(|&i| anchors.iter().map(|&a| dist2(&pos[i], &pos[a])).fold(f32::INFINITY, f32::min).sqrt())
                .collect();
            let gmax = g.iter().copied().fold(0.0, f32::max);
            for (&i, &gi) in idx.iter().zip(&g) {
                want[i] = (255.0 * gi / gmax).round() as u8;
            }
        }
        assert_eq!(attachment_weights(pos, ids, area), want);
    }

    #[test]
    fn min_share_and_rejections() {
        let tiny = primitives::cuboid([5.0, 0.0, 0.0], [0.01, 0.01, 0.01]);
        let big = primitives::cuboid([0.0; 3], [1.0; 3]);
        let cloud = sample_parts(&[tiny.clone(), big.clone()], &SampleOptions::new(2048, 0)).unwrap();
        assert_eq!(cloud.parts[1].source, 0);
        assert!(cloud.parts[1].points >= 41);
        assert!(sample_parts(&[], &SampleOptions::new(10, 0)).is_err());
        let flat = TriMesh::new(vec![[0.0; 3], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], vec![[0, 1, 2]]);
        assert!(sample_parts(&[flat], &SampleOptions::new(10, 0)).is_err());
    }
}
