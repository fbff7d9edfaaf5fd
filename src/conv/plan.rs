//! Host-side decisions of the cuDNN path as plain functions, so the CPU tests can check them:
//! the plan-cache key (geometry, dtype, pointer alignment), which measured algorithm is
//! accepted (strict f32 takes only exact ones), how much workspace a measurement may use and
//! which smaller caps are tried after an out-of-memory, and how much workspace is kept once
//! the algorithms are chosen. `conv/cudnn.rs` does the cuDNN calls around these.
//!
//! Why the workspace rules: the measurement needs the largest workspace of all candidate
//! algorithms (up to [`WORKSPACE_CAP_BYTES`]), but the chosen ones usually need far less, and
//! the engine is shared by every thread of the device, so the buffer is shrunk to the chosen
//! plans' largest need after each search instead of keeping the measurement's peak.

/// Largest workspace a measurement may use; algorithms that want more are not measured.
/// (The FFT algorithms can ask for gigabytes at 512² and are rarely the fastest.)
pub const WORKSPACE_CAP_BYTES: usize = 1 << 30;

/// The workspace caps a measurement tries, in order: the cap, a quarter of it after an
/// out-of-memory, then none (only algorithms that need no workspace).
pub fn workspace_caps(cap: usize) -> [usize; 3] {
    [cap, cap / 4, 0]
}

/// Element types cuDNN runs for lumen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F16,
    BF16,
}

/// cuDNN's forward algorithms, in cuDNN's numbering (`cudnnConvolutionFwdAlgo_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    ImplicitGemm = 0,
    ImplicitPrecompGemm = 1,
    Gemm = 2,
    Direct = 3,
    Fft = 4,
    FftTiling = 5,
    Winograd = 6,
    WinogradNonfused = 7,
}

impl Algo {
    pub const ALL: [Algo; 8] = [
        Algo::ImplicitGemm,
        Algo::ImplicitPrecompGemm,
        Algo::Gemm,
        Algo::Direct,
        Algo::Fft,
        Algo::FftTiling,
        Algo::Winograd,
        Algo::WinogradNonfused,
    ];

    /// Whether the algorithm computes the convolution as sums of products in the element
    /// type's arithmetic (f32 FMA in strict mode). FFT and Winograd transform the data first
    /// and carry transform error of their own (≈1e-4 relative and more in f32), which fails
    /// goldens held to 1e-5.
    pub fn is_exact(self) -> bool {
        matches!(self, Algo::ImplicitGemm | Algo::ImplicitPrecompGemm | Algo::Gemm | Algo::Direct)
    }
}

/// Whether `algo` may be chosen: every algorithm, except that strict f32 (`LUMEN_CUDNN_TF32=0`)
/// takes only the exact ones.
pub fn eligible(algo: Algo, strict_f32: bool) -> bool {
    !strict_f32 || algo.is_exact()
}

/// The workspace a measurement is given under `cap`: the largest need among the eligible
/// algorithms whose need fits the cap (`sizes`: each algorithm cuDNN supports for the shape,
/// with its workspace need).
pub fn measurement_workspace(sizes: &[(Algo, usize)], cap: usize, strict_f32: bool) -> usize {
    sizes.iter().filter(|(a, bytes)| eligible(*a, strict_f32) && *bytes <= cap).map(|(_, b)| *b).max().unwrap_or(0)
}

/// One algorithm's measurement result (`cudnnConvolutionFwdAlgoPerf_t`, reduced).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub algo: Algo,
    /// Whether it ran (status success).
    pub ok: bool,
    pub time_ms: f32,
    pub workspace_bytes: usize,
}

/// The index of the algorithm to keep: results come sorted by time from cuDNN; the first that
/// ran, fits the workspace it was given and is eligible. `None` when none qualifies.
pub fn pick(results: &[Measured], workspace_len: usize, strict_f32: bool) -> Option<usize> {
    results.iter().position(|m| m.ok && m.workspace_bytes <= workspace_len && eligible(m.algo, strict_f32))
}

/// The workspace kept after a search: the largest need of the chosen algorithms of every
/// plan (so a cached plan never has to grow it), 0 when none needs any.
pub fn retained_workspace(chosen: impl IntoIterator<Item = usize>) -> usize {
    chosen.into_iter().max().unwrap_or(0)
}

/// Alignment in bytes (a power of two, at most 256) shared by buffers that start `offsets`
/// bytes into their allocations. CUDA allocations start 256-byte aligned, so this is the
/// alignment of the addresses cuDNN sees; the algorithm measured at one alignment is not
/// valid (or not the fastest) at another, so it is part of the plan-cache key.
pub fn alignment(byte_offsets: &[usize]) -> usize {
    const BASE: usize = 256;
    byte_offsets.iter().fold(BASE, |a, &off| if off == 0 { a } else { a.min(1 << off.trailing_zeros()) })
}

/// Whether a cuDNN status code (`cudnnStatus_t` as an integer) reports a failed allocation:
/// cuDNN 8's ALLOC_FAILED (2), cuDNN 9's host and device allocation failures (4003, 4004).
pub fn cudnn_status_is_out_of_memory(code: u32) -> bool {
    matches!(code, 2 | 4003 | 4004)
}

/// CUDA driver's CUDA_ERROR_OUT_OF_MEMORY.
pub const DRIVER_OUT_OF_MEMORY: u32 = 2;

/// One convolution call's geometry: input (batch, c_in, h, w) and filter
/// (c_out, c_in / groups, k_h, k_w), both contiguous NCHW, plus the alignment of the buffers
/// ([`alignment`]). The plan-cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub padding: usize,
    pub stride: usize,
    pub dilation: usize,
    pub groups: usize,
    pub dtype: ElemType,
    pub bias: bool,
    /// Bytes; the output is always a fresh, 256-byte aligned buffer.
    pub align: usize,
}

impl ConvShape {
    /// Output (h, w), the same formula as candle's and torch's.
    pub fn out_hw(&self) -> (usize, usize) {
        let out = |n: usize, k: usize| (n + 2 * self.padding - self.dilation * (k - 1) - 1) / self.stride + 1;
        (out(self.h, self.k_h), out(self.w, self.k_w))
    }

    /// Output element count.
    pub fn out_len(&self) -> usize {
        let (ho, wo) = self.out_hw();
        self.batch * self.c_out * ho * wo
    }

    /// Whether cuDNN's 32-bit descriptors can describe it (and the geometry is valid).
    pub fn fits(&self) -> bool {
        let small = |n: usize| n > 0 && n < i32::MAX as usize;
        let (ho, wo) = self.out_hw_checked().unwrap_or((0, 0));
        [self.batch, self.c_in, self.h, self.w, self.c_out, self.k_h, self.k_w, self.stride, self.dilation, self.groups]
            .into_iter()
            .all(small)
            && small(ho)
            && small(wo)
            && self.c_in % self.groups == 0
            && self.c_out % self.groups == 0
            && small(self.batch * self.c_in * self.h * self.w)
            && small(self.out_len())
    }

    fn out_hw_checked(&self) -> Option<(usize, usize)> {
        let span = |k: usize| self.dilation.checked_mul(k.checked_sub(1)?)?.checked_add(1);
        let (sh, sw) = (span(self.k_h)?, span(self.k_w)?);
        if self.h + 2 * self.padding < sh || self.w + 2 * self.padding < sw || self.stride == 0 {
            return None;
        }
        Some(self.out_hw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(h: usize, k: usize, padding: usize, stride: usize, dilation: usize) -> ConvShape {
        ConvShape {
            batch: 1,
            c_in: 8,
            h,
            w: h + 1,
            c_out: 4,
            k_h: k,
            k_w: k,
            padding,
            stride,
            dilation,
            groups: 1,
            dtype: ElemType::F32,
            bias: true,
            align: 256,
        }
    }

    /// The output size formula against the shapes the models use (checked by hand).
    #[test]
    fn output_sizes() {
        assert_eq!(shape(64, 3, 1, 1, 1).out_hw(), (64, 65));
        assert_eq!(shape(64, 3, 1, 2, 1).out_hw(), (32, 33));
        assert_eq!(shape(1024, 3, 1, 2, 1).out_hw(), (512, 513));
        assert_eq!(shape(32, 3, 8, 1, 8).out_hw(), (32, 33));
        assert_eq!(shape(64, 1, 0, 1, 1).out_hw(), (64, 65));
        assert!(shape(64, 3, 1, 1, 1).fits());
        assert!(!shape(2, 3, 0, 1, 2).fits(), "a 5-wide dilated kernel does not fit a 2-row input");
    }

    fn m(algo: Algo, ok: bool, time_ms: f32, workspace_bytes: usize) -> Measured {
        Measured { algo, ok, time_ms, workspace_bytes }
    }

    #[test]
    fn strict_f32_accepts_only_exact_algorithms() {
        let exact: Vec<Algo> = Algo::ALL.into_iter().filter(|a| a.is_exact()).collect();
        assert_eq!(exact, [Algo::ImplicitGemm, Algo::ImplicitPrecompGemm, Algo::Gemm, Algo::Direct]);
        for a in Algo::ALL {
            assert!(eligible(a, false), "{a:?} with TF32 allowed");
            assert_eq!(eligible(a, true), a.is_exact(), "{a:?} in strict f32");
        }
        // cuDNN's numbering, which cudnn.rs converts by value.
        assert_eq!(Algo::ALL.map(|a| a as u32), [0, 1, 2, 3, 4, 5, 6, 7]);
    }

    /// Sorted by time as cuDNN returns them: strict f32 skips the faster Winograd and FFT,
    /// a failed run and a result over the workspace it was given.
    #[test]
    fn pick_takes_the_fastest_acceptable_result() {
        let results = [
            m(Algo::Winograd, true, 0.10, 1 << 20),
            m(Algo::Fft, true, 0.20, 64 << 20),
            m(Algo::ImplicitPrecompGemm, false, 0.25, 0),
            m(Algo::Gemm, true, 0.30, 8 << 20),
            m(Algo::ImplicitGemm, true, 0.50, 0),
        ];
        assert_eq!(pick(&results, 64 << 20, false), Some(0));
        assert_eq!(pick(&results, 64 << 20, true), Some(3));
        assert_eq!(pick(&results, 1 << 20, true), Some(4), "Gemm needs more than was given");
        assert_eq!(pick(&results[..3], 64 << 20, true), None);
        assert_eq!(pick(&[], 0, false), None);
    }

    #[test]
    fn measurement_workspace_covers_eligible_algorithms_under_the_cap() {
        let sizes =
            [(Algo::ImplicitGemm, 0), (Algo::Gemm, 40 << 20), (Algo::Fft, 3 << 30), (Algo::Winograd, 300 << 20)];
        let cap = WORKSPACE_CAP_BYTES;
        assert_eq!(measurement_workspace(&sizes, cap, false), 300 << 20, "FFT is over the cap");
        assert_eq!(measurement_workspace(&sizes, cap, true), 40 << 20, "Winograd is not exact");
        assert_eq!(measurement_workspace(&sizes, cap / 4, false), 40 << 20);
        assert_eq!(measurement_workspace(&sizes, 0, false), 0);
        assert_eq!(measurement_workspace(&[], cap, false), 0);
        // The retry ladder after an out-of-memory ends with no workspace at all.
        assert_eq!(workspace_caps(cap), [1 << 30, 256 << 20, 0]);
    }

    /// The kept workspace is what the chosen plans need, not what the measurement used.
    #[test]
    fn workspace_shrinks_to_the_chosen_plans_need() {
        let measured_with =
            measurement_workspace(&[(Algo::Gemm, 8 << 20), (Algo::Winograd, 900 << 20)], 1 << 30, false);
        assert_eq!(measured_with, 900 << 20);
        assert_eq!(retained_workspace([0, 8 << 20, 2 << 20]), 8 << 20);
        assert_eq!(retained_workspace([]), 0);
        assert_eq!(retained_workspace([0, 0]), 0);
    }

    #[test]
    fn alignment_is_the_lowest_shared_power_of_two() {
        assert_eq!(alignment(&[]), 256);
        assert_eq!(alignment(&[0, 0, 0]), 256);
        assert_eq!(alignment(&[512, 1024]), 256);
        assert_eq!(alignment(&[0, 64 * 2]), 128);
        assert_eq!(alignment(&[2 * 3]), 2, "f16 view 3 elements in");
        assert_eq!(alignment(&[4 * 12, 0]), 16);
        // Same geometry, other alignment: another plan-cache key.
        let (a, b) = (shape(64, 3, 1, 1, 1), ConvShape { align: 2, ..shape(64, 3, 1, 1, 1) });
        assert_ne!(a, b);
        let mut cache = std::collections::HashSet::new();
        cache.insert(a);
        assert!(!cache.contains(&b));
    }

    #[test]
    fn allocation_failures_are_recognised() {
        assert!(cudnn_status_is_out_of_memory(2));
        assert!(cudnn_status_is_out_of_memory(4003));
        assert!(cudnn_status_is_out_of_memory(4004));
        assert!(!cudnn_status_is_out_of_memory(0));
        assert!(!cudnn_status_is_out_of_memory(3000), "NOT_SUPPORTED is not a memory problem");
        assert_eq!(DRIVER_OUT_OF_MEMORY, 2);
    }
}
