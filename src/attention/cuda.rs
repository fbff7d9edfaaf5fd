//! CUDA launchers of `src/cuda/attention.cu` as candle custom ops: the fused flash kernel
//! and the safe path's scale-mask-softmax. Callers pass f16/bf16 tensors that are
//! contiguous and (for the fused kernel) 16-byte aligned; [`super::attention_with`] makes
//! them so.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{bail, CpuStorage, CudaDevice, CudaStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::plan::{self, Dims};
use crate::cuda::ptx::ATTENTION_PTX;

const MODULE: &str = "lumen_attention";
const LOG2_E: f64 = std::f64::consts::LOG2_E;

/// Compute capability of the device a tensor lives on.
pub fn compute_capability(t: &Tensor) -> Result<(i32, i32)> {
    match t.device() {
        candle_core::Device::Cuda(dev) => dev.cuda_stream().context().compute_capability().w(),
        _ => bail!("not a CUDA tensor"),
    }
}

/// softmax(q kᵀ · scale) v by the fused kernel; `poison` fills the output with NaN first.
pub fn fused(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, causal: bool, poison: bool) -> Result<Tensor> {
    q.apply_op3_no_bwd(k, v, &Fused { scale_log2: (scale * LOG2_E) as f32, causal, poison })
}

/// softmax(s · scale [+ causal mask]) over the last dim of a (b, h, len, lk) score block
/// whose first row is query `row0` of `lq`.
pub fn scaled_softmax(s: &Tensor, scale: f64, causal: bool, row0: usize, lq: usize, poison: bool) -> Result<Tensor> {
    s.apply_op1_no_bwd(&ScaledSoftmax { scale_log2: (scale * LOG2_E) as f32, causal, row0, lq, poison })
}

struct Fused {
    scale_log2: f32,
    causal: bool,
    poison: bool,
}

struct ScaledSoftmax {
    scale_log2: f32,
    causal: bool,
    row0: usize,
    lq: usize,
    poison: bool,
}

fn contiguous_range(l: &Layout, what: &str) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => bail!("attention: {what} must be contiguous"),
    }
}

fn i32_arg(x: usize, what: &str) -> Result<i32> {
    i32::try_from(x).map_err(|_| candle_core::Error::Msg(format!("attention: {what} {x} exceeds i32")))
}

/// Fills `out` with 0xFFFF halves: NaN in f16 and bf16 alike.
fn poison<T: DeviceRepr>(dev: &CudaDevice, out: &CudaSlice<T>, n: usize) -> Result<()> {
    let func = dev.get_or_load_custom_func("attn_fill_nan_u16", MODULE, ATTENTION_PTX)?;
    let n = n as u64;
    let cfg = LaunchConfig { grid_dim: (1024, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut b = func.builder();
    b.arg(out);
    b.arg(&n);
    // SAFETY: the kernel writes n u16 elements of a buffer of n halves.
    unsafe { b.launch(cfg) }.w()?;
    Ok(())
}

impl Fused {
    #[allow(clippy::too_many_arguments)]
    fn launch<T: DeviceRepr>(
        &self,
        dev: &CudaDevice,
        name: &str,
        s: &Dims,
        q: &CudaSlice<T>,
        q_at: std::ops::Range<usize>,
        k: &CudaSlice<T>,
        k_at: std::ops::Range<usize>,
        v: &CudaSlice<T>,
        v_at: std::ops::Range<usize>,
    ) -> Result<CudaSlice<T>> {
        for at in [&q_at, &k_at, &v_at] {
            if plan::needs_realign(at.start) {
                bail!("attention: fused kernel input at element offset {} is not 16-byte aligned", at.start);
            }
        }
        let n = s.b * s.h * s.lq * s.d;
        let func = dev.get_or_load_custom_func(name, MODULE, ATTENTION_PTX)?;
        // SAFETY: every element is written by the kernel (rows < lq, all d columns).
        let out = unsafe { dev.alloc::<T>(n)? };
        if self.poison {
            poison(dev, &out, n)?;
        }
        let (q, k, v) = (q.slice(q_at), k.slice(k_at), v.slice(v_at));
        let (lq, lk) = (i32_arg(s.lq, "query length")?, i32_arg(s.lk, "key length")?);
        let causal = self.causal as i32;
        let cfg = LaunchConfig {
            grid_dim: plan::fused_grid(s),
            block_dim: (plan::FUSED_THREADS, 1, 1),
            shared_mem_bytes: 0, // static: 2 tiles × 64 keys × (d + 8) halves ≤ 34 KiB
        };
        let mut b = func.builder();
        b.arg(&q);
        b.arg(&k);
        b.arg(&v);
        b.arg(&out);
        b.arg(&lq);
        b.arg(&lk);
        b.arg(&self.scale_log2);
        b.arg(&causal);
        // SAFETY: shapes and contiguity checked above; the kernel bounds-checks lq and lk.
        unsafe { b.launch(cfg) }.w()?;
        Ok(out)
    }
}

impl CustomOp3 for Fused {
    fn name(&self) -> &'static str {
        "lumen-fused-attention"
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
        bail!("the fused attention kernel runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, h, lq, d) = ql.shape().dims4()?;
        let (kb, kh, lk, kd) = kl.shape().dims4()?;
        if (kb, kh, kd) != (b, h, d) || vl.shape().dims4()? != (b, h, lk, d) {
            bail!("attention: q {:?}, k {:?}, v {:?} do not match", ql.shape(), kl.shape(), vl.shape());
        }
        let s = Dims { b, h, lq, lk, d, dv: d };
        let (qr, kr, vr) = (contiguous_range(ql, "q")?, contiguous_range(kl, "k")?, contiguous_range(vl, "v")?);
        let dev = qs.device().clone();
        let dtype = qs.dtype();
        let Some(name) = plan::fused_kernel(dtype, d) else {
            bail!("attention: no fused kernel for {dtype:?} head dim {d}")
        };
        let slice = match (&qs.slice, &ks.slice, &vs.slice) {
            (CudaStorageSlice::F16(q), CudaStorageSlice::F16(k), CudaStorageSlice::F16(v)) => {
                CudaStorageSlice::F16(self.launch(&dev, name, &s, q, qr, k, kr, v, vr)?)
            }
            (CudaStorageSlice::BF16(q), CudaStorageSlice::BF16(k), CudaStorageSlice::BF16(v)) => {
                CudaStorageSlice::BF16(self.launch(&dev, name, &s, q, qr, k, kr, v, vr)?)
            }
            _ => bail!("attention: fused kernel needs q, k, v all f16 or all bf16"),
        };
        Ok((CudaStorage { slice, device: dev }, Shape::from((b, h, lq, d))))
    }
}

impl ScaledSoftmax {
    fn launch<T: DeviceRepr>(
        &self,
        dev: &CudaDevice,
        name: &str,
        (rows, len, lk): (usize, usize, usize),
        s: &CudaSlice<T>,
        at: std::ops::Range<usize>,
    ) -> Result<CudaSlice<T>> {
        let func = dev.get_or_load_custom_func(name, MODULE, ATTENTION_PTX)?;
        // SAFETY: the kernel writes every element of every row.
        let out = unsafe { dev.alloc::<T>(rows * lk)? };
        if self.poison {
            poison(dev, &out, rows * lk)?;
        }
        let s = s.slice(at);
        let (len, lk, row0, lq) =
            (i32_arg(len, "block")?, i32_arg(lk, "key length")?, i32_arg(self.row0, "row")?, i32_arg(self.lq, "lq")?);
        let causal = self.causal as i32;
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(rows).map_err(|_| candle_core::Error::Msg("too many score rows".into()))?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = func.builder();
        b.arg(&s);
        b.arg(&out);
        b.arg(&len);
        b.arg(&lk);
        b.arg(&row0);
        b.arg(&lq);
        b.arg(&self.scale_log2);
        b.arg(&causal);
        // SAFETY: one block per row of a contiguous (rows, lk) buffer.
        unsafe { b.launch(cfg) }.w()?;
        Ok(out)
    }
}

impl CustomOp1 for ScaledSoftmax {
    fn name(&self) -> &'static str {
        "lumen-attention-softmax"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        bail!("the attention softmax kernel runs on CUDA only")
    }

    fn cuda_fwd(&self, st: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, h, len, lk) = l.shape().dims4()?;
        let at = contiguous_range(l, "scores")?;
        let dims = (b * h * len, len, lk);
        let dev = st.device().clone();
        let slice = match &st.slice {
            CudaStorageSlice::F16(s) => CudaStorageSlice::F16(self.launch(&dev, "attn_softmax_f16", dims, s, at)?),
            CudaStorageSlice::BF16(s) => CudaStorageSlice::BF16(self.launch(&dev, "attn_softmax_bf16", dims, s, at)?),
            _ => bail!("attention softmax takes f16 or bf16 scores"),
        };
        Ok((CudaStorage { slice, device: dev }, l.shape().clone()))
    }
}
