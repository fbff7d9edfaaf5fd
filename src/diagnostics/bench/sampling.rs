//! Sampling benchmark: 2048 labelled points from part meshes totalling ~200 k triangles.

use anyhow::Result;

use super::{measure, BenchOptions, BenchRow};
use crate::geometry::mesh::TriMesh;
use crate::geometry::primitives::{cylinder, ellipsoid, sphere, torus};
use crate::geometry::sampling::{attachment_weights, sample_parts, SampleOptions};

/// Splits every triangle into four (midpoint subdivision), keeping the surface.
fn subdivide(m: &TriMesh) -> TriMesh {
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

fn refine(m: TriMesh, levels: usize) -> TriMesh {
    (0..levels).fold(m, |m, _| subdivide(&m))
}

/// Four parts, about 200 k triangles in all.
pub fn test_meshes() -> Vec<TriMesh> {
    vec![
        refine(ellipsoid([0.0, 0.5, 0.0], [1.0, 0.5, 0.6]), 4),
        refine(sphere([1.2, 0.9, 0.0], 0.35), 3),
        refine(cylinder([-0.6, 0.0, 0.3], [-0.6, -0.9, 0.3], 0.12), 5),
        refine(torus([0.0, 1.1, 0.0], [0.0, 1.0, 0.0], 0.5, 0.08), 3),
    ]
}

pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let meshes = test_meshes();
    let triangles: usize = meshes.iter().map(|m| m.faces.len()).sum();
    let sample = SampleOptions::new(2048, 7);
    let cloud = sample_parts(&meshes, &sample)?;
    let area: f64 = meshes.iter().map(|m| m.area()).sum();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    // CPU work whatever the bench device: the row says so, with the process's peak memory.
    let cpu = BenchOptions { device: candle_core::Device::Cpu, ..opts.clone() };
    let row = |name: &str, t: (f64, f64), note: String| {
        BenchRow::new("sampling", name, &cpu, opts.iters, t).no_dtype().note(note)
    };
    let whole = pool.install(|| measure(opts.iters, || sample_parts(&meshes, &sample).map(|_| ())))?;
    let attach = pool.install(|| {
        measure(opts.iters, || {
            std::hint::black_box(attachment_weights(&cloud.positions, &cloud.part_ids, area));
            Ok(())
        })
    })?;
    Ok(vec![
        row(
            "sample_parts 2048 pts (one core)",
            whole,
            format!("{triangles} triangles in 4 parts, attachment included"),
        ),
        row("attachment_weights 2048 pts (one core)", attach, "part of the row above".into()),
    ])
}
