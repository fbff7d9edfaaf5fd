//! Measured device memory of each stage on CUDA, beside the prediction: the stage is built
//! with synthetic weights at the released size (compute and memory do not depend on the
//! values) and run once; the numbers are the stream allocator's own counters (the default
//! memory pool's used bytes and its high watermark), so a transient inside a kernel sequence
//! is seen, not only what is live between calls.
//!
//! Why the pool counters and not `cuMemGetInfo`: free memory is a sample of the whole card
//! (other processes, the context, cached blocks), while every tensor candle and the cuDNN
//! workspace allocate goes through `cuMemAllocAsync` on the device's default pool.
//! What they miss: the CUDA context and library handles, cuBLAS's and cuDNN's own internal
//! allocations (the prediction adds an estimate for those at the pipeline level).

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};

use super::predict::Stage;
use crate::diagnostics::bench::partcrafter::COND_TOKENS;
use crate::diagnostics::bench::BenchOptions;
use crate::models::partcrafter::dit::{DitConfig, PartCrafterDit, PartIds};
use crate::models::partcrafter::vae::{CrossAttention, SdfDecoder, VaeConfig as SdfConfig, DECODE_CHUNK_CUDA};
use crate::synth::synth_var_builder;

/// One stage's measurement: the weights it left resident and the peak of its run above them.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub resident: u64,
    pub activations: u64,
    pub ms: f64,
}

impl Measured {
    pub fn peak(&self) -> u64 {
        self.resident + self.activations
    }
}

/// The device's default memory pool (the one `cuMemAllocAsync` uses).
struct Pool(cudarc::driver::sys::CUmemoryPool);

impl Pool {
    fn of(device: &Device) -> Result<Self> {
        use cudarc::driver::sys;
        let cuda = device.as_cuda_device()?;
        let stream = cuda.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: writes one pool handle for a valid device ordinal of the bound context.
        unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }.result()?;
        Ok(Pool(pool))
    }

    fn attribute(&self, attr: cudarc::driver::sys::CUmemPool_attribute) -> Result<u64> {
        let mut value = 0u64;
        // SAFETY: both attributes read here are cuuint64_t.
        unsafe { cudarc::driver::sys::cuMemPoolGetAttribute(self.0, attr, &mut value as *mut u64 as *mut _) }
            .result()?;
        Ok(value)
    }

    fn used(&self) -> Result<u64> {
        self.attribute(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    fn high(&self) -> Result<u64> {
        self.attribute(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }

    /// Restarts the high watermark at the current use.
    fn reset_high(&self) -> Result<()> {
        let mut zero = 0u64;
        let attr = cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        // SAFETY: the only value this attribute accepts is a cuuint64_t zero.
        unsafe { cudarc::driver::sys::cuMemPoolSetAttribute(self.0, attr, &mut zero as *mut u64 as *mut _) }
            .result()?;
        Ok(())
    }
}

/// Builds a stage (what stays resident is its weights) and runs it once (the peak above that).
fn stage<M>(
    device: &Device,
    build: impl FnOnce() -> Result<M>,
    run: impl FnOnce(&M) -> Result<()>,
) -> Result<Measured> {
    let pool = Pool::of(device)?;
    device.synchronize()?;
    let before = pool.used()?;
    let model = build()?;
    device.synchronize()?;
    let resident = pool.used()?.saturating_sub(before);
    let (activations, ms) = run_once(&pool, device, || run(&model))?;
    Ok(Measured { resident, activations, ms })
}

/// Peak bytes above the current use while `f` runs, and its time.
fn run_once(pool: &Pool, device: &Device, f: impl FnOnce() -> Result<()>) -> Result<(u64, f64)> {
    device.synchronize()?;
    let base = pool.used()?;
    pool.reset_high()?;
    let start = std::time::Instant::now();
    f()?;
    device.synchronize()?;
    Ok((pool.high()?.saturating_sub(base), start.elapsed().as_secs_f64() * 1e3))
}

fn randn(device: &Device, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Ok(Tensor::randn(0f32, 1f32, shape, device)?.to_dtype(dtype)?)
}

/// The stages other than the DiT, each built, run once and dropped (`skip`: stages left out).
pub fn stages(opts: &BenchOptions, skip: &[Stage]) -> Result<Vec<(Stage, Measured)>> {
    use crate::models::sdxl::{clip, unet, vae};
    let dev = &opts.device;
    let half = DType::F16;
    let mut out = Vec::new();
    for s in [Stage::TextEncoders, Stage::Unet, Stage::VaeDecode, Stage::Rmbg, Stage::Dinov2, Stage::SdfDecoding] {
        if skip.contains(&s) {
            continue;
        }
        tracing::info!(stage = s.name(), "measuring device memory");
        let m = match s {
            Stage::TextEncoders => {
                let (p1, p2) = crate::diagnostics::bench::sdxl::prompt_ids();
                let (ids1, ids2) = (clip::ids_tensor(&[p1], dev)?, clip::ids_tensor(&[p2], dev)?);
                let c1: clip::ClipTextConfig =
                    serde_json::from_str(crate::diagnostics::bench::sdxl::TEXT_ENCODER_CONFIG)?;
                let c2: clip::ClipTextConfig =
                    serde_json::from_str(crate::diagnostics::bench::sdxl::TEXT_ENCODER_2_CONFIG)?;
                let build = || -> Result<_> {
                    let te1 = clip::ClipTextModel::new(synth_var_builder(half, dev), &c1, false)?;
                    Ok((te1, clip::ClipTextModel::new(synth_var_builder(half, dev), &c2, true)?))
                };
                stage(dev, build, |(a, b)| Ok(a.forward(&ids1).and(b.forward(&ids2)).map(|_| ())?))?
            }
            Stage::Unet => {
                let cfg: unet::UNetConfig = serde_json::from_str(crate::diagnostics::bench::sdxl::UNET_CONFIG)?;
                let (context, embeds) = (randn(dev, &[1, 77, 2048], half)?, randn(dev, &[1, 1280], half)?);
                let time_ids = Tensor::new(&[[512f32, 512., 0., 0., 512., 512.]], dev)?.to_dtype(half)?;
                let x = randn(dev, &[1, 4, 64, 64], half)?;
                stage(
                    dev,
                    || Ok(unet::UNet::new(synth_var_builder(half, dev), &cfg)?),
                    |u| {
                        let added = unet::AddedCond { text_embeds: &embeds, time_ids: &time_ids };
                        Ok(u.forward(&x, 999.0, &context, Some(added)).map(|_| ())?)
                    },
                )?
            }
            Stage::VaeDecode => {
                let cfg: vae::VaeConfig = serde_json::from_str(crate::diagnostics::bench::sdxl::VAE_CONFIG)?;
                let z = randn(dev, &[1, 4, 64, 64], DType::F32)?;
                let build = || Ok(vae::VaeDecoder::new(synth_var_builder(DType::F32, dev), &cfg)?);
                stage(dev, build, |v| Ok(v.decode_latents(&z).map(|_| ())?))?
            }
            Stage::Rmbg => {
                let x = randn(dev, &[1, 3, 1024, 1024], DType::F32)?;
                stage(
                    dev,
                    || crate::diagnostics::bench::rmbg::synthetic_net(dev),
                    |n| Ok(n.forward_mask(&x).map(|_| ())?),
                )?
            }
            Stage::Dinov2 => {
                use crate::models::partcrafter::encoder::Dinov2Model;
                let cfg = super::predict::dinov2_config();
                let x = randn(dev, &[1, 3, 224, 224], half)?;
                let build = || Ok(Dinov2Model::new(synth_var_builder(half, dev), &cfg, Some((224, 224)))?);
                stage(dev, build, |m| Ok(m.forward(&x).map(|_| ())?))?
            }
            Stage::SdfDecoding => {
                let latents = randn(dev, &[1024, SdfConfig::released().latent_channels], DType::F32)?;
                let points: Vec<[f32; 3]> =
                    (0..DECODE_CHUNK_CUDA).map(|i| [(i % 97) as f32 / 97.0, (i % 89) as f32 / 89.0, 0.5]).collect();
                let build = || SdfDecoder::new(SdfConfig::released(), synth_var_builder(half, dev));
                stage(dev, build, |d: &SdfDecoder| {
                    let part = d.prepare(&latents)?;
                    d.decode_points(&part, &points, CrossAttention::Full).map(|_| ())
                })?
            }
            Stage::DitSampling => unreachable!("measured by dit()"),
        };
        out.push((s, m));
    }
    Ok(out)
}

/// The DiT built once, then one guided forward per part count (with the conditioning's K/V
/// computed first, as the sampling loop does): what each step of the loop holds.
pub fn dit(opts: &BenchOptions, parts: &[usize]) -> Result<Vec<(usize, Measured)>> {
    let dev = &opts.device;
    let pool = Pool::of(dev)?;
    let cfg = DitConfig::released();
    dev.synchronize()?;
    let before = pool.used()?;
    let dit = PartCrafterDit::new(synth_var_builder(DType::F16, dev), &cfg).context("synthetic DiT")?;
    dev.synchronize()?;
    let resident = pool.used()?.saturating_sub(before);
    let mut out = Vec::new();
    for &n in parts {
        tracing::info!(parts = n, "measuring DiT device memory");
        let embeds = randn(dev, &[n, COND_TOKENS, cfg.cross_attention_dim], DType::F16)?;
        let cond = Tensor::cat(&[&embeds.zeros_like()?, &embeds], 0)?;
        let x = randn(dev, &[2 * n, 1024, cfg.in_channels], DType::F16)?;
        let t = Tensor::full(500f32, 2 * n, dev)?;
        let (activations, ms) = run_once(&pool, dev, || {
            let cache = dit.prepare_cond(&cond, n)?;
            dit.forward_cached(&x, &t, &cache, PartIds::Batch, None)?;
            Ok(())
        })?;
        out.push((n, Measured { resident, activations, ms }));
    }
    Ok(out)
}
