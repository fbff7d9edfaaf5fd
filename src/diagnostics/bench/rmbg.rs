//! `lumen bench rmbg`: BriaRMBG-1.4 at its real size with synthetic weights (compute does not
//! depend on the weight values), in f32 as the stage runs it, on the bench device.

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use super::peer::{self, Stage};
use super::{measure, measure_on, BenchOptions, BenchRow};
use crate::models::rmbg::{prepare, BriaRmbg, Config};
use crate::rng::Rng;
use crate::synth::synth_var_builder;

/// The network with synthetic weights on `device`, f32 (the stage's precision).
pub fn synthetic_net(device: &Device) -> Result<BriaRmbg> {
    Ok(BriaRmbg::new(&Config::default(), synth_var_builder(DType::F32, device))?)
}

/// Rows: the d1 forward at 1024² (320² on reduced sizes), the input preparation of a 512²
/// image and the mask post-processing back to 512² (both on the CPU, as the stage does).
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let device = &opts.device;
    let net = synthetic_net(device)?;
    let size = if opts.quick { 320 } else { prepare::MODEL_SIZE };
    let mut rng = Rng::derive(0, "bench.rmbg");
    let values: Vec<f32> = (0..3 * size * size).map(|_| rng.uniform() as f32 - 0.5).collect();
    let x = Tensor::from_vec(values, (1, 3, size, size), device)?;
    let mut rows = Vec::new();

    let t = measure_on(device, opts.iters, || {
        let d1 = net.forward_mask(&x)?;
        // Reading the mask back is part of the stage's cost.
        let _ = d1.flatten_all()?.to_vec1::<f32>()?;
        Ok(())
    })?;
    let reference = (size == prepare::MODEL_SIZE).then(|| peer::ms(Stage::RmbgForward1024));
    rows.push(
        BenchRow::new("rmbg", format!("forward d1 {size}²"), opts, opts.iters, t)
            .dtype(DType::F32)
            .note("BriaRMBG-1.4, 44.0 M params, batch 1, mask read back")
            .reference(reference),
    );

    // Pre/post-processing on a 512² image (SDXL Turbo's size), with a disc-shaped mask.
    let img = RgbImage::from_fn(512, 512, |x, y| image::Rgb([(x / 2) as u8, (y / 2) as u8, 128]));
    let t = measure(opts.iters, || {
        prepare::model_input(&img, prepare::MODEL_SIZE, &Device::Cpu)?;
        Ok(())
    })?;
    rows.push(
        BenchRow::new("rmbg", "model input 512² → 1024²", opts, opts.iters, t)
            .no_dtype()
            .note("antialiased bilinear resize + normalise, CPU"),
    );
    let d1 = disc_mask(prepare::MODEL_SIZE);
    let t = measure(opts.iters, || {
        prepare::prepare_from_mask(&img, &d1, prepare::MODEL_SIZE, prepare::MODEL_SIZE)?;
        Ok(())
    })?;
    rows.push(
        BenchRow::new("rmbg", "mask → prepared image (512²)", opts, opts.iters, t)
            .no_dtype()
            .note("resize, Otsu, components, contour, composite, crop, pad; CPU"),
    );
    Ok(rows)
}

/// An n×n mask: 0.9 inside a centred disc of radius 0.29·n, 0.1 outside.
pub fn disc_mask(n: usize) -> Vec<f32> {
    let (c, r) = (n as f32 / 2.0, 0.29 * n as f32);
    (0..n * n)
        .map(|i| {
            let (y, x) = ((i / n) as f32 - c, (i % n) as f32 - c);
            if x * x + y * y < r * r {
                0.9
            } else {
                0.1
            }
        })
        .collect()
}
