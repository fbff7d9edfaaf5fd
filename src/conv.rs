//! The one 2-D convolution every convolution network calls (SDXL UNet and VAE, BriaRMBG).
//!
//! Why one entry point: those three networks spend most of their time in convolutions, and
//! how a convolution runs is a device concern, not a model concern (as for
//! [`crate::attention`]). Models build a [`Conv2d`] (same constructor and checkpoint paths as
//! candle-nn's) and call `forward`; this module picks the implementation:
//!
//! - CPU, and CUDA in a build without the `cudnn` feature: candle's own conv2d (im2col +
//!   GEMM), unchanged, so the CPU goldens are bit-for-bit what they were.
//! - CUDA with the `cudnn` feature: cuDNN called directly (`cudnn`): the algorithm is
//!   measured once per (shape, dtype, alignment) and cached, one engine and workspace per
//!   device (shrunk to the chosen algorithms' need), the handle runs on candle's stream. f32
//!   convolutions may use TF32 tensor cores, as torch allows by default;
//!   `LUMEN_CUDNN_TF32=0` turns that off and accepts exact algorithms only. Layout stays
//!   NCHW (docs/convolution.md says why). The decisions that need no GPU are in [`plan`].
//!
//! Which path runs is logged once per process, on the first CUDA convolution.
//!
//! [`GroupNorm`] (with the SiLU that follows it fused in) lives here too: after the
//! convolutions, it is what the same networks spend their time on.

#[cfg(feature = "cudnn")]
mod cuda_op;
#[cfg(feature = "cudnn")]
pub mod cudnn;
mod group_norm;
// The cuDNN path's decisions as plain functions: tested on the CPU, used by cuDNN builds.
#[cfg_attr(not(feature = "cudnn"), allow(dead_code))]
pub mod plan;

pub use group_norm::{group_norm, group_norm_reference, GroupNorm};

use std::sync::Once;

use candle_core::{Module, Result, Tensor};
pub use candle_nn::Conv2dConfig;
use candle_nn::{BatchNorm, VarBuilder};

/// A 2-D convolution layer (weight (c_out, c_in / groups, k, k), optional bias (c_out)).
#[derive(Debug, Clone)]
pub struct Conv2d {
    inner: candle_nn::Conv2d,
}

/// Reads `weight` and `bias` under `vb`, as `candle_nn::conv2d` does.
pub fn conv2d(c_in: usize, c_out: usize, kernel: usize, cfg: Conv2dConfig, vb: VarBuilder) -> Result<Conv2d> {
    Ok(Conv2d { inner: candle_nn::conv2d(c_in, c_out, kernel, cfg, vb)? })
}

impl Conv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, cfg: Conv2dConfig) -> Self {
        Self { inner: candle_nn::Conv2d::new(weight, bias, cfg) }
    }

    /// Folds an inference-mode BatchNorm that follows this convolution into its weight and bias.
    pub fn absorb_bn(&self, bn: &BatchNorm) -> Result<Self> {
        Ok(Self { inner: self.inner.absorb_bn(bn)? })
    }

    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }

    pub fn config(&self) -> &Conv2dConfig {
        self.inner.config()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cuda() {
            announce_path();
            #[cfg(feature = "cudnn")]
            if let Some(y) = cuda_op::conv2d(x, self.weight(), self.bias(), self.config())? {
                return Ok(y);
            }
        }
        self.inner.forward(x)
    }
}

/// candle's own convolution (im2col + GEMM on CUDA), whatever the build: the reference the
/// cuDNN path is checked against.
pub fn conv2d_im2col(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, cfg: Conv2dConfig) -> Result<Tensor> {
    candle_nn::Conv2d::new(weight.clone(), bias.cloned(), cfg).forward(x)
}

/// Whether f32 convolutions on CUDA may use TF32 tensor cores (cuDNN builds; on by default as
/// in torch, `LUMEN_CUDNN_TF32=0` turns it off). Always false where cuDNN is not used.
pub fn tf32_allowed() -> bool {
    #[cfg(feature = "cudnn")]
    {
        cuda_op::allow_tf32()
    }
    #[cfg(not(feature = "cudnn"))]
    {
        false
    }
}

/// The implementation CUDA convolutions use in this build, in words.
pub fn cuda_path() -> String {
    #[cfg(feature = "cudnn")]
    {
        cuda_op::describe()
    }
    #[cfg(not(feature = "cudnn"))]
    {
        "candle im2col + GEMM (this build has no cuDNN; build with --features cudnn)".to_string()
    }
}

/// The cuDNN algorithm the device's engine chose for a convolution of `x` by `weight`, in words, once
/// it has run (`None` on other paths).
pub fn chosen_algorithm(x: &Tensor, weight: &Tensor, bias: bool, cfg: &Conv2dConfig) -> Result<Option<String>> {
    #[cfg(feature = "cudnn")]
    {
        Ok(cuda_op::chosen(x, weight, bias, cfg)?.map(|c| {
            format!(
                "{:?}, {:?}, workspace {:.1} MiB, cuDNN-measured {:.3} ms ({} candidates)",
                c.algo,
                c.math,
                c.workspace_bytes as f64 / (1u64 << 20) as f64,
                c.time_ms,
                c.candidates
            )
        }))
    }
    #[cfg(not(feature = "cudnn"))]
    {
        let _ = (x, weight, bias, cfg);
        Ok(None)
    }
}

fn announce_path() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| tracing::info!("conv2d on CUDA: {}", cuda_path()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, ModuleT};

    /// The layer is candle-nn's convolution on the CPU, bias and BatchNorm folding included.
    #[test]
    fn matches_candle_nn_on_cpu() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new(7);
        let mut t = |shape: &[usize]| {
            let n = shape.iter().product();
            Tensor::from_vec(rng.normal_vec(n), shape, &dev).unwrap()
        };
        let (x, w, b) = (t(&[2, 6, 9, 11]), t(&[4, 3, 3, 3]), t(&[4]));
        let cfg = Conv2dConfig { padding: 2, stride: 2, dilation: 2, groups: 2, ..Default::default() };
        let ours = Conv2d::new(w.clone(), Some(b.clone()), cfg).forward(&x).unwrap();
        let theirs = candle_nn::Conv2d::new(w.clone(), Some(b.clone()), cfg).forward(&x).unwrap();
        assert_eq!(ours.dims(), &[2, 4, 5, 6]);
        let diff: f32 = (ours - &theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert_eq!(diff, 0.0);

        let var = (t(&[4]).abs().unwrap() + 0.5).unwrap();
        let bn = candle_nn::BatchNorm::new(4, t(&[4]), var, t(&[4]), t(&[4]), 1e-5).unwrap();
        let folded = Conv2d::new(w, Some(b), cfg).absorb_bn(&bn).unwrap();
        let unfolded = bn.forward_t(&theirs, false).unwrap();
        let diff: f32 = (folded.forward(&x).unwrap() - unfolded)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar()
            .unwrap();
        println!("conv + folded BatchNorm vs conv then BatchNorm: max abs diff {diff:.2e} (tol 1e-4)");
        assert!(diff < 1e-4);
    }
}
