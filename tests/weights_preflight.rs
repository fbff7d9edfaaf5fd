//! A damaged checkpoint through the real binary: `preflight` reads the safetensors headers
//! (no weights) and exits 3 naming the file or tensor and what to do; `generate` fails the
//! concept that needs the models with the same message and leaves what is stored untouched.
//! The `--weights` folder holds the goldens' tiny synthetic checkpoints in the released layout,
//! with one file damaged per case: missing, truncated, a wrong shape, a wrong dtype.

mod common;
mod support;

use std::path::Path;

use lumen::models::rmbg::{BriaRmbg, Config as RmbgConfig};
use lumen::synth::TensorSpec;
use support::{lumen, stderr, stdout};

fn preflight(work: &Path, weights: &Path) -> (Option<i32>, serde_json::Value) {
    let o = lumen()
        .current_dir(work)
        .args(["preflight", "--weights", weights.to_str().unwrap(), "--cpu", "--json", "--store", "out"])
        .args(["--catalog", concat!(env!("CARGO_MANIFEST_DIR"), "/concepts/top50.json")])
        .output()
        .unwrap();
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}{}", stdout(&o), stderr(&o))))
}

fn check<'a>(v: &'a serde_json::Value, prefix: &str) -> &'a serde_json::Value {
    v["checks"].as_array().unwrap().iter().find(|c| c["name"].as_str().unwrap().starts_with(prefix)).unwrap()
}

/// Rewrites `dir/file` with the tiny checkpoint's tensors, `edit` applied to them.
fn rewrite(dir: &Path, file: &str, mut specs: Vec<TensorSpec>, edit: impl FnOnce(&mut Vec<TensorSpec>)) {
    edit(&mut specs);
    common::write_synth(dir, file, &specs);
}

#[test]
fn preflight_names_the_damaged_file_or_tensor() {
    let (_, pc) = common::component("partcrafter");
    let dino = common::specs(&pc["tensors"]["image_encoder_dinov2"]["entries"]);
    type Damage = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Damage, Vec<&str>)> = vec![
        (
            "missing file",
            Box::new(|w: &Path| {
                std::fs::remove_file(w.join("sdxl-turbo/vae/diffusion_pytorch_model.safetensors")).unwrap()
            }),
            vec!["sdxl-turbo/vae/diffusion_pytorch_model.safetensors", "download stabilityai/sdxl-turbo again"],
        ),
        (
            "truncated file",
            Box::new(|w: &Path| {
                let f = w.join("PartCrafter/transformer/diffusion_pytorch_model.safetensors");
                let len = std::fs::metadata(&f).unwrap().len();
                std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(len - 100).unwrap();
            }),
            vec!["transformer/diffusion_pytorch_model.safetensors is truncated", "download wgsxm/PartCrafter again"],
        ),
        (
            "wrong shape",
            Box::new(|w: &Path| {
                rewrite(&w.join("RMBG-1.4"), "model.safetensors", BriaRmbg::tensor_specs(&RmbgConfig::default()), |s| {
                    s.iter_mut().find(|t| t.name == "side1.weight").unwrap().shape = vec![1, 64, 1, 1];
                })
            }),
            vec![
                "tensor side1.weight",
                "has shape [1, 64, 1, 1], the model expects [1, 64, 3, 3]",
                "download briaai/RMBG-1.4 again",
            ],
        ),
        (
            "wrong dtype",
            Box::new(move |w: &Path| {
                let dir = w.join("PartCrafter/image_encoder_dinov2");
                rewrite(&dir, "model.safetensors", dino.clone(), |s| {
                    s.iter_mut().find(|t| t.name.ends_with("layernorm.weight")).unwrap().dtype = "int64".into();
                })
            }),
            vec![
                "layernorm.weight",
                "has dtype I64, the model needs a float tensor",
                "image_encoder_dinov2/model.safetensors",
            ],
        ),
    ];
    for (what, damage, needles) in cases {
        let work = tempfile::tempdir().unwrap();
        let weights = work.path().join("weights");
        common::write_synthetic_weights(&weights);
        damage(&weights);
        let (code, v) = preflight(work.path(), &weights);
        let headers = check(&v, "partcrafter weights");
        println!("{what}: {}", headers["detail"]);
        assert_eq!(code, Some(3), "{what}: {v}");
        assert_eq!(headers["status"], "fail", "{what}");
        for n in needles {
            assert!(headers["detail"].as_str().unwrap().contains(n), "{what}: no {n:?} in {}", headers["detail"]);
        }
        assert_eq!(check(&v, "partcrafter pipeline")["status"], "skipped", "{what}: no load after bad headers");
    }
}

#[test]
fn generate_fails_the_concept_and_keeps_what_is_stored() {
    let work = tempfile::tempdir().unwrap();
    let weights = work.path().join("weights");
    common::write_synthetic_weights(&weights);
    let (code, v) = preflight(work.path(), &weights);
    assert_eq!(code, Some(0), "the undamaged tiny checkpoint passes: {v}");
    assert_eq!(check(&v, "partcrafter weights")["status"], "ok");
    println!("intact: {}", check(&v, "partcrafter weights")["detail"]);

    let gen = |args: &[&str]| {
        lumen().current_dir(work.path()).args(["generate", "--json", "--store", "out"]).args(args).output().unwrap()
    };
    let o = gen(&["table", "--pipeline", "procedural"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let shapes = work.path().join("out/shapes");
    let snapshot = || {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&shapes)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        files.sort();
        files
    };
    let before = snapshot();

    let dit = weights.join("PartCrafter/transformer/diffusion_pytorch_model.safetensors");
    let len = std::fs::metadata(&dit).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&dit).unwrap().set_len(len - 100).unwrap();
    let (code, v) = preflight(work.path(), &weights);
    assert_eq!(code, Some(3));
    let preflight_detail = check(&v, "partcrafter weights")["detail"].as_str().unwrap().to_string();

    let o = gen(&["chair", "table", "--weights", weights.to_str().unwrap(), "--cpu"]);
    println!("{}{}", stdout(&o), stderr(&o));
    assert_eq!(o.status.code(), Some(1), "a failed concept exits 1");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let chair = &v["results"][0];
    assert_eq!(chair["status"], "failed");
    let err = chair["error"].as_str().unwrap();
    assert!(err.contains(&preflight_detail), "generate says what preflight says:\n{err}\nvs\n{preflight_detail}");
    assert_eq!(v["results"][1]["status"], "exists", "the stored concept is still reported");
    assert_eq!(v["failed"], 1);
    assert_eq!(snapshot(), before, "stored assets untouched, no partial asset");
    let manifest = std::fs::read_to_string(work.path().join("out/manifest.json")).unwrap();
    assert!(manifest.contains("\"table\""), "{manifest}");
}
