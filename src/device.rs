//! The compute device: which one a run uses, what it is, and a numerical self-check.
//!
//! Every command that runs models picks its device here, logs [`DeviceInfo`] once, and
//! records its kind in the asset's `pipeline.settings`, so a number (or a wrong result) can
//! always be traced to the card, driver and precision it came from.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::Serialize;

/// The first CUDA GPU in a CUDA build (unless `force_cpu`), else the CPU.
pub fn select_device(force_cpu: bool) -> Result<Device> {
    if force_cpu || !cfg!(feature = "cuda") {
        return Ok(Device::Cpu);
    }
    Device::new_cuda(0).context("this is a CUDA build but no CUDA device could be opened (use --cpu to run on the CPU)")
}

/// The precision the model stages run in on `device`: half precision on a GPU (as the
/// reference pipelines run), f32 on the CPU (no fast f16 arithmetic there).
pub fn model_dtype(device: &Device) -> DType {
    if device.is_cuda() {
        DType::F16
    } else {
        DType::F32
    }
}

/// Short lower-case name of a dtype for logs and asset settings ("f16", "f32", ...).
pub fn dtype_name(dtype: DType) -> &'static str {
    dtype.as_str()
}

/// What a run's device is, for logs, `--json` outputs and asset settings.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceInfo {
    /// "cpu" or "cuda".
    pub kind: String,
    /// GPU name, or the CPU model.
    pub name: String,
    /// Device memory (GPU) or system memory (CPU), MiB.
    pub memory_mib: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    /// The driver's CUDA version (e.g. "13.0").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_cuda: Option<String>,
    /// The CUDA toolkit the binary was built with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub built_with_cuda: Option<String>,
    /// CPU threads candle uses (CPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

impl DeviceInfo {
    /// One line for the log.
    pub fn summary(&self) -> String {
        match self.kind.as_str() {
            "cuda" => format!(
                "device: CUDA GPU {} ({} MiB, compute capability {}, driver CUDA {}, built with CUDA {})",
                self.name,
                self.memory_mib,
                self.compute_capability.as_deref().unwrap_or("?"),
                self.driver_cuda.as_deref().unwrap_or("?"),
                self.built_with_cuda.as_deref().unwrap_or("?"),
            ),
            _ => format!(
                "device: CPU {} ({} threads, {} MiB memory){}",
                self.name,
                self.threads.unwrap_or(1),
                self.memory_mib,
                if cfg!(feature = "cuda") { "" } else { "; this build has no CUDA (see README: make cuda)" }
            ),
        }
    }
}

/// Describes `device`; never fails (unknown fields stay empty).
pub fn describe(device: &Device) -> DeviceInfo {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        return cuda_info(cuda);
    }
    let _ = device;
    DeviceInfo {
        kind: "cpu".into(),
        name: cpu_model().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
        memory_mib: mem_total_mib().unwrap_or(0),
        compute_capability: None,
        driver_cuda: None,
        built_with_cuda: None,
        threads: Some(candle_core::utils::get_num_threads()),
    }
}

#[cfg(feature = "cuda")]
fn cuda_info(cuda: &candle_core::CudaDevice) -> DeviceInfo {
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let mut driver = 0i32;
    // SAFETY: cuDriverGetVersion writes one int and has no other effect.
    let driver_cuda = (unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }
        == cudarc::driver::sys::CUresult::CUDA_SUCCESS)
        .then(|| format!("{}.{}", driver / 1000, (driver % 1000) / 10));
    DeviceInfo {
        kind: "cuda".into(),
        name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
        memory_mib: ctx.total_mem().map(|b| (b >> 20) as u64).unwrap_or(0),
        compute_capability: ctx.compute_capability().ok().map(|(a, b)| format!("{a}.{b}")),
        driver_cuda,
        built_with_cuda: Some(env!("LUMEN_CUDA_TOOLKIT").to_string()),
        threads: None,
    }
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn mem_total_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

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
    let gemm_err = crate::goldens::rel_l2(&got, &want)?;
    if !(gemm_err < 1e-3) {
        bail!("f32 GEMM {m}×{k}·{k}×{n} on {} differs from the CPU: rel L2 {gemm_err:.3e}", device_label(device));
    }
    let x = pattern(1 << 20, 0.13)?;
    let (sum_cpu, max_cpu) = (x.sum_all()?.to_scalar::<f32>()?, x.max(0)?.to_scalar::<f32>()?);
    let xd = x.to_device(device)?;
    let (sum_dev, max_dev) = (xd.sum_all()?.to_scalar::<f32>()?, xd.max(0)?.to_scalar::<f32>()?);
    let sum_err = ((sum_dev - sum_cpu) / sum_cpu.abs().max(1.0)).abs();
    if !(sum_err < 1e-4) || max_dev != max_cpu {
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
        let half_err = crate::goldens::rel_l2(&got, &want)?;
        // f16 inputs carry 2^-11 relative rounding; over k = 512 products the error stays ~1e-3.
        if !(half_err < 5e-3) {
            bail!("{} GEMM on {} differs from f32: rel L2 {half_err:.3e}", dtype_name(half), device_label(device));
        }
        summary.push_str(&format!(", {} GEMM rel L2 {half_err:.1e}", dtype_name(half)));
    }
    Ok(summary)
}

/// A GPU's free and total memory, in bytes, as the driver reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemoryInfo {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl MemoryInfo {
    /// "device memory 812 MiB free of 22563 MiB"
    pub fn summary(&self) -> String {
        format!("device memory {} MiB free of {} MiB", self.free_bytes >> 20, self.total_bytes >> 20)
    }
}

/// `device`'s memory now; `None` on the CPU (host memory is not what a model run exhausts
/// there) or when the driver does not answer.
pub fn memory_info(device: &Device) -> Option<MemoryInfo> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
        return Some(MemoryInfo { free_bytes: free as u64, total_bytes: total as u64 });
    }
    let _ = device;
    None
}

/// How the CUDA driver, cuBLAS and cuDNN say an allocation failed, as candle passes their
/// errors on (`DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")`, `CublasError(..)`).
const OUT_OF_MEMORY_MARKERS: [&str; 4] =
    ["CUDA_ERROR_OUT_OF_MEMORY", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "out of memory"];

/// Whether `error` (anywhere in its chain) is the device running out of memory: a failure of
/// that one concept at its size, not of the device or the batch.
pub fn is_out_of_memory(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let text = format!("{cause} {cause:?}");
        OUT_OF_MEMORY_MARKERS.iter().any(|m| text.contains(m))
    })
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
    use crate::goldens::rel_l2;

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
    fn out_of_memory_is_recognised_through_the_error_chain() {
        let driver = candle_core::Error::Cuda(r#"DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")"#.into());
        let e = anyhow::Error::from(driver).context("partcrafter_sample").context("image → parts");
        assert!(is_out_of_memory(&e));
        let blas = anyhow::anyhow!("CublasError(CUBLAS_STATUS_ALLOC_FAILED)").context("sdxl_unet");
        assert!(is_out_of_memory(&blas));
        let other = anyhow::anyhow!("DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access\")");
        assert!(!is_out_of_memory(&other.context("image → parts")));
        assert_eq!(memory_info(&Device::Cpu), None);
    }

    #[test]
    fn rel_l2_sees_a_wrong_result() {
        let a = pattern(64, 0.5).unwrap();
        let b = (a.clone() * 1.01).unwrap();
        let e = rel_l2(&b, &a).unwrap();
        assert!((e - 0.01).abs() < 1e-6, "{e}");
    }
}
