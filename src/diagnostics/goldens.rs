//! Golden numerics on any device: every model's golden cases from a goldens folder
//! (`tests/goldens` layout), run through the library on a chosen device and dtype, each
//! output compared with the reference's recorded output.
//!
//! This is what `lumen preflight --goldens DIR` runs: a deploy-time check that this GPU,
//! driver and build compute the reference's function, with no Rust toolchain on the machine.
//! The golden tests under `tests/` check the same cases on the CPU in more detail (traces,
//! intermediates, tokenizers, image processing); here only the cases whose arithmetic runs
//! on the device are run, each reduced to its worst output.
//!
//! Tolerances ([`tolerance`]): f32 keeps the manifest's rel-L2 tolerance (the references were
//! recorded in f32 on a CPU; candle leaves TF32 off for f32 matmuls, and this module sets it
//! off explicitly so a build default cannot loosen it). f16 and bf16 cannot meet f32
//! tolerances: every weight and activation is rounded to the format's unit roundoff u (f16
//! 2^-11 ≈ 4.9e-4, bf16 2^-8 ≈ 3.9e-3) and the error grows with depth (roughly u·√L times
//! the network's amplification over L layers). Measured with this module on the CPU in f16
//! (BENCHMARKS.md), the worst case of the 2–10-layer golden configs is 6.2 u (SDXL VAE decode,
//! 3.0e-3), the rest 1.4–4.5 u. The tolerance is 32 u (f16 1.6e-2, bf16 0.125): five times
//! the worst measured, room for a GPU's other summation order and fused kernels, and still a
//! check that the half-precision path computes the same function (a wrong result is O(1)).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Tensor};
use serde::Serialize;
use serde_json::Value;

use super::compare::{centered_rel_l2, rel_l2};
use crate::models::partcrafter::dit::{DitConfig, PartCrafterDit, PartIds};
use crate::models::partcrafter::encoder::{Dinov2Config, Dinov2Model};
use crate::models::partcrafter::sampler;
use crate::models::partcrafter::scheduler::{RectifiedFlowScheduler, SchedulerConfig as PcSchedulerConfig};
use crate::models::partcrafter::vae::{CrossAttention, SdfDecoder};
use crate::models::partcrafter::{IMAGE_ENCODER_DIR, TRANSFORMER_DIR};
use crate::models::rmbg::{BriaRmbg, RmbgOutput, Taps};
use crate::models::sdxl;
use crate::models::sdxl::unet::AddedCond;
use crate::synth::{write_synthetic_safetensors, TensorSpec};
use crate::weights::{open_model_dir, read_config};

/// The components this module knows, in the order it runs them.
pub const COMPONENTS: [&str; 3] = ["sdxl", "rmbg", "partcrafter"];

/// Half-precision tolerance in units of the format's unit roundoff (see the module note).
pub const HALF_TOL_UNITS: f64 = 32.0;

/// The rel-L2 tolerance for a case whose f32 manifest tolerance is `manifest_tol`, run in
/// `dtype` (see the module note for why these values).
pub fn tolerance(manifest_tol: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F16 => manifest_tol.max(HALF_TOL_UNITS * f16_unit_roundoff()),
        DType::BF16 => manifest_tol.max(HALF_TOL_UNITS * bf16_unit_roundoff()),
        _ => manifest_tol,
    }
}

/// 2^-11: half the gap between 1 and the next f16.
pub fn f16_unit_roundoff() -> f64 {
    half::f16::EPSILON.to_f64() / 2.0
}

/// 2^-8.
pub fn bf16_unit_roundoff() -> f64 {
    half::bf16::EPSILON.to_f64() / 2.0
}

/// One compared output.
#[derive(Debug, Clone, Serialize)]
pub struct OutputCheck {
    pub output: String,
    /// `rel_l2` (‖got − ref‖ / ‖ref‖) or `centered_rel_l2` (‖got − ref‖ / ‖ref − mean‖).
    pub metric: &'static str,
    pub error: f64,
    pub tol: f64,
}

impl OutputCheck {
    pub fn pass(&self) -> bool {
        self.error <= self.tol
    }
}

/// One golden case on one device and dtype, reduced to its worst output (largest
/// error / tolerance); `outputs` holds every comparison.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub component: String,
    pub case: String,
    pub device: String,
    pub dtype: String,
    pub pass: bool,
    pub worst: OutputCheck,
    pub outputs: Vec<OutputCheck>,
}

/// Runs every golden case of every component found under `root` on `device` in `dtype`.
/// BriaRMBG runs in f32 whatever `dtype` (as the pipeline runs it), so its cases are part of
/// the f32 pass only. Fails when `root` holds none of [`COMPONENTS`].
pub fn run(root: &Path, device: &Device, dtype: DType) -> Result<Vec<CaseResult>> {
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(false);
    let found: Vec<&str> =
        COMPONENTS.iter().copied().filter(|c| root.join(c).join("manifest.json").is_file()).collect();
    if found.is_empty() {
        bail!("{} holds no golden component ({} with a manifest.json)", root.display(), COMPONENTS.join(", "));
    }
    let scratch = Scratch::new()?;
    let mut results = Vec::new();
    for component in found {
        let dir = root.join(component);
        let manifest = read_json(&dir.join("manifest.json"))?;
        let ctx = Ctx { dir: &dir, manifest: &manifest, device, dtype, scratch: &scratch.0.join(component) };
        let cases = match component {
            "sdxl" => sdxl_cases(&ctx),
            "rmbg" if dtype == DType::F32 => rmbg_cases(&ctx),
            "rmbg" => Ok(Vec::new()),
            _ => partcrafter_cases(&ctx),
        }
        .with_context(|| format!("golden component {component} on {device:?} {dtype:?}"))?;
        for (case, outputs) in cases {
            results.push(case_result(
                component,
                &case,
                device,
                if component == "rmbg" { DType::F32 } else { dtype },
                outputs,
            )?);
        }
    }
    Ok(results)
}

fn case_result(
    component: &str,
    case: &str,
    device: &Device,
    dtype: DType,
    outputs: Vec<OutputCheck>,
) -> Result<CaseResult> {
    let worst = outputs
        .iter()
        .max_by(|a, b| (a.error / a.tol.max(1e-30)).total_cmp(&(b.error / b.tol.max(1e-30))))
        .with_context(|| format!("{component}/{case}: no output compared"))?
        .clone();
    Ok(CaseResult {
        component: component.into(),
        case: case.into(),
        device: crate::device::label(device),
        dtype: crate::device::dtype_name(dtype).to_string(),
        pass: outputs.iter().all(|o| o.pass() && o.error.is_finite()),
        worst,
        outputs,
    })
}

/// A scratch folder for the synthetic checkpoints, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!("lumen-goldens-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Ctx<'a> {
    dir: &'a Path,
    manifest: &'a Value,
    device: &'a Device,
    dtype: DType,
    scratch: &'a Path,
}

type Cases = Vec<(String, Vec<OutputCheck>)>;

impl Ctx<'_> {
    /// The case entry: `cases` is an object (sdxl) or a list of `{"name"}` (rmbg, partcrafter).
    fn case(&self, name: &str) -> Result<&Value> {
        let cases = &self.manifest["cases"];
        let c = match cases.as_array() {
            Some(list) => list.iter().find(|c| c["name"] == name),
            None => cases.get(name),
        };
        c.with_context(|| format!("case {name} not in the manifest"))
    }

    fn tensors(&self, case: &Value) -> Result<HashMap<String, Tensor>> {
        let file = self.dir.join(case["file"].as_str().context("case without file")?);
        candle_core::safetensors::load(&file, &Device::Cpu).with_context(|| format!("loading {}", file.display()))
    }

    /// A float input on the device in the run's dtype.
    fn input(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.to_device(self.device)?.to_dtype(self.dtype)?)
    }

    fn check(&self, output: &str, got: &Tensor, want: &Tensor, manifest_tol: f64) -> Result<OutputCheck> {
        let got = got.to_dtype(DType::F32)?.reshape(want.shape())?;
        let err = rel_l2(&got, want).with_context(|| format!("output {output}"))?;
        Ok(OutputCheck {
            output: output.into(),
            metric: "rel_l2",
            error: err,
            tol: tolerance(manifest_tol, self.dtype),
        })
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

fn specs(entries: &Value) -> Result<Vec<TensorSpec>> {
    entries.as_array().context("tensor list")?.iter().map(TensorSpec::from_json).collect()
}

fn f64_of(v: &Value, what: &str) -> Result<f64> {
    v.as_f64().with_context(|| format!("{what} is not a number"))
}

fn ids(t: &Tensor) -> Result<Vec<Vec<u32>>> {
    Ok(t.to_dtype(DType::I64)?
        .to_vec2::<i64>()?
        .into_iter()
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect())
}

/// SDXL: both text encoders, one UNet forward, the VAE decode (the tiny golden config).
fn sdxl_cases(c: &Ctx) -> Result<Cases> {
    let (dev, dtype, m) = (c.device, c.dtype, c.manifest);
    let mut out = Vec::new();

    let case = c.case("text_encoders")?;
    let tol = f64_of(&case["rel_l2_tol"], "text_encoders tolerance")?;
    let t = c.tensors(case)?;
    let te1 =
        sdxl::load_text_encoder(&sdxl::synthetic::write_module(c.scratch, m, "text_encoder")?, false, dev, dtype)?;
    let te2 =
        sdxl::load_text_encoder(&sdxl::synthetic::write_module(c.scratch, m, "text_encoder_2")?, true, dev, dtype)?;
    let o1 = te1.forward(&sdxl::clip::ids_tensor(&ids(&t["input_ids_1"])?, dev)?)?;
    let o2 = te2.forward(&sdxl::clip::ids_tensor(&ids(&t["input_ids_2"])?, dev)?)?;
    let pe = sdxl::clip::concat_features(&o1, &o2)?;
    let text_embeds = o2.text_embeds.as_ref().context("text_encoder_2 without projection")?;
    out.push((
        "text_encoders".to_string(),
        vec![
            c.check("te1_last_hidden_state", &o1.last_hidden_state, &t["te1_last_hidden_state"], tol)?,
            c.check("te2_last_hidden_state", &o2.last_hidden_state, &t["te2_last_hidden_state"], tol)?,
            c.check("te2_text_embeds", text_embeds, &t["te2_text_embeds"], tol)?,
            c.check("prompt_embeds", &pe, &t["prompt_embeds"], tol)?,
        ],
    ));
    drop((te1, te2));

    let case = c.case("unet_forward")?;
    let t = c.tensors(case)?;
    let unet = sdxl::load_unet(&sdxl::synthetic::write_module(c.scratch, m, "unet")?, dev, dtype)?;
    let timestep = t["timestep"].to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?[0];
    let (text_embeds, time_ids) = (c.input(&t["text_embeds"])?, c.input(&t["time_ids"])?);
    let got = unet.forward(
        &c.input(&t["sample"])?,
        timestep,
        &c.input(&t["encoder_hidden_states"])?,
        Some(AddedCond { text_embeds: &text_embeds, time_ids: &time_ids }),
    )?;
    out.push((
        "unet_forward".into(),
        vec![c.check("noise_pred", &got, &t["noise_pred"], f64_of(&case["rel_l2_tol"], "tolerance")?)?],
    ));
    drop(unet);

    let case = c.case("vae_decode")?;
    let t = c.tensors(case)?;
    let vae = sdxl::load_vae(&sdxl::synthetic::write_module(c.scratch, m, "vae")?, dev, dtype)?;
    let got = vae.decode(&c.input(&t["latents"])?)?;
    out.push((
        "vae_decode".into(),
        vec![c.check("image", &got, &t["image"], f64_of(&case["rel_l2_tol"], "tolerance")?)?],
    ));
    Ok(out)
}

/// BriaRMBG at its released size: the 320² and odd-size forwards (every recorded output and
/// inner layer) and the 1024² d1 (f32, as the pipeline runs it).
fn rmbg_cases(c: &Ctx) -> Result<Cases> {
    let m = c.manifest;
    std::fs::create_dir_all(c.scratch)?;
    std::fs::write(c.scratch.join("config.json"), m["config"].to_string())?;
    write_synthetic_safetensors(&specs(&m["tensors"])?, None, &c.scratch.join("model.safetensors"))?;
    let net = BriaRmbg::load_dir(c.scratch, c.device)?;
    let mut out = Vec::new();
    for name in ["forward_320", "forward_odd"] {
        let case = c.case(name)?;
        let t = c.tensors(case)?;
        let x = &t[case["inputs"]["x"]["tensor"].as_str().context("input tensor name")?];
        let mut taps = Taps::on();
        let result = net.forward_with_taps(&x.to_device(c.device)?, &mut taps)?;
        let taps = taps.into_map();
        let mut checks = Vec::new();
        for (output, spec) in case["outputs"].as_object().context("outputs")? {
            let got = rmbg_output(output, &result, &taps)?;
            checks.extend(rmbg_checks(c, output, got, &t[output.as_str()], spec)?);
        }
        out.push((name.to_string(), checks));
    }
    let case = c.case("forward_1024")?;
    let t = c.tensors(case)?;
    let shape: Vec<usize> = serde_json::from_value(case["inputs"]["x"]["shape"].clone())?;
    let numel: usize = shape.iter().product();
    // Not stored: rule-5 values of a rank-1 tensor named `inputs.forward_1024`.
    let x = Tensor::from_vec(crate::synth::synth_values_f32("inputs.forward_1024", &[numel]), shape, c.device)?;
    let d1 = net.forward_mask(&x)?;
    out.push(("forward_1024".into(), rmbg_checks(c, "d1", &d1, &t["d1"], &case["outputs"]["d1"])?));
    Ok(out)
}

fn rmbg_output<'a>(name: &str, out: &'a RmbgOutput, taps: &'a HashMap<String, Tensor>) -> Result<&'a Tensor> {
    const FEATURES: [&str; 6] = ["hx1d", "hx2d", "hx3d", "hx4d", "hx5d", "hx6"];
    if let Some(k) = name.strip_prefix('d').and_then(|k| k.parse::<usize>().ok()) {
        return out.masks.get(k.wrapping_sub(1)).context("mask index");
    }
    if let Some(k) =
        name.strip_prefix("side").and_then(|s| s.strip_suffix("_logits")).and_then(|k| k.parse::<usize>().ok())
    {
        return out.side_logits.get(k.wrapping_sub(1)).context("side index");
    }
    if let Some(k) = FEATURES.iter().position(|f| *f == name) {
        return Ok(&out.features[k]);
    }
    taps.get(name).with_context(|| format!("the port records no tensor named {name}"))
}

/// Plain and (where the manifest gives one) centred rel-L2: synthetic-weight masks are
/// nearly flat, so the centred metric is the one that sees an error.
fn rmbg_checks(c: &Ctx, output: &str, got: &Tensor, want: &Tensor, spec: &Value) -> Result<Vec<OutputCheck>> {
    let mut checks = vec![c.check(output, got, want, f64_of(&spec["rel_l2_tol"], "rel_l2_tol")?)?];
    if let Some(ctol) = spec["centered_rel_l2_tol"].as_f64() {
        let err = centered_rel_l2(&got.to_dtype(DType::F32)?, want)?;
        checks.push(OutputCheck { output: output.into(), metric: "centered_rel_l2", error: err, tol: ctol });
    }
    Ok(checks)
}

/// PartCrafter: DINOv2, the DiT forward (CFG batch and batch 1), the guided sampler and the
/// SDF decoder (the tiny golden config).
/// PartCrafter's cases: the DINOv2 encoder, the DiT forward (batched and one part), the
/// sampling loop on that DiT, and the SDF decoder.
fn partcrafter_cases(c: &Ctx) -> Result<Cases> {
    let mut out = vec![pc_image_encoder(c)?];
    let m = &c.manifest;
    let dit_dir = pc_write_module(c, TRANSFORMER_DIR, "transformer", "diffusion_pytorch_model.safetensors")?;
    let dit_cfg: DitConfig = read_config(&dit_dir)?;
    let dit = PartCrafterDit::new(open_model_dir(&dit_dir, c.dtype, c.device)?, &dit_cfg)?;
    for (name, prefix) in [("transformer_forward", ""), ("transformer_forward_b1", "b1_")] {
        out.push(pc_transformer_forward(c, &dit, name, prefix)?);
    }
    let sched_cfg: PcSchedulerConfig = serde_json::from_value(m["config"]["scheduler"].clone())?;
    out.push(pc_sampler(c, &dit, sched_cfg)?);
    drop(dit);
    out.push(pc_vae_decode(c)?);
    Ok(out)
}

/// A case's tolerance: one number, or one per output.
fn pc_tol(case: &Value, output: &str) -> Result<f64> {
    let t = &case["rel_l2_tol"];
    t.as_f64().or_else(|| t[output].as_f64()).with_context(|| format!("no tolerance for {output}"))
}

/// A scalar input the case recorded (`num_parts`, `guidance_scale`, …).
fn pc_input_value(case: &Value, name: &str) -> Result<Value> {
    case["inputs"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name))
        .map(|i| i["value"].clone())
        .with_context(|| format!("input {name}"))
}

fn pc_num_parts(case: &Value) -> Result<usize> {
    Ok(pc_input_value(case, "attention_kwargs.num_parts")?.as_u64().context("num_parts")? as usize)
}

/// Writes the component's config and synthetic weights as `scratch/sub/{config.json, file}`.
fn pc_write_module(c: &Ctx, sub: &str, component: &str, file: &str) -> Result<PathBuf> {
    let dir = c.scratch.join(sub);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("config.json"), c.manifest["config"][component].to_string())?;
    write_synthetic_safetensors(&specs(&c.manifest["tensors"][component]["entries"])?, None, &dir.join(file))?;
    Ok(dir)
}

fn pc_image_encoder(c: &Ctx) -> Result<(String, Vec<OutputCheck>)> {
    let case = c.case("image_encoder")?;
    let t = c.tensors(case)?;
    let enc_dir = pc_write_module(c, IMAGE_ENCODER_DIR, "image_encoder_dinov2", "model.safetensors")?;
    let cfg: Dinov2Config = read_config(&enc_dir)?;
    let pixels = &t["pixel_values"];
    let (_, _, h, w) = pixels.dims4()?;
    let enc = Dinov2Model::new(open_model_dir(&enc_dir, c.dtype, c.device)?, &cfg, Some((h, w)))?;
    let got = enc.forward(&c.input(pixels)?)?;
    let check = c.check("image_embeds", &got, &t["image_embeds"], pc_tol(case, "image_embeds")?)?;
    Ok(("image_encoder".into(), vec![check]))
}

/// One DiT forward; `prefix` picks the recorded tensors of the case (`b1_` for one part).
fn pc_transformer_forward(
    c: &Ctx,
    dit: &PartCrafterDit,
    name: &str,
    prefix: &str,
) -> Result<(String, Vec<OutputCheck>)> {
    let case = c.case(name)?;
    let t = c.tensors(case)?;
    let get = |k: &str| t.get(&format!("{prefix}{k}")).with_context(|| format!("{prefix}{k} not recorded"));
    let got = dit.forward(
        &c.input(get("hidden_states")?)?,
        &get("timestep")?.to_device(c.device)?,
        &c.input(get("encoder_hidden_states")?)?,
        pc_num_parts(case)?,
        PartIds::Batch,
    )?;
    Ok((name.into(), vec![c.check("output", &got, get("output")?, pc_tol(case, "output")?)?]))
}

fn pc_sampler(c: &Ctx, dit: &PartCrafterDit, sched_cfg: PcSchedulerConfig) -> Result<(String, Vec<OutputCheck>)> {
    let case = c.case("sampler")?;
    let t = c.tensors(case)?;
    let steps = pc_input_value(case, "num_inference_steps")?.as_u64().context("steps")? as usize;
    let guidance = pc_input_value(case, "guidance_scale")?.as_f64().context("guidance")?;
    let n = pc_num_parts(case)?;
    // The recorded conditioning is [zeros ×N ; embeds ×N]; the sampler builds the zeros itself.
    let embeds = t["encoder_hidden_states"].narrow(0, n, n)?.to_device(c.device)?;
    let noise = t["init_noise"].to_device(c.device)?;
    let scheduler = RectifiedFlowScheduler::new(sched_cfg);
    let got = sampler::sample(dit, &scheduler, &embeds, &noise, steps, guidance, PartIds::Batch, None)?;
    let check = c.check("final_latents", &got, &t["final_latents"], pc_tol(case, "final_latents")?)?;
    Ok(("sampler".into(), vec![check]))
}

/// The SDF decoder per part: its key/value cache, then the SDF by full and by top-k attention.
fn pc_vae_decode(c: &Ctx) -> Result<(String, Vec<OutputCheck>)> {
    let case = c.case("vae_decode")?;
    let t = c.tensors(case)?;
    let vae_dir = pc_write_module(c, "vae", "vae", "diffusion_pytorch_model.safetensors")?;
    let decoder = SdfDecoder::load(&vae_dir, c.device, c.dtype)?;
    let tol = pc_tol(case, "sdf")?;
    let points = t["points"].to_device(c.device)?;
    let mut checks = Vec::new();
    for p in 0..t["latents"].dim(0)? {
        let part = decoder.prepare(&t["latents"].i(p)?.to_device(c.device)?)?;
        checks.push(c.check(&format!("part{p} kv_cache"), &part.kv_cache, &t["kv_cache"].i(p)?, tol)?);
        for (mode, key) in [(CrossAttention::Full, "sdf"), (CrossAttention::TopKFirstChunk, "sdf_flash_topk")] {
            let got = decoder.decode_prepared(&part, &points, mode)?;
            checks.push(c.check(&format!("part{p} {key}"), &got, &t[key].i(p)?, tol)?);
        }
    }
    Ok(("vae_decode".into(), checks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerances_follow_the_dtype() {
        assert_eq!(f16_unit_roundoff(), 2f64.powi(-11));
        assert_eq!(bf16_unit_roundoff(), 2f64.powi(-8));
        assert_eq!(tolerance(1e-4, DType::F32), 1e-4);
        assert_eq!(tolerance(1e-4, DType::F16), 32.0 * 2f64.powi(-11));
        assert_eq!(tolerance(1e-4, DType::BF16), 0.125);
        // A manifest tolerance looser than the dtype's is kept.
        assert_eq!(tolerance(0.5, DType::F16), 0.5);
    }

    #[test]
    fn metrics() {
        let want = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu).unwrap();
        let got = Tensor::new(&[1f32, 2., 3., 5.], &Device::Cpu).unwrap();
        assert!((rel_l2(&got, &want).unwrap() - 1.0 / 30f64.sqrt()).abs() < 1e-12);
        assert!((centered_rel_l2(&got, &want).unwrap() - 1.0 / 5f64.sqrt()).abs() < 1e-12);
        assert!(rel_l2(&got, &want.reshape((2, 2)).unwrap()).is_err());
    }
}
