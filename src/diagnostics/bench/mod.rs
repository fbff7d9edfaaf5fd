//! `lumen bench`: measured speed of each stage, printed as a table (or JSON).
//!
//! Benchmarks live here, not in tests (tests never assert wall-clock limits) and not in the
//! model modules (the models never import this). Each suite is a `fn(&BenchOptions) ->
//! Result<Vec<BenchRow>>` registered in [`SUITES`]; BENCHMARKS.md records what was run and
//! on which machine.
//!
//! Every suite runs on the device the pipeline would use ([`BenchOptions::new`] calls the
//! pipeline's own device and dtype choice; `--cpu` forces the CPU), with synthetic weights
//! generated in memory (`synth::synth_var_builder`). On CUDA the default is the released
//! sizes; on the CPU reduced sizes unless `--full`, so `make bench` takes minutes.
//! Each row carries its device, dtype and peak memory, and, where the row ran at the size
//! the peer baseline measured, that reference time and lumen's ratio to it ([`peer`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use serde::Serialize;

pub mod attention;
pub mod concept;
pub mod conv;
pub mod geometry;
pub mod memory;
pub mod partcrafter;
pub mod peer;
pub mod rmbg;
pub mod sampling;
pub mod sdxl;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Repetitions after one warm-up.
    pub iters: usize,
    /// Reduced sizes (the CPU default); `false` runs the released sizes.
    pub quick: bool,
    /// Where the models run, and their precision (the pipeline's choice for that device).
    pub device: Device,
    pub dtype: DType,
}

impl BenchOptions {
    /// The pipeline's device and dtype (`force_cpu`: `--cpu`); released sizes on CUDA or
    /// with `full`, reduced sizes on the CPU otherwise.
    pub fn new(iters: usize, force_cpu: bool, full: bool) -> Result<Self> {
        let device = crate::device::select_device(force_cpu)?;
        let dtype = crate::device::model_dtype(&device);
        Ok(Self { iters: iters.max(1), quick: !(full || device.is_cuda()), device, dtype })
    }

    /// CPU, f32 (tests).
    #[cfg(test)]
    pub fn cpu(iters: usize, quick: bool) -> Self {
        Self { iters: iters.max(1), quick, device: Device::Cpu, dtype: DType::F32 }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct BenchRow {
    pub suite: String,
    pub name: String,
    pub iters: usize,
    pub median_ms: f64,
    pub min_ms: f64,
    /// `cpu` or `cuda:N`; filled by the command when a suite leaves it empty.
    pub device: String,
    /// Precision the row's model ran in (`f32`, `f16`, …; `-` for model-free rows).
    pub dtype: String,
    /// Peak memory while the row ran, MiB: on CUDA the device's used memory (total − free)
    /// sampled after every iteration, so a sample, not an allocator peak, and it includes
    /// what earlier rows still hold; on the CPU the process's peak resident set (VmHWM).
    pub peak_mem_mib: Option<f64>,
    /// The peer baseline's time for the same stage at the same size (ms), when there is one.
    pub reference_ms: Option<f64>,
    /// `median_ms / reference_ms` (below 1: lumen is faster).
    pub ratio: Option<f64>,
    /// `memory` suite: the predicted peak device memory of the row's stage, MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub predicted_mib: Option<f64>,
    /// `memory` suite on CUDA: the measured peak (resident weights + the run's peak), MiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measured_mib: Option<f64>,
    /// Free-form: sizes, throughput, FLOP rate.
    pub note: String,
}

impl BenchRow {
    /// A row on `opts`'s device with the memory peak so far and an optional peer reference.
    pub fn new(suite: &str, name: impl Into<String>, opts: &BenchOptions, iters: usize, t: (f64, f64)) -> Self {
        Self {
            suite: suite.into(),
            name: name.into(),
            iters,
            median_ms: t.0,
            min_ms: t.1,
            device: crate::device::label(&opts.device),
            dtype: crate::device::dtype_name(opts.dtype).to_string(),
            peak_mem_mib: peak_mem_mib(&opts.device),
            ..Default::default()
        }
    }

    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = crate::device::dtype_name(dtype).to_string();
        self
    }

    pub fn no_dtype(mut self) -> Self {
        self.dtype = "-".into();
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Attaches the peer baseline's time (ms) for this stage at this size.
    pub fn reference(mut self, ms: Option<f64>) -> Self {
        self.reference_ms = ms;
        self.ratio = ms.filter(|r| *r > 0.0).map(|r| self.median_ms / r);
        self
    }
}

/// Times `f` once to warm up, then `iters` times; returns median and min in ms. The clock
/// only sees the host: use it for CPU work, or for device work whose result `f` reads back.
pub fn measure(iters: usize, f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    measure_on(&Device::Cpu, iters, f)
}

/// [`measure`] for work on `device`: the device is synchronised before each clock read (so
/// queued kernels are counted in the iteration that launched them) and its used memory is
/// sampled after each iteration.
pub fn measure_on(device: &Device, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    f()?;
    device.synchronize()?;
    sample_memory(device);
    let mut samples = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let start = Instant::now();
        f()?;
        device.synchronize()?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        sample_memory(device);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    Ok((samples[samples.len() / 2], samples[0]))
}

/// One timed run on `device` without warm-up (released-size rows that take seconds to
/// minutes on a CPU): returns (ms, ms).
pub fn once_on<T>(device: &Device, f: impl FnOnce() -> Result<T>) -> Result<(T, (f64, f64))> {
    device.synchronize()?;
    let start = Instant::now();
    let out = f()?;
    device.synchronize()?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    sample_memory(device);
    Ok((out, (ms, ms)))
}

/// Highest device memory use sampled since the last [`reset_peak`], bytes.
static DEVICE_PEAK: AtomicU64 = AtomicU64::new(0);

/// Starts a new peak: the device sample, and on Linux the process's VmHWM (writing 5 to
/// `/proc/self/clear_refs` resets it; where that is refused the peak is since start).
pub fn reset_peak() {
    DEVICE_PEAK.store(0, Ordering::Relaxed);
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Records the device's used memory (total − free) if it is a CUDA device.
pub fn sample_memory(device: &Device) {
    if let Some(used) = device_used_bytes(device) {
        DEVICE_PEAK.fetch_max(used, Ordering::Relaxed);
    }
}

#[cfg(feature = "cuda")]
fn device_used_bytes(device: &Device) -> Option<u64> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some(total.saturating_sub(free) as u64)
}

#[cfg(not(feature = "cuda"))]
fn device_used_bytes(_: &Device) -> Option<u64> {
    None
}

/// The peak for rows on `device`: the sampled device use on CUDA, VmHWM on the CPU.
pub fn peak_mem_mib(device: &Device) -> Option<f64> {
    const MIB: f64 = 1024.0 * 1024.0;
    if device.is_cuda() {
        sample_memory(device);
        let peak = DEVICE_PEAK.load(Ordering::Relaxed);
        return (peak > 0).then(|| peak as f64 / MIB);
    }
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub type Suite = fn(&BenchOptions) -> Result<Vec<BenchRow>>;

/// Every benchmark suite by name (`lumen bench NAME`), in the order `lumen bench` runs them.
pub const SUITES: &[(&str, Suite)] = &[
    ("sampling", sampling::run),
    ("attention", attention::run),
    ("attention_check", attention::check),
    ("sdxl", sdxl::run),
    ("rmbg", rmbg::run),
    ("partcrafter_dit", partcrafter::run),
    ("partcrafter_geometry", geometry::run),
    ("concept", concept::run),
    ("conv", conv::run),
    ("conv_check", conv::check),
    ("memory", memory::run),
];

#[cfg(test)]
mod tests {
    /// `--cpu` reaches every suite only if each takes its device from `BenchOptions` (the
    /// one place that opens one): a suite that opens its own runs on the GPU whatever the
    /// flag, which a CPU build cannot show by running it, so its source is checked.
    #[test]
    fn suites_run_on_the_options_device() {
        let suites = [
            ("attention.rs", include_str!("attention.rs")),
            ("concept.rs", include_str!("concept.rs")),
            ("conv.rs", include_str!("conv.rs")),
            ("geometry.rs", include_str!("geometry.rs")),
            ("partcrafter.rs", include_str!("partcrafter.rs")),
            ("rmbg.rs", include_str!("rmbg.rs")),
            ("sampling.rs", include_str!("sampling.rs")),
            ("sdxl.rs", include_str!("sdxl.rs")),
        ];
        for (file, code) in suites {
            for opener in ["select_device(", "Device::new_cuda(", "Device::cuda_if_available("] {
                assert!(!code.contains(opener), "bench/{file} opens its own device ({opener}…): use opts.device");
            }
        }
    }
}
