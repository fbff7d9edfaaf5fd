//! Euler-ancestral sampler with trailing timestep spacing (diffusers'
//! `EulerAncestralDiscreteScheduler` as configured by SDXL Turbo).
//!
//! Own code rather than candle's because candle's trailing spacing uses an integer step
//! ratio (3 steps give 999, 666, 333, 0 instead of 999, 666, 332) and its `step` draws
//! its own noise, so ancestral noise could neither follow lumen's seeded [`Rng`] nor be
//! replayed against the goldens. Sigmas are kept in f64.
//!
//! [`Rng`]: crate::rng::Rng

use candle_core::{DType, Result, Tensor};
use serde::Deserialize;

fn d_train() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_schedule() -> String {
    "linear".into()
}
fn d_prediction() -> String {
    "epsilon".into()
}
fn d_spacing() -> String {
    "linspace".into()
}

/// `scheduler/scheduler_config.json` (diffusers keys, diffusers' defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_prediction")]
    pub prediction_type: String,
    #[serde(default = "d_spacing")]
    pub timestep_spacing: String,
    #[serde(default)]
    pub steps_offset: usize,
}

impl SchedulerConfig {
    /// SDXL Turbo's published scheduler configuration.
    pub fn sdxl_turbo() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            prediction_type: "epsilon".into(),
            timestep_spacing: "trailing".into(),
            steps_offset: 1,
        }
    }
}

/// The schedule for one sampling run of `n` steps.
#[derive(Debug, Clone)]
pub struct EulerAncestral {
    pub timesteps: Vec<f64>,
    /// n + 1 values, the last 0.
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
    prediction: Prediction,
}

#[derive(Debug, Clone, Copy)]
enum Prediction {
    Epsilon,
    VPrediction,
}

/// One step's result.
pub struct StepOutput {
    pub prev_sample: Tensor,
    pub pred_original_sample: Tensor,
}

impl EulerAncestral {
    pub fn new(cfg: &SchedulerConfig, steps: usize) -> Result<Self> {
        let n_train = cfg.num_train_timesteps;
        if steps == 0 || steps > n_train {
            candle_core::bail!("number of sampling steps must be in 1..={n_train}, got {steps}");
        }
        let betas: Vec<f64> = match cfg.beta_schedule.as_str() {
            "linear" => linspace(cfg.beta_start, cfg.beta_end, n_train),
            // SD's "scaled_linear": linear in sqrt(beta).
            "scaled_linear" => {
                linspace(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), n_train).into_iter().map(|b| b * b).collect()
            }
            other => candle_core::bail!("unsupported beta_schedule {other:?}"),
        };
        let mut acc = 1.0;
        let all_sigmas: Vec<f64> = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                ((1.0 - acc) / acc).sqrt()
            })
            .collect();
        let n = steps as f64;
        let last = (n_train - 1) as f64;
        let timesteps: Vec<f64> = match cfg.timestep_spacing.as_str() {
            "linspace" => linspace(0.0, last, steps).into_iter().rev().collect(),
            "leading" => {
                let ratio = (n_train / steps) as f64;
                (0..steps).rev().map(|i| (i as f64 * ratio).round() + cfg.steps_offset as f64).collect()
            }
            // np.round(np.arange(T, 0, -T/n)) - 1: a fractional ratio, so every n works.
            "trailing" => {
                let ratio = n_train as f64 / n;
                (0..steps).map(|i| round_half_even(n_train as f64 - i as f64 * ratio) - 1.0).collect()
            }
            other => candle_core::bail!("unsupported timestep_spacing {other:?}"),
        };
        // Sigmas at (possibly fractional) timesteps by linear interpolation, as np.interp.
        let mut sigmas: Vec<f64> = timesteps
            .iter()
            .map(|&t| {
                let t = t.clamp(0.0, last);
                let lo = t.floor() as usize;
                let hi = (lo + 1).min(n_train - 1);
                let w = t - lo as f64;
                all_sigmas[lo] * (1.0 - w) + all_sigmas[hi] * w
            })
            .collect();
        sigmas.push(0.0);
        let max_sigma = sigmas.iter().cloned().fold(0.0, f64::max);
        // Trailing/linspace spacing starts at the max sigma itself; others at √(σ²+1).
        let init_noise_sigma = if matches!(cfg.timestep_spacing.as_str(), "linspace" | "trailing") {
            max_sigma
        } else {
            (max_sigma * max_sigma + 1.0).sqrt()
        };
        let prediction = match cfg.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            other => candle_core::bail!("unsupported prediction_type {other:?}"),
        };
        Ok(Self { timesteps, sigmas, init_noise_sigma, prediction })
    }

    /// UNet input at step `i`: sample / √(σᵢ² + 1).
    pub fn scale_model_input(&self, sample: &Tensor, i: usize) -> Result<Tensor> {
        let s = self.sigmas[i];
        sample / (s * s + 1.0).sqrt()
    }

    /// One ancestral Euler step from σᵢ to σᵢ₊₁. `noise` is an N(0,1) tensor shaped like
    /// `sample`; it is scaled by σ_up, which is 0 on the last step.
    pub fn step(&self, model_output: &Tensor, i: usize, sample: &Tensor, noise: &Tensor) -> Result<StepOutput> {
        let dtype = sample.dtype();
        // diffusers upcasts to f32 for the step.
        let sample = sample.to_dtype(DType::F32)?;
        let model_output = model_output.to_dtype(DType::F32)?;
        let (sigma, sigma_to) = (self.sigmas[i], self.sigmas[i + 1]);
        let x0 = match self.prediction {
            Prediction::Epsilon => (&sample - (&model_output * sigma)?)?,
            Prediction::VPrediction => {
                let c = (sigma * sigma + 1.0).sqrt();
                ((&model_output * (-sigma / c))? + (&sample / (sigma * sigma + 1.0))?)?
            }
        };
        let sigma_up = (sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma)).sqrt();
        let sigma_down = (sigma_to * sigma_to - sigma_up * sigma_up).max(0.0).sqrt();
        let derivative = ((&sample - &x0)? / sigma)?;
        let mut prev = (&sample + (derivative * (sigma_down - sigma))?)?;
        if sigma_up > 0.0 {
            prev = (prev + (noise.to_dtype(DType::F32)? * sigma_up)?)?;
        }
        Ok(StepOutput { prev_sample: prev.to_dtype(dtype)?, pred_original_sample: x0.to_dtype(dtype)? })
    }
}

fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![a];
    }
    (0..n).map(|i| a + (b - a) * i as f64 / (n - 1) as f64).collect()
}

/// numpy's round: halves go to the even neighbour.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_timesteps_for_any_step_count() {
        let cfg = SchedulerConfig::sdxl_turbo();
        let t = |n| EulerAncestral::new(&cfg, n).unwrap().timesteps;
        assert_eq!(t(1), vec![999.0]);
        assert_eq!(t(2), vec![999.0, 499.0]);
        assert_eq!(t(3), vec![999.0, 666.0, 332.0]);
        assert_eq!(t(4), vec![999.0, 749.0, 499.0, 249.0]);
        let s = EulerAncestral::new(&cfg, 1).unwrap();
        assert!((s.sigmas[0] - 14.6146).abs() < 1e-3 && s.sigmas[1] == 0.0);
        assert_eq!(s.init_noise_sigma, s.sigmas[0]);
    }
}
