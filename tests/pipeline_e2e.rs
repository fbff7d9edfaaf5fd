//! The `partcrafter` pipeline end to end through the real binary, on a `--weights` folder of
//! synthetic checkpoints: the goldens' tiny SDXL and PartCrafter configurations and the
//! fixed-size BriaRMBG, all written under the real checkpoints' tensor names and layouts.
//! Random weights draw noise, so this proves the wiring (every stage loads its weights through
//! the weights layer and runs for real, timings and model ids reach the asset), not the looks.

mod common;
mod support;

use lumen::asset::Asset;
use support::{lumen, stderr, stdout};

#[test]
fn partcrafter_pipeline_runs_every_stage_on_synthetic_weights() {
    let work = tempfile::tempdir().unwrap();
    let weights = work.path().join("weights");
    common::write_synthetic_weights(&weights);
    let tokens = common::component("partcrafter").1["config"]["pipeline_call"]["num_tokens"].to_string();
    let o = lumen()
        .current_dir(work.path())
        .args(["generate", "chair", "--weights", weights.to_str().unwrap(), "--parts", "3", "--steps", "2"])
        .args(["--tokens", &tokens, "--extract-depth", "5", "--cpu", "--keep-images", "--json", "--store", "out"])
        .output()
        .unwrap();
    println!("{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let r = &v["results"][0];
    assert_eq!(r["status"], "created");
    assert_eq!(r["pipeline"], "partcrafter");
    let shapes: Vec<_> = std::fs::read_dir(work.path().join("out/shapes")).unwrap().collect();
    assert_eq!(shapes.len(), 1);
    let (asset, points) = Asset::decode(&std::fs::read(shapes[0].as_ref().unwrap().path()).unwrap()).unwrap();
    assert_eq!(points.positions.len(), 2048);
    assert!(asset.part_names.len() + asset.dropped_parts.len() == 3, "{:?}", asset.dropped_parts);
    let ids: Vec<&str> = asset.pipeline.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["stabilityai/sdxl-turbo", "briaai/RMBG-1.4", "wgsxm/PartCrafter"]);
    for stage in ["sdxl_text_encoders", "rmbg", "partcrafter_sample", "sdf_extract", "sampling"] {
        assert!(asset.timings_ms.keys().any(|k| k.starts_with(stage)), "no {stage} timing in {:?}", asset.timings_ms);
    }
    // The asset says where it was computed and in which precision; the log says it too.
    let settings = &asset.pipeline.settings;
    assert_eq!(settings["device"], "cpu", "{settings:?}");
    assert_eq!(settings["dtypes"]["sdxl_vae"], "f32", "{settings:?}");
    assert_eq!(settings["dtypes"]["partcrafter_sample"], "f32", "{settings:?}");
    assert!(stderr(&o).contains("device: CPU"), "{}", stderr(&o));
    for image in ["reference.png", "mask.png", "prepared.png"] {
        let path = work.path().join("out/images").join(&asset.key).join(image);
        assert!(path.is_file(), "{} missing", path.display());
    }

    // Preflight loads every stage and runs one tiny concept through them.
    let o = lumen()
        .current_dir(work.path())
        .args(["preflight", "--weights", weights.to_str().unwrap(), "--cpu", "--json", "--store", "out"])
        .args(["--catalog", concat!(env!("CARGO_MANIFEST_DIR"), "/concepts/top50.json")])
        .output()
        .unwrap();
    println!("{}", stdout(&o));
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let run = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "partcrafter tiny end-to-end run").unwrap();
    assert_eq!(run["status"], "ok", "{run}");
    let device = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "device").unwrap();
    assert_eq!(device["status"], "ok", "{device}");
    assert!(device["detail"].as_str().unwrap_or_default().contains("GEMM"), "{device}");
}
