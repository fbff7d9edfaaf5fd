//! `lumen preflight --goldens DIR` through the real binary: every model's golden cases pass on
//! this machine's device, and a golden file with one output value changed makes it fail
//! (exit 3) on that case only.

mod support;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use support::{run_in, stderr, stdout, workdir};

fn goldens() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens")
}

fn preflight(dir: &Path, goldens: &Path, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let store = dir.join("store");
    let mut args = vec![
        "preflight",
        "--pipeline",
        "procedural",
        "--store",
        store.to_str().unwrap(),
        "--goldens",
        goldens.to_str().unwrap(),
        "--json",
        "--cpu",
    ];
    args.extend_from_slice(extra);
    let o = run_in(dir, &args);
    let v = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\n{}", stdout(&o), stderr(&o)));
    (o, v)
}

fn print_cases(report: &serde_json::Value) {
    for c in report["goldens"].as_array().unwrap() {
        let w = &c["worst"];
        println!(
            "{:<4} {:<12} {:<24} {:<4} {:<28} {:<16} {:.3e} (tol {:.1e})",
            if c["pass"].as_bool().unwrap() { "ok" } else { "FAIL" },
            c["component"].as_str().unwrap(),
            c["case"].as_str().unwrap(),
            c["dtype"].as_str().unwrap(),
            w["output"].as_str().unwrap(),
            w["metric"].as_str().unwrap(),
            w["error"].as_f64().unwrap(),
            w["tol"].as_f64().unwrap()
        );
    }
}

#[test]
fn preflight_goldens_pass_on_this_device() {
    let dir = workdir();
    let (o, report) = preflight(dir.path(), &goldens(), &[]);
    print_cases(&report);
    assert!(o.status.success(), "exit {:?}: {}", o.status.code(), stdout(&o));
    let cases = report["goldens"].as_array().unwrap();
    for component in ["sdxl", "rmbg", "partcrafter"] {
        assert!(cases.iter().any(|c| c["component"] == component), "{component} ran");
    }
    // 3 SDXL + 3 BriaRMBG + 5 PartCrafter cases in f32 (the CPU's only pipeline dtype).
    assert_eq!(cases.len(), 11);
    assert!(cases.iter().all(|c| c["pass"] == true && c["dtype"] == "f32"));
    let check = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "goldens f32 on cpu").unwrap();
    assert_eq!(check["status"], "ok");
}

/// A golden folder holding only SDXL, with one value of the VAE case's recorded image
/// moved by 0.5: that case fails, the others pass, the exit code is 3.
#[test]
fn preflight_goldens_fail_on_a_changed_output_value() {
    let dir = workdir();
    let src = goldens().join("sdxl");
    let dst = dir.path().join("goldens/sdxl");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["manifest.json", "text_encoders.safetensors", "unet_forward.safetensors", "vae_decode.safetensors"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let file = dst.join("vae_decode.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let image = &tensors["image"];
    let mut values: Vec<f32> = image.flatten_all().unwrap().to_vec1().unwrap();
    let mid = values.len() / 2;
    values[mid] += 0.5;
    let changed = Tensor::from_vec(values, image.shape(), &Device::Cpu).unwrap();
    tensors.insert("image".into(), changed);
    candle_core::safetensors::save(&tensors, &file).unwrap();

    let (o, report) = preflight(dir.path(), &dir.path().join("goldens"), &[]);
    print_cases(&report);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    let cases = report["goldens"].as_array().unwrap();
    assert_eq!(cases.len(), 3, "only SDXL is in the folder");
    for c in cases {
        let should_pass = c["case"] != "vae_decode";
        assert_eq!(c["pass"].as_bool().unwrap(), should_pass, "{}", c["case"]);
    }
    assert_eq!(report["ok"], false);
}

/// A folder with no golden component is a failed check, not a silent pass.
#[test]
fn preflight_goldens_fail_on_an_empty_folder() {
    let dir = workdir();
    let empty = dir.path().join("nothing");
    std::fs::create_dir_all(&empty).unwrap();
    let (o, report) = preflight(dir.path(), &empty, &[]);
    assert_eq!(o.status.code(), Some(3));
    let check = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "goldens f32 on cpu").unwrap();
    assert_eq!(check["status"], "fail");
    assert!(check["detail"].as_str().unwrap().contains("no golden component"), "{}", check["detail"]);
}
