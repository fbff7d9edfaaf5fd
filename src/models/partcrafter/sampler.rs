//! The guided rectified-flow sampling loop (the denoising part of `PartCrafterPipeline`).
//!
//! Per step: DiT on [uncond rows ; cond rows] (the same latents twice; unconditional
//! conditioning is all zeros, not the embedding of a blank image), guided velocity
//! u + g·(c − u), Euler step. Guidance ≤ 1 runs the conditional rows only.
//!
//! Randomness: the initial latents come from lumen's seeded [`Rng`] (xoshiro256**, Box–Muller),
//! stream `"partcrafter.noise"`, drawn part-major (part, token, channel). torch's generator
//! cannot be reproduced and need not be; goldens inject the reference noise instead.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

use super::dit::{PartCrafterDit, PartIds};
use super::scheduler::{RectifiedFlowScheduler, Schedule};
use crate::rng::Rng;

/// Upstream script limit on parts (32 embeddings, doubled ids under CFG).
pub const MAX_PARTS: usize = 16;

#[derive(Debug, Clone)]
pub struct SamplerOptions {
    /// Denoising steps (`--steps`, default 50).
    pub steps: usize,
    /// Classifier-free guidance scale (`--guidance`, default 7.0); ≤ 1 disables CFG.
    pub guidance: f64,
    /// Latent tokens per part (`--tokens`, default 1024).
    pub tokens: usize,
    /// Seed of the initial noise.
    pub seed: u64,
    pub part_ids: PartIds,
}

impl Default for SamplerOptions {
    fn default() -> Self {
        Self { steps: 50, guidance: 7.0, tokens: 1024, seed: 0, part_ids: PartIds::Batch }
    }
}

/// Everything a golden test compares: the schedule, what the DiT saw and returned, and the
/// latents after every step.
#[derive(Debug, Default)]
pub struct SamplerTrace {
    pub schedule: Option<Schedule>,
    pub dit_timesteps: Vec<Tensor>,
    pub dit_out: Vec<Tensor>,
    pub latents: Vec<Tensor>,
}

/// Standard-normal initial latents (N, tokens, channels) in f32 from lumen's RNG.
pub fn initial_noise(seed: u64, parts: usize, tokens: usize, channels: usize, device: &Device) -> Result<Tensor> {
    let mut rng = Rng::derive(seed, "partcrafter.noise");
    let data = rng.normal_vec(parts * tokens * channels);
    Ok(Tensor::from_vec(data, (parts, tokens, channels), device)?)
}

/// Runs the loop. `image_embeds`: (N, M, C) conditional image tokens (one row per part, or
/// one row broadcast to all N); `noise`: (N, T, in_channels). Returns the final latents
/// (N, T, in_channels) in f32.
#[allow(clippy::too_many_arguments)]
pub fn sample(
    dit: &PartCrafterDit,
    scheduler: &RectifiedFlowScheduler,
    image_embeds: &Tensor,
    noise: &Tensor,
    steps: usize,
    guidance: f64,
    part_ids: PartIds,
    mut trace: Option<&mut SamplerTrace>,
) -> Result<Tensor> {
    let (n, _tokens, _c) = noise.dims3()?;
    if n == 0 || n > MAX_PARTS {
        bail!("--parts must be between 1 and {MAX_PARTS}, got {n}");
    }
    let (en, m, cd) = image_embeds.dims3()?;
    let embeds = match en {
        e if e == n => image_embeds.clone(),
        1 => image_embeds.broadcast_as((n, m, cd))?.contiguous()?,
        e => bail!("{e} image-embedding rows for {n} parts"),
    };
    let dtype = dit.dtype();
    let cfg = guidance > 1.0;
    let cond = if cfg { Tensor::cat(&[&embeds.zeros_like()?, &embeds], 0)? } else { embeds }.to_dtype(dtype)?;
    let rows = if cfg { 2 * n } else { n };

    let cond = dit.prepare_cond(&cond, n)?;
    let schedule = scheduler.schedule(steps)?;
    if let Some(tr) = trace.as_deref_mut() {
        tr.schedule = Some(schedule.clone());
    }
    let mut x = noise.to_dtype(DType::F32)?;
    // Every step's timestep goes to the device once, before the loop: no per-step transfer.
    let all_t = Tensor::new(&schedule.timesteps[..steps], x.device())?;
    for i in 0..steps {
        let t = all_t.narrow(0, i, 1)?.broadcast_as(rows)?.contiguous()?;
        let x_in = if cfg { Tensor::cat(&[&x, &x], 0)? } else { x.clone() };
        let v_all = dit.forward_cached(&x_in.to_dtype(dtype)?, &t, &cond, part_ids, None)?;
        let v_all = v_all.to_dtype(DType::F32)?;
        let v = if cfg {
            let u = v_all.narrow(0, 0, n)?;
            let c = v_all.narrow(0, n, n)?;
            (&u + ((c - &u)? * guidance)?)?
        } else {
            v_all.clone()
        };
        // Sign quirk: x + (σ_i − σ_{i+1})·v (see scheduler.rs).
        x = (x + (v * schedule.delta(i) as f64)?)?;
        // Latents live in the model dtype between steps, as upstream (f16 there).
        x = x.to_dtype(dtype)?.to_dtype(DType::F32)?;
        if let Some(tr) = trace.as_deref_mut() {
            tr.dit_timesteps.push(t);
            tr.dit_out.push(v_all);
            tr.latents.push(x.clone());
        }
    }
    Ok(x)
}
