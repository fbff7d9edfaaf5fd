//! Full-size structure against the released checkpoints, without their weights.
//!
//! `tests/released/` holds the released repositories' configs byte for byte and, in
//! `files.json`, the facts known about their weight files (exact sizes, tensor and parameter
//! counts, with the confidence of each). For every weights folder the pipeline reads:
//! - the tensors its constructor asks for at the released config (recorded through
//!   `checkpoint::StructureBackend`) must add up to the released parameter count, and the file
//!   the Python `safetensors` writer would make from that list, in the released dtype, must
//!   have the released size to the byte (where it is known);
//! - every stage's constructor must pass against a checkpoint tree in the released layout whose
//!   files are real safetensors headers over sparse data sections (`set_len`: the apparent size
//!   is the released one, no disk is used, no data is read), through the same
//!   `checkpoint::check_pipeline` that `preflight` and the pipeline run.
//!
//! Files a loader only partly reads are completed with what it skips, named here and nowhere
//! else: BriaRMBG's `num_batches_tracked` counters (one rank-0 I64 per BatchNorm), DINOv2's
//! `embeddings.mask_token` (used only for masked pre-training), and the SDXL VAE's encoder and
//! `quant_conv` (diffusers' `Encoder` at the same config; only the decoder is loaded). The
//! PartCrafter VAE file also holds an encoder, but its released size is unknown: its list is
//! printed, not checked.
//!
//! Named `released_*` so they can be run alone: `cargo test --test released`.

mod common;

use std::path::{Path, PathBuf};

use lumen::checkpoint::{self, Component, Expected, Model, PIPELINE};
use safetensors::Dtype;
use serde_json::Value;

fn released_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/released")
}

fn facts() -> Value {
    let text = std::fs::read_to_string(released_root().join("files.json")).expect("tests/released/files.json");
    serde_json::from_str(&text).unwrap()
}

/// The vendored folder of a repository (`owner--name`).
fn repo_folder(c: &Component) -> String {
    c.repo.id.replace('/', "--")
}

/// The released weight files of one component folder, with their facts.
fn released_files(facts: &Value, c: &Component) -> Vec<Value> {
    let repo = facts["repos"].as_array().unwrap().iter().find(|r| r["repo"] == c.repo.id).expect("repo in files.json");
    let prefix = if c.folder.is_empty() { String::new() } else { format!("{}/", c.folder) };
    repo["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            let p = f["path"].as_str().unwrap();
            p.strip_prefix(&prefix).is_some_and(|rest| !rest.contains('/')) && p.ends_with(".safetensors")
        })
        .cloned()
        .collect()
}

/// The loader reads only part of this file and the rest is not listed here (the
/// PartCrafter VAE's encoder).
fn partly_read(c: &Component) -> bool {
    c.model == Model::SdfVae
}

/// diffusers' `Encoder` and `quant_conv` of an `AutoencoderKL` with this `vae/config.json`:
/// `conv_in`, per level `layers_per_block` ResNet blocks (a 1×1 `conv_shortcut` where the
/// width changes) and a stride-2 downsampler except at the last level, the mid block (ResNet,
/// attention, ResNet), `conv_norm_out`, `conv_out` to 2 × latent channels.
fn sdxl_vae_encoder(config: &Value) -> Vec<(String, Vec<usize>)> {
    type List = Vec<(String, Vec<usize>)>;
    fn conv(out: &mut List, p: &str, cout: usize, cin: usize, k: usize) {
        out.push((format!("{p}.weight"), vec![cout, cin, k, k]));
        out.push((format!("{p}.bias"), vec![cout]));
    }
    fn norm(out: &mut List, p: &str, c: usize) {
        out.push((format!("{p}.weight"), vec![c]));
        out.push((format!("{p}.bias"), vec![c]));
    }
    fn resnet(out: &mut List, p: &str, cin: usize, cout: usize) {
        norm(out, &format!("{p}.norm1"), cin);
        conv(out, &format!("{p}.conv1"), cout, cin, 3);
        norm(out, &format!("{p}.norm2"), cout);
        conv(out, &format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            conv(out, &format!("{p}.conv_shortcut"), cout, cin, 1);
        }
    }
    let num = |k: &str| config[k].as_u64().unwrap() as usize;
    let ch: Vec<usize> =
        config["block_out_channels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let (layers, latent) = (num("layers_per_block"), num("latent_channels"));
    let mut out = List::new();
    conv(&mut out, "encoder.conv_in", ch[0], num("in_channels"), 3);
    let mut cin = ch[0];
    for (i, &c) in ch.iter().enumerate() {
        for j in 0..layers {
            resnet(&mut out, &format!("encoder.down_blocks.{i}.resnets.{j}"), if j == 0 { cin } else { c }, c);
        }
        cin = c;
        if i + 1 < ch.len() {
            conv(&mut out, &format!("encoder.down_blocks.{i}.downsamplers.0.conv"), c, c, 3);
        }
    }
    let c = cin;
    resnet(&mut out, "encoder.mid_block.resnets.0", c, c);
    norm(&mut out, "encoder.mid_block.attentions.0.group_norm", c);
    for n in ["to_q", "to_k", "to_v", "to_out.0"] {
        out.push((format!("encoder.mid_block.attentions.0.{n}.weight"), vec![c, c]));
        out.push((format!("encoder.mid_block.attentions.0.{n}.bias"), vec![c]));
    }
    resnet(&mut out, "encoder.mid_block.resnets.1", c, c);
    norm(&mut out, "encoder.conv_norm_out", c);
    conv(&mut out, "encoder.conv_out", 2 * latent, c, 3);
    conv(&mut out, "quant_conv", 2 * latent, 2 * latent, 1);
    out
}

/// The tensor list of the released file: what the constructor reads, in the file's float
/// dtype, plus what the loader skips (see the module note).
fn file_tensors(c: &Component, root: &Path, expected: &[Expected], float: Dtype) -> Vec<(String, Dtype, Vec<usize>)> {
    let mut out: Vec<_> = expected.iter().map(|e| (e.name.clone(), float, e.shape.clone())).collect();
    let config = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(c.folder).join("config.json")).unwrap()).unwrap()
    };
    match c.model {
        Model::Rmbg => {
            for e in expected {
                if let Some(bn) = e.name.strip_suffix(".running_mean") {
                    out.push((format!("{bn}.num_batches_tracked"), Dtype::I64, vec![]));
                }
            }
        }
        Model::ImageEncoder if !expected.iter().any(|e| e.name == "embeddings.mask_token") => {
            let hidden = config()["hidden_size"].as_u64().unwrap() as usize;
            out.push(("embeddings.mask_token".into(), float, vec![1, hidden]));
        }
        Model::SdxlVae => out.extend(sdxl_vae_encoder(&config()).into_iter().map(|(n, s)| (n, float, s))),
        _ => {}
    }
    out
}

fn float_dtype(fact: &Value) -> Dtype {
    match fact["dtype"].as_str().unwrap() {
        "F16" => Dtype::F16,
        "BF16" => Dtype::BF16,
        "F32" | "F32+I64" => Dtype::F32,
        other => panic!("dtype {other} in files.json"),
    }
}

const PT: &[(&str, &str)] = &[("format", "pt")];

/// The structure checks materialise what constructors compute at load (the PartCrafter
/// attention de-interleave: ~0.7 GB in f16); one test at a time keeps the peak at that.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn commas(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[test]
fn released_parameter_counts_and_file_sizes() {
    let _heavy = one_at_a_time();
    let facts = facts();
    let mut failures = Vec::new();
    let mut exact_sizes = 0;
    for c in PIPELINE {
        let root = released_root().join(repo_folder(&c));
        let expected = checkpoint::expected_tensors(&c, &root).unwrap();
        let read: u64 = expected.iter().map(Expected::numel).sum();
        for fact in released_files(&facts, &c) {
            let path = fact["path"].as_str().unwrap();
            let tensors = file_tensors(&c, &root, &expected, float_dtype(&fact));
            let numel = |t: &(String, Dtype, Vec<usize>)| t.2.iter().map(|&d| d as u64).product::<u64>();
            // Parameters: float tensors other than BatchNorm's running statistics (buffers).
            let floats = tensors.iter().filter(|t| t.1 != Dtype::I64);
            let stats: u64 = floats.clone().filter(|t| t.0.contains(".running_")).map(numel).sum();
            let params: u64 = floats.map(numel).sum::<u64>() - stats;
            let header = checkpoint::python_header(&tensors, Some(PT)).unwrap();
            let size = header.len() as u64 + checkpoint::data_len(&tensors);
            let mut notes = Vec::new();
            let mut check = |ok: bool, what: String| {
                notes.push(format!("{what} {}", if ok { "ok" } else { "MISMATCH" }));
                if !ok {
                    failures.push(format!("{} {path}: {what}", c.repo.id));
                }
            };
            if let Some(want) = fact["params"].as_u64() {
                check(params == want, format!("params {} vs released {}", commas(params), commas(want)));
            }
            if let Some(want) = fact["non_trainable_elements"]["running_mean_and_running_var_F32"].as_u64() {
                check(stats == want, format!("running stats {stats} vs {want}"));
            }
            if let Some(want) = fact["tensors"].as_u64() {
                check(tensors.len() as u64 == want, format!("tensors {} vs {want}", tensors.len()));
            }
            if let Some(want) = fact["header_len"].as_u64() {
                check(header.len() as u64 - 8 == want, format!("header N {} vs {want}", header.len() - 8));
            }
            match (fact["size"].as_u64(), partly_read(&c)) {
                (Some(want), false) => {
                    exact_sizes += 1;
                    check(size == want, format!("file size {} vs released {}", commas(size), commas(want)));
                }
                (Some(want), true) => check(
                    size < want,
                    format!(
                        "decoder-only size {} below released {} (the rest is the encoder)",
                        commas(size),
                        commas(want)
                    ),
                ),
                (None, true) => check(true, format!("decoder-only size {} (released size unknown)", commas(size))),
                (None, false) => {
                    if let Some(min) = fact["size_min"].as_u64() {
                        check(size >= min, format!("file size {} ≥ audited minimum {}", commas(size), commas(min)));
                    }
                }
            }
            println!(
                "{:<54} loader reads {:>4} tensors {:>15} values; file {:>4} tensors {:>15} params  {}",
                format!("{} {path}", c.repo.id),
                expected.len(),
                commas(read),
                tensors.len(),
                commas(params),
                notes.join("; ")
            );
        }
    }
    assert!(exact_sizes >= 8, "only {exact_sizes} exact file sizes checked");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Writes the released layout under `dir/<repo name>/`: the vendored configs, and every
/// released weight file as a header over a sparse data section. Returns (path, size) of each.
fn header_only_tree(dir: &Path) -> Vec<(PathBuf, u64)> {
    let facts = facts();
    let mut written = Vec::new();
    for c in PIPELINE {
        let src = released_root().join(repo_folder(&c));
        let dst = dir.join(c.repo.name());
        copy_dir(&src, &dst);
        let expected = checkpoint::expected_tensors(&c, &src).unwrap();
        for fact in released_files(&facts, &c) {
            let path = dst.join(fact["path"].as_str().unwrap());
            let tensors = file_tensors(&c, &src, &expected, float_dtype(&fact));
            let size = checkpoint::write_header_only(&path, &tensors, Some(PT)).unwrap();
            written.push((path, size));
        }
    }
    written
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn released_stages_construct_from_header_only_checkpoints() {
    use std::os::unix::fs::MetadataExt;
    let _heavy = one_at_a_time();
    let tmp = tempfile::tempdir().unwrap();
    let files = header_only_tree(tmp.path());
    let apparent: u64 = files.iter().map(|(_, s)| s).sum();
    let on_disk: u64 = files.iter().map(|(p, _)| std::fs::metadata(p).unwrap().blocks() * 512).sum();
    println!(
        "header-only tree: {} weight files, {} bytes apparent, {} bytes on disk",
        files.len(),
        commas(apparent),
        commas(on_disk)
    );
    // Every stage's constructor at the released config, against the headers, as the device
    // would choose the files: f32 on a CPU, the .fp16 variants on a GPU.
    for half in [false, true] {
        let start = std::time::Instant::now();
        let reports = checkpoint::check_pipeline(&common::local_weights(tmp.path()), half, false).unwrap();
        println!("half={half}: every stage built against the headers in {:.1} s", start.elapsed().as_secs_f64());
        assert_eq!(reports.len(), PIPELINE.len());
        for r in &reports {
            let names: Vec<_> =
                r.files.iter().map(|f| f.strip_prefix(tmp.path()).unwrap().display().to_string()).collect();
            println!(
                "half={half:<5} {:<40} {:>4} tensors {:>15} params  {}",
                r.component.label(),
                r.tensors,
                commas(r.params),
                names.join(", ")
            );
            let fp16 = names.iter().all(|n| n.contains(".fp16."));
            let sdxl_half =
                half && r.component.repo.id == "stabilityai/sdxl-turbo" && r.component.model != Model::SdxlVae;
            assert_eq!(fp16, sdxl_half, "{names:?}");
        }
    }

    // The checks see a damaged file at full size too: a wrong shape, then a truncated file.
    let dit = tmp.path().join("PartCrafter/transformer/diffusion_pytorch_model.safetensors");
    let header = checkpoint::read_header(&dit).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>)> =
        header.metadata.tensors().into_iter().map(|(n, i)| (n, i.dtype, i.shape.clone())).collect();
    tensors.iter_mut().find(|t| t.0 == "part_embedding.weight").unwrap().2 = vec![16, 2048];
    checkpoint::write_header_only(&dit, &tensors, Some(PT)).unwrap();
    let err = format!("{:#}", checkpoint::check_pipeline(&common::local_weights(tmp.path()), true, false).unwrap_err());
    println!("wrong shape: {err}");
    assert!(err.contains("part_embedding.weight") && err.contains("[16, 2048]") && err.contains("[32, 2048]"), "{err}");
    let unet = tmp.path().join("sdxl-turbo/unet/diffusion_pytorch_model.fp16.safetensors");
    let len = std::fs::metadata(&unet).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&unet).unwrap().set_len(len - 4096).unwrap();
    let err = format!("{:#}", checkpoint::check_pipeline(&common::local_weights(tmp.path()), true, false).unwrap_err());
    println!("truncated: {err}");
    assert!(err.contains("diffusion_pytorch_model.fp16.safetensors is truncated"), "{err}");
    assert!(err.contains("part_embedding.weight"), "every damaged component is reported: {err}");
}

/// The small configs the stages read besides the constructors' own (schedulers, the DINOv2
/// preprocessor) parse at their released content, with the values the pipeline relies on.
#[test]
fn released_side_configs_parse() {
    let read = |repo: &str, path: &str| std::fs::read_to_string(released_root().join(repo).join(path)).unwrap();
    let sdxl: lumen::models::sdxl::scheduler::SchedulerConfig =
        serde_json::from_str(&read("stabilityai--sdxl-turbo", "scheduler/scheduler_config.json")).unwrap();
    println!("sdxl scheduler: {sdxl:?}");
    let pc: lumen::models::partcrafter::scheduler::SchedulerConfig =
        serde_json::from_str(&read("wgsxm--PartCrafter", "scheduler/scheduler_config.json")).unwrap();
    println!("partcrafter scheduler: {pc:?}");
    let pre: lumen::models::partcrafter::encoder::PreprocessConfig =
        serde_json::from_str(&read("wgsxm--PartCrafter", "feature_extractor_dinov2/preprocessor_config.json")).unwrap();
    assert!(pre.do_center_crop && pre.crop_size.height == Some(224) && pre.crop_size.width == Some(224), "{pre:?}");
}
