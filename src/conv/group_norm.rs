//! GroupNorm, optionally fused with the SiLU that follows it, for the convolution networks.
//!
//! Why here: once convolutions run on cuDNN, the SDXL VAE decoder at 512² is dominated by the
//! memory traffic of the ops between them (docs/convolution.md), and candle's GroupNorm is
//! about ten passes over the activation (reshape, cast, mean, subtract, square, mean, divide,
//! cast, scale, shift), plus two for the SiLU. On CUDA this layer runs `src/cuda/groupnorm.cu`
//! instead: two reads and one write, statistics in f32. On the CPU it is candle's GroupNorm
//! (and candle's SiLU) unchanged, so CPU numerics and goldens do not move.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// GroupNorm over (N, C, ...) with a per-channel affine, as `torch.nn.GroupNorm`.
#[derive(Debug, Clone)]
// The parameters are read again only by the CUDA kernel.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

/// Reads `weight` and `bias` under `vb`, as `candle_nn::group_norm` does.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    GroupNorm::new(weight, bias, channels, groups, eps)
}

impl GroupNorm {
    pub fn new(weight: Tensor, bias: Tensor, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        let inner = candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?;
        Ok(Self { inner, weight, bias, groups, eps })
    }

    /// silu(group_norm(x)).
    pub fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            if let Some(y) = cuda::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu)? {
                return Ok(y);
            }
        }
        let y = self.inner.forward(x)?;
        if silu {
            candle_nn::ops::silu(&y)
        } else {
            Ok(y)
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, false)
    }
}

/// The same computation by candle's ops on any device: the reference the CUDA kernel is
/// checked against (`lumen bench conv --check`).
pub fn group_norm_reference(x: &Tensor, norm: &GroupNorm, silu: bool) -> Result<Tensor> {
    let y = norm.inner.forward(x)?;
    if silu {
        candle_nn::ops::silu(&y)
    } else {
        Ok(y)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda::CudaDType;
    use candle_core::{bail, CpuStorage, CudaStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
    use cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};

    use crate::cuda::ptx::GROUPNORM_PTX;

    const MODULE: &str = "lumen_groupnorm";
    /// Must equal GN_THREADS in groupnorm.cu.
    const THREADS: u32 = 256;
    /// CUDA's limit on gridDim.y, which indexes (n, group) and (n, channel).
    const MAX_GRID_Y: usize = 65_535;

    /// The fused kernel, or `None` where it does not apply (other dtypes, grids past CUDA's
    /// limits): candle's ops run instead.
    pub fn group_norm(
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Result<Option<Tensor>> {
        let dims = x.dims();
        if dims.len() < 3 || !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            return Ok(None);
        }
        let (n, c) = (dims[0], dims[1]);
        let hw: usize = dims[2..].iter().product();
        if groups == 0 || c % groups != 0 || weight.dims() != [c] || bias.dims() != [c] {
            bail!("group_norm: {groups} groups, weight {:?}, bias {:?} for input {dims:?}", weight.dims(), bias.dims());
        }
        if n * c > MAX_GRID_Y || hw == 0 || weight.dtype() != x.dtype() || bias.dtype() != x.dtype() {
            return Ok(None);
        }
        let op = GroupNormOp { groups, eps: eps as f32, silu };
        let y = x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)?;
        Ok(Some(y))
    }

    struct GroupNormOp {
        groups: usize,
        eps: f32,
        silu: bool,
    }

    impl CustomOp3 for GroupNormOp {
        fn name(&self) -> &'static str {
            "lumen-group-norm"
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
            bail!("lumen-group-norm runs on CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            g: &CudaStorage,
            gl: &Layout,
            b: &CudaStorage,
            bl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            if !xl.is_contiguous() || !gl.is_contiguous() || !bl.is_contiguous() {
                bail!("lumen-group-norm: operands must be contiguous");
            }
            match x.dtype() {
                DType::F32 => self.launch::<f32>("f32", (x, xl), (g, gl), (b, bl)),
                DType::F16 => self.launch::<half::f16>("f16", (x, xl), (g, gl), (b, bl)),
                DType::BF16 => self.launch::<half::bf16>("bf16", (x, xl), (g, gl), (b, bl)),
                other => bail!("lumen-group-norm: unsupported dtype {other:?}"),
            }
        }
    }

    impl GroupNormOp {
        fn launch<T: CudaDType + DeviceRepr>(
            &self,
            suffix: &str,
            (x, xl): (&CudaStorage, &Layout),
            (g, gl): (&CudaStorage, &Layout),
            (b, bl): (&CudaStorage, &Layout),
        ) -> Result<(CudaStorage, Shape)> {
            let dims = xl.dims();
            let (n, c) = (dims[0], dims[1]);
            let hw: usize = dims[2..].iter().product();
            let total = n * c * hw;
            let cpg = c / self.groups;
            let num_groups = n * self.groups;
            let group_len = cpg * hw;

            let dev = x.device.clone();
            let xs = x.as_cuda_slice::<T>()?.slice(xl.start_offset()..);
            let gs = g.as_cuda_slice::<T>()?.slice(gl.start_offset()..);
            let bs = b.as_cuda_slice::<T>()?.slice(bl.start_offset()..);
            if xs.len() < total || gs.len() < c || bs.len() < c {
                bail!("lumen-group-norm: storage shorter than its layout");
            }
            // Enough chunks per group to fill the GPU (≈16 elements a thread), at most 256.
            let chunks = (group_len / (THREADS as usize * 16)).clamp(1, 256);
            // Every element of these three buffers is written by the kernels before it is read.
            let mut partial = unsafe { dev.alloc::<f32>(num_groups * chunks * 3) }?;
            let mut stats = unsafe { dev.alloc::<f32>(num_groups * 2) }?;
            let mut y = unsafe { dev.alloc::<T>(total) }?;
            let err = |e: cudarc::driver::DriverError| candle_core::Error::wrap(e);
            let (group_len_i, chunks_i, num_groups_i, eps) =
                (group_len as i64, chunks as i32, num_groups as i64, self.eps);
            let (hw_i, c_i, cpg_i, silu_i) = (hw as i64, c as i64, cpg as i64, self.silu as i32);
            {
                let f = dev.get_or_load_custom_func(&format!("gn_partial_{suffix}"), MODULE, GROUPNORM_PTX)?;
                let mut args = f.builder();
                args.arg(&xs).arg(&mut partial).arg(&group_len_i).arg(&chunks_i);
                let cfg = LaunchConfig {
                    grid_dim: (chunks as u32, num_groups as u32, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                unsafe { args.launch(cfg) }.map_err(err)?;
            }
            {
                let f = dev.get_or_load_custom_func("gn_finalize", MODULE, GROUPNORM_PTX)?;
                let mut args = f.builder();
                args.arg(&partial).arg(&mut stats).arg(&num_groups_i).arg(&chunks_i).arg(&eps);
                let cfg = LaunchConfig {
                    grid_dim: (num_groups.div_ceil(128) as u32, 1, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                unsafe { args.launch(cfg) }.map_err(err)?;
            }
            {
                let f = dev.get_or_load_custom_func(&format!("gn_apply_{suffix}"), MODULE, GROUPNORM_PTX)?;
                let mut args = f.builder();
                args.arg(&xs).arg(&gs).arg(&bs).arg(&stats).arg(&mut y);
                args.arg(&hw_i).arg(&c_i).arg(&cpg_i).arg(&silu_i);
                // About four elements a thread along each (n, c) plane.
                let blocks_x = hw.div_ceil(THREADS as usize * 4).clamp(1, 65_535);
                let cfg = LaunchConfig {
                    grid_dim: (blocks_x as u32, (n * c) as u32, 1),
                    block_dim: (THREADS, 1, 1),
                    shared_mem_bytes: 0,
                };
                unsafe { args.launch(cfg) }.map_err(err)?;
            }
            // The scratch buffers are freed on the stream, after the kernels that use them.
            drop((partial, stats));
            Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from(dims)))
        }
    }
}
