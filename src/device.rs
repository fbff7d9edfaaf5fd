//! The compute device: which one a run uses and what it is (the numerical self-check is
//! in `diagnostics::self_check`).
//!
//! Every command that runs models picks its device here, logs [`DeviceInfo`] once, and
//! records its kind in the asset's `pipeline.settings`, so a number (or a wrong result) can
//! always be traced to the card, driver and precision it came from.

use anyhow::{Context, Result};
use candle_core::{DType, Device};
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
        // The toolkit and the PTX target: a driver older than the toolkit cannot JIT the PTX.
        built_with_cuda: Some(format!("{} ({} PTX)", env!("LUMEN_CUDA_TOOLKIT"), crate::cuda::ptx::PTX_ARCH)),
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

/// Where a tensor lives, as logs, bench rows and golden reports name it: `cpu`, `cuda:0`.
pub fn label(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
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

/// How the CUDA driver, cuBLAS and cuDNN say an allocation failed, as candle and `conv` pass
/// their errors on (`DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")`,
/// `CublasError(..)`, cuDNN 8's `ALLOC_FAILED`, cuDNN 9's
/// `INTERNAL_ERROR_{HOST,DEVICE}_ALLOCATION_FAILED`, the codes `conv::plan` retries on).
const OUT_OF_MEMORY_MARKERS: [&str; 5] = [
    "CUDA_ERROR_OUT_OF_MEMORY",
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "_ALLOCATION_FAILED",
    "out of memory",
];

/// Whether `error` (anywhere in its chain) is the device running out of memory: a failure of
/// that one concept at its size, not of the device or the batch.
pub fn is_out_of_memory(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        let text = format!("{cause} {cause:?}");
        OUT_OF_MEMORY_MARKERS.iter().any(|m| text.contains(m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_is_recognised_through_the_error_chain() {
        let driver = candle_core::Error::Cuda(r#"DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")"#.into());
        let e = anyhow::Error::from(driver).context("partcrafter_sample").context("image → parts");
        assert!(is_out_of_memory(&e));
        let blas = anyhow::anyhow!("CublasError(CUBLAS_STATUS_ALLOC_FAILED)").context("sdxl_unet");
        assert!(is_out_of_memory(&blas));
        // conv's cuDNN errors after its own workspace retries ("cuDNN {call}: {status:?}").
        let cudnn9 = anyhow::anyhow!("cuDNN forward: CudnnError(CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)");
        assert!(is_out_of_memory(&cudnn9.context("sdxl_vae_decode")));
        let other = anyhow::anyhow!("DriverError(CUDA_ERROR_ILLEGAL_ADDRESS, \"an illegal memory access\")");
        assert!(!is_out_of_memory(&other.context("image → parts")));
        let unsupported = anyhow::anyhow!("cuDNN forward: CudnnError(CUDNN_STATUS_NOT_SUPPORTED)");
        assert!(!is_out_of_memory(&unsupported));
        assert_eq!(memory_info(&Device::Cpu), None);
    }
}
