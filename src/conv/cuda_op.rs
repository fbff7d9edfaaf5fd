//! The candle side of the cuDNN path: a custom op that takes candle's CUDA storages, hands
//! their device addresses to the device's [`Engine`] and wraps the output back as a tensor.
//!
//! Engines (a cuDNN handle, its plan cache and workspace) live in one process-wide map keyed
//! by (device ordinal, stream), each behind a mutex: one per device for candle's default
//! stream, however many threads convolve on it (a workspace per thread could take gigabytes
//! of a 24 GB card on a 16-core host). The engine orders each call after the previous one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{bail, CpuStorage, CudaStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};

use super::cudnn::{Buffers, Choice, ConvShape, ElemType, Engine};
use super::{plan, Conv2dConfig};

type SharedEngine = Arc<Mutex<Engine>>;

/// The engine of `stream`'s device and stream, created on first use.
fn engine_for(stream: &Arc<CudaStream>) -> Result<SharedEngine> {
    static ENGINES: OnceLock<Mutex<HashMap<(usize, usize), SharedEngine>>> = OnceLock::new();
    let key = (stream.context().ordinal(), stream.cu_stream() as usize);
    let mut engines = ENGINES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(e) = engines.get(&key) {
        return Ok(e.clone());
    }
    let engine = Arc::new(Mutex::new(Engine::new(stream.clone(), allow_tf32()).map_err(candle_core::Error::wrap)?));
    engines.insert(key, engine.clone());
    Ok(engine)
}

fn with_engine<R>(stream: &Arc<CudaStream>, f: impl FnOnce(&mut Engine) -> Result<R>) -> Result<R> {
    let engine = engine_for(stream)?;
    // A panic mid-call leaves descriptors and the workspace consistent: keep using it.
    let mut guard = engine.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}

/// Whether f32 convolutions may use TF32 tensor cores (torch's default); `LUMEN_CUDNN_TF32=0`
/// makes them strict f32.
pub fn allow_tf32() -> bool {
    static TF32: OnceLock<bool> = OnceLock::new();
    *TF32.get_or_init(|| std::env::var("LUMEN_CUDNN_TF32").map_or(true, |v| v != "0"))
}

pub fn describe() -> String {
    let v = Engine::version();
    format!(
        "cuDNN {}.{}.{} (algorithm measured once per shape and cached, one engine and workspace per device, NCHW; f32 {})",
        v / 10000,
        (v / 100) % 100,
        v % 100,
        if allow_tf32() { "with TF32 tensor cores allowed" } else { "strict, TF32 off, exact algorithms only" }
    )
}

/// The algorithm the device's engine chose for a convolution of `x` by `weight`, once it ran.
pub fn chosen(x: &Tensor, weight: &Tensor, bias: bool, cfg: &Conv2dConfig) -> Result<Option<Choice>> {
    let candle_core::Device::Cuda(dev) = x.device() else { return Ok(None) };
    // `conv2d` makes non-contiguous operands contiguous (a fresh, aligned buffer) first.
    let offset = |t: &Tensor| if t.is_contiguous() { byte_offset(t) } else { 0 };
    let Some(shape) = conv_shape(x, weight, bias, cfg, plan::alignment(&[offset(x), offset(weight)]))? else {
        return Ok(None);
    };
    with_engine(&dev.cuda_stream(), |e| Ok(e.choice(&shape).cloned()))
}

fn elem_type(dtype: DType) -> Option<ElemType> {
    match dtype {
        DType::F32 => Some(ElemType::F32),
        DType::F16 => Some(ElemType::F16),
        DType::BF16 => Some(ElemType::BF16),
        _ => None,
    }
}

/// The cuDNN geometry of this call at buffer alignment `align` (bytes), or `None` where
/// cuDNN is not used (other dtypes, sizes past its 32-bit descriptors): candle's
/// convolution runs instead.
fn conv_shape(x: &Tensor, weight: &Tensor, bias: bool, cfg: &Conv2dConfig, align: usize) -> Result<Option<ConvShape>> {
    let (batch, c_in, h, w) = x.dims4()?;
    let (c_out, c_in_g, k_h, k_w) = weight.dims4()?;
    if c_in_g * cfg.groups != c_in {
        bail!("conv2d: input has {c_in} channels, weight expects {c_in_g} × {} groups", cfg.groups);
    }
    let Some(dtype) = elem_type(x.dtype()).filter(|_| weight.dtype() == x.dtype()) else { return Ok(None) };
    let shape = ConvShape {
        batch,
        c_in,
        h,
        w,
        c_out,
        k_h,
        k_w,
        padding: cfg.padding,
        stride: cfg.stride,
        dilation: cfg.dilation,
        groups: cfg.groups,
        dtype,
        bias,
        align,
    };
    Ok(shape.fits().then_some(shape))
}

/// Byte offset of a contiguous tensor's first element in its buffer.
fn byte_offset(t: &Tensor) -> usize {
    t.layout().start_offset() * t.dtype().size_in_bytes()
}

/// y = conv(x, weight) + bias through cuDNN; `None` when this call is left to candle.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, cfg: &Conv2dConfig) -> Result<Option<Tensor>> {
    // cuDNN is given dense NCHW buffers; `contiguous` is free when they already are.
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let bias = bias.map(|b| b.contiguous()).transpose()?;
    let mut offsets = vec![byte_offset(&x), byte_offset(&weight)];
    offsets.extend(bias.as_ref().map(byte_offset));
    let Some(shape) = conv_shape(&x, &weight, bias.is_some(), cfg, plan::alignment(&offsets))? else {
        return Ok(None);
    };
    let op = CudnnConv { shape };
    let y = match &bias {
        Some(b) => {
            if b.dims1()? != shape.c_out || b.dtype() != x.dtype() {
                bail!("conv2d: bias {:?} {:?} for {} output channels", b.dims(), b.dtype(), shape.c_out);
            }
            x.apply_op3_no_bwd(&weight, b, &op)?
        }
        None => x.apply_op2_no_bwd(&weight, &op)?,
    };
    Ok(Some(y))
}

struct CudnnConv {
    shape: ConvShape,
}

impl CudnnConv {
    fn run(
        &self,
        x: (&CudaStorage, &Layout),
        w: (&CudaStorage, &Layout),
        b: Option<(&CudaStorage, &Layout)>,
    ) -> Result<(CudaStorage, Shape)> {
        let s = &self.shape;
        let dense = |l: &Layout, dims: &[usize]| l.is_contiguous() && l.dims() == dims;
        let w_dims = [s.c_out, s.c_in / s.groups, s.k_h, s.k_w];
        if !dense(x.1, &[s.batch, s.c_in, s.h, s.w])
            || !dense(w.1, &w_dims)
            || b.is_some_and(|(_, l)| !dense(l, &[s.c_out]))
            || b.is_some() != s.bias
        {
            bail!("cudnn conv2d: operands do not match {s:?} as dense NCHW");
        }
        match s.dtype {
            ElemType::F32 => launch::<f32>(s, x, w, b),
            ElemType::F16 => launch::<half::f16>(s, x, w, b),
            ElemType::BF16 => launch::<half::bf16>(s, x, w, b),
        }
    }
}

fn launch<T: candle_core::cuda::CudaDType + DeviceRepr>(
    s: &ConvShape,
    (x, xl): (&CudaStorage, &Layout),
    (w, wl): (&CudaStorage, &Layout),
    b: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device.clone();
    let stream = dev.cuda_stream();
    let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
    let ws = w.as_cuda_slice::<T>()?.slice(wl.start_offset()..);
    let bs = match b {
        Some((b, bl)) => Some(b.as_cuda_slice::<T>()?.slice(bl.start_offset()..)),
        None => None,
    };
    if xs.len() < xl.shape().elem_count() || ws.len() < wl.shape().elem_count() {
        bail!("cudnn conv2d: storage shorter than its layout");
    }
    let out_len = s.out_len();
    // Not zeroed: cuDNN writes every output element (beta = 0).
    let mut y = unsafe { dev.alloc::<T>(out_len) }?;
    {
        let (xp, _xg) = xs.device_ptr(&stream);
        let (wp, _wg) = ws.device_ptr(&stream);
        let bp = bs.as_ref().map(|b| b.device_ptr(&stream));
        let (yp, _yg) = y.device_ptr_mut(&stream);
        let bufs = Buffers { x: xp, w: wp, bias: bp.as_ref().map(|(p, _)| *p), y: yp };
        // Safety: every address is a live allocation of candle's device, on the engine's
        // stream, with the element type and counts of `s` (checked above and by the layouts).
        with_engine(&stream, |engine| {
            let measured = unsafe { engine.forward(s, &bufs) };
            measured.map_err(candle_core::Error::wrap)
        })?;
    }
    let (ho, wo) = s.out_hw();
    Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((s.batch, s.c_out, ho, wo))))
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        "cudnn-conv2d"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("cudnn-conv2d runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, w: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        self.run((x, xl), (w, wl), None)
    }
}

impl CustomOp3 for CudnnConv {
    fn name(&self) -> &'static str {
        "cudnn-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("cudnn-conv2d runs on CUDA tensors only")
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        w: &CudaStorage,
        wl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.run((x, xl), (w, wl), Some((b, bl)))
    }
}
