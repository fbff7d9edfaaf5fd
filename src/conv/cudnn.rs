//! cuDNN forward convolution, called directly, with everything that does not depend on the
//! data done once per shape.
//!
//! Why not candle's `cudnn` feature: candle 0.11.1 runs cuDNN's heuristic algorithm picker and
//! allocates and zeroes a fresh workspace on every call (≈3–5 ms a call in f16 at batch 1,
//! more than the convolution itself). Here, as torch does in benchmark mode:
//! - the first call at a (shape, dtype) builds the descriptors and *measures* every algorithm
//!   that fits the workspace cap (`cudnnFindConvolutionForwardAlgorithmEx`), and the fastest
//!   one is kept with its descriptors for the life of the [`Engine`];
//! - one workspace buffer grows to the largest size any plan needs and is reused;
//! - the handle is bound once to the stream candle computes on, so no synchronisation is added.
//!
//! Numerics (mirroring torch's defaults): f16/bf16 accumulate in f32 with tensor cores
//! allowed; f32 allows TF32 tensor-core math (`allow_tf32`, torch's
//! `torch.backends.cudnn.allow_tf32 = True`), otherwise strict FMA math.
//!
//! This file only knows cudarc (raw device addresses in, raw device addresses out); the
//! candle side (storages, layouts, dtype dispatch) is in `conv/cuda_op.rs`.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::Arc;

use cudarc::cudnn::result::{self, CudnnError};
use cudarc::cudnn::sys;
use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut, DriverError};

/// Largest workspace an algorithm may use; algorithms that want more are not measured.
/// (The FFT algorithms can ask for gigabytes at 512² and are rarely the fastest.)
pub const WORKSPACE_CAP_BYTES: usize = 1 << 30;

/// Element types cuDNN runs for lumen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    F32,
    F16,
    BF16,
}

impl ElemType {
    fn data_type(self) -> sys::cudnnDataType_t {
        match self {
            ElemType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
            ElemType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
            ElemType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
        }
    }
}

/// One convolution call's geometry: input (batch, c_in, h, w) and filter
/// (c_out, c_in / groups, k_h, k_w), both contiguous NCHW. The plan cache key.
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

/// What went wrong in a cuDNN call.
#[derive(Debug)]
pub enum Error {
    Cudnn(&'static str, CudnnError),
    Driver(DriverError),
    /// No algorithm could run this shape within the workspace cap.
    NoAlgorithm(ConvShape),
    /// cuDNN's own output-size computation disagrees with ours (a bug in the caller's shape).
    OutputMismatch {
        ours: [usize; 4],
        cudnn: [c_int; 4],
    },
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Cudnn(what, e) => write!(f, "cuDNN {what}: {e}"),
            Error::Driver(e) => write!(f, "CUDA driver: {e}"),
            Error::NoAlgorithm(s) => write!(f, "cuDNN found no forward algorithm for {s:?}"),
            Error::OutputMismatch { ours, cudnn } => {
                write!(f, "cuDNN output size {cudnn:?} differs from the expected {ours:?}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<DriverError> for Error {
    fn from(e: DriverError) -> Self {
        Error::Driver(e)
    }
}

/// Tags a cuDNN status with the call that returned it.
trait Context<T> {
    fn at(self, what: &'static str) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, CudnnError> {
    fn at(self, what: &'static str) -> Result<T, Error> {
        self.map_err(|e| Error::Cudnn(what, e))
    }
}

/// The algorithm chosen for one shape, as reported for logs and benches.
#[derive(Debug, Clone)]
pub struct Choice {
    pub algo: sys::cudnnConvolutionFwdAlgo_t,
    pub math: sys::cudnnMathType_t,
    /// cuDNN's measured time of the chosen algorithm.
    pub time_ms: f32,
    pub workspace_bytes: usize,
    /// How many algorithms were measured.
    pub candidates: usize,
}

/// Descriptors and chosen algorithm of one shape.
struct Plan {
    x: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    /// (1, c_out, 1, 1), when the call adds a bias.
    bias: Option<sys::cudnnTensorDescriptor_t>,
    choice: Option<Choice>,
}

impl Plan {
    /// Null descriptors, filled in by [`Plan::describe`]; dropping destroys what was created.
    fn empty() -> Self {
        use std::ptr::null_mut;
        Self { x: null_mut(), w: null_mut(), conv: null_mut(), y: null_mut(), bias: None, choice: None }
    }

    fn describe(s: &ConvShape, allow_tf32: bool) -> Result<Self, Error> {
        let i = |n: usize| n as c_int;
        let dt = s.dtype.data_type();
        let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
        let (ho, wo) = s.out_hw();
        let mut p = Plan::empty();
        unsafe {
            p.x = result::create_tensor_descriptor().at("create x descriptor")?;
            result::set_tensor4d_descriptor(p.x, nchw, dt, [i(s.batch), i(s.c_in), i(s.h), i(s.w)])
                .at("x descriptor")?;
            p.w = result::create_filter_descriptor().at("create filter descriptor")?;
            result::set_filter4d_descriptor(p.w, dt, nchw, [i(s.c_out), i(s.c_in / s.groups), i(s.k_h), i(s.k_w)])
                .at("filter descriptor")?;
            p.conv = result::create_convolution_descriptor().at("create conv descriptor")?;
            // Half types accumulate in f32 (torch does the same).
            let compute = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
            let (pd, st, dl) = (i(s.padding), i(s.stride), i(s.dilation));
            result::set_convolution2d_descriptor(
                p.conv,
                pd,
                pd,
                st,
                st,
                dl,
                dl,
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                compute,
            )
            .at("conv descriptor")?;
            result::set_convolution_group_count(p.conv, i(s.groups)).at("group count")?;
            result::set_convolution_math_type(p.conv, requested_math(s.dtype, allow_tf32)).at("math type")?;
            p.y = result::create_tensor_descriptor().at("create y descriptor")?;
            result::set_tensor4d_descriptor(p.y, nchw, dt, [i(s.batch), i(s.c_out), i(ho), i(wo)])
                .at("y descriptor")?;
            if s.bias {
                let b = result::create_tensor_descriptor().at("create bias descriptor")?;
                p.bias = Some(b);
                result::set_tensor4d_descriptor(b, nchw, dt, [1, i(s.c_out), 1, 1]).at("bias descriptor")?;
            }
            let mut got: [c_int; 4] = [0; 4];
            let [n, c, h, w] = &mut got;
            sys::cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.w, n, c, h, w).result().at("output size")?;
            let ours = [s.batch, s.c_out, ho, wo];
            if got.iter().zip(ours).any(|(&g, o)| g as usize != o) {
                return Err(Error::OutputMismatch { ours, cudnn: got });
            }
        }
        Ok(p)
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; a failed destroy leaks a descriptor at most.
        unsafe {
            if !self.x.is_null() {
                let _ = result::destroy_tensor_descriptor(self.x);
            }
            if !self.y.is_null() {
                let _ = result::destroy_tensor_descriptor(self.y);
            }
            if let Some(b) = self.bias {
                let _ = result::destroy_tensor_descriptor(b);
            }
            if !self.w.is_null() {
                let _ = result::destroy_filter_descriptor(self.w);
            }
            if !self.conv.is_null() {
                let _ = result::destroy_convolution_descriptor(self.conv);
            }
        }
    }
}

/// The math type asked for before measuring: tensor cores for half types; TF32 allowed
/// (cuDNN's default math on Ampere and later) or strict FMA for f32.
fn requested_math(dtype: ElemType, allow_tf32: bool) -> sys::cudnnMathType_t {
    match dtype {
        ElemType::F16 | ElemType::BF16 => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        ElemType::F32 if allow_tf32 => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
        ElemType::F32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
    }
}

/// Every forward algorithm cuDNN 9 enumerates.
const ALGOS: [sys::cudnnConvolutionFwdAlgo_t; 8] = [
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
];

/// Device addresses of one call's buffers (contiguous NCHW, already at their offsets).
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub x: u64,
    pub w: u64,
    pub bias: Option<u64>,
    /// `ConvShape::out_len` elements; not read (beta = 0), fully written.
    pub y: u64,
}

/// A cuDNN handle bound to one stream, its plan cache and its workspace. Not `Send`: cuDNN
/// handles belong to one thread (kept in a thread-local by the caller).
pub struct Engine {
    handle: sys::cudnnHandle_t,
    stream: Arc<CudaStream>,
    plans: HashMap<ConvShape, Plan>,
    workspace: Option<CudaSlice<u8>>,
    allow_tf32: bool,
}

impl Engine {
    pub fn new(stream: Arc<CudaStream>, allow_tf32: bool) -> Result<Self, Error> {
        stream.context().bind_to_thread()?;
        let handle = result::create_handle().at("create handle")?;
        // Own the handle before anything else can fail, so that drop destroys it.
        let engine = Self { handle, stream, plans: HashMap::new(), workspace: None, allow_tf32 };
        unsafe { result::set_stream(handle, engine.stream.cu_stream() as sys::cudaStream_t) }.at("set stream")?;
        Ok(engine)
    }

    /// The cuDNN library version loaded at run time (e.g. 91300 for 9.13.0).
    pub fn version() -> usize {
        unsafe { sys::cudnnGetVersion() }
    }

    /// The algorithm chosen for `shape`, if it has run.
    pub fn choice(&self, shape: &ConvShape) -> Option<&Choice> {
        self.plans.get(shape).and_then(|p| p.choice.as_ref())
    }

    /// y = conv(x, w) [+ bias], queued on the engine's stream. On the first call at a shape
    /// the algorithms are measured (using `b.y` as scratch output) and the returned flag is true.
    ///
    /// # Safety
    /// The addresses must be live device allocations on this engine's context holding
    /// `shape`'s element type and counts (x: batch·c_in·h·w, w: c_out·c_in/groups·k_h·k_w,
    /// bias: c_out, y: `shape.out_len()`), used by no other stream until this work is done.
    pub unsafe fn forward(&mut self, shape: &ConvShape, b: &Buffers) -> Result<bool, Error> {
        let measured = if self.plans.contains_key(shape) {
            false
        } else {
            let plan = Plan::describe(shape, self.allow_tf32)?;
            self.plans.insert(*shape, plan);
            true
        };
        let Self { handle, stream, plans, workspace, allow_tf32 } = self;
        let plan = plans.get_mut(shape).expect("inserted above");
        if plan.choice.is_none() {
            plan.choice = Some(find_algorithm(*handle, stream, workspace, plan, shape, b, *allow_tf32)?);
        }
        let choice = plan.choice.as_ref().expect("set above");
        ensure_workspace(stream, workspace, choice.workspace_bytes)?;
        let (one, zero) = (1f32, 0f32);
        let (ws_ptr, _ws_guard) = match workspace.as_mut() {
            Some(ws) if choice.workspace_bytes > 0 => {
                let (p, g) = ws.device_ptr_mut(stream);
                (p as *mut c_void, Some(g))
            }
            _ => (std::ptr::null_mut(), None),
        };
        result::convolution_forward(
            *handle,
            &one as *const f32 as *const c_void,
            plan.x,
            b.x as *const c_void,
            plan.w,
            b.w as *const c_void,
            plan.conv,
            choice.algo,
            ws_ptr,
            choice.workspace_bytes,
            &zero as *const f32 as *const c_void,
            plan.y,
            b.y as *mut c_void,
        )
        .at("convolution forward")?;
        if let (Some(desc), Some(bias)) = (plan.bias, b.bias) {
            // y = 1·bias (broadcast over n, h, w) + 1·y.
            sys::cudnnAddTensor(
                *handle,
                &one as *const f32 as *const c_void,
                desc,
                bias as *const c_void,
                &one as *const f32 as *const c_void,
                plan.y,
                b.y as *mut c_void,
            )
            .result()
            .at("bias add")?;
        }
        Ok(measured)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Descriptors first, then the handle; the workspace frees itself on its stream.
        self.plans.clear();
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// Grows the shared workspace to at least `bytes` (never shrinks it).
fn ensure_workspace(
    stream: &Arc<CudaStream>,
    workspace: &mut Option<CudaSlice<u8>>,
    bytes: usize,
) -> Result<(), Error> {
    let have = workspace.as_ref().map_or(0, |w| w.len());
    if bytes > have {
        // Release the old buffer first so both never need to fit at once.
        *workspace = None;
        // cuDNN never reads workspace contents it did not write: no zeroing needed.
        *workspace = Some(unsafe { stream.alloc::<u8>(bytes) }?);
    }
    Ok(())
}

/// Measures every algorithm whose workspace fits [`WORKSPACE_CAP_BYTES`] on the real
/// buffers and returns the fastest that succeeded, with the math type it ran in.
unsafe fn find_algorithm(
    handle: sys::cudnnHandle_t,
    stream: &Arc<CudaStream>,
    workspace: &mut Option<CudaSlice<u8>>,
    plan: &Plan,
    shape: &ConvShape,
    b: &Buffers,
    allow_tf32: bool,
) -> Result<Choice, Error> {
    // The workspace the measurement may use: the largest need under the cap.
    let mut need = 0usize;
    for algo in ALGOS {
        // Unsupported algorithms report an error status here; they are skipped.
        if let Ok(bytes) =
            result::get_convolution_forward_workspace_size(handle, plan.x, plan.w, plan.conv, plan.y, algo)
        {
            if bytes <= WORKSPACE_CAP_BYTES {
                need = need.max(bytes);
            }
        }
    }
    ensure_workspace(stream, workspace, need)?;
    let ws_len = workspace.as_ref().map_or(0, |w| w.len());
    let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; ALGOS.len()] = std::mem::zeroed();
    let mut returned: c_int = 0;
    {
        let (ws_ptr, _guard) = match workspace.as_mut() {
            Some(ws) if ws_len > 0 => {
                let (p, g) = ws.device_ptr_mut(stream);
                (p as *mut c_void, Some(g))
            }
            _ => (std::ptr::null_mut(), None),
        };
        sys::cudnnFindConvolutionForwardAlgorithmEx(
            handle,
            plan.x,
            b.x as *const c_void,
            plan.w,
            b.w as *const c_void,
            plan.conv,
            plan.y,
            b.y as *mut c_void,
            ALGOS.len() as c_int,
            &mut returned,
            perf.as_mut_ptr(),
            ws_ptr,
            ws_len,
        )
        .result()
        .at("find forward algorithm")?;
    }
    // Results come sorted by time; the first successful one that fits is the fastest.
    let returned = (returned.max(0) as usize).min(perf.len());
    let best = perf[..returned]
        .iter()
        .find(|p| p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && p.memory <= ws_len)
        .ok_or(Error::NoAlgorithm(*shape))?;
    // Run in the math type the measurement used (as torch does), unless f32 must stay strict.
    let strict_f32 = shape.dtype == ElemType::F32 && !allow_tf32;
    let math = if strict_f32 { sys::cudnnMathType_t::CUDNN_FMA_MATH } else { best.mathType };
    result::set_convolution_math_type(plan.conv, math).at("math type")?;
    Ok(Choice { algo: best.algo, math, time_ms: best.time, workspace_bytes: best.memory, candidates: returned })
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
}
