//! Downloads through the real binary against a local hub (`support::hub`) serving the three
//! released repos' layouts with tiny synthetic weights: the same file names, the `.fp16`
//! variants, and the single-file checkpoints and ONNX exports as decoys that must never be
//! requested. Nothing here reaches a network beyond 127.0.0.1.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lumen::asset::Asset;
use lumen::models::rmbg::{BriaRmbg, Config as RmbgConfig};
use lumen::synth::{write_synthetic_safetensors, TensorSpec};
use lumen::weights::{self, pipeline_files, DeviceKind};
use serde_json::{json, Value};
use support::hub::{HubFile, HubRepo, HubServer};
use support::{stderr, stdout};

const SDXL_COMMIT: &str = "3f1c4b6e9a0d2c5b8e7f6a1d4c3b2a1908f7e6d5";
const FIX_COMMIT: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678";

fn junk(tag: &str) -> Vec<u8> {
    format!("decoy {tag} ").repeat(97).into_bytes()
}

/// Every file under `dir`, by repo-relative path.
fn read_tree(dir: &Path) -> BTreeMap<String, HubFile> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, HubFile>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel.clone(), HubFile::new(&rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn add(files: &mut BTreeMap<String, HubFile>, path: &str, data: Vec<u8>) {
    files.insert(path.to_string(), HubFile::new(path, data));
}

fn header_specs(path: &Path) -> Vec<TensorSpec> {
    let mut specs: Vec<TensorSpec> = weights::check_safetensors_file(path)
        .unwrap()
        .into_iter()
        .map(|(name, (_, shape))| TensorSpec::f32(name, &shape))
        .collect();
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    specs
}

/// stabilityai/sdxl-turbo as released: diffusers folders, every weight in f32 and as a
/// `.fp16` variant, tokenizers as vocab + merges, ONNX exports and single-file checkpoints.
fn sdxl_repo(tmp: &Path) -> BTreeMap<String, HubFile> {
    let (golden, _) = common::component("sdxl");
    let dir = tmp.join("sdxl-turbo");
    lumen::models::sdxl::synthetic::write_synthetic_repo(&golden, &dir).unwrap();
    for (folder, pad) in [("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")] {
        let d = dir.join(folder);
        let tj: Value = serde_json::from_str(&std::fs::read_to_string(d.join("tokenizer.json")).unwrap()).unwrap();
        std::fs::write(d.join("vocab.json"), serde_json::to_string(&tj["model"]["vocab"]).unwrap()).unwrap();
        let merges: Vec<String> = tj["model"]["merges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| match m.as_str() {
                Some(s) => s.to_string(),
                None => format!("{} {}", m[0].as_str().unwrap(), m[1].as_str().unwrap()),
            })
            .collect();
        std::fs::write(d.join("merges.txt"), format!("#version: 0.2\n{}\n", merges.join("\n"))).unwrap();
        let special = json!({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>"});
        common::write_json(&d.join("special_tokens_map.json"), &special);
        let config = json!({"pad_token": pad, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": true});
        common::write_json(&d.join("tokenizer_config.json"), &config);
        std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    }
    for (folder, base) in [
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
    ] {
        let d = dir.join(folder);
        let specs = header_specs(&d.join(format!("{base}.safetensors")));
        let half = d.join(format!("{base}.fp16.safetensors"));
        write_synthetic_safetensors(&specs, Some(safetensors::Dtype::F16), &half).unwrap();
    }
    let mut files = read_tree(&dir);
    let vae_config = files["vae/config.json"].data.to_vec();
    for decoy in [
        "text_encoder/model.onnx",
        "text_encoder_2/model.onnx",
        "text_encoder_2/model.onnx_data",
        "unet/model.onnx",
        "unet/model.onnx_data",
        "vae_decoder/model.onnx",
        "vae_encoder/model.onnx",
        "sd_xl_turbo_1.0.safetensors",
        "sd_xl_turbo_1.0_fp16.safetensors",
        "README.md",
        "LICENSE.TXT",
    ] {
        add(&mut files, decoy, junk(decoy));
    }
    add(&mut files, "vae_decoder/config.json", vae_config.clone());
    add(&mut files, "vae_encoder/config.json", vae_config);
    add(&mut files, "model_index.json", br#"{"_class_name": "StableDiffusionXLPipeline"}"#.to_vec());
    files
}

/// briaai/RMBG-1.4: `model.safetensors` with the 112 rank-0 I64 `num_batches_tracked`
/// tensors of the release, plus the pickles and ONNX exports as decoys.
fn rmbg_repo() -> BTreeMap<String, HubFile> {
    let mut specs = BriaRmbg::tensor_specs(&RmbgConfig::default());
    let counters: Vec<TensorSpec> = specs
        .iter()
        .filter_map(|s| s.name.strip_suffix(".running_var"))
        .map(|p| TensorSpec { name: format!("{p}.num_batches_tracked"), shape: vec![], dtype: "int64".into() })
        .collect();
    specs.extend(counters);
    let tmp = tempfile::tempdir().unwrap();
    write_synthetic_safetensors(&specs, None, &tmp.path().join("model.safetensors")).unwrap();
    let mut files = BTreeMap::new();
    add(&mut files, "model.safetensors", std::fs::read(tmp.path().join("model.safetensors")).unwrap());
    add(
        &mut files,
        "config.json",
        br#"{"in_ch": 3, "out_ch": 1, "model_type": "SegformerForSemanticSegmentation"}"#.to_vec(),
    );
    add(&mut files, "preprocessor_config.json", br#"{"do_normalize": true, "image_std": [1.0, 1.0, 1.0]}"#.to_vec());
    for decoy in
        ["model.pth", "pytorch_model.bin", "onnx/model.onnx", "onnx/model_fp16.onnx", "onnx/model_quantized.onnx"]
    {
        add(&mut files, decoy, junk(decoy));
    }
    add(&mut files, "onnx/quantize_config.json", br#"{"per_channel": false}"#.to_vec());
    add(&mut files, "briarmbg.py", b"# the reference network\n".to_vec());
    files
}

/// wgsxm/PartCrafter: one unsharded 16-bit file per component, no variants.
fn partcrafter_repo(tmp: &Path) -> BTreeMap<String, HubFile> {
    let root = tmp.join("PartCrafter");
    common::write_partcrafter_repo(&root, Some(safetensors::Dtype::F16));
    let mut files = read_tree(&root);
    add(&mut files, "model_index.json", br#"{"_class_name": "PartCrafterPipeline"}"#.to_vec());
    add(&mut files, "README.md", junk("readme"));
    files
}

/// The served repos, built once per test binary.
fn tree() -> BTreeMap<String, HubRepo> {
    static TREE: OnceLock<BTreeMap<String, HubRepo>> = OnceLock::new();
    TREE.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let sdxl = sdxl_repo(tmp.path());
        let mut fix = BTreeMap::new();
        fix.insert("config.json".to_string(), sdxl["vae/config.json"].clone());
        // Its own bytes (bf16 here), so the request log can tell the two VAEs apart.
        let vae_specs = header_specs(&tmp.path().join("sdxl-turbo/vae/diffusion_pytorch_model.safetensors"));
        let fix_file = tmp.path().join("fix.safetensors");
        write_synthetic_safetensors(&vae_specs, Some(safetensors::Dtype::BF16), &fix_file).unwrap();
        add(&mut fix, "diffusion_pytorch_model.safetensors", std::fs::read(&fix_file).unwrap());
        add(&mut fix, "sdxl_vae.safetensors", junk("fix single file"));
        let repo = |commit: &str, files| HubRepo { commit: commit.into(), files, token: None };
        BTreeMap::from([
            (weights::SDXL_TURBO.id.to_string(), repo(SDXL_COMMIT, sdxl)),
            (weights::SDXL_VAE_FP16_FIX.id.to_string(), repo(FIX_COMMIT, fix)),
            (weights::RMBG.id.to_string(), repo(weights::RMBG.revision, rmbg_repo())),
            (weights::PARTCRAFTER.id.to_string(), repo(weights::PARTCRAFTER.revision, partcrafter_repo(tmp.path()))),
        ])
    })
    .clone()
}

/// `owner/name/path` of every file a run on `device` reads.
fn needed(device: DeviceKind, fp16_vae: bool) -> BTreeSet<String> {
    pipeline_files(device, fp16_vae)
        .iter()
        .flat_map(|r| r.files.iter().map(move |f| format!("{}/{f}", r.repo.id)))
        .collect()
}

/// `lumen` pointed at the local hub with a fresh-machine environment: cache under `home`,
/// no token, network allowed.
fn lumen_at(hub: &HubServer, home: &Path) -> Command {
    let mut c = support::lumen();
    c.env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_HOME", home)
        .env("HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HUGGINGFACE_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("HF_TOKEN")
        .env_remove("HF_TOKEN_PATH")
        .env_remove("LUMEN_REVISION");
    c
}

fn run(mut c: Command, args: &[&str]) -> Output {
    let o = c.args(args).output().expect("lumen runs");
    println!("$ lumen {}\n{}{}", args.join(" "), stdout(&o), stderr(&o));
    o
}

fn tiny_generate_args(work: &Path) -> Vec<String> {
    let tokens = common::component("partcrafter").1["config"]["pipeline_call"]["num_tokens"].to_string();
    let store = work.join("out").to_string_lossy().into_owned();
    let args = ["generate", "chair", "--parts", "1", "--steps", "1", "--tokens", &tokens];
    let more = ["--extract-depth", "5", "--cpu", "--json", "--store", &store, "--catalog", "none.json"];
    args.iter().chain(more.iter()).map(|s| s.to_string()).collect()
}

fn repo_cache(home: &Path, id: &str) -> PathBuf {
    home.join("hub").join(format!("models--{}", id.replace('/', "--")))
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

#[test]
fn a_first_run_downloads_only_what_the_pipeline_reads_and_a_second_runs_offline() {
    let hub = HubServer::start(tree());
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let args = tiny_generate_args(work.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = run(lumen_at(&hub, home.path()), &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json_out(&o)["results"][0]["status"], "created");
    // Where the weights are downloaded, the two non-commercial model cards are named.
    let err = stderr(&o);
    for (id, licence) in [(weights::SDXL_TURBO.id, "sai-nc-community"), (weights::RMBG.id, "bria-rmbg-1.4")] {
        assert!(err.contains(&format!("{id} is licensed {licence}: ")), "no licence warning for {id}: {err}");
    }
    assert!(!err.contains(&format!("{} is licensed", weights::PARTCRAFTER.id)), "MIT needs no warning: {err}");

    // Only the CPU file list was asked about or downloaded: no decoy, no .fp16 variant.
    let want = needed(DeviceKind::Cpu, false);
    let touched = hub.touched_paths();
    let stray: Vec<&String> = touched.difference(&want).collect();
    assert!(stray.is_empty(), "requested files the pipeline does not read: {stray:?}");
    assert_eq!(touched, want, "every needed file is resolved");
    let served = tree();
    let downloaded = hub.downloaded_paths();
    let bytes: usize = downloaded
        .iter()
        .map(|p| {
            let (repo, path) =
                served.keys().find_map(|r| p.strip_prefix(&format!("{r}/")).map(|f| (r.clone(), f))).unwrap();
            served[&repo].files[path].data.len()
        })
        .sum();
    println!("first run: {} files requested, {} downloads, {bytes} bytes", want.len(), downloaded.len());
    assert!(hub.requests().iter().all(|r| !(r.path.starts_with("/cdn/") && r.auth)), "no token without HF_TOKEN");

    // The Python client's layout: refs for the branch, blobs named by the hub's checksum,
    // relative links from the snapshot.
    let sd = repo_cache(home.path(), weights::SDXL_TURBO.id);
    assert_eq!(std::fs::read_to_string(sd.join("refs/main")).unwrap(), SDXL_COMMIT);
    let unet = hub.file(weights::SDXL_TURBO.id, "unet/diffusion_pytorch_model.safetensors");
    let link = sd.join("snapshots").join(SDXL_COMMIT).join("unet/diffusion_pytorch_model.safetensors");
    assert_eq!(std::fs::read_link(&link).unwrap(), PathBuf::from(format!("../../../blobs/{}", unet.sha256)));
    assert_eq!(std::fs::read(&link).unwrap(), *unet.data);
    let rmbg = repo_cache(home.path(), weights::RMBG.id);
    assert!(rmbg.join("snapshots").join(weights::RMBG.revision).join("model.safetensors").is_file());

    // The asset names the commits it was made from.
    let shapes: Vec<_> =
        std::fs::read_dir(work.path().join("out/shapes")).unwrap().map(|e| e.unwrap().path()).collect();
    let (asset, _) = Asset::decode(&std::fs::read(&shapes[0]).unwrap()).unwrap();
    let revs: Vec<(&str, &str)> = asset.pipeline.models.iter().map(|m| (m.id.as_str(), m.revision.as_str())).collect();
    assert_eq!(
        revs,
        [
            (weights::SDXL_TURBO.id, SDXL_COMMIT),
            (weights::RMBG.id, weights::RMBG.revision),
            (weights::PARTCRAFTER.id, weights::PARTCRAFTER.revision)
        ]
    );

    // Second run offline: the cache alone, not one request.
    hub.clear_log();
    let mut offline = lumen_at(&hub, home.path());
    offline.env("HF_HUB_OFFLINE", "1");
    let mut args2 = args.clone();
    args2.push("--force");
    let o = run(offline, &args2);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json_out(&o)["results"][0]["status"], "overwritten");
    assert!(!stderr(&o).contains(" is licensed "), "nothing downloaded, nothing to warn: {}", stderr(&o));
    let mut offline = lumen_at(&hub, home.path());
    offline.env("HF_HUB_OFFLINE", "1");
    let o = run(offline, &["fetch", "--device", "cpu", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let files = json_out(&o)["files"].as_array().unwrap().clone();
    assert_eq!(files.len(), want.len());
    assert!(files.iter().all(|f| f["status"] == "cached" && f["verified"] == true), "{files:?}");
    // fetch lists every licence the run reads, whether or not it downloaded anything.
    let licences: Vec<(String, bool)> = json_out(&o)["licenses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["repo"].as_str().unwrap().to_string(), l["commercial_use"].as_bool().unwrap()))
        .collect();
    let expected = [(weights::SDXL_TURBO.id, false), (weights::RMBG.id, false), (weights::PARTCRAFTER.id, true)];
    assert_eq!(licences, expected.map(|(id, c)| (id.to_string(), c)));
    assert!(hub.requests().is_empty(), "offline runs made requests: {:?}", hub.requests());

    // Offline with files missing: every missing file of every repo, and the exact command.
    let mut offline = lumen_at(&hub, home.path());
    offline.env("HF_HUB_OFFLINE", "1");
    let o = run(offline, &["fetch", "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("lumen fetch --pipeline partcrafter --device cuda"), "{err}");
    let list = "stabilityai/sdxl-turbo (revision main): text_encoder/model.fp16.safetensors, \
                text_encoder_2/model.fp16.safetensors, unet/diffusion_pytorch_model.fp16.safetensors";
    assert!(err.contains(list) && !err.contains("RMBG"), "only the missing .fp16 files: {err}");
    assert!(hub.requests().is_empty());
}

#[test]
fn fetch_takes_the_fp16_variants_for_cuda_and_repairs_a_corrupt_cache() {
    let hub = HubServer::start(tree());
    let home = tempfile::tempdir().unwrap();

    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cuda", "--dry-run", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan = json_out(&o);
    assert!(plan["files"].as_array().unwrap().iter().all(|f| f["status"] == "missing"));
    assert!(hub.requests().iter().all(|r| r.method == "HEAD"), "a dry run downloads nothing");
    hub.clear_log();

    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cuda", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json_out(&o);
    assert_eq!(v["total_bytes"], plan["missing_bytes"]);
    let want = needed(DeviceKind::Cuda, false);
    let served = tree();
    let mut got = BTreeSet::new();
    for f in v["files"].as_array().unwrap() {
        let (repo, path) = (f["repo"].as_str().unwrap(), f["path"].as_str().unwrap());
        assert_eq!(f["size"].as_u64().unwrap() as usize, served[repo].files[path].data.len(), "{repo} {path}");
        assert_eq!(f["checksum"].as_str().unwrap(), served[repo].files[path].etag());
        assert!(f["verified"] == true && ["downloaded", "linked"].contains(&f["status"].as_str().unwrap()), "{f}");
        got.insert(format!("{repo}/{path}"));
    }
    assert_eq!(got, want);
    assert!(want.contains("stabilityai/sdxl-turbo/unet/diffusion_pytorch_model.fp16.safetensors"));
    assert!(want.contains("stabilityai/sdxl-turbo/vae/diffusion_pytorch_model.safetensors"), "the VAE stays f32");
    assert!(hub.touched_paths().is_subset(&want), "{:?}", hub.touched_paths().difference(&want).collect::<Vec<_>>());

    // Again: everything cached and re-hashed, nothing asked of the hub.
    hub.clear_log();
    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cuda", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(json_out(&o)["files"].as_array().unwrap().iter().all(|f| f["status"] == "cached" && f["verified"] == true));
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // A flipped byte in a cached blob: offline it is reported, online it is fetched again.
    let te = hub.file(weights::SDXL_TURBO.id, "text_encoder/model.fp16.safetensors");
    let blob = repo_cache(home.path(), weights::SDXL_TURBO.id).join("blobs").join(&te.sha256);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let mut offline = lumen_at(&hub, home.path());
    offline.env("HF_HUB_OFFLINE", "1");
    let o = run(offline, &["fetch", "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("text_encoder/model.fp16.safetensors: sha256 mismatch"), "{}", stderr(&o));
    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cuda", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(hub.downloaded_paths(), ["stabilityai/sdxl-turbo/text_encoder/model.fp16.safetensors"]);
    assert_eq!(std::fs::read(&blob).unwrap(), *te.data);
}

#[test]
fn a_download_killed_halfway_resumes_where_it_stopped() {
    let hub = HubServer::start(tree());
    let home = tempfile::tempdir().unwrap();
    let model = hub.file(weights::RMBG.id, "model.safetensors");
    let half = model.data.len() / 2;
    let key = format!("{}/model.safetensors", weights::RMBG.id);
    hub.state.stall_after.lock().unwrap().insert(key.clone(), half);

    let mut child = lumen_at(&hub, home.path())
        .args(["fetch", "--device", "cpu"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let part = repo_cache(home.path(), weights::RMBG.id).join("blobs").join(format!("{}.incomplete", model.sha256));
    let start = Instant::now();
    while std::fs::metadata(&part).map(|m| m.len() as usize).unwrap_or(0) < half {
        assert!(start.elapsed() < Duration::from_secs(300), "the download never reached half");
        assert!(child.try_wait().unwrap().is_none(), "lumen exited before the kill");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    hub.state.stall_after.lock().unwrap().clear();
    hub.state.release.store(true, std::sync::atomic::Ordering::SeqCst);
    hub.clear_log();

    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cpu", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming at"), "{}", stderr(&o));
    let gets: Vec<_> = hub.requests().into_iter().filter(|r| r.path == format!("/cdn/{}", model.sha256)).collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!((gets[0].range.as_deref(), gets[0].status), (Some(format!("bytes={half}-").as_str()), 206));
    let f =
        json_out(&o)["files"].as_array().unwrap().iter().find(|f| f["path"] == "model.safetensors").cloned().unwrap();
    assert_eq!((f["status"].as_str(), f["verified"].as_bool()), (Some("downloaded"), Some(true)));
    assert!(!part.exists());
    let blob = repo_cache(home.path(), weights::RMBG.id).join("blobs").join(&model.sha256);
    assert_eq!(std::fs::read(blob).unwrap(), *model.data);
}

#[test]
fn a_corrupted_byte_is_caught_and_the_file_not_used() {
    let hub = HubServer::start(tree());
    let home = tempfile::tempdir().unwrap();
    let path = "text_encoder/model.safetensors";
    hub.state.corrupt.lock().unwrap().insert(format!("{}/{path}", weights::SDXL_TURBO.id));
    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(path) && err.contains("sha256") && err.contains("not used"), "{err}");
    let te = hub.file(weights::SDXL_TURBO.id, path);
    let sd = repo_cache(home.path(), weights::SDXL_TURBO.id);
    assert!(!sd.join("blobs").join(&te.sha256).exists());
    assert!(!sd.join("blobs").join(format!("{}.incomplete", te.sha256)).exists());
    assert!(sd.join("snapshots").join(SDXL_COMMIT).join(path).symlink_metadata().is_err(), "no link to a bad file");
    let tries = hub.downloaded_paths().iter().filter(|p| p.ends_with(path)).count();
    assert_eq!(tries, 2, "one fresh retry after a mismatch");
    // A run then stops at the missing file instead of loading anything.
    let work = tempfile::tempdir().unwrap();
    let mut offline = lumen_at(&hub, home.path());
    offline.env("HF_HUB_OFFLINE", "1");
    let args = tiny_generate_args(work.path());
    let o = run(offline, &args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(path), "{}", stderr(&o));
}

#[test]
fn refusals_are_named_and_transient_failures_retried() {
    // 404: a file missing from the pinned revision, and an unknown revision. Nothing is
    // downloaded before the whole plan is known.
    let mut repos = tree();
    repos.get_mut(weights::PARTCRAFTER.id).unwrap().files.remove("vae/diffusion_pytorch_model.safetensors");
    let hub = HubServer::start(repos);
    let home = tempfile::tempdir().unwrap();
    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("404") && err.contains("vae/diffusion_pytorch_model.safetensors of wgsxm/PartCrafter"),
        "{err}"
    );
    assert!(err.contains(weights::PARTCRAFTER.revision), "{err}");
    assert!(hub.requests().iter().all(|r| r.method == "HEAD"), "downloaded before the plan was complete");
    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cpu", "--revision", "wgsxm/PartCrafter=v9"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("has no revision v9"), "{}", stderr(&o));
    drop(hub);

    // 401 / 403: a gated repo without and with a wrong token; then the right token, two 503s
    // and a connection dropped mid-file, all survived.
    let mut repos = tree();
    repos.get_mut(weights::PARTCRAFTER.id).unwrap().token = Some("hf_test_token".into());
    let hub = HubServer::start(repos);
    let home = tempfile::tempdir().unwrap();
    let o = run(lumen_at(&hub, home.path()), &["fetch", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("401") && err.contains("wgsxm/PartCrafter") && err.contains("HF_TOKEN is not set"), "{err}");
    let mut wrong = lumen_at(&hub, home.path());
    wrong.env("HF_TOKEN", "hf_wrong");
    let o = run(wrong, &["fetch", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));

    hub.clear_log();
    hub.state.fail_next.store(2, std::sync::atomic::Ordering::SeqCst);
    let dit = "transformer/diffusion_pytorch_model.safetensors";
    let dit_file = hub.file(weights::PARTCRAFTER.id, dit);
    let cut = dit_file.data.len() / 3;
    hub.state.drop_after.lock().unwrap().insert(format!("{}/{dit}", weights::PARTCRAFTER.id), cut);
    let mut right = lumen_at(&hub, home.path());
    right.env("HF_TOKEN", "hf_test_token");
    let o = run(right, &["fetch", "--device", "cpu"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let log = hub.requests();
    assert_eq!(log.iter().filter(|r| r.status == 503).count(), 2);
    assert!(stderr(&o).contains("retry 1/5"), "{}", stderr(&o));
    let dit_gets: Vec<_> = log.iter().filter(|r| r.path == format!("/cdn/{}", dit_file.sha256)).collect();
    assert_eq!(dit_gets.len(), 2, "{dit_gets:?}");
    assert_eq!(dit_gets[1].range.as_deref(), Some(format!("bytes={cut}-").as_str()));
    assert!(log.iter().filter(|r| r.path.starts_with("/wgsxm/")).all(|r| r.auth), "the token goes to the hub");
    assert!(log.iter().filter(|r| r.path.starts_with("/cdn/")).all(|r| !r.auth), "never to the CDN");
}
