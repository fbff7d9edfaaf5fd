//! The device self-check of `lumen preflight`: a few real computations on the device,
//! compared with the CPU.
//!
//! It lives with the golden cases and the benchmarks, above the models, because it judges
//! results with the same relative L2 as they do ([`super::compare`]); the device module
//! below only picks and describes the device.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::compare::rel_l2;
use crate::device::{dtype_name, model_dtype};

/// A real numerical check of `device` against the CPU: a 256×512·512×192 GEMM in f32 and a
/// sum/max reduction over 2²⁰ values, both compared with the same computation on the CPU, and
/// on a GPU a half-precision GEMM against the f32 result. Returns a one-line summary.
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
    }
    Ok(summary)
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
