//! Marching cubes at a level, over a dense grid or over a sparse list of cells.
//!
//! Why not a 256-case lookup table: the triangulation of each cell is derived from the cube's
//! faces instead. On every face the level crossings are joined by oriented segments (the
//! positive, "inside" side always on the same hand); an ambiguous face (four crossings) is
//! resolved with the asymptotic decider, the value of the bilinear interpolant at its saddle,
//! as Lewiner's method does. Neighbouring cells therefore agree on every shared face, so the
//! surface is closed and consistently wound. The segments chain into closed loops inside the
//! cell, and each loop of k vertices becomes a fan of k − 2 triangles — the same counts as the
//! classic tables wherever the cell interior is unambiguous. (Lewiner's interior test, which
//! can add a tunnel through a cell, is not reproduced; it only changes ambiguous noise cells.)
//!
//! A vertex is shared by every cell around its lattice edge: edges are keyed by their lower
//! node and axis, deduplicated after the parallel (rayon) cell pass, and placed by linear
//! interpolation. Corners strictly above the level are inside (scikit-image's convention), and
//! faces are wound counter-clockwise seen from the outside (the side below the level).

use std::sync::OnceLock;

use rayon::prelude::*;

use super::mesh::TriMesh;

/// Corner `c` of a cell sits at offset (c & 1, (c >> 1) & 1, (c >> 2) & 1).
fn corner_offset(c: usize) -> [u32; 3] {
    [(c & 1) as u32, ((c >> 1) & 1) as u32, ((c >> 2) & 1) as u32]
}

/// Per cell configuration (256 of them): the triangles as triples of cell-edge ids, when no
/// face is ambiguous. Edge id = axis · 4 + index of its lower corner among the 4 corners that
/// lack that axis bit.
struct Tables {
    /// The 6 faces, each as 4 corners in counter-clockwise order seen from outside the cell.
    faces: [[usize; 4]; 6],
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut faces = [[0usize; 4]; 6];
        let mut f = 0;
        for axis in 0..3 {
            let (u, v) = ((axis + 1) % 3, (axis + 2) % 3);
            for side in 0..2usize {
                let corner = |a: usize, b: usize| (side << axis) | (a << u) | (b << v);
                let mut ring = [corner(0, 0), corner(1, 0), corner(1, 1), corner(0, 1)];
                // (e_u × e_v) = e_axis for the cyclic (axis, u, v); the outward normal is
                // +e_axis on side 1 and −e_axis on side 0.
                if side == 0 {
                    ring.reverse();
                }
                faces[f] = ring;
                f += 1;
            }
        }
        Tables { faces }
    })
}

/// The lattice edge between corners `a` and `b` of cell `cell`, as a global key.
fn edge_key(cell: [u32; 3], a: usize, b: usize, dims: [usize; 3]) -> u64 {
    let lo = a.min(b);
    let axis = (a ^ b).trailing_zeros() as u64;
    let o = corner_offset(lo);
    let p = [cell[0] + o[0], cell[1] + o[1], cell[2] + o[2]];
    ((p[0] as u64 * dims[1] as u64 + p[1] as u64) * dims[2] as u64 + p[2] as u64) * 3 + axis
}

fn key_node(key: u64, dims: [usize; 3]) -> ([u32; 3], usize) {
    let axis = (key % 3) as usize;
    let n = key / 3;
    let k = n % dims[2] as u64;
    let j = (n / dims[2] as u64) % dims[1] as u64;
    let i = n / (dims[2] as u64 * dims[1] as u64);
    ([i as u32, j as u32, k as u32], axis)
}

/// Triangles of one cell as edge keys, appended to `out`.
fn cell_triangles(cell: [u32; 3], f: &[f32; 8], level: f32, dims: [usize; 3], out: &mut Vec<[u64; 3]>) {
    let inside: [bool; 8] = std::array::from_fn(|c| f[c] > level);
    if inside.iter().all(|&x| x) || inside.iter().all(|&x| !x) {
        return;
    }
    // Oriented segments (from, to) as pairs of corner pairs; at most 12 (two per face).
    let mut next: [(usize, usize, usize, usize); 12] = [(0, 0, 0, 0); 12];
    let mut n = 0;
    let t = tables();
    for ring in &t.faces {
        let s: [bool; 4] = std::array::from_fn(|i| inside[ring[i]]);
        // Crossing edges along the ring: edge i joins ring[i] and ring[i+1].
        let cross: Vec<usize> = (0..4).filter(|&i| s[i] != s[(i + 1) % 4]).collect();
        let edge = |i: usize| (ring[i], ring[(i + 1) % 4]);
        match cross.len() {
            0 => {}
            2 => {
                // "enter" = outside → inside along the ring, "exit" = inside → outside.
                let (e, x) = if s[(cross[0] + 1) % 4] { (cross[0], cross[1]) } else { (cross[1], cross[0]) };
                let (a, b) = edge(e);
                let (c, d) = edge(x);
                next[n] = (a, b, c, d);
                n += 1;
            }
            4 => {
                // Asymptotic decider: are the two inside corners joined across the face?
                let v: [f32; 4] = std::array::from_fn(|i| f[ring[i]] - level);
                let (p, q) = if s[0] { (0, 1) } else { (1, 0) }; // p: an inside corner
                let (a0, c0, b0, d0) = (v[p] as f64, v[p + 2] as f64, v[q] as f64, v[(q + 2) % 4] as f64);
                let saddle = (a0 * c0 - b0 * d0) / (a0 + c0 - b0 - d0);
                let joined = saddle > 0.0;
                #[allow(clippy::needless_range_loop)] // corner i and its neighbour (i + 3) % 4
                for i in 0..4 {
                    // Cut off corner i when it is on the separated side.
                    if s[i] != joined {
                        let prev = (i + 3) % 4;
                        let (from, to) = if s[i] { (prev, i) } else { (i, prev) };
                        let (a, b) = edge(from);
                        let (c, d) = edge(to);
                        next[n] = (a, b, c, d);
                        n += 1;
                    }
                }
            }
            _ => unreachable!("a face has an even number of crossings"),
        }
    }
    // Chain segments into loops.
    let segs = &next[..n];
    let mut used = [false; 12];
    let same = |x: (usize, usize), y: (usize, usize)| (x.0.min(x.1), x.0.max(x.1)) == (y.0.min(y.1), y.0.max(y.1));
    for start in 0..n {
        if used[start] {
            continue;
        }
        used[start] = true;
        let mut ring: Vec<(usize, usize)> = vec![(segs[start].0, segs[start].1)];
        let mut cur = (segs[start].2, segs[start].3);
        let first = ring[0];
        let mut guard = 0;
        while !same(cur, first) && guard < 12 {
            ring.push(cur);
            let Some(j) = (0..n).find(|&j| !used[j] && same((segs[j].0, segs[j].1), cur)) else {
                break;
            };
            used[j] = true;
            cur = (segs[j].2, segs[j].3);
            guard += 1;
        }
        if ring.len() < 3 {
            continue;
        }
        let keys: Vec<u64> = ring.iter().map(|&(a, b)| edge_key(cell, a, b, dims)).collect();
        for i in 1..keys.len() - 1 {
            out.push([keys[0], keys[i], keys[i + 1]]);
        }
    }
}

/// Gathers the triangles' edge keys into a mesh: unique vertices placed on their edges.
fn assemble(
    tris: Vec<[u64; 3]>,
    dims: [usize; 3],
    level: f32,
    value: &(dyn Fn(u32, u32, u32) -> f32 + Sync),
) -> TriMesh {
    let mut keys: Vec<u64> = tris.iter().flatten().copied().collect();
    keys.par_sort_unstable();
    keys.dedup();
    let vertices: Vec<[f32; 3]> = keys
        .par_iter()
        .map(|&key| {
            let (p, axis) = key_node(key, dims);
            let mut q = p;
            q[axis] += 1;
            let (fa, fb) = (value(p[0], p[1], p[2]), value(q[0], q[1], q[2]));
            let t = if fb != fa { (level - fa) / (fb - fa) } else { 0.5 };
            let mut v = [p[0] as f32, p[1] as f32, p[2] as f32];
            v[axis] += t;
            v
        })
        .collect();
    let index = |k: u64| keys.binary_search(&k).expect("edge key present") as u32;
    let faces: Vec<[u32; 3]> = tris.par_iter().map(|t| [index(t[0]), index(t[1]), index(t[2])]).collect();
    TriMesh::new(vertices, faces)
}

/// Isosurface of a dense grid `values` of `dims` nodes (row-major, last axis fastest), at
/// `level`. Vertices are in index units (node (i, j, k) at (i, j, k)). Fails when `values`
/// does not hold `dims` nodes.
pub fn marching_cubes_dense(values: &[f32], dims: [usize; 3], level: f32) -> anyhow::Result<TriMesh> {
    let n = dims[0] * dims[1] * dims[2];
    anyhow::ensure!(values.len() == n, "grid of {} values is not {dims:?} = {n} nodes", values.len());
    if dims.iter().any(|&d| d < 2) {
        return Ok(TriMesh::default());
    }
    let at = |i: u32, j: u32, k: u32| values[(i as usize * dims[1] + j as usize) * dims[2] + k as usize];
    let tris: Vec<[u64; 3]> = (0..dims[0] as u32 - 1)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut out = vec![];
            for j in 0..dims[1] as u32 - 1 {
                for k in 0..dims[2] as u32 - 1 {
                    let cell = [i, j, k];
                    let f: [f32; 8] = std::array::from_fn(|c| {
                        let o = corner_offset(c);
                        at(i + o[0], j + o[1], k + o[2])
                    });
                    cell_triangles(cell, &f, level, dims, &mut out);
                }
            }
            out
        })
        .collect();
    Ok(assemble(tris, dims, level, &at))
}

/// Isosurface through the given cells only (their lower corners, in node units of a lattice
/// of `dims` nodes); `value` must answer for every corner of every listed cell.
pub fn marching_cubes_cells(
    cells: &[[u32; 3]],
    dims: [usize; 3],
    level: f32,
    value: &(dyn Fn(u32, u32, u32) -> f32 + Sync),
) -> TriMesh {
    let tris: Vec<[u64; 3]> = cells
        .par_chunks(4096)
        .flat_map_iter(|chunk| {
            let mut out = vec![];
            for &cell in chunk {
                let f: [f32; 8] = std::array::from_fn(|c| {
                    let o = corner_offset(c);
                    value(cell[0] + o[0], cell[1] + o[1], cell[2] + o[2])
                });
                cell_triangles(cell, &f, level, dims, &mut out);
            }
            out
        })
        .collect();
    assemble(tris, dims, level, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sphere(n: usize, r: f32) -> (Vec<f32>, [usize; 3]) {
        let c = (n - 1) as f32 / 2.0;
        let mut v = vec![];
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    let d = ((i as f32 - c).powi(2) + (j as f32 - c).powi(2) + (k as f32 - c).powi(2)).sqrt();
                    v.push(r - d);
                }
            }
        }
        (v, [n, n, n])
    }

    fn signed_volume(m: &TriMesh) -> f64 {
        (0..m.faces.len())
            .map(|f| {
                let [a, b, c] = m.triangle(f).map(|p| p.map(|x| x as f64));
                (a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                    + a[2] * (b[0] * c[1] - b[1] * c[0]))
                    / 6.0
            })
            .sum()
    }

    /// Every directed edge matched by as many uses in the opposite direction: no holes, one
    /// orientation. (A fan diagonal may lie on a cell face, so an edge can serve four faces.)
    fn is_closed_oriented(m: &TriMesh) -> bool {
        let mut edges = std::collections::HashMap::new();
        for f in &m.faces {
            for i in 0..3 {
                *edges.entry((f[i], f[(i + 1) % 3])).or_insert(0) += 1;
            }
        }
        edges.iter().all(|(&(a, b), &c)| edges.get(&(b, a)) == Some(&c))
    }

    #[test]
    fn sphere_is_closed_outward_and_accurate() {
        let (v, dims) = sphere(24, 8.0);
        let m = marching_cubes_dense(&v, dims, 0.0).unwrap();
        assert!(is_closed_oriented(&m));
        let c = 11.5f32;
        let m = m.map_vertices(|p| [p[0] - c, p[1] - c, p[2] - c]);
        let vol = signed_volume(&m);
        let exact = 4.0 / 3.0 * std::f64::consts::PI * 512.0;
        println!("sphere volume {vol:.2} vs {exact:.2}, area {:.2}", m.area());
        assert!(vol > 0.0, "faces must be wound outward");
        assert!((vol / exact - 1.0).abs() < 0.02);
    }

    #[test]
    fn noise_field_is_closed_and_sparse_matches_dense() {
        let mut rng = crate::rng::Rng::new(7);
        let n = 12;
        let v: Vec<f32> = (0..n * n * n).map(|_| rng.normal() as f32).collect();
        let dims = [n, n, n];
        let m = marching_cubes_dense(&v, dims, 0.0).unwrap();
        // Interior ambiguity can't break closure; the open grid boundary can, so pad with outside.
        let p = n + 2;
        let mut padded = vec![-1.0f32; p * p * p];
        for i in 0..n {
            for j in 0..n {
                for k in 0..n {
                    padded[((i + 1) * p + j + 1) * p + k + 1] = v[(i * n + j) * n + k];
                }
            }
        }
        let mp = marching_cubes_dense(&padded, [p, p, p], 0.0).unwrap();
        assert!(is_closed_oriented(&mp), "padded noise surface must be closed");
        let cells: Vec<[u32; 3]> = (0..n as u32 - 1)
            .flat_map(|i| (0..n as u32 - 1).flat_map(move |j| (0..n as u32 - 1).map(move |k| [i, j, k])))
            .collect();
        let at = |i: u32, j: u32, k: u32| v[(i as usize * n + j as usize) * n + k as usize];
        let ms = marching_cubes_cells(&cells, dims, 0.0, &at);
        assert_eq!(ms.faces.len(), m.faces.len());
        assert_eq!(ms.vertices.len(), m.vertices.len());
        assert!((ms.area() - m.area()).abs() < 1e-6 * m.area());
    }
}
