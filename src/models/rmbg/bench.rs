//! `lumen bench rmbg`: BriaRMBG-1.4 at its real size with synthetic weights (compute does not
//! depend on the weight values), loaded through the normal checkpoint loader.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;

use super::{prepare, BriaRmbg, Config};
use crate::bench::{measure, BenchOptions, BenchRow};
use crate::rng::Rng;
use crate::synth::write_synthetic_safetensors;

/// Rows: the d1 forward at 1024² (320² with `quick`), the input preparation of a 512² image
/// and the mask post-processing back to 512².
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let device = crate::pipeline::partcrafter::select_device(false)?;
    let cfg = Config::default();
    // A throw-away checkpoint folder: synthetic weights under the real tensor names.
    let dir = std::env::temp_dir().join(format!("lumen-bench-rmbg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let net = (|| -> Result<BriaRmbg> {
        write_synthetic_safetensors(&BriaRmbg::tensor_specs(&cfg), None, &dir.join("model.safetensors"))?;
        BriaRmbg::load_dir(&dir, &device)
    })();
    std::fs::remove_dir_all(&dir).ok();
    let net = net.context("building the synthetic BriaRMBG checkpoint")?;

    let size = if opts.quick { 320 } else { prepare::MODEL_SIZE };
    let mut rng = Rng::derive(0, "bench.rmbg");
    let values: Vec<f32> = (0..3 * size * size).map(|_| rng.uniform() as f32 - 0.5).collect();
    let x = Tensor::from_vec(values, (1, 3, size, size), &device)?;
    let mut rows = Vec::new();

    let (median, min) = measure(opts.iters, || {
        let d1 = net.forward_mask(&x)?;
        // Reading the mask back synchronises the device and is part of the stage's cost.
        let _ = d1.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    })?;
    rows.push(BenchRow {
        suite: "rmbg".into(),
        name: format!("forward d1 {size}²"),
        iters: opts.iters,
        median_ms: median,
        min_ms: min,
        note: format!("BriaRMBG-1.4, 44.0 M params, f32, batch 1, {device:?}"),
    });

    // Pre/post-processing on a 512² image (SDXL Turbo's size), with a disc-shaped mask.
    let img = RgbImage::from_fn(512, 512, |x, y| image::Rgb([(x / 2) as u8, (y / 2) as u8, 128]));
    let (median, min) = measure(opts.iters, || {
        prepare::model_input(&img, prepare::MODEL_SIZE, &Device::Cpu)?;
        Ok(())
    })?;
    rows.push(BenchRow {
        suite: "rmbg".into(),
        name: "model input 512² → 1024²".into(),
        iters: opts.iters,
        median_ms: median,
        min_ms: min,
        note: "antialiased bilinear resize + normalise, CPU".into(),
    });
    let n = prepare::MODEL_SIZE;
    let d1: Vec<f32> = (0..n * n)
        .map(|i| {
            let (y, x) = ((i / n) as f32 - 512.0, (i % n) as f32 - 512.0);
            if x * x + y * y < 300.0 * 300.0 {
                0.9
            } else {
                0.1
            }
        })
        .collect();
    let (median, min) = measure(opts.iters, || {
        prepare::prepare_from_mask(&img, &d1, n, n)?;
        Ok(())
    })?;
    rows.push(BenchRow {
        suite: "rmbg".into(),
        name: "mask → prepared image (512²)".into(),
        iters: opts.iters,
        median_ms: median,
        min_ms: min,
        note: "resize, Otsu, components, contour, composite, crop, pad; CPU".into(),
    });
    Ok(rows)
}
