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

/// FNV-1a over the tensor name's UTF-8 bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The synthetic values of tensor `name` with `shape`, in f64 (round to the dtype afterwards).
pub fn synth_values(name: &str, shape: &[usize]) -> Vec<f64> {
    let numel: usize = shape.iter().product();
    let seed = fnv1a64(name.as_bytes());
    let rank = shape.len();
    let is_scale = rank == 1 && (name.ends_with("weight") || name.ends_with("gamma") || name.ends_with("scale"));
    let fan_in = if rank >= 2 { (numel / shape[0]) as f64 } else { 1.0 };
    (0..numel as u64)
        .map(|i| {
            let h = splitmix64(seed ^ i);
            let u = (h >> 11) as f64 * (2f64).powi(-53);
            let v = 2.0 * u - 1.0;
            if name.ends_with("num_batches_tracked") {
                0.0
            } else if name.ends_with("running_var") {
                1.0 + 0.5 * u
            } else if name.ends_with("running_mean") {
                0.1 * v
            } else if is_scale {
                1.0 + 0.1 * v
            } else if rank <= 1 {
                0.1 * v
            } else {
                v / fan_in.sqrt()
            }
        })
        .collect()
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
}
