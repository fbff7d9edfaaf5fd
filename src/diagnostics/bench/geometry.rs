//! `lumen bench partcrafter_geometry`: the SDF decoder at the released size (synthetic
//! weights, bench device and dtype), and what each extraction mode decodes and costs for one
//! part at released settings.

use std::collections::HashMap;

use anyhow::Result;
use candle_core::Tensor;

use super::peer;
use super::{measure_on, BenchOptions, BenchRow};
use crate::models::partcrafter::extract::{extract_field, ExtractMode, ExtractOptions};
use crate::models::partcrafter::vae::{CrossAttention, SdfDecoder, VaeConfig};
use crate::synth::synth_var_builder;

/// The SDF decoder at the released size with synthetic weights, in the bench's dtype.
pub fn synthetic_decoder(opts: &BenchOptions) -> Result<SdfDecoder> {
    SdfDecoder::new(VaeConfig::released(), synth_var_builder(opts.dtype, &opts.device))
}

/// Query points decoded per timed call: 1 Mi on released sizes (the reference's 256³ grid
/// time is scaled to it), 1024 on reduced sizes.
fn decode_points(opts: &BenchOptions) -> usize {
    if opts.quick {
        1024
    } else if opts.device.is_cpu() {
        8192
    } else {
        1 << 20
    }
}

pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let row = |name: &str, iters: usize, t: (f64, f64)| BenchRow::new("partcrafter_geometry", name, opts, iters, t);
    let mut rows = vec![];

    // 1. Decoder at the released size.
    let cfg = VaeConfig::released();
    let decoder = synthetic_decoder(opts)?;
    let tokens = 1024; // the inference script's num_tokens
    let mut rng = crate::rng::Rng::derive(0, "bench-latents");
    let latents =
        Tensor::from_vec(rng.normal_vec(tokens * cfg.latent_channels), (tokens, cfg.latent_channels), &opts.device)?;
    let iters = opts.iters;
    let mut part = None;
    let t = measure_on(&opts.device, iters, || {
        part = Some(decoder.prepare(&latents)?);
        Ok(())
    })?;
    rows.push(row("decoder trunk (once per part)", iters, t).note(format!(
        "released size: {} self-attention blocks, width {}, {tokens} tokens",
        cfg.num_layers_decoder, cfg.width_decoder
    )));
    let part = part.expect("measured at least once");
    let n_points = decode_points(opts);
    let pts: Vec<[f32; 3]> =
        (0..n_points).map(|_| std::array::from_fn(|_| (rng.uniform() * 2.0 - 1.0) as f32)).collect();
    let t = measure_on(&opts.device, iters, || {
        decoder.decode_points(&part, &pts, CrossAttention::Full)?;
        Ok(())
    })?;
    let (w, tk) = (cfg.width_decoder as f64, tokens as f64);
    let flop_per_point = 20.0 * w * w + 4.0 * tk * w + 2.0 * (cfg.embed_dim() as f64 + 1.0) * w;
    let per_s = n_points as f64 / (t.0 / 1e3);
    let reference = (!opts.quick).then(|| peer::sdf_decode(n_points));
    rows.push(
        row(&format!("decode {n_points} query points"), iters, t)
            .note(format!(
                "{per_s:.0} points/s, {:.1} GFLOP/s ({:.1} MFLOP/point); reference: its 256³ decode scaled to {n_points} points",
                per_s * flop_per_point / 1e9,
                flop_per_point / 1e6
            ))
            .reference(reference),
    );

    // 2. Extraction at released settings on an analytic unit-slope SDF (a sphere of radius 0.6,
    // in the range a trained SDF takes), so the counts and the non-decoding time are measured
    // without hours of decoding. Projected decode time uses the throughput above.
    let sdf = |p: &[[f32; 3]]| -> Result<Vec<f32>> {
        Ok(p.iter().map(|x| 0.6 - (x[0] * x[0] + x[1] * x[1] + x[2] * x[2]).sqrt()).collect())
    };
    let (d0, d1) = if opts.quick { (6, 7) } else { (8, 9) };
    let reference = ExtractOptions {
        mode: ExtractMode::Reference,
        dense_octree_depth: d0,
        hierarchical_octree_depth: d1,
        ..Default::default()
    };
    let fast = ExtractOptions { fast_depth: if opts.quick { 7 } else { 8 }, ..Default::default() };
    let mut results = vec![];
    for (name, o) in [("extract reference", &reference), ("extract fast", &fast)] {
        // One run each: the reference at depth 9 holds two 512³ grids and takes long enough.
        let start = std::time::Instant::now();
        let mut f = sdf;
        let g = extract_field(&mut f, o)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let t = (ms, ms);
        let settings = match o.mode {
            ExtractMode::Reference => format!("depths {}/{}", o.dense_octree_depth, o.hierarchical_octree_depth),
            ExtractMode::Fast => format!("depth {} from {}", o.fast_depth, o.fast_coarse_depth),
        };
        rows.push(row(name, 1, t).no_dtype().note(format!(
            "{settings}: {} query points decoded for one part (projected decode {:.0} s at the rate above); \
                 time shown is extraction without decoding (analytic field); mesh {} vertices, {} faces, area {:.4}",
            g.decoded_points,
            g.decoded_points as f64 / per_s,
            g.mesh.vertices.len(),
            g.mesh.faces.len(),
            g.mesh.area()
        )));
        results.push(g);
    }
    let (r, f) = (&results[0], &results[1]);
    rows.push(row("fast vs reference", 1, (0.0, 0.0)).no_dtype().note(format!(
            "{:.1}x fewer decoded points; area ratio {:.5}; mean vertex distance fast→reference {:.2e}, reference→fast {:.2e}",
            r.decoded_points as f64 / f.decoded_points as f64,
            f.mesh.area() / r.mesh.area(),
            mean_nearest(&f.mesh.vertices, &r.mesh.vertices),
            mean_nearest(&r.mesh.vertices, &f.mesh.vertices),
    )));
    Ok(rows)
}

/// Mean distance from each point of `a` to its nearest point of `b` (hash grid, cell 0.02;
/// farther matches are counted as 0.02).
fn mean_nearest(a: &[[f32; 3]], b: &[[f32; 3]]) -> f64 {
    const R: f32 = 0.02;
    let cell = |p: [f32; 3]| p.map(|x| (x / R).floor() as i64);
    let mut grid: HashMap<[i64; 3], Vec<[f32; 3]>> = HashMap::new();
    for &p in b {
        grid.entry(cell(p)).or_default().push(p);
    }
    let total: f64 = a
        .iter()
        .map(|&p| {
            let c = cell(p);
            let mut best = R;
            for d in 0..27i64 {
                let q = [c[0] + d / 9 - 1, c[1] + (d / 3) % 3 - 1, c[2] + d % 3 - 1];
                for v in grid.get(&q).into_iter().flatten() {
                    best = best.min(((p[0] - v[0]).powi(2) + (p[1] - v[1]).powi(2) + (p[2] - v[2]).powi(2)).sqrt());
                }
            }
            best as f64
        })
        .sum();
    total / a.len().max(1) as f64
}
