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
    // Each model's licence is recorded; the quality object measured BriaRMBG's own mask.
    let licences: Vec<Option<&str>> = asset.pipeline.models.iter().map(|m| m.license.as_deref()).collect();
    assert_eq!(licences, [Some("sai-nc-community"), Some("bria-rmbg-1.4"), Some("mit")]);
    let q = asset.quality.as_ref().expect("a quality object");
    println!("quality of the synthetic-weight chair: {} {:?}", q.label(), q.signals);
    let mask = image::open(work.path().join("out/images").join(&asset.key).join("mask.png")).unwrap().to_luma8();
    let want = lumen::quality::mask_stats(&mask);
    assert_eq!(
        q.signals.mask,
        lumen::quality::MaskSignal::Measured { coverage: want.coverage, components: want.components }
    );
    assert_eq!((q.signals.parts_requested, q.signals.parts_produced + q.signals.parts_dropped), (3, 3));

    // Stale: nothing against the same flags; an older PartCrafter revision is named.
    std::fs::write(work.path().join("cat.json"), r#"[{"name": "chair", "parts": 3}]"#).unwrap();
    let model_flags = ["--weights", weights.to_str().unwrap(), "--tokens", &tokens, "--extract-depth", "5"];
    let stats = |steps: &str, extra: &[&str]| {
        let o = lumen()
            .current_dir(work.path())
            .args(["stats", "--json", "--store", "out", "--catalog", "cat.json", "--steps", steps])
            .args(model_flags)
            .args(extra)
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o)))
    };
    assert_eq!(stats("2", &[])["stale"]["count"], 0, "{}", stats("2", &[]));
    assert_eq!(stats("3", &[])["stale"]["reasons"]["steps 2, current 3"], 1);
    let path = shapes[0].as_ref().unwrap().path();
    let mut old = asset.clone();
    old.pipeline.models[2].revision = "0123456789abcdef0123456789abcdef01234567".into();
    std::fs::write(&path, old.to_json_bytes()).unwrap();
    let s = stats("2", &["--pipeline", "partcrafter"]);
    assert_eq!(
        s["stale"]["reasons"]["wgsxm/PartCrafter revision 0123456789abcdef0123456789abcdef01234567, current local"], 1,
        "{s}"
    );
    // pregenerate --stale regenerates it with the current revision.
    let o = lumen()
        .current_dir(work.path())
        .args(["pregenerate", "cat.json", "--stale", "--cpu", "--json", "--store", "out", "--steps", "2"])
        .args(model_flags)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["regenerated_stale"], 1, "{v}");
    let (fresh, _) = Asset::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(fresh.pipeline.models[2].revision, "local");

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
