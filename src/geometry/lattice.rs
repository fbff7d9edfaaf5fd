//! Decoded field values on a lattice, and the isosurface through them.
//!
//! This is the hand-off between the device and the CPU. Deciding where to evaluate an SDF
//! decoder needs the decoder (device work); marching cubes over the values it returned does
//! not. A [`LatticeSurface`] holds exactly what marching cubes reads — plain host memory, no
//! tensor — so a batch can run it on a CPU worker while the device decodes the next concept.
//! The sparse form keeps only the corners of the cells the surface crosses (a few MB per
//! part) rather than the whole decoded lattice (68 MB per part at depth 8), because several
//! concepts' lattices wait in the queue between the device and the CPU workers.

use anyhow::{bail, Result};

use super::marching_cubes::{marching_cubes_cells, marching_cubes_dense};
use super::mesh::TriMesh;

/// One part's decoded field, ready for marching cubes at level 0.
#[derive(Clone)]
pub enum LatticeSurface {
    /// Every node of an n³ grid (x slowest) over [−b, b]³; vertices map as v / n · 2b − b, in
    /// f32, as upstream's `hierarchical_extract_geometry` does (so the mesh never reaches +b).
    Dense { values: Vec<f32>, n: usize, bounds: f32 },
    /// The cells of a lattice of `nodes` nodes per axis (node j at −b + j·2b/(nodes − 1))
    /// where the field changes sign, and the values at their corners.
    Cells { cells: Vec<[u32; 3]>, corners: CornerValues, nodes: u64, bounds: f64 },
}

impl std::fmt::Debug for LatticeSurface {
    /// A summary: the values themselves are megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dense { n, bounds, .. } => write!(f, "LatticeSurface::Dense({n}³ over ±{bounds})"),
            Self::Cells { cells, nodes, bounds, .. } => {
                write!(f, "LatticeSurface::Cells({} cells of {nodes}³ nodes over ±{bounds})", cells.len())
            }
        }
    }
}

impl LatticeSurface {
    /// The isosurface at level 0 in the object frame, checked ([`check_surface`]).
    pub fn extract_mesh(&self) -> Result<TriMesh> {
        let mesh = self.mesh()?;
        check_surface(&mesh)?;
        Ok(mesh)
    }

    /// The isosurface at level 0 in the object frame, unchecked.
    pub fn mesh(&self) -> Result<TriMesh> {
        match self {
            Self::Dense { values, n, bounds } => {
                let n = *n;
                let mesh = marching_cubes_dense(values, [n, n, n], 0.0)?;
                let b = *bounds;
                let size = b - (-b);
                Ok(mesh.map_vertices(|v| v.map(|x| x / n as f32 * size + (-b))))
            }
            Self::Cells { cells, corners, nodes, bounds } => {
                let n = *nodes as usize;
                let value = |i: u32, j: u32, k: u32| corners.get(node_key(*nodes, [i, j, k])).expect("corner stored");
                let mesh = marching_cubes_cells(cells, [n, n, n], 0.0, &value);
                let (b, h) = (*bounds, 2.0 * *bounds / (*nodes - 1) as f64);
                Ok(mesh.map_vertices(|v| v.map(|x| (-b + x as f64 * h) as f32)))
            }
        }
    }

    /// The dense grid's values (the reference trace keeps them); `None` for the sparse form.
    pub fn into_dense_values(self) -> Option<Vec<f32>> {
        match self {
            Self::Dense { values, .. } => Some(values),
            Self::Cells { .. } => None,
        }
    }
}

/// Key of lattice node `p` on a lattice of `nodes` nodes per axis (x slowest).
pub fn node_key(nodes: u64, p: [u32; 3]) -> u64 {
    (p[0] as u64 * nodes + p[1] as u64) * nodes + p[2] as u64
}

/// Field values at a set of lattice nodes: sorted keys and their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CornerValues {
    keys: Vec<u64>,
    values: Vec<f32>,
}

impl CornerValues {
    /// The values at every corner of `cells` (lower corners, unit cells), read from `value`.
    pub fn gather(cells: &[[u32; 3]], nodes: u64, value: impl Fn(u64) -> f32) -> Self {
        let mut keys: Vec<u64> = Vec::with_capacity(cells.len() * 8);
        for c in cells {
            for q in 0..8u32 {
                keys.push(node_key(nodes, [c[0] + (q & 1), c[1] + ((q >> 1) & 1), c[2] + ((q >> 2) & 1)]));
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let values = keys.iter().map(|&k| value(k)).collect();
        Self { keys, values }
    }

    pub fn get(&self, key: u64) -> Option<f32> {
        self.keys.binary_search(&key).ok().map(|i| self.values[i])
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A mesh the sampler can use: faces, finite vertices, and some area.
pub fn check_surface(mesh: &TriMesh) -> Result<()> {
    if mesh.faces.is_empty() {
        bail!("no surface: the field does not cross level 0 inside the bounds");
    }
    mesh.validate().map_err(|e| anyhow::anyhow!("invalid mesh: {e}"))?;
    let area = mesh.area();
    if area.is_nan() || area <= 0.0 {
        bail!("degenerate surface: {} faces with total area {area}", mesh.faces.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sphere's cells through the sparse form give the same mesh as the dense grid's
    /// marching cubes restricted to the same cells (the store changes nothing but memory).
    #[test]
    fn sparse_corners_answer_like_the_full_lattice() {
        let nodes = 17u64;
        let n = nodes as usize;
        let f = |p: [u32; 3]| {
            let x = p.map(|c| c as f32 / 8.0 - 1.0);
            0.6 - (x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).sqrt()
        };
        let full: Vec<f32> =
            (0..n * n * n).map(|i| f([(i / (n * n)) as u32, ((i / n) % n) as u32, (i % n) as u32])).collect();
        let cells: Vec<[u32; 3]> = (0..16u32)
            .flat_map(|i| (0..16u32).flat_map(move |j| (0..16u32).map(move |k| [i, j, k])))
            .filter(|c| {
                let v: Vec<f32> =
                    (0..8u32).map(|q| f([c[0] + (q & 1), c[1] + ((q >> 1) & 1), c[2] + ((q >> 2) & 1)])).collect();
                v.iter().any(|&x| x > 0.0) && v.iter().any(|&x| x <= 0.0)
            })
            .collect();
        let corners = CornerValues::gather(&cells, nodes, |k| full[k as usize]);
        assert!(corners.len() < full.len() / 2, "{} of {}", corners.len(), full.len());
        let sparse = LatticeSurface::Cells { cells: cells.clone(), corners, nodes, bounds: 1.0 };
        let want = marching_cubes_cells(&cells, [n, n, n], 0.0, &|i, j, k| full[node_key(nodes, [i, j, k]) as usize])
            .map_vertices(|v| v.map(|x| (-1.0 + x as f64 * 0.125) as f32));
        let got = sparse.extract_mesh().unwrap();
        assert_eq!(got, want);
        assert!((got.area() / (4.0 * std::f64::consts::PI * 0.36) - 1.0).abs() < 0.05, "area {}", got.area());
    }

    #[test]
    fn a_field_that_never_crosses_has_no_surface() {
        let empty = LatticeSurface::Dense { values: vec![-1.0; 27], n: 3, bounds: 1.0 };
        assert!(empty.extract_mesh().unwrap_err().to_string().contains("no surface"));
    }
}
