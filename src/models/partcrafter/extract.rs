//! Part latents → part meshes: where to evaluate the SDF decoder, and the isosurface.
//!
//! Two modes behind [`ExtractOptions::mode`]:
//!
//! - [`ExtractMode::Reference`] reproduces upstream's `hierarchical_extract_geometry`
//!   (port guide §4): a dense (2^d0)³ grid over `linspace(−b, b, 2^d0)`, then per level a
//!   nearest-neighbour ×2 upsample whose voxels are re-decoded where the coarse logit passes the
//!   band test |2·sigmoid(l) − 1| < 1 (f32), dilated by a 5³ (3³ from 512 on) max filter, and
//!   finally marching cubes at level 0 on the (2^d1)³ grid, vertices mapped by v/2^d1·2b − b.
//!   For an SDF the band test keeps every voxel, so at the released depths (8, 9) this decodes
//!   256³ + 8·256³ ≈ 151 M points per part.
//!
//! - [`ExtractMode::Fast`] (default) decodes only near the surface, on one nested lattice of
//!   2^D cells per axis (node j at −b + j·2b/2^D, so every coarser level's nodes are reused):
//!   a dense 2^c grid first, then each level keeps the cells that may hold the surface and
//!   subdivides them. A cell may hold the surface when its corners change sign, or when every
//!   corner is within reach of the level: if the surface passes through the cell, each corner
//!   lies within one cell diagonal of it, so for a field of slope at most L,
//!   `max|f(corner)| ≤ L · diagonal` (this catches thin parts that no corner sees). L is the
//!   largest slope seen along the coarse grid's edges (≈ 1 for a true SDF), times a safety
//!   factor `fast_band`, and kept cells get `fast_dilate` cells of margin. Only the corners of
//!   the kept cells are decoded; marching cubes runs on the final sign-change cells. The decode count grows with the surface area (∝ 4^D), not the volume (∝ 8^D).
//!   D defaults to 8 (the reference's dense spacing, 0.0079), ample for 2048 surface samples.
//!
//! A part whose field never crosses the level, or whose surface has no area, is an error: the
//! pipeline drops it instead of sampling a placeholder.
//!
//! Each mode is split in two so a batch can overlap them: the decoding ([`decode_field`],
//! every decoder call: device work) returns a [`PartLattice`] of plain host values, and
//! [`PartLattice::extract`] (marching cubes and the surface check: CPU only) meshes it on a
//! CPU worker while the device decodes the next concept. [`extract_field`] does both.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use anyhow::{bail, Result};
use candle_core::Tensor;

use super::vae::{CrossAttention, PreparedPart, SdfDecoder};
use super::PartDecoder;
pub use crate::geometry::lattice::check_surface;
use crate::geometry::lattice::{node_key, CornerValues, LatticeSurface};
use crate::geometry::mesh::TriMesh;
use crate::stage::{PartOutcome, Timings};

/// Multiplicative hashing of lattice keys (std's SipHash is needlessly slow for these).
#[derive(Default)]
struct NodeHasher(u64);

impl Hasher for NodeHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (x ^ (x >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 32;
    }
}

type NodeHash = BuildHasherDefault<NodeHasher>;

/// Decoded lattice values: a dense array (NaN = not decoded) while the lattice fits in
/// [`DENSE_NODES_MAX`] nodes (2^8 + 1 per axis: 68 MB), a hash map beyond.
enum NodeStore {
    Dense(Vec<f32>),
    Sparse(HashMap<u64, f32, NodeHash>),
}

/// Largest lattice stored densely by the fast mode.
const DENSE_NODES_MAX: u64 = 1 << 25;

impl NodeStore {
    fn new(nodes: u64, dense_max: u64) -> Self {
        if nodes <= dense_max {
            NodeStore::Dense(vec![f32::NAN; nodes as usize])
        } else {
            NodeStore::Sparse(HashMap::default())
        }
    }

    /// A decoded value; field values are finite (checked), so NaN (absent) and +inf (queued)
    /// never collide with one.
    fn get(&self, key: u64) -> Option<f32> {
        match self {
            NodeStore::Dense(v) => Some(v[key as usize]).filter(|x| x.is_finite()),
            NodeStore::Sparse(m) => m.get(&key).copied(),
        }
    }

    /// Marks an undecoded node as queued for decoding; true the first time. (The sparse store
    /// cannot mark, so its callers deduplicate themselves.)
    fn queue(&mut self, key: u64) -> bool {
        match self {
            NodeStore::Dense(v) => {
                let x = &mut v[key as usize];
                if x.is_nan() {
                    *x = f32::INFINITY;
                    true
                } else {
                    false
                }
            }
            NodeStore::Sparse(m) => !m.contains_key(&key),
        }
    }

    fn insert(&mut self, key: u64, value: f32) {
        match self {
            NodeStore::Dense(v) => v[key as usize] = value,
            NodeStore::Sparse(m) => {
                m.insert(key, value);
            }
        }
    }
}

/// Points handed to the field per call (the decoder chunks further inside).
pub const FIELD_BATCH: usize = 1 << 18;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExtractMode {
    /// Upstream's procedure, for golden checks and comparisons.
    Reference,
    /// Narrow-band coarse-to-fine extraction.
    #[default]
    Fast,
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    pub mode: ExtractMode,
    /// Half extent of the cube: the grid spans [−b, b]³ (upstream 1.005).
    pub bounds: f32,
    /// Reference: depth of the dense grid (upstream 8).
    pub dense_octree_depth: u32,
    /// Reference: depth of the final grid (upstream 9).
    pub hierarchical_octree_depth: u32,
    /// Reference: fail when a level would decode more points than this (0: no limit). The
    /// inference script passes 1e9 (the pipeline default 1e8 fails every SDF part at depth 9).
    pub max_num_expanded_coords: usize,
    /// Fast: depth of the first, dense grid.
    pub fast_coarse_depth: u32,
    /// Fast: depth of the final lattice (2^D cells per axis).
    pub fast_depth: u32,
    /// Fast: safety factor on the slope estimate of the "can the surface be in this cell" test.
    pub fast_band: f32,
    /// Fast: cells of margin added around the kept cells at each level.
    pub fast_dilate: u32,
    /// Cross-attention of the field's first call (the pipeline's top-k quirk applies to the
    /// first decode of part 0 only; exact attention is the default).
    pub first_call_attention: CrossAttention,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            mode: ExtractMode::Fast,
            bounds: 1.005,
            dense_octree_depth: 8,
            hierarchical_octree_depth: 9,
            max_num_expanded_coords: 1_000_000_000,
            fast_coarse_depth: 5,
            fast_depth: 8,
            fast_band: 1.0,
            fast_dilate: 1,
            first_call_attention: CrossAttention::Full,
        }
    }
}

/// One part's surface and what it cost.
#[derive(Debug, Clone)]
pub struct PartGeometry {
    /// World-frame mesh (the model's normalised object frame).
    pub mesh: TriMesh,
    /// Query points decoded for this part.
    pub decoded_points: usize,
}

/// One part's decoded field before marching cubes: what the device hands the CPU.
#[derive(Debug, Clone)]
pub struct PartLattice {
    pub surface: LatticeSurface,
    /// Query points decoded for this part.
    pub decoded_points: usize,
}

impl PartLattice {
    /// Marching cubes and the surface check: CPU work only, no decoder call.
    pub fn extract(&self) -> Result<PartGeometry> {
        Ok(PartGeometry { mesh: self.surface.extract_mesh()?, decoded_points: self.decoded_points })
    }
}

/// A batch field evaluator: points in, one value per point out (positive inside).
pub type Field<'a> = dyn FnMut(&[[f32; 3]]) -> Result<Vec<f32>> + 'a;

/// Extracts one part's mesh from its latents (tokens, C) with the SDF decoder.
pub fn extract_part(decoder: &SdfDecoder, latents: &Tensor, opts: &ExtractOptions) -> Result<PartGeometry> {
    extract_prepared(decoder, &decoder.prepare(latents)?, opts)
}

/// [`extract_part`] after [`SdfDecoder::prepare`].
pub fn extract_prepared(decoder: &SdfDecoder, part: &PreparedPart, opts: &ExtractOptions) -> Result<PartGeometry> {
    decode_prepared(decoder, part, opts)?.extract()
}

/// The decoder's share of [`extract_prepared`]: every field evaluation, no marching cubes.
pub fn decode_prepared(decoder: &SdfDecoder, part: &PreparedPart, opts: &ExtractOptions) -> Result<PartLattice> {
    let mut first = true;
    let mut field = |pts: &[[f32; 3]]| {
        let mode = if first { opts.first_call_attention } else { CrossAttention::Full };
        first = false;
        decoder.decode_points(part, pts, mode)
    };
    decode_field(&mut field, opts)
}

/// One part's latents → its decoded lattice: the SDF decoder's trunk (once per part), then
/// the chosen extraction's decoding. Plugged into [`super::PartCrafter`] as its
/// [`PartDecoder`]; marching cubes is left to the CPU ([`PartOutcome::Lattice`]), and a part
/// whose surface turns out empty or degenerate there is dropped alone.
pub struct SurfaceExtractor {
    pub decoder: SdfDecoder,
    pub options: ExtractOptions,
}

impl PartDecoder for SurfaceExtractor {
    fn decode(&self, part_latents: &Tensor, timings: &mut Timings) -> Result<PartOutcome> {
        let part = timings.time("sdf_trunk", || self.decoder.prepare(part_latents))?;
        let lattice = timings.time("sdf_extract", || decode_prepared(&self.decoder, &part, &self.options))?;
        Ok(PartOutcome::Lattice(lattice.surface))
    }
}

/// Evaluates any field where the chosen mode needs it (device work when the field is a
/// decoder); [`PartLattice::extract`] then meshes it.
pub fn decode_field(field: &mut Field, opts: &ExtractOptions) -> Result<PartLattice> {
    match opts.mode {
        ExtractMode::Reference => reference_decode(field, opts, None),
        ExtractMode::Fast => fast_decode(field, opts),
    }
}

/// Extracts a mesh from any field with the chosen mode, and checks it.
pub fn extract_field(field: &mut Field, opts: &ExtractOptions) -> Result<PartGeometry> {
    decode_field(field, opts)?.extract()
}

/// What the reference procedure decoded, for golden comparisons.
#[derive(Debug, Clone, Default)]
pub struct ReferenceTrace {
    pub dense_points: Vec<[f32; 3]>,
    pub dense_logits: Vec<f32>,
    /// Per refinement level: the decoded points and their values.
    pub refine_points: Vec<Vec<[f32; 3]>>,
    pub refine_logits: Vec<Vec<f32>>,
    /// The final grid, (2^d1)³, x slowest.
    pub final_grid: Vec<f32>,
}

/// `torch.linspace(start, end, steps)` in f32: the first half counts up from `start`, the
/// second half down from `end`.
pub fn torch_linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - 1 - i) as f32 }).collect()
}

/// Evaluates `field` at the points yielded by `points`, in batches of [`FIELD_BATCH`], calling
/// `sink` with each batch and its values.
fn evaluate_batched(
    field: &mut Field,
    total: usize,
    mut point: impl FnMut(usize) -> [f32; 3],
    mut sink: impl FnMut(usize, &[[f32; 3]], &[f32]),
) -> Result<()> {
    let mut start = 0;
    while start < total {
        let len = FIELD_BATCH.min(total - start);
        let pts: Vec<[f32; 3]> = (start..start + len).map(&mut point).collect();
        let vals = field(&pts)?;
        if vals.len() != pts.len() {
            bail!("field returned {} values for {} points", vals.len(), pts.len());
        }
        if let Some(i) = vals.iter().position(|v| !v.is_finite()) {
            bail!("field value {} at {:?} is not finite", vals[i], pts[i]);
        }
        sink(start, &pts, &vals);
        start += len;
    }
    Ok(())
}

/// f32 sigmoid as torch computes it, then the band test of `find_candidates_band`: only
/// logits whose sigmoid saturates to exactly 0 or 1 in f32 fail.
fn in_band(l: f32) -> bool {
    let s = 1.0f32 / (1.0 + (-l).exp());
    (s * 2.0 - 1.0).abs() < 1.0
}

/// Box max filter of radius `r` on an n³ mask (separable).
fn dilate(mask: &[bool], n: usize, r: usize) -> Vec<bool> {
    let mut cur = mask.to_vec();
    let strides = [n * n, n, 1];
    for &stride in &strides {
        let mut next = vec![false; cur.len()];
        for idx in 0..cur.len() {
            if !cur[idx] {
                continue;
            }
            let pos = (idx / stride) % n;
            let lo = pos.saturating_sub(r);
            let hi = (pos + r).min(n - 1);
            for p in lo..=hi {
                next[idx - pos * stride + p * stride] = true;
            }
        }
        cur = next;
    }
    cur
}

/// Upstream's hierarchical extraction; with `trace`, records what was decoded.
pub fn reference_extract(
    field: &mut Field,
    opts: &ExtractOptions,
    mut trace: Option<&mut ReferenceTrace>,
) -> Result<PartGeometry> {
    let lattice = reference_decode(field, opts, trace.as_deref_mut())?;
    let mesh = lattice.surface.mesh()?;
    let decoded_points = lattice.decoded_points;
    if let Some(t) = trace {
        t.final_grid = lattice.surface.into_dense_values().expect("the reference decodes a dense grid");
    }
    Ok(PartGeometry { mesh, decoded_points })
}

/// The decoding of [`reference_extract`]: the dense grid, then each refinement level.
fn reference_decode(
    field: &mut Field,
    opts: &ExtractOptions,
    mut trace: Option<&mut ReferenceTrace>,
) -> Result<PartLattice> {
    let (d0, d1) = (opts.dense_octree_depth, opts.hierarchical_octree_depth);
    if d1 < d0 || d1 > 10 {
        bail!("octree depths must satisfy dense ≤ hierarchical ≤ 10, got {d0} and {d1}");
    }
    let mut n = 1usize << d0;
    let mut grid = reference_dense_grid(field, opts.bounds, n, trace.as_deref_mut())?;
    let mut decoded = n * n * n;
    for depth in d0 + 1..=d1 {
        let (fine, expanded) = reference_refine(field, opts, &grid, n, depth, trace.as_deref_mut())?;
        decoded += expanded;
        grid = fine;
        n *= 2;
    }
    Ok(PartLattice { surface: LatticeSurface::Dense { values: grid, n, bounds: opts.bounds }, decoded_points: decoded })
}

/// The reference's first grid: every node of `linspace(−b, b, n)³`, x slowest.
fn reference_dense_grid(
    field: &mut Field,
    b: f32,
    n: usize,
    mut trace: Option<&mut ReferenceTrace>,
) -> Result<Vec<f32>> {
    let lin = torch_linspace(-b, b, n);
    let mut grid = vec![0f32; n * n * n];
    evaluate_batched(
        field,
        n * n * n,
        |f| [lin[f / (n * n)], lin[(f / n) % n], lin[f % n]],
        |start, pts, vals| {
            grid[start..start + vals.len()].copy_from_slice(vals);
            if let Some(t) = trace.as_deref_mut() {
                t.dense_points.extend_from_slice(pts);
                t.dense_logits.extend_from_slice(vals);
            }
        },
    )?;
    Ok(grid)
}

/// One refinement level of the reference: the n³ `grid` upsampled ×2, re-decoded where the
/// dilated band test marks it. Returns the (2n)³ grid and the points decoded.
fn reference_refine(
    field: &mut Field,
    opts: &ExtractOptions,
    grid: &[f32],
    n: usize,
    depth: u32,
    trace: Option<&mut ReferenceTrace>,
) -> Result<(Vec<f32>, usize)> {
    let fine = 1usize << depth;
    // Nearest-neighbour ×2 upsample of the current grid.
    let mut high = vec![0f32; fine * fine * fine];
    for (idx, v) in high.iter_mut().enumerate() {
        let (i, j, k) = (idx / (fine * fine), (idx / fine) % fine, idx % fine);
        *v = grid[((i / 2) * n + j / 2) * n + k / 2];
    }
    // Band test on interior voxels, then dilation on the coarse grid.
    let mut band = vec![false; n * n * n];
    for i in 1..n.saturating_sub(1) {
        for j in 1..n - 1 {
            for k in 1..n - 1 {
                let idx = (i * n + j) * n + k;
                band[idx] = in_band(grid[idx]);
            }
        }
    }
    let radius = if n < 512 { 2 } else { 1 };
    let marked: Vec<usize> = dilate(&band, n, radius).iter().enumerate().filter_map(|(i, &m)| m.then_some(i)).collect();
    let expanded = marked.len() * 8;
    if opts.max_num_expanded_coords > 0 && expanded > opts.max_num_expanded_coords {
        bail!(
            "refinement to depth {depth} needs {expanded} points, more than max_num_expanded_coords {}",
            opts.max_num_expanded_coords
        );
    }
    // Fine index k ↦ (k − 2^(d−1)) · (b / 2^(d−1)), the factor rounded to f32 once as torch does.
    let off = (fine / 2) as f32;
    let factor = (opts.bounds as f64 / (fine / 2) as f64) as f32;
    let child = |e: usize| {
        let c = marked[e / 8];
        let o = e % 8;
        let (i, j, k) = (c / (n * n), (c / n) % n, c % n);
        [2 * i + (o >> 2), 2 * j + ((o >> 1) & 1), 2 * k + (o & 1)]
    };
    let mut level_points = vec![];
    let mut level_logits = vec![];
    let tracing = trace.is_some();
    evaluate_batched(
        field,
        expanded,
        |e| child(e).map(|x| (x as f32 - off) * factor),
        |start, pts, vals| {
            for (e, &v) in (start..start + vals.len()).zip(vals) {
                let [i, j, k] = child(e);
                high[(i * fine + j) * fine + k] = v;
            }
            if tracing {
                level_points.extend_from_slice(pts);
                level_logits.extend_from_slice(vals);
            }
        },
    )?;
    if let Some(t) = trace {
        t.refine_points.push(level_points);
        t.refine_logits.push(level_logits);
    }
    Ok((high, expanded))
}

/// Narrow-band coarse-to-fine extraction (module docs), meshed but not checked.
pub fn fast_extract(field: &mut Field, opts: &ExtractOptions) -> Result<PartGeometry> {
    let lattice = fast_decode(field, opts)?;
    Ok(PartGeometry { mesh: lattice.surface.mesh()?, decoded_points: lattice.decoded_points })
}

/// The decoding of [`fast_extract`]: the cells the surface crosses and their corner values.
pub fn fast_decode(field: &mut Field, opts: &ExtractOptions) -> Result<PartLattice> {
    fast_decode_with(field, opts, DENSE_NODES_MAX)
}

/// [`fast_decode`] with the dense node store allowed up to `dense_max` lattice nodes.
fn fast_decode_with(field: &mut Field, opts: &ExtractOptions, dense_max: u64) -> Result<PartLattice> {
    let (c, d) = (opts.fast_coarse_depth, opts.fast_depth);
    if c > d || d > 12 {
        bail!("fast extraction needs coarse depth ≤ depth ≤ 12, got {c} and {d}");
    }
    let mut lattice = NestedLattice::new(opts.bounds as f64, d, dense_max);
    // Coarse level: every node of the 2^c grid, each cell active.
    let mut s = 1u32 << (d - c);
    let m = 1u32 << c;
    let coarse: Vec<[u32; 3]> =
        (0..=m).flat_map(|i| (0..=m).flat_map(move |j| (0..=m).map(move |k| [i * s, j * s, k * s]))).collect();
    lattice.decode(field, coarse)?;
    let slope = lattice.coarse_slope(m, s);
    let mut active: Vec<[u32; 3]> =
        (0..m).flat_map(|i| (0..m).flat_map(move |j| (0..m).map(move |k| [i * s, j * s, k * s]))).collect();
    loop {
        lattice.decode_missing_corners(field, &active, s)?;
        if s == 1 {
            return Ok(lattice.into_surface(active));
        }
        let reach = opts.fast_band * slope * (s as f64 * lattice.h * 3f64.sqrt()) as f32;
        let kept: Vec<[u32; 3]> = active
            .iter()
            .copied()
            .filter(|&cell| {
                let f = lattice.corner_values(cell, s);
                changes_sign(&f) || f.iter().all(|x| x.abs() <= reach)
            })
            .collect();
        active = lattice.refine(&kept, s, opts.fast_dilate);
        s /= 2;
    }
}

/// The corners of the cell at `cell` of size `s` (node units).
fn corners(cell: [u32; 3], s: u32) -> [[u32; 3]; 8] {
    std::array::from_fn(|q| {
        [cell[0] + s * (q as u32 & 1), cell[1] + s * ((q as u32 >> 1) & 1), cell[2] + s * ((q as u32 >> 2) & 1)]
    })
}

/// Whether the surface (level 0; above is inside) crosses between these corner values.
fn changes_sign(f: &[f32; 8]) -> bool {
    f.iter().any(|&x| x > 0.0) && f.iter().any(|&x| x <= 0.0)
}

/// The fast mode's nested lattice (2^D cells per axis over [−b, b]³) while it is refined:
/// the values decoded so far and how many.
struct NestedLattice {
    bounds: f64,
    cells: u32,
    nodes: u64,
    /// Node spacing.
    h: f64,
    values: NodeStore,
    dense_max: u64,
    decoded: usize,
}

impl NestedLattice {
    fn new(bounds: f64, depth: u32, dense_max: u64) -> Self {
        let cells = 1u32 << depth;
        let nodes = cells as u64 + 1;
        let h = 2.0 * bounds / cells as f64;
        let values = NodeStore::new(nodes * nodes * nodes, dense_max);
        Self { bounds, cells, nodes, h, values, dense_max, decoded: 0 }
    }

    fn key(&self, p: [u32; 3]) -> u64 {
        node_key(self.nodes, p)
    }

    fn value(&self, p: [u32; 3]) -> f32 {
        self.values.get(self.key(p)).expect("node decoded")
    }

    fn corner_values(&self, cell: [u32; 3], s: u32) -> [f32; 8] {
        corners(cell, s).map(|p| self.value(p))
    }

    /// Evaluates the field at `nodes` and stores the values.
    fn decode(&mut self, field: &mut Field, nodes: Vec<[u32; 3]>) -> Result<()> {
        self.decoded += nodes.len();
        let (b, h) = (self.bounds, self.h);
        let coord = |j: u32| (-b + j as f64 * h) as f32;
        let n = self.nodes;
        let values = &mut self.values;
        evaluate_batched(
            field,
            nodes.len(),
            |e| nodes[e].map(coord),
            |start, _, vals| {
                for (e, &v) in (start..start + vals.len()).zip(vals) {
                    values.insert(node_key(n, nodes[e]), v);
                }
            },
        )
    }

    /// Decodes the corners of the `active` cells (size `s`) not decoded yet.
    fn decode_missing_corners(&mut self, field: &mut Field, active: &[[u32; 3]], s: u32) -> Result<()> {
        let mut missing: Vec<[u32; 3]> = vec![];
        for &cell in active {
            for p in corners(cell, s) {
                if self.values.queue(self.key(p)) {
                    missing.push(p);
                }
            }
        }
        if matches!(self.values, NodeStore::Sparse(_)) {
            missing.sort_unstable();
            missing.dedup();
        }
        self.decode(field, missing)
    }

    /// Largest slope along the coarse grid's edges (`m` cells of size `s` per axis): a
    /// Lipschitz estimate of the field (≈ 1 for an SDF).
    fn coarse_slope(&self, m: u32, s: u32) -> f32 {
        let mut slope = 0f32;
        let step = (s as f64 * self.h) as f32;
        for i in 0..=m {
            for j in 0..=m {
                for k in 0..=m {
                    let f0 = self.value([i * s, j * s, k * s]);
                    for (di, dj, dk) in [(1, 0, 0), (0, 1, 0), (0, 0, 1)] {
                        let (a, bb, cc) = (i + di, j + dj, k + dk);
                        if a <= m && bb <= m && cc <= m {
                            let f1 = self.value([a * s, bb * s, cc * s]);
                            slope = slope.max((f1 - f0).abs() / step);
                        }
                    }
                }
            }
        }
        slope
    }

    /// The `kept` cells of size `s` with `dilate` cells of margin (deduplicated), each split
    /// into its 8 children. Distinct parents have distinct children, so only the parents need
    /// deduplicating.
    fn refine(&self, kept: &[[u32; 3]], s: u32, dilate: u32) -> Vec<[u32; 3]> {
        let per_axis = self.cells / s;
        let r = dilate as i64;
        let mut parents: Vec<[u32; 3]> = Vec::with_capacity(kept.len() * (2 * r as usize + 1).pow(3));
        for cell in kept {
            let g = cell.map(|x| x / s);
            for di in -r..=r {
                for dj in -r..=r {
                    for dk in -r..=r {
                        let q = [g[0] as i64 + di, g[1] as i64 + dj, g[2] as i64 + dk];
                        if q.iter().all(|&x| x >= 0 && x < per_axis as i64) {
                            parents.push(q.map(|x| x as u32 * s));
                        }
                    }
                }
            }
        }
        if (per_axis as u64).pow(3) <= self.dense_max {
            // Dedup through a bitmap of this level's cells (also yields sorted order).
            let pa = per_axis as usize;
            let mut seen = vec![false; pa.pow(3)];
            for p in &parents {
                let g = p.map(|x| (x / s) as usize);
                seen[(g[0] * pa + g[1]) * pa + g[2]] = true;
            }
            parents = (0..seen.len())
                .filter(|&i| seen[i])
                .map(|i| [(i / (pa * pa)) as u32 * s, ((i / pa) % pa) as u32 * s, (i % pa) as u32 * s])
                .collect();
        } else {
            parents.sort_unstable();
            parents.dedup();
        }
        let half = s / 2;
        parents
            .iter()
            .flat_map(|p| {
                (0..8u32)
                    .map(move |o| [p[0] + half * (o & 1), p[1] + half * ((o >> 1) & 1), p[2] + half * ((o >> 2) & 1)])
            })
            .collect()
    }

    /// The finest level's cells the surface crosses and their corner values: all marching
    /// cubes needs, a small fraction of the lattice.
    fn into_surface(self, active: Vec<[u32; 3]>) -> PartLattice {
        let cells: Vec<[u32; 3]> =
            active.into_iter().filter(|&cell| changes_sign(&self.corner_values(cell, 1))).collect();
        let corners = CornerValues::gather(&cells, self.nodes, |k| self.values.get(k).expect("corner decoded"));
        PartLattice {
            surface: LatticeSurface::Cells { cells, corners, nodes: self.nodes, bounds: self.bounds },
            decoded_points: self.decoded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sparse node store (lattices above 257³) and the dense one give the same result.
    #[test]
    fn fast_sparse_store_matches_dense() {
        let opts = ExtractOptions { fast_coarse_depth: 3, fast_depth: 6, ..Default::default() };
        let torus = |p: &[f32; 3]| {
            let r = (p[0] * p[0] + p[1] * p[1]).sqrt() - 0.5;
            0.2 - (r * r + p[2] * p[2]).sqrt()
        };
        let mut field = |pts: &[[f32; 3]]| Ok(pts.iter().map(torus).collect());
        let dense = fast_decode_with(&mut field, &opts, DENSE_NODES_MAX).unwrap().extract().unwrap();
        let sparse = fast_decode_with(&mut field, &opts, 0).unwrap().extract().unwrap();
        println!(
            "torus: {} decoded, {} faces, area {:.4} (exact {:.4})",
            dense.decoded_points,
            dense.mesh.faces.len(),
            dense.mesh.area(),
            4.0 * std::f64::consts::PI.powi(2) * 0.5 * 0.2
        );
        assert_eq!(dense.decoded_points, sparse.decoded_points);
        assert_eq!(dense.mesh, sparse.mesh);
        assert!((dense.mesh.area() / (4.0 * std::f64::consts::PI.powi(2) * 0.1) - 1.0).abs() < 0.01);
    }
}
