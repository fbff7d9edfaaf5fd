//! Closed primitive meshes (boxes, frusta, ellipsoids, tori) for the procedural pipeline
//! and for tests. Resolutions are modest: sampling is area-weighted, so facets only need
//! to follow the shape, not look smooth.

use std::f32::consts::TAU;

use super::mesh::TriMesh;

const SEGMENTS: usize = 24;

/// Axis-aligned box given its centre and half extents.
pub fn cuboid(c: [f32; 3], h: [f32; 3]) -> TriMesh {
    let v: Vec<[f32; 3]> = (0..8)
        .map(|i| {
            let s = |bit: usize| if i >> bit & 1 == 1 { 1.0 } else { -1.0 };
            [c[0] + s(0) * h[0], c[1] + s(1) * h[1], c[2] + s(2) * h[2]]
        })
        .collect();
    // Outward-wound quads as pairs of triangles.
    let quads = [[0, 2, 3, 1], [4, 5, 7, 6], [0, 1, 5, 4], [2, 6, 7, 3], [0, 4, 6, 2], [1, 3, 7, 5]];
    let faces = quads.iter().flat_map(|q| [[q[0], q[1], q[2]], [q[0], q[2], q[3]]]).collect();
    TriMesh::new(v, faces)
}

fn sub(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

fn cross(a: [f32; 3], b: [f32; 3]) -> [f32; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

fn normalize(a: [f32; 3]) -> [f32; 3] {
    let n = (a[0] * a[0] + a[1] * a[1] + a[2] * a[2]).sqrt().max(1e-12);
    [a[0] / n, a[1] / n, a[2] / n]
}

/// Two unit vectors perpendicular to `axis` and to each other.
fn basis(axis: [f32; 3]) -> ([f32; 3], [f32; 3]) {
    let helper = if axis[1].abs() < 0.9 { [0.0, 1.0, 0.0] } else { [1.0, 0.0, 0.0] };
    let u = normalize(cross(axis, helper));
    (u, cross(axis, u))
}

/// Closed frustum (cylinder when the radii match, cone when one is 0) from `a` to `b`.
pub fn frustum(a: [f32; 3], b: [f32; 3], ra: f32, rb: f32) -> TriMesh {
    let axis = normalize(sub(b, a));
    let (u, w) = basis(axis);
    let ring = |c: [f32; 3], r: f32| -> Vec<[f32; 3]> {
        (0..SEGMENTS)
            .map(|i| {
                let t = TAU * i as f32 / SEGMENTS as f32;
                let (s, co) = t.sin_cos();
                std::array::from_fn(|k| c[k] + r * (co * u[k] + s * w[k]))
            })
            .collect()
    };
    let mut vertices = ring(a, ra);
    vertices.extend(ring(b, rb));
    vertices.push(a);
    vertices.push(b);
    let n = SEGMENTS as u32;
    let (ca, cb) = (2 * n, 2 * n + 1);
    let mut faces = Vec::new();
    for i in 0..n {
        let j = (i + 1) % n;
        faces.push([i, j, n + j]);
        faces.push([i, n + j, n + i]);
        faces.push([ca, j, i]);
        faces.push([cb, n + i, n + j]);
    }
    TriMesh::new(vertices, faces)
}

/// Cylinder of radius `r` from `a` to `b`.
pub fn cylinder(a: [f32; 3], b: [f32; 3], r: f32) -> TriMesh {
    frustum(a, b, r, r)
}

/// Ellipsoid with the given centre and radii (UV-sphere tessellation).
pub fn ellipsoid(c: [f32; 3], r: [f32; 3]) -> TriMesh {
    let (rings, segs) = (SEGMENTS / 2, SEGMENTS);
    let mut vertices = vec![[c[0], c[1] + r[1], c[2]]];
    for i in 1..rings {
        let phi = std::f32::consts::PI * i as f32 / rings as f32;
        for j in 0..segs {
            let theta = TAU * j as f32 / segs as f32;
            vertices.push([
                c[0] + r[0] * phi.sin() * theta.cos(),
                c[1] + r[1] * phi.cos(),
                c[2] + r[2] * phi.sin() * theta.sin(),
            ]);
        }
    }
    vertices.push([c[0], c[1] - r[1], c[2]]);
    let bottom = vertices.len() as u32 - 1;
    let idx = |i: usize, j: usize| (1 + (i - 1) * segs + j % segs) as u32;
    let mut faces = Vec::new();
    for j in 0..segs {
        faces.push([0, idx(1, j + 1), idx(1, j)]);
        faces.push([bottom, idx(rings - 1, j), idx(rings - 1, j + 1)]);
    }
    for i in 1..rings - 1 {
        for j in 0..segs {
            faces.push([idx(i, j), idx(i, j + 1), idx(i + 1, j + 1)]);
            faces.push([idx(i, j), idx(i + 1, j + 1), idx(i + 1, j)]);
        }
    }
    TriMesh::new(vertices, faces)
}

pub fn sphere(c: [f32; 3], r: f32) -> TriMesh {
    ellipsoid(c, [r, r, r])
}

/// Torus centred at `c` around `axis`, ring radius `big`, tube radius `small`.
pub fn torus(c: [f32; 3], axis: [f32; 3], big: f32, small: f32) -> TriMesh {
    let axis = normalize(axis);
    let (u, w) = basis(axis);
    let (n_ring, n_tube) = (SEGMENTS, SEGMENTS / 2);
    let mut vertices = Vec::with_capacity(n_ring * n_tube);
    for i in 0..n_ring {
        let t = TAU * i as f32 / n_ring as f32;
        let dir: [f32; 3] = std::array::from_fn(|k| t.cos() * u[k] + t.sin() * w[k]);
        for j in 0..n_tube {
            let p = TAU * j as f32 / n_tube as f32;
            vertices.push(std::array::from_fn(|k| c[k] + (big + small * p.cos()) * dir[k] + small * p.sin() * axis[k]));
        }
    }
    let idx = |i: usize, j: usize| ((i % n_ring) * n_tube + j % n_tube) as u32;
    let mut faces = Vec::new();
    for i in 0..n_ring {
        for j in 0..n_tube {
            faces.push([idx(i, j), idx(i + 1, j), idx(i + 1, j + 1)]);
            faces.push([idx(i, j), idx(i + 1, j + 1), idx(i, j + 1)]);
        }
    }
    TriMesh::new(vertices, faces)
}

/// Splits every triangle into four (midpoint subdivision), keeping the surface.
pub fn subdivide(m: &TriMesh) -> TriMesh {
    let mut vertices = m.vertices.clone();
    let mut faces = Vec::with_capacity(m.faces.len() * 4);
    for f in &m.faces {
        let mid = |a: u32, b: u32, v: &mut Vec<[f32; 3]>| {
            let (p, q) = (v[a as usize], v[b as usize]);
            v.push([(p[0] + q[0]) / 2.0, (p[1] + q[1]) / 2.0, (p[2] + q[2]) / 2.0]);
            v.len() as u32 - 1
        };
        let (ab, bc, ca) =
            (mid(f[0], f[1], &mut vertices), mid(f[1], f[2], &mut vertices), mid(f[2], f[0], &mut vertices));
        faces.extend([[f[0], ab, ca], [ab, f[1], bc], [ca, bc, f[2]], [ab, bc, ca]]);
    }
    TriMesh::new(vertices, faces)
}

pub fn refine(m: TriMesh, levels: usize) -> TriMesh {
    (0..levels).fold(m, |m, _| subdivide(&m))
}

/// Four refined parts, about 200 k triangles in all: the fixture of the sampling tests and
/// of `lumen bench sampling`.
pub fn four_part_test_meshes() -> Vec<TriMesh> {
    vec![
        refine(ellipsoid([0.0, 0.5, 0.0], [1.0, 0.5, 0.6]), 4),
        refine(sphere([1.2, 0.9, 0.0], 0.35), 3),
        refine(cylinder([-0.6, 0.0, 0.3], [-0.6, -0.9, 0.3], 0.12), 5),
        refine(torus([0.0, 1.1, 0.0], [0.0, 1.0, 0.0], 0.5, 0.08), 3),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn close(got: f64, want: f64, rel: f64) {
        assert!((got - want).abs() <= rel * want, "{got} vs {want}");
    }

    #[test]
    fn areas_match_the_analytic_shapes() {
        close(cuboid([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).area(), 2.0 * (8.0 + 24.0 + 12.0), 1e-6);
        close(sphere([0.0; 3], 1.0).area(), 4.0 * PI, 0.03);
        close(cylinder([0.0; 3], [0.0, 2.0, 0.0], 0.5).area(), 2.0 * PI * 0.5 * 2.0 + 2.0 * PI * 0.25, 0.02);
        close(torus([0.0; 3], [0.0, 1.0, 0.0], 1.0, 0.25).area(), 4.0 * PI * PI * 0.25, 0.03);
        for m in [cuboid([0.0; 3], [1.0; 3]), sphere([0.0; 3], 1.0), frustum([0.0; 3], [1.0, 1.0, 0.0], 0.3, 0.0)] {
            m.validate().unwrap();
        }
    }
}
