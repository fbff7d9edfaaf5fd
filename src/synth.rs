//! Synthetic deterministic weights: the goldens' rule (`goldens/README.md`).
//!
//! Real checkpoints cannot be downloaded where lumen is built and tested, so every
//! model port is proven against outputs of the reference code run with weights
//! that are a pure function of each tensor's name and shape. This module
//! regenerates those weights and writes them as a safetensors file under the
//! checkpoint's real tensor names, so tests and benchmarks load them through the
//! same loader that reads a real checkpoint.

use std::path::Path;

use anyhow::{Context, Result};
use safetensors::tensor::{Dtype as StDtype, TensorView};

use crate::rng::{fnv1a64, splitmix64};

/// The synthetic values of tensor `name` with `shape`, in f64 (round to the dtype afterwards).
pub fn synth_values(name: &str, shape: &[usize]) -> Vec<f64> {
    let numel: usize = shape.iter().product();
    let rule = Rule::new(name, shape);
    (0..numel as u64).map(|i| rule.value(i)).collect()
}

/// [`synth_values`] rounded to f32, generated in parallel chunks (released-size benches
/// generate billions of values). Same values as `synth_values(..) as f32`.
pub fn synth_values_f32(name: &str, shape: &[usize]) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 20;
    let numel: usize = shape.iter().product();
    if numel <= CHUNK {
        return synth_values(name, shape).into_iter().map(|v| v as f32).collect();
    }
    // Each value depends on the element index and the tensor's constants only.
    let rule = Rule::new(name, shape);
    let mut out = vec![0f32; numel];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| {
        let base = (c * CHUNK) as u64;
        for (j, v) in chunk.iter_mut().enumerate() {
            *v = rule.value(base + j as u64) as f32;
        }
    });
    out
}

/// The per-tensor constants of the synthetic rule.
struct Rule {
    seed: u64,
    kind: Kind,
    fan_in: f64,
}

#[derive(Clone, Copy)]
enum Kind {
    Zero,
    RunningVar,
    RunningMean,
    Scale,
    Bias,
    Matrix,
}

impl Rule {
    fn new(name: &str, shape: &[usize]) -> Self {
        let numel: usize = shape.iter().product();
        let rank = shape.len();
        let is_scale = rank == 1 && (name.ends_with("weight") || name.ends_with("gamma") || name.ends_with("scale"));
        let kind = if name.ends_with("num_batches_tracked") {
            Kind::Zero
        } else if name.ends_with("running_var") {
            Kind::RunningVar
        } else if name.ends_with("running_mean") {
            Kind::RunningMean
        } else if is_scale {
            Kind::Scale
        } else if rank <= 1 {
            Kind::Bias
        } else {
            Kind::Matrix
        };
        let fan_in = if rank >= 2 { (numel / shape[0]) as f64 } else { 1.0 };
        Self { seed: fnv1a64(name.as_bytes()), kind, fan_in }
    }

    fn value(&self, i: u64) -> f64 {
        let h = splitmix64(self.seed ^ i);
        let u = (h >> 11) as f64 * (2f64).powi(-53);
        let v = 2.0 * u - 1.0;
        match self.kind {
            Kind::Zero => 0.0,
            Kind::RunningVar => 1.0 + 0.5 * u,
            Kind::RunningMean => 0.1 * v,
            Kind::Scale => 1.0 + 0.1 * v,
            Kind::Bias => 0.1 * v,
            Kind::Matrix => v / self.fan_in.sqrt(),
        }
    }
}

/// Serves every tensor a model asks for from the synthetic rule, straight into memory: a
/// released-size checkpoint (13 GB of f32 for SDXL) is never written to disk. Values are
/// made in f32 on the CPU, rounded to the requested dtype there, then moved to the device.
struct SynthBackend;

impl candle_nn::var_builder::SimpleBackend for SynthBackend {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: candle_core::DType,
        dev: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let vals = synth_values_f32(name, s.dims());
        candle_core::Tensor::from_vec(vals, s, &candle_core::Device::Cpu)?.to_dtype(dtype)?.to_device(dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _: candle_core::DType,
        _: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("synthetic weights need a shape for {name}")
    }

    /// Every tensor exists under its current name; the legacy aliases some loaders probe
    /// for (SDXL VAE `query/key/value`, DINOv2's `dinov2.` prefix) do not.
    fn contains_tensor(&self, name: &str) -> bool {
        !(name.ends_with("query.weight") || name.starts_with("dinov2."))
    }
}

/// A `VarBuilder` whose every tensor comes from the synthetic rule (benchmarks at released
/// sizes; the models load through their normal constructors).
pub fn synth_var_builder(dtype: candle_core::DType, device: &candle_core::Device) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(SynthBackend), dtype, device.clone())
}

/// One tensor of a synthetic checkpoint: name, shape, and dtype as the manifests spell it
/// (`float32`, `F32`, `float16`, `int64`, ...).
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

impl TensorSpec {
    pub fn f32(name: impl Into<String>, shape: &[usize]) -> Self {
        Self { name: name.into(), shape: shape.to_vec(), dtype: "float32".into() }
    }

    /// Parses a manifest entry `{"name", "shape", "dtype"}`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let name = v["name"].as_str().context("tensor entry without name")?.to_string();
        let shape = v["shape"]
            .as_array()
            .with_context(|| format!("tensor {name}: no shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize).context("bad dimension"))
            .collect::<Result<Vec<_>>>()?;
        let dtype = v["dtype"].as_str().unwrap_or("float32").to_string();
        Ok(Self { name, shape, dtype })
    }
}

fn encode(spec: &TensorSpec, dtype_override: Option<StDtype>) -> Result<(StDtype, Vec<u8>)> {
    let vals = synth_values(&spec.name, &spec.shape);
    let declared = match spec.dtype.to_ascii_lowercase().as_str() {
        "float32" | "f32" | "torch.float32" => StDtype::F32,
        "float16" | "f16" | "torch.float16" => StDtype::F16,
        "bfloat16" | "bf16" | "torch.bfloat16" => StDtype::BF16,
        "int64" | "i64" | "torch.int64" => StDtype::I64,
        other => anyhow::bail!("tensor {}: unsupported dtype {other}", spec.name),
    };
    // Integer tensors keep their dtype; float ones may be written at another precision.
    let dtype = match (declared, dtype_override) {
        (StDtype::I64, _) => StDtype::I64,
        (_, Some(d)) => d,
        (d, None) => d,
    };
    let bytes = match dtype {
        StDtype::F32 => vals.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        StDtype::F16 => vals.iter().flat_map(|&x| half::f16::from_f64(x).to_le_bytes()).collect(),
        StDtype::BF16 => vals.iter().flat_map(|&x| half::bf16::from_f64(x).to_le_bytes()).collect(),
        StDtype::I64 => vals.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect(),
        _ => unreachable!(),
    };
    Ok((dtype, bytes))
}

/// Writes a safetensors file holding every tensor of `specs` filled by the synthetic rule.
/// `dtype` forces float tensors to one precision (f16 checkpoints for GPU benches), else
/// each keeps the manifest's dtype.
pub fn write_synthetic_safetensors(specs: &[TensorSpec], dtype: Option<StDtype>, path: &Path) -> Result<()> {
    let encoded = specs.iter().map(|s| encode(s, dtype)).collect::<Result<Vec<_>>>()?;
    let views = specs
        .iter()
        .zip(&encoded)
        .map(|(s, (dt, bytes))| Ok((s.name.clone(), TensorView::new(*dt, s.shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    safetensors::serialize_to_file(views, None, path)
        .with_context(|| format!("writing synthetic weights to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four self-check values printed by the goldens' reference implementation.
    #[test]
    #[allow(clippy::excessive_precision)] // the reference's values as Python printed them
    fn matches_reference_self_check_values() {
        let cases: [(&str, &[usize], &[f32]); 4] = [
            (
                "a.weight",
                &[2, 3],
                &[
                    0.1969132125377655,
                    -0.18787968158721924,
                    -0.5051071643829346,
                    0.5074935555458069,
                    -0.5213378667831421,
                    -0.5450031161308289,
                ],
            ),
            ("b.bias", &[3], &[0.045288797467947006, -0.02597496658563614, 0.012674887664616108]),
            ("n.running_var", &[2], &[1.282861351966858, 1.4580398797988892]),
            ("ln.weight", &[2], &[1.0172375440597534, 0.9299784302711487]),
        ];
        for (name, shape, want) in cases {
            let got: Vec<f32> = synth_values(name, shape).iter().map(|&x| x as f32).collect();
            assert_eq!(got, want, "{name}");
        }
        assert_eq!(synth_values("bn.num_batches_tracked", &[]), vec![0.0]);
    }

    /// The parallel f32 path gives the sequential rule's values, across chunk boundaries.
    #[test]
    fn parallel_f32_matches_rule() {
        for (name, shape) in [("big.weight", vec![3, 700_001]), ("big.bias", vec![2_100_003]), ("s.weight", vec![5])] {
            let seq: Vec<f32> = synth_values(name, &shape).into_iter().map(|v| v as f32).collect();
            assert_eq!(synth_values_f32(name, &shape), seq, "{name}");
        }
    }
}
