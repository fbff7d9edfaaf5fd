//! cuDNN forward convolution, called directly, with everything that does not depend on the
//! data done once per shape.
//!
//! Why not candle's `cudnn` feature: candle 0.11.1 runs cuDNN's heuristic algorithm picker and
//! allocates and zeroes a fresh workspace on every call (≈3–5 ms a call in f16 at batch 1,
//! more than the convolution itself). Here, as torch does in benchmark mode:
//! - the first call at a plan key ([`ConvShape`]: geometry, dtype, buffer alignment) builds
//!   the descriptors and *measures* every algorithm that fits the workspace cap
//!   (`cudnnFindConvolutionForwardAlgorithmEx`), and the fastest acceptable one is kept with
//!   its descriptors for the life of the [`Engine`] (strict f32 accepts only exact
//!   algorithms: `plan::eligible`);
//! - an out-of-memory during the measurement retries with a quarter of the cap, then with no
//!   workspace (`plan::workspace_caps`);
//! - one workspace buffer is reused; after each measurement it shrinks to the largest need
//!   of the chosen algorithms (`plan::retained_workspace`), not the measurement's peak;
//! - one engine per device and stream, shared by every thread behind a mutex (the caller
//!   keeps it), its handle bound once to the stream candle computes on. candle's default
//!   stream is per thread, so each call first makes the caller's stream wait for the
//!   previous call's event: the shared workspace is never used by two streams at once.
//!
//! Numerics (mirroring torch's defaults): f16/bf16 accumulate in f32 with tensor cores
//! allowed; f32 allows TF32 tensor-core math (`allow_tf32`, torch's
//! `torch.backends.cudnn.allow_tf32 = True`), otherwise strict FMA math with exact
//! algorithms only.
//!
//! This file only knows cudarc (raw device addresses in, raw device addresses out); the
//! candle side (storages, layouts, dtype dispatch) is in `conv/cuda_op.rs`, the decisions
//! that need no GPU in `conv/plan.rs`.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::sync::Arc;

use cudarc::cudnn::result::{self, CudnnError};
use cudarc::cudnn::sys;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtrMut, DriverError};

use super::plan::{self, Algo, Measured};
pub use super::plan::{ConvShape, ElemType, WORKSPACE_CAP_BYTES};

fn data_type(e: ElemType) -> sys::cudnnDataType_t {
    match e {
        ElemType::F32 => sys::cudnnDataType_t::CUDNN_DATA_FLOAT,
        ElemType::F16 => sys::cudnnDataType_t::CUDNN_DATA_HALF,
        ElemType::BF16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
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
            Error::NoAlgorithm(s) => write!(f, "cuDNN found no acceptable forward algorithm for {s:?}"),
            Error::OutputMismatch { ours, cudnn } => {
                write!(f, "cuDNN output size {cudnn:?} differs from the expected {ours:?}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    /// A failed allocation, by the driver or inside cuDNN: worth retrying with less workspace.
    pub fn is_out_of_memory(&self) -> bool {
        match self {
            Error::Cudnn(_, e) => plan::cudnn_status_is_out_of_memory(e.0 as u32),
            Error::Driver(e) => e.0 as u32 == plan::DRIVER_OUT_OF_MEMORY,
            _ => false,
        }
    }
}

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
        let dt = data_type(s.dtype);
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

/// Every forward algorithm cuDNN 9 enumerates, indexed by [`Algo`]'s value.
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

fn sys_algo(a: Algo) -> sys::cudnnConvolutionFwdAlgo_t {
    ALGOS[a as usize]
}

/// `None` for a value this build does not know (never chosen).
fn algo_of(a: sys::cudnnConvolutionFwdAlgo_t) -> Option<Algo> {
    Algo::ALL.into_iter().find(|x| *x as u32 == a as u32)
}

/// Device addresses of one call's buffers (contiguous NCHW, already at their offsets).
#[derive(Debug, Clone, Copy)]
pub struct Buffers {
    pub x: u64,
    pub w: u64,
    pub bias: Option<u64>,
    /// `ConvShape::out_len` elements; not read (beta = 0), fully written.
    pub y: u64,
}

/// A cuDNN handle bound to one stream, its plan cache and its workspace; shared by the
/// threads of a device behind a mutex (see the module note).
pub struct Engine {
    handle: sys::cudnnHandle_t,
    stream: Arc<CudaStream>,
    plans: HashMap<ConvShape, Plan>,
    workspace: Option<CudaSlice<u8>>,
    /// Recorded after every call's last kernel; the next call's stream waits for it.
    last_use: Option<CudaEvent>,
    allow_tf32: bool,
}

// SAFETY: cuDNN allows a handle (and its descriptors) to be used from any host thread as long
// as no two threads use it at once; the engine is only reached through a mutex, and every
// call orders its stream after the previous call's work (`last_use`).
unsafe impl Send for Engine {}

impl Engine {
    pub fn new(stream: Arc<CudaStream>, allow_tf32: bool) -> Result<Self, Error> {
        stream.context().bind_to_thread()?;
        let handle = result::create_handle().at("create handle")?;
        // Own the handle before anything else can fail, so that drop destroys it.
        let engine = Self { handle, stream, plans: HashMap::new(), workspace: None, last_use: None, allow_tf32 };
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
    /// bias: c_out, y: `shape.out_len()`), at `shape.align`, used by no other stream until
    /// this work is done.
    pub unsafe fn forward(&mut self, shape: &ConvShape, b: &Buffers) -> Result<bool, Error> {
        self.stream.context().bind_to_thread()?;
        if let Some(event) = &self.last_use {
            // The previous call may have run on another thread's stream.
            self.stream.wait(event)?;
        }
        let measured = !self.plans.contains_key(shape);
        if measured {
            let mut plan = Plan::describe(shape, self.allow_tf32)?;
            plan.choice = Some(self.search(&plan, shape, b)?);
            self.plans.insert(*shape, plan);
            let keep =
                plan::retained_workspace(self.plans.values().filter_map(|p| Some(p.choice.as_ref()?.workspace_bytes)));
            shrink_workspace(&self.stream, &mut self.workspace, keep)?;
        }
        let Self { handle, stream, plans, workspace, .. } = self;
        let plan = plans.get(shape).expect("inserted above");
        let choice = plan.choice.as_ref().expect("set when inserted");
        grow_workspace(stream, workspace, choice.workspace_bytes)?;
        run(*handle, stream, workspace, plan, choice, b)?;
        self.record_use()?;
        Ok(measured)
    }

    fn record_use(&mut self) -> Result<(), Error> {
        if self.last_use.is_none() {
            self.last_use = Some(self.stream.context().new_event(None)?);
        }
        self.last_use.as_ref().expect("set above").record(&self.stream)?;
        Ok(())
    }

    /// Measures the algorithms at the largest workspace cap that can be allocated and returns
    /// the fastest acceptable one, with the math type it ran in.
    unsafe fn search(&mut self, plan: &Plan, shape: &ConvShape, b: &Buffers) -> Result<Choice, Error> {
        let strict_f32 = shape.dtype == ElemType::F32 && !self.allow_tf32;
        // Unsupported algorithms report an error status here; they are left out.
        let sizes: Vec<(Algo, usize)> = Algo::ALL
            .into_iter()
            .filter_map(|a| {
                let got = result::get_convolution_forward_workspace_size(
                    self.handle,
                    plan.x,
                    plan.w,
                    plan.conv,
                    plan.y,
                    sys_algo(a),
                );
                Some((a, got.ok()?))
            })
            .collect();
        let mut out_of_memory = None;
        for (attempt, cap) in plan::workspace_caps(WORKSPACE_CAP_BYTES).into_iter().enumerate() {
            let need = plan::measurement_workspace(&sizes, cap, strict_f32);
            // First try: keep a larger buffer other plans use; retries: release down to `need`.
            let sized = if attempt == 0 {
                grow_workspace(&self.stream, &mut self.workspace, need)
            } else {
                fit_workspace(&self.stream, &mut self.workspace, need)
            };
            let measured = sized.and_then(|()| measure(self.handle, &self.stream, &mut self.workspace, plan, b));
            let (perf, ws_len) = match measured {
                Err(e) if e.is_out_of_memory() => {
                    tracing::warn!(?shape, workspace_cap = cap, error = %e, "cuDNN algorithm search out of memory; retrying with less workspace");
                    out_of_memory = Some(e);
                    continue;
                }
                other => other?,
            };
            let results: Vec<Measured> = perf.iter().filter_map(measured_of).collect();
            let Some(best) = plan::pick(&results, ws_len, strict_f32) else {
                // A smaller cap only removes candidates.
                return Err(Error::NoAlgorithm(*shape));
            };
            let raw = perf.iter().find(|p| algo_of(p.algo) == Some(results[best].algo)).expect("same list");
            // Run in the math type the measurement used (as torch does), unless f32 must stay strict.
            let math = if strict_f32 { sys::cudnnMathType_t::CUDNN_FMA_MATH } else { raw.mathType };
            result::set_convolution_math_type(plan.conv, math).at("math type")?;
            return Ok(Choice {
                algo: raw.algo,
                math,
                time_ms: raw.time,
                workspace_bytes: raw.memory,
                candidates: perf.len(),
            });
        }
        Err(out_of_memory.unwrap_or(Error::NoAlgorithm(*shape)))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Descriptors first, then the handle; the workspace frees itself on its stream.
        self.plans.clear();
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// A measurement result as `plan` sees it (`None` for an algorithm this build does not know).
fn measured_of(p: &sys::cudnnConvolutionFwdAlgoPerf_t) -> Option<Measured> {
    Some(Measured {
        algo: algo_of(p.algo)?,
        ok: p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS,
        time_ms: p.time,
        workspace_bytes: p.memory,
    })
}

/// The workspace pointer and length a cuDNN call may use, with the guard that records the use.
fn workspace_arg<'a>(
    stream: &'a Arc<CudaStream>,
    workspace: &'a mut Option<CudaSlice<u8>>,
    bytes: usize,
) -> (*mut c_void, Option<cudarc::driver::SyncOnDrop<'a>>) {
    match workspace.as_mut() {
        Some(ws) if bytes > 0 => {
            let (p, g) = ws.device_ptr_mut(stream);
            (p as *mut c_void, Some(g))
        }
        _ => (std::ptr::null_mut(), None),
    }
}

/// The convolution and the bias add of a planned shape.
unsafe fn run(
    handle: sys::cudnnHandle_t,
    stream: &Arc<CudaStream>,
    workspace: &mut Option<CudaSlice<u8>>,
    plan: &Plan,
    choice: &Choice,
    b: &Buffers,
) -> Result<(), Error> {
    let (one, zero) = (1f32, 0f32);
    let (ws_ptr, _ws_guard) = workspace_arg(stream, workspace, choice.workspace_bytes);
    result::convolution_forward(
        handle,
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
            handle,
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
    Ok(())
}

/// Grows the shared workspace to at least `bytes`.
fn grow_workspace(stream: &Arc<CudaStream>, workspace: &mut Option<CudaSlice<u8>>, bytes: usize) -> Result<(), Error> {
    let have = workspace.as_ref().map_or(0, |w| w.len());
    if bytes > have {
        fit_workspace(stream, workspace, bytes)?;
    }
    Ok(())
}

/// Shrinks the shared workspace to `bytes` when it holds more.
fn shrink_workspace(
    stream: &Arc<CudaStream>,
    workspace: &mut Option<CudaSlice<u8>>,
    bytes: usize,
) -> Result<(), Error> {
    let have = workspace.as_ref().map_or(0, |w| w.len());
    if bytes < have {
        fit_workspace(stream, workspace, bytes)?;
    }
    Ok(())
}

/// Replaces the shared workspace by one of exactly `bytes` (none for 0).
fn fit_workspace(stream: &Arc<CudaStream>, workspace: &mut Option<CudaSlice<u8>>, bytes: usize) -> Result<(), Error> {
    if workspace.as_ref().map_or(0, |w| w.len()) == bytes {
        return Ok(());
    }
    // Release the old buffer first (freed in stream order) so both never need to fit at once.
    *workspace = None;
    if bytes > 0 {
        // cuDNN never reads workspace contents it did not write: no zeroing needed.
        *workspace = Some(unsafe { stream.alloc::<u8>(bytes) }?);
    }
    Ok(())
}

/// `cudnnFindConvolutionForwardAlgorithmEx` on the real buffers with the workspace held now:
/// the results (sorted by time) and the workspace length they were given.
unsafe fn measure(
    handle: sys::cudnnHandle_t,
    stream: &Arc<CudaStream>,
    workspace: &mut Option<CudaSlice<u8>>,
    plan: &Plan,
    b: &Buffers,
) -> Result<(Vec<sys::cudnnConvolutionFwdAlgoPerf_t>, usize), Error> {
    let ws_len = workspace.as_ref().map_or(0, |w| w.len());
    let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; ALGOS.len()] = std::mem::zeroed();
    let mut returned: c_int = 0;
    let (ws_ptr, _guard) = workspace_arg(stream, workspace, ws_len);
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
    let returned = (returned.max(0) as usize).min(perf.len());
    Ok((perf[..returned].to_vec(), ws_len))
}
