//! TripoSG's `RectifiedFlowScheduler` as PartCrafter uses it (the pipeline's type hint names
//! `FlowMatchEulerDiscreteScheduler`, which is not what runs).
//!
//! σ_i = 1 − i/S (f64, shift map s·σ/(1 + (s−1)·σ), then f32), t_i = 1000·σ_i in f32,
//! σ_S = 0 appended. Step: x ← x + (σ_i − σ_{i+1})·v. **Sign quirk:** the model predicts
//! data − noise, so the update *adds* Δσ·v — the opposite of diffusers' flow-matching Euler.

use serde::Deserialize;

fn d_train() -> usize {
    1000
}
fn d_shift() -> f64 {
    1.0
}

/// `scheduler/scheduler_config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_shift")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// The timesteps handed to the DiT and the σ table (one longer, ending in 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
}

impl Schedule {
    /// σ_i − σ_{i+1} in f32, the factor of step i.
    pub fn delta(&self, i: usize) -> f32 {
        self.sigmas[i] - self.sigmas[i + 1]
    }
}

#[derive(Debug, Clone, Default)]
pub struct RectifiedFlowScheduler {
    pub config: SchedulerConfig,
}

impl RectifiedFlowScheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self { config }
    }

    pub fn schedule(&self, steps: usize) -> anyhow::Result<Schedule> {
        if steps == 0 {
            anyhow::bail!("the sampler needs at least one step");
        }
        if self.config.use_dynamic_shifting {
            anyhow::bail!("use_dynamic_shifting needs a resolution-dependent mu, which PartCrafter never passes");
        }
        let s = self.config.shift;
        let sigmas: Vec<f32> = (0..steps)
            .map(|i| {
                let sigma = 1.0 - i as f64 / steps as f64;
                (s * sigma / (1.0 + (s - 1.0) * sigma)) as f32
            })
            .chain(std::iter::once(0.0))
            .collect();
        let n = self.config.num_train_timesteps as f32;
        let timesteps = sigmas[..steps].iter().map(|&sg| sg * n).collect();
        Ok(Schedule { timesteps, sigmas })
    }
}
