//! Helpers shared by the golden tests: finding the golden folder, loading recorded
//! tensors, comparing with relative L2, and writing synthetic checkpoints.
#![allow(dead_code)]

pub mod logs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use lumen::synth::{write_synthetic_safetensors, TensorSpec};

/// The golden folder: `LUMEN_GOLDENS` (golden sets made at other sizes), else the
/// repository's own copy in `tests/goldens`.
pub fn goldens_root() -> PathBuf {
    std::env::var_os("LUMEN_GOLDENS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens"))
}

/// The folder and parsed manifest of one golden component. A missing manifest fails the
/// test: the goldens ship with the repository, so absence is a broken checkout.
pub fn component(name: &str) -> (PathBuf, serde_json::Value) {
    let dir = goldens_root().join(name);
    let manifest = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("golden manifest {} unreadable: {e}", manifest.display()));
    (dir, serde_json::from_str(&text).expect("manifest.json is valid JSON"))
}

/// Every tensor of a golden safetensors file, on the CPU.
pub fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

/// A tensor's values as f64, row-major.
pub fn values_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// ‖got − want‖₂ / ‖want‖₂, computed in f64.
pub fn rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shape mismatch");
    let (g, w) = (values_f64(got), values_f64(want));
    let num: f64 = g.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = w.iter().map(|b| b * b).sum();
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

/// ‖got − want‖₂ / ‖want − mean(want)‖₂: relative to the signal's variation, for outputs
/// (masks) whose large mean would hide an error in plain relative L2.
pub fn centered_rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (values_f64(got), values_f64(want));
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    let num: f64 = g.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = w.iter().map(|b| (b - mean).powi(2)).sum();
    (num / den).sqrt()
}

/// Prints the measured error beside the tolerance and fails when it is exceeded.
pub fn check_close(label: &str, got: &Tensor, want: &Tensor, tol: f64) -> f64 {
    assert_eq!(got.dims(), want.dims(), "{label}: shape {:?} vs reference {:?}", got.dims(), want.dims());
    let err = rel_l2(got, want);
    let verdict = if err <= tol { "ok" } else { "FAIL" };
    println!("{label:<40} rel_l2 {err:.3e}  (tol {tol:.0e})  {verdict}");
    assert!(err <= tol, "{label}: rel_l2 {err:.3e} exceeds tolerance {tol:.0e}");
    err
}

/// The case named `name` of a manifest whose `cases` is a list of `{"name", ...}`.
pub fn case<'a>(manifest: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    manifest["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("case {name} not in manifest"))
}

/// Manifest tensor entries (`[{name, shape, dtype}]`) as specs.
pub fn specs(entries: &serde_json::Value) -> Vec<TensorSpec> {
    entries.as_array().expect("tensor list").iter().map(|e| TensorSpec::from_json(e).unwrap()).collect()
}

/// Writes `dir/file` with synthetic weights for `entries`, creating `dir`.
pub fn write_synth(dir: &Path, file: &str, entries: &[TensorSpec]) -> PathBuf {
    let path = dir.join(file);
    write_synthetic_safetensors(entries, None, &path).unwrap();
    path
}

/// Writes `v` as pretty JSON at `path`, creating its folder (checkpoint `config.json`s).
pub fn write_json(path: &Path, v: &serde_json::Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// A fresh temporary folder kept for the test's lifetime.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The PartCrafter repo at `root` in its hub layout (configs and synthetic weights of the
/// goldens' tiny configuration); `dtype` overrides the weights' dtype (the released files are
/// 16-bit).
pub fn write_partcrafter_repo(root: &Path, dtype: Option<safetensors::Dtype>) {
    let (_, pc) = component("partcrafter");
    for (folder, file, config_name) in [
        ("transformer", "diffusion_pytorch_model.safetensors", "config.json"),
        ("vae", "diffusion_pytorch_model.safetensors", "config.json"),
        ("image_encoder_dinov2", "model.safetensors", "config.json"),
        ("feature_extractor_dinov2", "", "preprocessor_config.json"),
        ("scheduler", "", "scheduler_config.json"),
    ] {
        write_json(&root.join(folder).join(config_name), &pc["config"][folder]);
        if !file.is_empty() {
            let entries = specs(&pc["tensors"][folder]["entries"]);
            write_synthetic_safetensors(&entries, dtype, &root.join(folder).join(file)).unwrap();
        }
    }
}

/// `DIR/sdxl-turbo`, `DIR/RMBG-1.4`, `DIR/PartCrafter` as `--weights DIR` expects them: tiny
/// SDXL and PartCrafter configurations, full-size BriaRMBG.
pub fn write_synthetic_weights(dir: &Path) {
    let (sdxl_dir, _) = component("sdxl");
    lumen::models::sdxl::synthetic::write_synthetic_repo(&sdxl_dir, &dir.join("sdxl-turbo")).unwrap();
    let rmbg = dir.join("RMBG-1.4");
    write_json(&rmbg.join("config.json"), &serde_json::json!({"in_ch": 3, "out_ch": 1}));
    let rmbg_specs = lumen::models::rmbg::BriaRmbg::tensor_specs(&lumen::models::rmbg::Config::default());
    write_synth(&rmbg, "model.safetensors", &rmbg_specs);
    write_partcrafter_repo(&dir.join("PartCrafter"), None);
}

/// An offline weights source that reads `dir` as a `--weights DIR` folder and nothing else.
pub fn local_weights(dir: &Path) -> lumen::weights::WeightsSource {
    lumen::weights::WeightsSource {
        weights_dir: Some(dir.to_path_buf()),
        cache_dir: dir.join("no-cache"),
        offline: true,
        revisions: Default::default(),
    }
}
