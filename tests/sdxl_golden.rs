//! SDXL Turbo stage against the goldens (`tests/goldens/sdxl`): the tiny
//! SDXL-architecture model with synthetic weights, every size taken from the manifest.
//! Each test writes a checkpoint folder laid out like the hub repo and loads it through
//! the stage's own loaders.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::{check_close, component, load_tensors, specs, tempdir};
use lumen::models::sdxl::scheduler::{EulerAncestral, SchedulerConfig};
use lumen::models::sdxl::tokenizer::ClipTokenizer;
use lumen::models::sdxl::unet::AddedCond;
use lumen::models::sdxl::{self, SdxlOptions, SdxlTurbo};
use lumen::stage::{TextToImage, Timings};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn tol(manifest: &Value, case: &str) -> f64 {
    manifest["cases"][case]["rel_l2_tol"].as_f64().expect("rel_l2_tol")
}

fn case_file(dir: &Path, manifest: &Value, case: &str) -> std::collections::HashMap<String, Tensor> {
    load_tensors(&dir.join(manifest["cases"][case]["file"].as_str().unwrap()))
}

fn write_module(root: &Path, manifest: &Value, module: &str) -> PathBuf {
    sdxl::synthetic::write_module(root, manifest, module).unwrap()
}

/// The `--weights DIR` layout: `DIR/sdxl-turbo/…`.
fn write_repo(root: &Path, golden_dir: &Path) {
    sdxl::synthetic::write_synthetic_repo(golden_dir, &root.join("sdxl-turbo")).unwrap();
}

fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect()
}

/// The generator reproduces the reference weights bit for bit (manifest `weights_sha256`).
#[test]
fn sdxl_golden_weights_rule() {
    let (_, manifest) = component("sdxl");
    for (module, want) in manifest["weights_sha256"].as_object().unwrap() {
        let mut h = Sha256::new();
        for s in specs(&manifest["tensors"][module.as_str()]) {
            h.update(s.name.as_bytes());
            for v in lumen::synth::synth_values(&s.name, &s.shape) {
                h.update((v as f32).to_le_bytes());
            }
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let want = want.as_str().unwrap();
        println!("weights sha256 {module:<16} {}", if got == want { "ok" } else { "FAIL" });
        assert_eq!(got, want, "{module}");
    }
}

/// Both tokenizers, from tokenizer.json and from vocab.json + merges.txt (the hub repo's files).
#[test]
fn sdxl_golden_tokenizer() {
    let (dir, manifest) = component("sdxl");
    let case = &manifest["cases"]["tokenizer"];
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(case["file"].as_str().unwrap())).unwrap()).unwrap();
    let tmp = tempdir();
    let mut toks = Vec::new();
    for (key, file, pad) in [("ids_1", "tokenizer.json", "<|endoftext|>"), ("ids_2", "tokenizer_2.json", "!")] {
        let src = dir.join(file);
        let json_dir = tmp.path().join(format!("json_{key}"));
        std::fs::create_dir_all(&json_dir).unwrap();
        std::fs::copy(&src, json_dir.join("tokenizer.json")).unwrap();
        // The slow-tokenizer layout, extracted from the same vocabulary.
        let full: Value = serde_json::from_str(&std::fs::read_to_string(&src).unwrap()).unwrap();
        let slow_dir = tmp.path().join(format!("slow_{key}"));
        std::fs::create_dir_all(&slow_dir).unwrap();
        std::fs::write(slow_dir.join("vocab.json"), full["model"]["vocab"].to_string()).unwrap();
        let mut merges = String::from("#version: 0.2\n");
        for m in full["model"]["merges"].as_array().unwrap() {
            match m {
                Value::Array(p) => merges += &format!("{} {}\n", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
                Value::String(s) => merges += &format!("{s}\n"),
                _ => panic!("merge entry"),
            }
        }
        std::fs::write(slow_dir.join("merges.txt"), merges).unwrap();
        std::fs::write(slow_dir.join("special_tokens_map.json"), format!(r#"{{"pad_token": "{pad}"}}"#)).unwrap();
        toks.push((key, "tokenizer.json", ClipTokenizer::from_dir(&json_dir).unwrap()));
        toks.push((key, "vocab+merges", ClipTokenizer::from_dir(&slow_dir).unwrap()));
    }
    let mut failed = 0;
    let n = cases["cases"].as_array().unwrap().len();
    for (key, kind, tok) in &toks {
        let mut ok = 0;
        for c in cases["cases"].as_array().unwrap() {
            let want: Vec<u32> = c[*key].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let got = tok.encode(c["prompt"].as_str().unwrap()).unwrap();
            if got == want {
                ok += 1;
            } else {
                failed += 1;
                println!("MISMATCH {key} ({kind}) for {:?}:\n got  {got:?}\n want {want:?}", c["prompt"]);
            }
        }
        println!("tokenizer {key} from {kind:<14} {ok}/{n} prompts exact");
    }
    assert_eq!(failed, 0);
}

#[test]
fn sdxl_golden_text_encoders() {
    let (dir, manifest) = component("sdxl");
    let t = case_file(&dir, &manifest, "text_encoders");
    let tol = tol(&manifest, "text_encoders");
    let tmp = tempdir();
    let dev = Device::Cpu;
    let te1 =
        sdxl::load_text_encoder(&write_module(tmp.path(), &manifest, "text_encoder"), false, &dev, DType::F32).unwrap();
    let te2 = sdxl::load_text_encoder(&write_module(tmp.path(), &manifest, "text_encoder_2"), true, &dev, DType::F32)
        .unwrap();
    let ids1 = sdxl::clip::ids_tensor(&ids(&t["input_ids_1"]), &dev).unwrap();
    let ids2 = sdxl::clip::ids_tensor(&ids(&t["input_ids_2"]), &dev).unwrap();
    let o1 = te1.forward(&ids1).unwrap();
    let o2 = te2.forward(&ids2).unwrap();
    check_close("text_encoders/te1_penultimate", &o1.penultimate, &t["te1_penultimate"], tol);
    check_close("text_encoders/te2_penultimate", &o2.penultimate, &t["te2_penultimate"], tol);
    check_close("text_encoders/te1_last_hidden_state", &o1.last_hidden_state, &t["te1_last_hidden_state"], tol);
    check_close("text_encoders/te2_last_hidden_state", &o2.last_hidden_state, &t["te2_last_hidden_state"], tol);
    check_close("text_encoders/te2_text_embeds", o2.text_embeds.as_ref().unwrap(), &t["te2_text_embeds"], tol);
    let pe = sdxl::clip::concat_features(&o1, &o2).unwrap();
    check_close("text_encoders/prompt_embeds", &pe, &t["prompt_embeds"], tol);
}

#[test]
fn sdxl_golden_scheduler_step() {
    let (dir, manifest) = component("sdxl");
    let cfg: SchedulerConfig = serde_json::from_value(manifest["config"]["scheduler"].clone()).unwrap();
    for case in ["scheduler_step", "scheduler_4steps"] {
        let t = case_file(&dir, &manifest, case);
        let tol = tol(&manifest, case);
        let steps = t["timesteps"].dims1().unwrap();
        let s = EulerAncestral::new(&cfg, steps).unwrap();
        let f32s = |v: &[f64]| Tensor::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
        check_close(
            &format!("{case}/timesteps"),
            &f32s(&s.timesteps),
            &t["timesteps"].to_dtype(DType::F32).unwrap(),
            0.0,
        );
        check_close(&format!("{case}/sigmas"), &f32s(&s.sigmas), &t["sigmas"], tol);
        check_close(
            &format!("{case}/init_noise_sigma"),
            &f32s(&[s.init_noise_sigma]),
            &t["init_noise_sigma"].reshape(1).unwrap(),
            tol,
        );
        let mut sample = t["sample_0"].clone();
        for k in 0..steps {
            let input = s.scale_model_input(&sample, k).unwrap();
            check_close(&format!("{case}/scaled_model_input_{k}"), &input, &t[&format!("scaled_model_input_{k}")], tol);
            let out = s.step(&t[&format!("model_output_{k}")], k, &sample, &t[&format!("noise_{k}")]).unwrap();
            if let Some(want) = t.get(&format!("pred_original_sample_{k}")) {
                check_close(&format!("{case}/pred_original_sample_{k}"), &out.pred_original_sample, want, tol);
            }
            check_close(&format!("{case}/prev_sample_{k}"), &out.prev_sample, &t[&format!("prev_sample_{k}")], tol);
            sample = out.prev_sample;
        }
    }
}

#[test]
fn sdxl_golden_vae_decode() {
    let (dir, manifest) = component("sdxl");
    let t = case_file(&dir, &manifest, "vae_decode");
    let tmp = tempdir();
    let vae = sdxl::load_vae(&write_module(tmp.path(), &manifest, "vae"), &Device::Cpu, DType::F32).unwrap();
    let got = vae.decode(&t["latents"]).unwrap();
    check_close("vae_decode/image", &got, &t["image"], tol(&manifest, "vae_decode"));
}

#[test]
fn sdxl_golden_unet_forward() {
    let (dir, manifest) = component("sdxl");
    let t = case_file(&dir, &manifest, "unet_forward");
    let tmp = tempdir();
    let unet = sdxl::load_unet(&write_module(tmp.path(), &manifest, "unet"), &Device::Cpu, DType::F32).unwrap();
    let timestep: f64 = t["timestep"].to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
    let got = unet
        .forward(
            &t["sample"],
            timestep,
            &t["encoder_hidden_states"],
            Some(AddedCond { text_embeds: &t["text_embeds"], time_ids: &t["time_ids"] }),
        )
        .unwrap();
    check_close("unet_forward/noise_pred", &got, &t["noise_pred"], tol(&manifest, "unet_forward"));
}

fn options_from(manifest: &Value) -> SdxlOptions {
    let p = &manifest["config"]["pipeline"];
    SdxlOptions {
        steps: p["num_inference_steps"].as_u64().unwrap() as usize,
        height: Some(p["height"].as_u64().unwrap() as usize),
        width: Some(p["width"].as_u64().unwrap() as usize),
        ..Default::default()
    }
}

/// The whole stage, loaded through `SdxlTurbo::load` from a `--weights` folder.
#[test]
fn sdxl_golden_pipeline() {
    let (dir, manifest) = component("sdxl");
    let t = case_file(&dir, &manifest, "pipeline");
    let tol = tol(&manifest, "pipeline");
    let tmp = tempdir();
    write_repo(tmp.path(), &dir);
    let source = common::local_weights(tmp.path());
    let stage = SdxlTurbo::load(&source, &Device::Cpu, &options_from(&manifest)).unwrap();
    let prompt = manifest["cases"]["pipeline"]["prompt"].as_str().unwrap();
    let (ids_1, ids_2) = stage.tokenize(prompt).unwrap();
    assert_eq!(ids_1, ids(&t["input_ids_1"])[0], "input_ids_1");
    assert_eq!(ids_2, ids(&t["input_ids_2"])[0], "input_ids_2");
    println!("pipeline/input_ids_1, input_ids_2             exact");
    let mut timings = Timings::default();
    let trace = stage
        .run(
            &ids_1,
            &ids_2,
            &t["initial_latents"],
            |_| Tensor::zeros(t["initial_latents"].shape(), DType::F32, &Device::Cpu).map_err(Into::into),
            &mut timings,
        )
        .unwrap();
    let scalar = |x: &Tensor| x.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()[0];
    assert_eq!(trace.timesteps[0], scalar(&t["timestep"]), "timestep");
    check_close("pipeline/time_ids", &trace.time_ids, &t["time_ids"].reshape(trace.time_ids.shape()).unwrap(), tol);
    check_close("pipeline/prompt_embeds", &trace.prompt_embeds, &t["prompt_embeds"], tol);
    check_close("pipeline/text_embeds", &trace.text_embeds, &t["text_embeds"], tol);
    check_close("pipeline/unet_input", &trace.unet_inputs[0], &t["unet_input"], tol);
    check_close("pipeline/noise_pred", &trace.noise_preds[0], &t["noise_pred"], tol);
    check_close("pipeline/latents_out", &trace.latents_out, &t["latents_out"], tol);
    check_close("pipeline/vae_raw", &trace.vae_raw, &t["vae_raw"], tol);
    check_close("pipeline/image", &trace.image, &t["image"], tol);
    // u8 by rounding: exact, or ±1 only where the reference value sits on a .5 boundary.
    let (_, _, bytes) = sdxl::vae::to_rgb8(&((&trace.image * 2.0).unwrap() - 1.0).unwrap()).unwrap();
    let want: Vec<u8> =
        t["image_u8"].get(0).unwrap().permute((1, 2, 0)).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let refv: Vec<f32> = (t["image"].get(0).unwrap().permute((1, 2, 0)).unwrap().flatten_all().unwrap() * 255.0)
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut off = 0;
    for ((g, w), r) in bytes.iter().zip(&want).zip(&refv) {
        if g != w {
            off += 1;
            assert!(
                (*g as i32 - *w as i32).abs() == 1 && (r.fract() - 0.5).abs() < 1e-3,
                "u8 {g} vs {w} at reference value {r}"
            );
        }
    }
    println!("pipeline/image_u8                        {off} of {} values differ (±1 at .5 only)", want.len());
    println!("timings: {:?}", timings.0);
}

/// `TextToImage::generate` on the synthetic tiny checkpoint: a real image, same seed → same image.
#[test]
fn sdxl_golden_stage_generate_is_seeded() {
    let (dir, manifest) = component("sdxl");
    let tmp = tempdir();
    write_repo(tmp.path(), &dir);
    let source = common::local_weights(tmp.path());
    let mut opts = options_from(&manifest);
    opts.steps = 2;
    let stage = SdxlTurbo::load(&source, &Device::Cpu, &opts).unwrap();
    let prompt = sdxl::canonical_prompt("chair");
    let mut timings = Timings::default();
    let a = stage.generate(&prompt, 7, &mut timings).unwrap();
    let b = stage.generate(&prompt, 7, &mut timings).unwrap();
    let c = stage.generate(&prompt, 8, &mut timings).unwrap();
    // The size is left to the checkpoint: unet sample_size × VAE scale factor (diffusers' default).
    (opts.height, opts.width) = (None, None);
    let default_size = SdxlTurbo::load(&source, &Device::Cpu, &opts).unwrap();
    let a2 = default_size.generate(&prompt, 7, &mut timings).unwrap();
    let want = manifest["config"]["pipeline"]["height"].as_u64().unwrap() as u32;
    assert_eq!((a.width(), a.height()), (want, want));
    assert_eq!(a2.as_raw(), a.as_raw(), "default size from the checkpoint");
    assert_eq!(a.as_raw(), b.as_raw(), "same seed, same image");
    assert_ne!(a.as_raw(), c.as_raw(), "another seed, another image");
    for key in ["sdxl_text_encoders", "sdxl_unet", "sdxl_vae"] {
        assert!(timings.0.contains_key(key), "{key} timed");
    }
    println!("generate: {}x{} image, seeded; timings {:?}", a.width(), a.height(), timings.0);
    let png = sdxl::save_reference_image(&a, &tmp.path().join("chair.asset")).unwrap();
    assert_eq!(image::open(&png).unwrap().to_rgb8().as_raw(), a.as_raw(), "--keep-images PNG round trip");
    // A missing tensor is reported by name.
    let unet_file = tmp.path().join("sdxl-turbo/unet/diffusion_pytorch_model.safetensors");
    let mut keep = specs(&manifest["tensors"]["unet"]);
    keep.retain(|s| s.name != "add_embedding.linear_2.weight");
    lumen::synth::write_synthetic_safetensors(&keep, None, &unet_file).unwrap();
    let err = format!("{:#}", SdxlTurbo::load(&source, &Device::Cpu, &opts).err().unwrap());
    println!("missing tensor error: {err}");
    assert!(err.contains("add_embedding.linear_2.weight"), "{err}");
    // A missing file is reported by path.
    lumen::synth::write_synthetic_safetensors(&specs(&manifest["tensors"]["unet"]), None, &unet_file).unwrap();
    std::fs::remove_file(tmp.path().join("sdxl-turbo/vae/diffusion_pytorch_model.safetensors")).unwrap();
    let err = format!("{:#}", SdxlTurbo::load(&source, &Device::Cpu, &opts).err().unwrap());
    println!("missing file error: {err}");
    assert!(err.contains("vae/diffusion_pytorch_model.safetensors"), "{err}");
}

/// Height and width are independent, as in diffusers: a 64×48 (h×w) image on the tiny
/// checkpoint has 8×6 latents, `time_ids` [h, w, 0, 0, h, w], and comes out 48 wide and 64
/// high; the transposed size is another image, not a rotated copy of a square one.
#[test]
fn sdxl_golden_non_square_size() {
    let (dir, manifest) = component("sdxl");
    let tmp = tempdir();
    write_repo(tmp.path(), &dir);
    let source = common::local_weights(tmp.path());
    let load = |height, width| {
        let opts = SdxlOptions { height: Some(height), width: Some(width), ..options_from(&manifest) };
        SdxlTurbo::load(&source, &Device::Cpu, &opts).unwrap()
    };
    let prompt = sdxl::canonical_prompt("chair");
    let (ids_1, ids_2) = load(64, 64).tokenize(&prompt).unwrap();
    let mut timings = Timings::default();
    let mut images = Vec::new();
    for (h, w) in [(64, 48), (48, 64)] {
        let stage = load(h, w);
        let channels = stage.latent_shape().1;
        assert_eq!(stage.latent_shape(), (1, channels, h / 8, w / 8), "latents for {h}x{w}");
        let unit = Tensor::randn(0f32, 1f32, stage.latent_shape(), &Device::Cpu).unwrap();
        let trace = stage
            .run(
                &ids_1,
                &ids_2,
                &unit,
                |_| Tensor::zeros(unit.shape(), DType::F32, &Device::Cpu).map_err(Into::into),
                &mut timings,
            )
            .unwrap();
        let time_ids: Vec<f32> = trace.time_ids.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(time_ids, [h as f32, w as f32, 0.0, 0.0, h as f32, w as f32], "time_ids for {h}x{w}");
        assert_eq!(trace.image.dims(), [1, 3, h, w], "decoded image for {h}x{w}");
        let image = stage.generate(&prompt, 7, &mut timings).unwrap();
        assert_eq!((image.height() as usize, image.width() as usize), (h, w));
        println!("non-square: {h}x{w} → latents {:?}, time_ids {time_ids:?}", stage.latent_shape());
        images.push(image);
    }
    let transposed = image::imageops::rotate90(&images[1]);
    assert_ne!(images[0].as_raw(), transposed.as_raw(), "64x48 is its own image");
    // A side that is not a multiple of the VAE's scale factor is refused, naming which side.
    let opts = SdxlOptions { height: Some(64), width: Some(44), ..options_from(&manifest) };
    let err = SdxlTurbo::load(&source, &Device::Cpu, &opts).err().expect("width 44 refused").to_string();
    assert!(err.contains("width 44"), "{err}");
}
