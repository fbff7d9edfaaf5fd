use super::predict::*;
use super::*;
use crate::attention::plan::Dims;
use crate::checkpoint::{self, Model, PIPELINE};
use crate::models::partcrafter::dit::DitConfig;
use candle_core::DType;

fn released_params(model: Model) -> u64 {
    let c = PIPELINE.iter().find(|c| c.model == model).unwrap();
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/released").join(c.repo.id.replace('/', "--"));
    checkpoint::expected_tensors(c, &root).unwrap().iter().map(|e| e.numel()).sum()
}

/// The SDXL counts are what the loaders ask for at the released configs (the vendored
/// configs through the real constructors); the others are the tensor lists the synthetic
/// checkpoints use, equal to files.json's released counts; weights = params × dtype size.
#[test]
fn weights_are_parameter_counts_times_dtype_size() {
    assert_eq!(
        Stage::TextEncoders.params(),
        released_params(Model::TextEncoder) + released_params(Model::TextEncoder2)
    );
    assert_eq!(Stage::Unet.params(), released_params(Model::Unet));
    assert_eq!(Stage::VaeDecode.params(), released_params(Model::SdxlVae));
    // tests/released/files.json: DiT 1,439,621,696; DINOv2 304,368,640; RMBG 44,046,790
    // trainable + 28,800 BatchNorm statistics.
    assert_eq!(Stage::DitSampling.params(), 1_439_621_696);
    assert_eq!(Stage::Dinov2.params(), 304_368_640);
    assert_eq!(Stage::Rmbg.params(), 44_046_790 + 28_800);
    // Port guide §3.4: the decoder path used at inference.
    assert_eq!(Stage::SdfDecoding.params(), 214_208_513);
    for s in Stage::ALL {
        assert_eq!(s.weight_bytes(), s.params() * s.cuda_dtype().size_in_bytes() as u64, "{s:?}");
    }
    assert_eq!(Stage::VaeDecode.cuda_dtype(), DType::F32);
    assert_eq!(Stage::Unet.weight_bytes(), 5_134_927_368);
}

fn term(a: &Activations, prefix: &str) -> u64 {
    a.terms.iter().filter(|(n, _)| n.starts_with(prefix)).map(|t| t.1).sum()
}

/// Every hidden-state term is rows × (tokens + 1) × width: it doubles with the parts (the
/// CFG batch is 2N) and follows tokens + 1; the fused path adds nothing for attention.
#[test]
fn dit_activations_scale_with_parts_and_tokens() {
    let cfg = DitConfig::released();
    let x = |n: usize, t: usize| (2 * n * (t + 1) * 2048 * 2) as u64;
    for n in [1, 2, 4, 8] {
        let (a, b) = (dit_sampling(&cfg, n, 1024, true, None), dit_sampling(&cfg, 2 * n, 1024, true, None));
        assert_eq!(term(&a, "long skips"), 11 * x(n, 1024));
        assert_eq!(term(&b, "long skips"), 2 * term(&a, "long skips"));
        assert_eq!(term(&b, "block transient"), 2 * term(&a, "block transient"));
        assert_eq!(term(&a, "attention extra"), 0, "fused path at N={n}");
        println!("N={n}: {:.0} MiB, N={}: {:.0} MiB", a.bytes as f64 / MIB, 2 * n, b.bytes as f64 / MIB);
        // The global blocks' conditioning K/V (one row per CFG half) does not grow with N.
        let x_terms = term(&a, "long skips") + term(&a, "block transient");
        assert!(b.bytes - a.bytes >= x_terms && b.bytes <= 2 * a.bytes, "N={n}: {} vs {}", a.bytes, b.bytes);
    }
    let (t512, t1024) = (dit_sampling(&cfg, 4, 511, true, None), dit_sampling(&cfg, 4, 1023, true, None));
    assert_eq!(term(&t1024, "block transient"), 2 * term(&t512, "block transient"));
    // Without guidance half the rows.
    let plain = dit_sampling(&cfg, 4, 1024, false, None);
    assert_eq!(2 * term(&plain, "block transient"), term(&dit_sampling(&cfg, 4, 1024, true, None), "block transient"));
}

/// The safe path's scores are bounded by the score budget (two blocks: scores and
/// probabilities), where one unblocked score matrix of a global block grows as N²; the
/// unblocked figures are the design note's (§6.4: 1.1, 4.3, 17.2 GB at N = 4, 8, 16).
#[test]
fn safe_path_scores_stay_bounded_where_materialised_ones_grow_quadratically() {
    let cfg = DitConfig::released();
    for (n, gb) in [(4, 1.1), (8, 4.3), (16, 17.2)] {
        let global = dit_attention_dims(&cfg, 2 * n, n, 1024)[0];
        let full = materialised_scores_bytes(DType::F16, &global) as f64 / 1e9;
        assert!((full - gb).abs() < 0.05, "N={n}: {full:.2} GB");
        let safe = term(&dit_sampling(&cfg, n, 1024, true, Some(Path::Safe)), "attention extra");
        let budget = 2 * crate::attention::SCORE_BUDGET_BYTES as u64;
        assert!(safe > 0 && safe <= budget + 3 * global.lq as u64 * 4096 * 2 * 2, "N={n}: {safe}");
    }
    // Blocking by hand: 2 × 16 × 4100 keys × 2 B = 262 400 B a query row → 1023 rows a block.
    let s = Dims { b: 2, h: 16, lq: 4100, lk: 4100, d: 128, dv: 128 };
    let rows = 256 * 1024 * 1024 / (2 * 16 * 4100 * 2);
    assert_eq!(rows, 1023);
    let scores = (rows * 2 * 16 * 4100 * 2) as u64;
    let q = (2 * 16 * 4100 * 128 * 2) as u64;
    let want = q + 2 * scores + (rows * 2 * 16 * 128 * 2) as u64 + q; // q scaled, blocks, block copy, cat
    assert_eq!(attention_extra_bytes(Path::Safe, DType::F16, &s), want);
    assert_eq!(attention_extra_bytes(Path::Fused, DType::F16, &s), 0);
    // One block: no concatenation; q is still scaled (by 1/8) into a copy.
    let s64 = Dims { d: 64, dv: 64, lq: 100, lk: 100, b: 1, h: 1 };
    assert_eq!(attention_extra_bytes(Path::Safe, DType::F16, &s64), (2 * 100 * 100 * 2 + 2 * 100 * 64 * 2) as u64);
}

/// The VAE decoder's largest tensor set, checked by hand: up block 3's first ResNet
/// (256 → 128 channels at 512², f32): input + h + norm(h) + conv2 + shortcut = 768 maps of
/// 512² × 4 B = 768 MiB.
#[test]
fn vae_decode_peak_is_the_last_blocks_first_resnet() {
    let a = vae_decode(&[128, 256, 512, 512], 3, 64);
    assert_eq!(a.terms[0].0, "up block 3 ResNet 256→128 @512²");
    assert_eq!(a.terms[0].1, 768 << 20);
    // Half the latent, a quarter of the maps.
    assert_eq!(vae_decode(&[128, 256, 512, 512], 3, 32).terms[0].1, 192 << 20);
}

#[test]
fn rmbg_and_sdf_predictions_scale_with_their_inputs() {
    let (big, small) = (rmbg(1024), rmbg(512));
    assert_eq!(term(&big, "kept"), 4 * term(&small, "kept"));
    assert_eq!(term(&big, "stage1d RSU"), 4 * term(&small, "stage1d RSU"));
    let cfg = crate::models::partcrafter::vae::VaeConfig::released();
    let (a, b) = (sdf_decoding(&cfg, 16_384, 1024, None), sdf_decoding(&cfg, 32_768, 1024, None));
    assert_eq!(term(&b, "query chunk"), 2 * term(&a, "query chunk"));
    assert_eq!(term(&b, "query chunk"), 10 * 32_768 * 1024 * 2);
    assert_eq!(term(&b, "attention extra"), 0, "head dim 128: fused");
    assert!(term(&sdf_decoding(&cfg, 32_768, 1024, Some(Path::Safe)), "attention extra") > 0);
}

/// The pipeline peak is its parts; the DiT is the largest stage at 16 parts and the total
/// grows with N.
#[test]
fn pipeline_peak_adds_resident_weights_to_the_largest_stage() {
    let p16 = pipeline(16, None);
    assert_eq!(p16.largest.0, Stage::DitSampling);
    assert_eq!(p16.weights, Stage::ALL.iter().map(|s| s.weight_bytes()).sum::<u64>());
    assert_eq!(p16.total(), p16.weights + p16.largest.1 + CUDNN_WORKSPACE_BYTES + CONTEXT_BYTES);
    let totals: Vec<u64> = (1..=16).map(|n| pipeline(n, None).total()).collect();
    assert!(totals.windows(2).all(|w| w[0] <= w[1]), "{totals:?}");
    println!("pipeline N=16: {:.2} GiB of {:.1} usable", p16.total() as f64 / GIB, L4_USABLE_BYTES as f64 / GIB);
}

/// The suite on the CPU: a row per stage, per part count and per pipeline size, the verdict,
/// predictions in `peak MiB`, nothing measured and saying so.
#[test]
fn suite_rows_on_cpu_are_predictions_only() {
    let rows = run(&BenchOptions::cpu(1, true)).unwrap();
    assert_eq!(rows.len(), 6 + 16 + 16 + 1);
    for stage in Stage::ALL.iter().filter(|s| **s != Stage::DitSampling) {
        assert!(rows.iter().any(|r| r.name == format!("predicted {}", stage.name())), "{stage:?}");
    }
    for n in 1..=16 {
        assert!(rows.iter().any(|r| r.name == format!("predicted dit sampling cfg N={n}")));
        assert!(rows.iter().any(|r| r.name == format!("predicted pipeline N={n}")));
    }
    for r in &rows {
        assert_eq!(r.suite, "memory");
        assert_eq!(r.measured_mib, None);
        assert_eq!(r.peak_mem_mib, r.predicted_mib);
        assert!(r.note.contains("prediction only"), "{}", r.note);
    }
    assert!(rows.last().unwrap().note.contains("L4"));
    let json = serde_json::to_value(&rows).unwrap();
    assert!(json[0]["predicted_mib"].as_f64().unwrap() > 0.0);
    assert!(json[0].get("measured_mib").is_none());
}

/// The configs the predictions read are the vendored released ones.
#[test]
fn prediction_configs_are_the_released_ones() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/released");
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(root.join(p)).unwrap()).unwrap()
    };
    let dino = read("wgsxm--PartCrafter/image_encoder_dinov2/config.json");
    let ours: serde_json::Value = serde_json::from_str(DINOV2_CONFIG).unwrap();
    for (k, v) in ours.as_object().unwrap() {
        assert_eq!(dino[k].as_f64(), v.as_f64(), "{k}");
        assert_eq!(dino[k].as_bool(), v.as_bool(), "{k}");
    }
    let vae = read("stabilityai--sdxl-turbo/vae/config.json");
    let ours: serde_json::Value = serde_json::from_str(crate::diagnostics::bench::sdxl::VAE_CONFIG).unwrap();
    assert_eq!(vae["block_out_channels"], ours["block_out_channels"]);
    assert_eq!(vae["layers_per_block"], ours["layers_per_block"]);
}
