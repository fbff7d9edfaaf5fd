//! `lumen bench conv` and `lumen bench conv_check`: the convolution path ([`crate::conv`]).
//!
//! `conv` times every 3×3 shape of the peer baseline's convolution table (docs/convolution.md)
//! in f16 and f32 with torch's cuDNN time beside it, then the two whole networks the issue
//! names: the SDXL VAE decode at 512² and the BriaRMBG forward at 1024² (synthetic weights).
//! On the GPU each timing is the mean of [`CALLS`] back-to-back calls followed by one
//! synchronisation; on the CPU the sizes are reduced (channels ÷ 4, sides ÷ 8) so the suite
//! stays quick.
//!
//! `conv_check` is a correctness check, not a timing: lumen's convolution against candle's
//! im2col convolution on the same device and against the CPU in f32, at the table's shapes
//! and at the other geometries the models use (stride 2, dilation, 1×1, few channels), plus
//! the fused GroupNorm + SiLU against candle's ops. Rows carry the measured error next to the
//! tolerance; any failure makes the suite (and the command) fail.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};

use super::{BenchOptions, BenchRow};
use crate::conv::{self, Conv2d, Conv2dConfig};
use crate::diagnostics::compare::rel_l2;
use crate::rng::Rng;

/// Calls timed back to back between two synchronisations on the GPU.
pub const CALLS: usize = 10;

/// One row of the baseline's table: 3×3, stride 1, padding 1, batch 1, c_in = c_out.
struct TableShape {
    name: &'static str,
    channels: usize,
    side: usize,
    /// torch + cuDNN, f16, H100 (peer-baseline.md, "Convolutions").
    torch_f16_ms: f64,
}

const TABLE: [TableShape; 7] = [
    TableShape { name: "UNet 320 @ 64²", channels: 320, side: 64, torch_f16_ms: 0.070 },
    TableShape { name: "UNet 640 @ 32²", channels: 640, side: 32, torch_f16_ms: 0.065 },
    TableShape { name: "UNet 1280 @ 16²", channels: 1280, side: 16, torch_f16_ms: 0.133 },
    TableShape { name: "VAE 512 @ 64²", channels: 512, side: 64, torch_f16_ms: 0.092 },
    TableShape { name: "VAE 256 @ 256²", channels: 256, side: 256, torch_f16_ms: 0.217 },
    TableShape { name: "VAE 128 @ 512²", channels: 128, side: 512, torch_f16_ms: 0.288 },
    TableShape { name: "RMBG 64 @ 512²", channels: 64, side: 512, torch_f16_ms: 0.158 },
];

/// The reference's whole-network times (peer-baseline.md, H100).
const TORCH_VAE_DECODE_512_MS: f64 = 29.6;
const TORCH_RMBG_1024_MS: f64 = 19.3;

/// Limit the issue sets on lumen's time over torch's, per convolution shape.
const MAX_RATIO: f64 = 1.5;

/// The run's device (`--cpu` included), logged with its name (BENCHMARKS.md records the card).
fn device(opts: &BenchOptions) -> Device {
    tracing::info!("{}", crate::device::describe(&opts.device).summary());
    opts.device.clone()
}

/// (channels, side) actually run: full size on a GPU, reduced on the CPU.
fn sized(channels: usize, side: usize, device: &Device) -> (usize, usize) {
    if device.is_cuda() {
        (channels, side)
    } else {
        ((channels / 4).max(4), (side / 8).max(8))
    }
}

fn random(shape: &[usize], scale: f64, seed: u64, dtype: DType, device: &Device) -> Result<Tensor> {
    let n = shape.iter().product();
    let values = Rng::new(seed).normal_vec(n);
    Ok((Tensor::from_vec(values, shape, device)? * scale)?.to_dtype(dtype)?)
}

/// A 3×3 conv layer c → c with padding 1 and its input, fan-in-scaled weights.
fn table_case(c: usize, side: usize, dtype: DType, device: &Device) -> Result<(Conv2d, Tensor)> {
    let w = random(&[c, c, 3, 3], 1.0 / ((9 * c) as f64).sqrt(), 1, dtype, device)?;
    let b = random(&[c], 0.1, 2, dtype, device)?;
    let x = random(&[1, c, side, side], 1.0, 3, dtype, device)?;
    Ok((Conv2d::new(w, Some(b), Conv2dConfig { padding: 1, ..Default::default() }), x))
}

/// Median and min per call in ms: one warm-up call (cuDNN measures its algorithms there),
/// then `iters` rounds of `calls` calls, each round closed by a device synchronisation.
fn time_calls(iters: usize, calls: usize, device: &Device, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    device.synchronize()?;
    let mut samples = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        device.synchronize()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3 / calls as f64);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((samples[samples.len() / 2], samples[0]))
}

fn row(suite: &str, name: String, iters: usize, (median_ms, min_ms): (f64, f64), note: String) -> BenchRow {
    BenchRow { suite: suite.into(), name, iters, median_ms, min_ms, note, ..Default::default() }
}

/// `lumen bench conv`.
pub fn run(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let device = device(opts);
    let calls = if device.is_cuda() { CALLS } else { 1 };
    let mut rows = Vec::new();
    for s in &TABLE {
        let (c, side) = sized(s.channels, s.side, &device);
        for dtype in [DType::F16, DType::F32] {
            let (conv, x) = table_case(c, side, dtype, &device)?;
            let t = time_calls(opts.iters, calls, &device, || Ok(conv.forward(&x).map(|_| ())?))?;
            let note = if device.is_cuda() {
                let ratio = t.0 / s.torch_f16_ms;
                let verdict = if ratio <= MAX_RATIO { "within" } else { "OVER" };
                let algo = conv::chosen_algorithm(&x, conv.weight(), true, conv.config())?.unwrap_or_default();
                format!(
                    "torch f16 {:.3} ms, ratio {ratio:.2}× ({verdict} {MAX_RATIO}×); {}; {algo}",
                    s.torch_f16_ms,
                    conv::cuda_path()
                )
            } else {
                format!("CPU, reduced to {c} @ {side}² (table shape is {})", s.name)
            };
            rows.push(row("conv", format!("{} {dtype:?}", s.name), opts.iters, t, note));
            if device.is_cuda() && cfg!(feature = "cudnn") {
                // The im2col path at the same shape, for the before/after.
                let t = time_calls(opts.iters, calls, &device, || {
                    Ok(conv::conv2d_im2col(&x, conv.weight(), conv.bias(), *conv.config()).map(|_| ())?)
                })?;
                rows.push(row(
                    "conv",
                    format!("{} {dtype:?} im2col", s.name),
                    opts.iters,
                    t,
                    "candle im2col + GEMM".into(),
                ));
            }
        }
    }
    rows.push(vae_decode(opts, &device)?);
    rows.push(rmbg_forward(opts, &device)?);
    Ok(rows)
}

/// SDXL VAE decode (f32, as the reference upcasts it); latent 64² → 512² on a GPU, 8² on the CPU.
fn vae_decode(opts: &BenchOptions, device: &Device) -> Result<BenchRow> {
    use super::sdxl::VAE_CONFIG;
    let synth_vb_on = |d: &Device| crate::synth::synth_var_builder(DType::F32, d);
    use crate::models::sdxl::vae::{VaeConfig, VaeDecoder};
    let cfg: VaeConfig = serde_json::from_str(VAE_CONFIG)?;
    let vae = VaeDecoder::new(synth_vb_on(device), &cfg)?;
    let latent = if device.is_cuda() { 64 } else { 8 };
    let z = random(&[1, 4, latent, latent], 1.0, 4, DType::F32, device)?;
    let t = time_calls(opts.iters, 1, device, || Ok(vae.decode_latents(&z).map(|_| ())?))?;
    let side = latent * cfg.scale_factor();
    let note = if device.is_cuda() {
        format!("f32, torch {TORCH_VAE_DECODE_512_MS} ms, ratio {:.2}×", t.0 / TORCH_VAE_DECODE_512_MS)
    } else {
        "f32, CPU, reduced size".into()
    };
    Ok(row("conv", format!("SDXL VAE decode {side}²"), opts.iters, t, note))
}

/// BriaRMBG-1.4 forward (f32) at 1024² on a GPU, 128² on the CPU.
fn rmbg_forward(opts: &BenchOptions, device: &Device) -> Result<BenchRow> {
    use crate::models::rmbg::{BriaRmbg, Config};
    let cfg = Config::default();
    let dir = std::env::temp_dir().join(format!("lumen-bench-conv-rmbg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let net = (|| -> Result<BriaRmbg> {
        let specs = BriaRmbg::tensor_specs(&cfg);
        crate::synth::write_synthetic_safetensors(&specs, None, &dir.join("model.safetensors"))?;
        BriaRmbg::load_dir(&dir, device)
    })();
    std::fs::remove_dir_all(&dir).ok();
    let net = net.context("building the synthetic BriaRMBG checkpoint")?;
    let side = if device.is_cuda() { 1024 } else { 128 };
    let x = random(&[1, 3, side, side], 0.5, 5, DType::F32, device)?;
    let t = time_calls(opts.iters, 1, device, || Ok(net.forward_mask(&x).map(|_| ())?))?;
    let note = if device.is_cuda() {
        format!("f32, torch {TORCH_RMBG_1024_MS} ms, ratio {:.2}×", t.0 / TORCH_RMBG_1024_MS)
    } else {
        "f32, CPU, reduced size".into()
    };
    Ok(row("conv", format!("RMBG forward {side}²"), opts.iters, t, note))
}

/// A convolution geometry checked by `conv_check`.
struct CheckCase {
    name: String,
    c_in: usize,
    c_out: usize,
    side: usize,
    k: usize,
    cfg: Conv2dConfig,
}

fn check_cases(device: &Device) -> Vec<CheckCase> {
    let c3 = |padding, stride, dilation| Conv2dConfig { padding, stride, dilation, ..Default::default() };
    let mut cases: Vec<CheckCase> = TABLE
        .iter()
        .map(|s| {
            let (c, side) = sized(s.channels, s.side, device);
            CheckCase { name: s.name.into(), c_in: c, c_out: c, side, k: 3, cfg: c3(1, 1, 1) }
        })
        .collect();
    // Geometries of the models beyond the table (the CPU runs them at these sizes too).
    let extra = [
        ("RMBG conv_in 3→64 stride 2 @ 256²", 3, 64, 256, 3, c3(1, 2, 1)),
        ("UNet downsample 320 stride 2 @ 64²", 320, 320, 64, 3, c3(1, 2, 1)),
        ("RMBG dilated 2 @ 64²", 128, 128, 64, 3, c3(2, 1, 2)),
        ("RMBG dilated 8 @ 32²", 256, 256, 32, 3, c3(8, 1, 8)),
        ("VAE shortcut 1×1 512→256 @ 64²", 512, 256, 64, 1, c3(0, 1, 1)),
        ("VAE conv_in 4→512 @ 64²", 4, 512, 64, 3, c3(1, 1, 1)),
        ("VAE conv_out 128→3 @ 128²", 128, 3, 128, 3, c3(1, 1, 1)),
        ("RMBG side 64→1 @ 128²", 64, 1, 128, 3, c3(1, 1, 1)),
    ];
    for (name, c_in, c_out, side, k, cfg) in extra {
        cases.push(CheckCase { name: name.into(), c_in, c_out, side, k, cfg });
    }
    cases
}

/// Tolerances of lumen's convolution against the f32 CPU result: f16 storage for f16; TF32
/// (10-bit mantissa products, f32 sums) for f32 unless TF32 is off, then plain f32 rounding
/// (any algorithm, Winograd and FFT included).
fn conv_tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => 5e-3,
        _ if conv::tf32_allowed() => 2e-3,
        _ => 1e-4,
    }
}

/// Tolerances of a whole network on the device against the same network on the CPU (f32):
/// errors of ~30 (VAE) to ~100 (RMBG) convolutions compound. With TF32 off the bound is the
/// SDXL goldens' own (1e-4).
fn network_tolerance() -> f64 {
    if conv::tf32_allowed() {
        2e-2
    } else {
        1e-4
    }
}

/// `lumen bench conv_check`: fails (non-zero exit) if any comparison is out of tolerance.
pub fn check(opts: &BenchOptions) -> Result<Vec<BenchRow>> {
    let device = device(opts);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for case in check_cases(&device) {
        for dtype in [DType::F32, DType::F16] {
            let shape_w = [case.c_out, case.c_in, case.k, case.k];
            let scale = 1.0 / ((case.k * case.k * case.c_in) as f64).sqrt();
            // Same values everywhere: drawn once, rounded to `dtype`, then widened for the CPU.
            let w = random(&shape_w, scale, 11, dtype, &Device::Cpu)?;
            let b = random(&[case.c_out], 0.1, 12, dtype, &Device::Cpu)?;
            let x = random(&[1, case.c_in, case.side, case.side], 1.0, 13, dtype, &Device::Cpu)?;
            let f32_cpu = |t: &Tensor| t.to_dtype(DType::F32);
            let want = conv::conv2d_im2col(&f32_cpu(&x)?, &f32_cpu(&w)?, Some(&f32_cpu(&b)?), case.cfg)?;

            let (xd, wd, bd) = (x.to_device(&device)?, w.to_device(&device)?, b.to_device(&device)?);
            let start = Instant::now();
            let ours = Conv2d::new(wd.clone(), Some(bd.clone()), case.cfg).forward(&xd)?;
            device.synchronize()?;
            let first_ms = start.elapsed().as_secs_f64() * 1e3;
            let im2col = conv::conv2d_im2col(&xd, &wd, Some(&bd), case.cfg)?;

            let tol = conv_tolerance(dtype);
            let err = rel_l2(&ours, &want)?;
            let err_im2col = rel_l2(&im2col, &want)?;
            let err_between = rel_l2(&ours, &im2col)?;
            let ok = err <= tol && ours.dims() == want.dims();
            let name = format!("{} {dtype:?}", case.name);
            if !ok {
                failures.push(format!("{name}: rel L2 {err:.2e} > {tol:.0e}"));
            }
            let note = format!(
                "{} rel L2 vs f32 CPU {err:.2e} (tol {tol:.0e}); candle im2col here {err_im2col:.2e}; \
                 lumen vs im2col {err_between:.2e}; {device:?}",
                if ok { "ok" } else { "FAIL" }
            );
            rows.push(row("conv_check", name, 1, (first_ms, first_ms), note));
        }
    }
    rows.extend(check_group_norm(&device, &mut failures)?);
    if device.is_cuda() {
        rows.extend(check_networks(&device, &mut failures)?);
    }
    let _ = opts;
    if !failures.is_empty() {
        for r in &rows {
            tracing::error!("{:<44} {}", r.name, r.note);
        }
        bail!("{} convolution check(s) failed: {}", failures.len(), failures.join("; "));
    }
    Ok(rows)
}

/// The SDXL VAE decoder (latent 16² → 128²) and BriaRMBG (256²) with synthetic weights on the
/// device against the same on the CPU, f32: the error the GPU goldens should expect.
fn check_networks(device: &Device, failures: &mut Vec<String>) -> Result<Vec<BenchRow>> {
    use super::sdxl::VAE_CONFIG;
    use crate::models::rmbg::{BriaRmbg, Config};
    let synth_vb_on = |d: &Device| crate::synth::synth_var_builder(DType::F32, d);
    use crate::models::sdxl::vae::{VaeConfig, VaeDecoder};
    let cpu = Device::Cpu;
    let tol = network_tolerance();
    let mut results = Vec::new();

    let cfg: VaeConfig = serde_json::from_str(VAE_CONFIG)?;
    let z = random(&[1, 4, 16, 16], 1.0, 31, DType::F32, &cpu)?;
    let want = VaeDecoder::new(synth_vb_on(&cpu), &cfg)?.decode(&z)?;
    let got = VaeDecoder::new(synth_vb_on(device), &cfg)?.decode(&z.to_device(device)?)?;
    results.push(("SDXL VAE decode 128² f32", rel_l2(&got, &want)?));

    let dir = std::env::temp_dir().join(format!("lumen-conv-check-rmbg-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let outs = (|| -> Result<(Tensor, Tensor)> {
        let rcfg = Config::default();
        crate::synth::write_synthetic_safetensors(
            &BriaRmbg::tensor_specs(&rcfg),
            None,
            &dir.join("model.safetensors"),
        )?;
        let x = random(&[1, 3, 256, 256], 0.5, 32, DType::F32, &cpu)?;
        let want = BriaRmbg::load_dir(&dir, &cpu)?.forward_mask(&x)?;
        let got = BriaRmbg::load_dir(&dir, device)?.forward_mask(&x.to_device(device)?)?;
        Ok((got, want))
    })();
    std::fs::remove_dir_all(&dir).ok();
    let (got, want) = outs?;
    results.push(("RMBG forward d1 256² f32", rel_l2(&got, &want)?));

    let mut rows = Vec::new();
    for (name, err) in results {
        let ok = err <= tol;
        if !ok {
            failures.push(format!("{name}: rel L2 {err:.2e} > {tol:.0e}"));
        }
        let verdict = if ok { "ok" } else { "FAIL" };
        let note = format!("{verdict} rel L2 vs CPU {err:.2e} (tol {tol:.0e}); {}", conv::cuda_path());
        rows.push(row("conv_check", name.to_string(), 1, (0.0, 0.0), note));
    }
    Ok(rows)
}

/// The fused GroupNorm + SiLU against candle's ops: on the same device, and against the CPU.
fn check_group_norm(device: &Device, failures: &mut Vec<String>) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let shapes = [(512, 64, 32), (256, 256, 32), (128, 512, 32), (320, 64, 32)];
    for (c, side, groups) in shapes {
        let (c, side) = sized(c, side, device);
        // Reduced (CPU) channel counts are multiples of 8, not of 32.
        let groups = if device.is_cuda() { groups } else { 8 };
        for dtype in [DType::F32, DType::F16] {
            let x = (random(&[1, c, side, side], 1.0, 21, dtype, &Device::Cpu)? + 0.5)?;
            let gamma = (random(&[c], 0.1, 22, dtype, &Device::Cpu)? + 1.0)?;
            let beta = random(&[c], 0.1, 23, dtype, &Device::Cpu)?;
            let f32_norm =
                conv::GroupNorm::new(gamma.to_dtype(DType::F32)?, beta.to_dtype(DType::F32)?, c, groups, 1e-6)?;
            let want = conv::group_norm_reference(&x.to_dtype(DType::F32)?, &f32_norm, true)?;
            let norm = conv::GroupNorm::new(gamma.to_device(device)?, beta.to_device(device)?, c, groups, 1e-6)?;
            let xd = x.to_device(device)?;
            let ours = norm.forward_silu(&xd)?;
            let candle_ops = conv::group_norm_reference(&xd, &norm, true)?;
            // f16 output rounding is ≈ 2.4e-4 relative; candle's f16 affine adds as much again.
            let tol = if dtype == DType::F16 { 2e-3 } else { 1e-5 };
            let err = rel_l2(&ours, &want)?;
            let err_ops = rel_l2(&candle_ops, &want)?;
            let ok = err <= tol;
            let name = format!("GroupNorm+SiLU {c} @ {side}² {dtype:?}");
            if !ok {
                failures.push(format!("{name}: rel L2 {err:.2e} > {tol:.0e}"));
            }
            let note = format!(
                "{} rel L2 vs f32 CPU {err:.2e} (tol {tol:.0e}); candle ops here {err_ops:.2e}; {device:?}",
                if ok { "ok" } else { "FAIL" }
            );
            rows.push(row("conv_check", name, 1, (0.0, 0.0), note));
        }
    }
    Ok(rows)
}
