//! The device self-check of `lumen preflight`: a few real computations on the device,
//! compared with the CPU.
//!
//! It lives with the golden cases and the benchmarks, above the models, because it judges
//! results with the same relative L2 as they do ([`super::compare`]); the device module
//! below only picks and describes the device.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::compare::rel_l2;
use crate::device::{dtype_name, model_dtype};

/// A real numerical check of `device` against the CPU: a 256×512·512×192 GEMM in f32 and a
/// sum/max reduction over 2²⁰ values, both compared with the same computation on the CPU, and
/// on a GPU a half-precision GEMM against the f32 result and one tiny launch of each of
/// lumen's own kernels ([`kernel_checks`]). Returns a one-line summary.
///
/// Why these: they exercise cuBLAS (what every linear layer uses), candle's reduction kernels
/// and the half-precision path the models run in, which is where a broken driver, a PTX that
/// did not load or a wrong library version shows up.
pub fn self_check(device: &Device) -> Result<String> {
    let (m, k, n) = (256, 512, 192);
    let a = pattern(m * k, 0.37)?.reshape((m, k))?;
    let b = pattern(k * n, 0.91)?.reshape((k, n))?;
    let want = a.matmul(&b)?;
    let got = a.to_device(device)?.matmul(&b.to_device(device)?)?.to_device(&Device::Cpu)?;
    // TF32 or a different summation order may differ slightly; a broken GEMM is off by O(1).
    let gemm_err = rel_l2(&got, &want)?;
    if gemm_err.is_nan() || gemm_err >= 1e-3 {
        bail!("f32 GEMM {m}×{k}·{k}×{n} on {} differs from the CPU: rel L2 {gemm_err:.3e}", device_label(device));
    }
    let x = pattern(1 << 20, 0.13)?;
    let (sum_cpu, max_cpu) = (x.sum_all()?.to_scalar::<f32>()?, x.max(0)?.to_scalar::<f32>()?);
    let xd = x.to_device(device)?;
    let (sum_dev, max_dev) = (xd.sum_all()?.to_scalar::<f32>()?, xd.max(0)?.to_scalar::<f32>()?);
    let sum_err = ((sum_dev - sum_cpu) / sum_cpu.abs().max(1.0)).abs();
    if sum_err.is_nan() || sum_err >= 1e-4 || max_dev != max_cpu {
        bail!(
            "reduction on {} differs from the CPU: sum {sum_dev} vs {sum_cpu}, max {max_dev} vs {max_cpu}",
            device_label(device)
        );
    }
    let mut summary = format!("f32 GEMM rel L2 {gemm_err:.1e}, sum/max reduction over 2^20 match");
    if device.is_cuda() {
        let half = model_dtype(device);
        let got = a
            .to_dtype(half)?
            .to_device(device)?
            .matmul(&b.to_dtype(half)?.to_device(device)?)?
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let half_err = rel_l2(&got, &want)?;
        // f16 inputs carry 2^-11 relative rounding; over k = 512 products the error stays ~1e-3.
        if half_err.is_nan() || half_err >= 5e-3 {
            bail!("{} GEMM on {} differs from f32: rel L2 {half_err:.3e}", dtype_name(half), device_label(device));
        }
        summary.push_str(&format!(", {} GEMM rel L2 {half_err:.1e}", dtype_name(half)));
        summary.push_str(&format!("; {}", kernel_checks(device)?));
    }
    Ok(summary)
}

/// One tiny launch of each of lumen's own CUDA kernels (fused attention, the safe path's
/// softmax, the NaN fill both poison with, fused GroupNorm + SiLU) and of a convolution
/// (cuDNN in a cuDNN build), each against the same computation on the CPU.
///
/// Why in the self-check: these load PTX modules and libraries that the GEMM above never
/// touches (lumen's `attention` and `groupnorm` PTX, candle's cast/affine kernels, cuDNN), so
/// a PTX the driver cannot JIT-compile or a missing library shows up here, in seconds,
/// instead of in the first concept.
fn kernel_checks(device: &Device) -> Result<String> {
    use crate::attention::{attention_with, Options, Path};
    let mut parts = Vec::new();
    for (path, d) in [(Path::Fused, 64), (Path::Safe, 80)] {
        let (b, h, l) = (1, 2, 70);
        let t = |step: f64| -> Result<Tensor> { Ok(pattern(b * h * l * d, step)?.reshape((b, h, l, d))?) };
        let (q, k, v) = (t(0.37)?, t(0.53)?, t(0.71)?);
        let scale = 1.0 / (d as f64).sqrt();
        let want = attention_with(&q, &k, &v, scale, true, &Options::default())?.0;
        let on_device = |x: &Tensor| -> Result<Tensor> { Ok(x.to_dtype(DType::F16)?.to_device(device)?) };
        let opts = Options { path: Some(path), poison: true, ..Options::default() };
        let (got, _) = attention_with(&on_device(&q)?, &on_device(&k)?, &on_device(&v)?, scale, true, &opts)
            .with_context(|| format!("{} attention kernel on the GPU", path.name()))?;
        let err = rel_l2(&got.to_dtype(DType::F32)?.to_device(&Device::Cpu)?, &want)?;
        // f16 inputs and outputs: ~1e-3; a wrong kernel is off by O(1) or NaN.
        if err.is_nan() || err >= 5e-3 {
            bail!("{} attention (f16, head dim {d}) on the GPU differs from the CPU: rel L2 {err:.3e}", path.name());
        }
        parts.push(format!("{} attention rel L2 {err:.1e}", path.name()));
    }

    let (n, c, groups) = (2, 32, 8);
    let x = pattern(n * c * 8 * 8, 0.29)?.reshape((n, c, 8, 8))?;
    let (weight, bias) = ((pattern(c, 0.7)? + 1.0)?, pattern(c, 0.3)?);
    let norm =
        |dev: &Device| crate::conv::GroupNorm::new(weight.to_device(dev)?, bias.to_device(dev)?, c, groups, 1e-5);
    let want = norm(&Device::Cpu)?.forward_silu(&x)?;
    let got = norm(device)?.forward_silu(&x.to_device(device)?).context("group norm kernel on the GPU")?;
    let err = rel_l2(&got.to_device(&Device::Cpu)?, &want)?;
    if err.is_nan() || err >= 1e-4 {
        bail!("group norm + SiLU (f32) on the GPU differs from the CPU: rel L2 {err:.3e}");
    }
    parts.push(format!("group norm rel L2 {err:.1e}"));

    let (w, b) = (pattern(16 * 32 * 9, 0.11)?.reshape((16, 32, 3, 3))?, pattern(16, 0.9)?);
    let cfg = crate::conv::Conv2dConfig { padding: 1, ..Default::default() };
    let conv = |dev: &Device| -> Result<crate::conv::Conv2d> {
        Ok(crate::conv::Conv2d::new(w.to_device(dev)?, Some(b.to_device(dev)?), cfg))
    };
    use candle_core::Module;
    let want = conv(&Device::Cpu)?.forward(&x)?;
    let got = conv(device)?.forward(&x.to_device(device)?).context("convolution on the GPU")?;
    let err = rel_l2(&got.to_device(&Device::Cpu)?, &want)?;
    // TF32 (when allowed) rounds products to 10-bit mantissas: a few 1e-4.
    if err.is_nan() || err >= 2e-3 {
        bail!("conv2d (f32) on the GPU differs from the CPU: rel L2 {err:.3e}");
    }
    parts.push(format!("conv2d rel L2 {err:.1e}"));
    Ok(format!("lumen kernels: {}", parts.join(", ")))
}

fn device_label(device: &Device) -> &'static str {
    if device.is_cuda() {
        "the GPU"
    } else {
        "the CPU"
    }
}

/// Deterministic values in [-1, 1) without a random generator (sin of a scaled index).
fn pattern(len: usize, step: f64) -> Result<Tensor> {
    let v: Vec<f32> = (0..len).map(|i| ((i as f64 * step).sin()) as f32).collect();
    Ok(Tensor::from_vec(v, len, &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::describe;

    #[test]
    fn cpu_self_check_passes_and_describes_the_cpu() {
        let summary = self_check(&Device::Cpu).unwrap();
        assert!(summary.contains("GEMM"), "{summary}");
        let info = describe(&Device::Cpu);
        assert_eq!(info.kind, "cpu");
        assert!(info.threads.unwrap() >= 1);
        assert!(info.summary().starts_with("device: CPU"));
    }

    #[test]
    fn rel_l2_sees_a_wrong_result() {
        let a = pattern(64, 0.5).unwrap();
        let b = (a.clone() * 1.01).unwrap();
        let e = rel_l2(&b, &a).unwrap();
        assert!((e - 0.01).abs() < 1e-6, "{e}");
    }
}
