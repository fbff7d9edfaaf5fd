//! Checkpoint structure from safetensors headers alone: what `preflight` (and the pipeline,
//! before it maps gigabytes) checks in seconds, and what the `released_*` tests check at the
//! released sizes without a byte of weights.
//!
//! The tensor list a stage expects is written down in one place only: its constructor, which
//! asks a `VarBuilder` for every tensor by name and shape. So the checks run the real
//! constructors against a [`StructureBackend`] that looks each requested name up in the parsed
//! headers, checks shape and dtype, and hands back a one-element tensor broadcast to the shape
//! (nothing of the full size is allocated). The same backend without headers records what is
//! asked for: that is the expected list the released parameter counts are checked against.
//!
//! Memory: a constructor that transforms weights at load time materialises what it computes:
//! RMBG folds BatchNorm into its convolutions (44 M values), the PartCrafter attentions undo the
//! head-interleaved Q/K/V layout (352 M values in the DiT). The checks therefore build in f16
//! (the tensor list does not depend on the dtype; half the bytes of f32) and drop each stage
//! before building the next, so the peak stays below a gigabyte for the whole pipeline.
//!
//! Headers are read with two small reads per file (length, then JSON); the data section is
//! never touched, only its length compared with what the header promises, which is how a
//! truncated download shows.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

use crate::models::{partcrafter, rmbg, sdxl};
use crate::weights::{self, Repo, WeightsSource, PARTCRAFTER, RMBG, SDXL_TURBO, SDXL_VAE_FP16_FIX};

/// The network a weights file feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// SDXL `text_encoder/` (CLIPTextModel).
    TextEncoder,
    /// SDXL `text_encoder_2/` (CLIPTextModelWithProjection).
    TextEncoder2,
    Unet,
    /// SDXL's VAE (decoder only is loaded).
    SdxlVae,
    Rmbg,
    /// PartCrafter `image_encoder_dinov2/`.
    ImageEncoder,
    /// PartCrafter `transformer/` (the part-aware DiT).
    Transformer,
    /// PartCrafter `vae/` (the SDF decoder only is loaded).
    SdfVae,
}

/// One weights folder of a repository and the network it feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Component {
    pub repo: Repo,
    /// Folder inside the repository (`""` for the root).
    pub folder: &'static str,
    pub model: Model,
}

impl Component {
    const fn new(repo: Repo, folder: &'static str, model: Model) -> Self {
        Self { repo, folder, model }
    }

    /// `stabilityai/sdxl-turbo unet/`, for messages.
    pub fn label(&self) -> String {
        if self.folder.is_empty() {
            self.repo.id.to_string()
        } else {
            format!("{} {}/", self.repo.id, self.folder)
        }
    }

    /// The safetensors file(s) this component's loader opens in `dir` (its folder): for the
    /// SDXL components the `.fp16` variant first when `half`, as [`sdxl::component_weights`].
    pub fn weight_files(&self, dir: &Path, half: bool) -> Result<Vec<PathBuf>> {
        match self.model {
            Model::TextEncoder | Model::TextEncoder2 => Ok(vec![sdxl::component_weights(dir, "model", half)?]),
            Model::Unet | Model::SdxlVae => Ok(vec![sdxl::component_weights(dir, "diffusion_pytorch_model", half)?]),
            _ => weights::safetensors_files(dir),
        }
    }

    /// Whether the loader opens the half-precision variant on a device that runs in half
    /// precision: SDXL's own VAE always runs in f32 (its config says `force_upcast`).
    fn half_on(&self, half_device: bool) -> bool {
        half_device && !(self.model == Model::SdxlVae && self.repo == SDXL_TURBO)
    }
}

/// Every weights folder the `partcrafter` pipeline reads, in stage order.
pub const PIPELINE: [Component; 8] = [
    Component::new(SDXL_TURBO, "text_encoder", Model::TextEncoder),
    Component::new(SDXL_TURBO, "text_encoder_2", Model::TextEncoder2),
    Component::new(SDXL_TURBO, "unet", Model::Unet),
    Component::new(SDXL_TURBO, "vae", Model::SdxlVae),
    Component::new(RMBG, "", Model::Rmbg),
    Component::new(PARTCRAFTER, "image_encoder_dinov2", Model::ImageEncoder),
    Component::new(PARTCRAFTER, "transformer", Model::Transformer),
    Component::new(PARTCRAFTER, "vae", Model::SdfVae),
];

/// The parsed header of one safetensors file.
#[derive(Debug, Clone)]
pub struct Header {
    pub path: PathBuf,
    /// N: the JSON length, padding included (the file starts with 8 + N header bytes).
    pub header_len: u64,
    pub metadata: Metadata,
}

impl Header {
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.metadata.info(name)
    }
}

/// Largest header accepted (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Reads and validates the header of a safetensors file without reading its data: the JSON
/// parses, the tensors' byte ranges are contiguous and match their shapes and dtypes, and the
/// file is exactly as long as the header says (shorter: truncated; longer: not a safetensors
/// file as written).
pub fn read_header(path: &Path) -> Result<Header> {
    let mut file = std::fs::File::open(path).with_context(|| format!("weights file {} is missing", path.display()))?;
    let file_len = file.metadata()?.len();
    let truncated = |what: String| anyhow::anyhow!("weights file {} is truncated: {what}", path.display());
    if file_len < 8 {
        return Err(truncated(format!("{file_len} bytes, not even the 8-byte header length")));
    }
    let mut n = [0u8; 8];
    file.read_exact(&mut n)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER {
        bail!("weights file {} is not a safetensors file (header length {n})", path.display());
    }
    if 8 + n > file_len {
        return Err(truncated(format!("the header needs {} bytes, the file has {file_len}", 8 + n)));
    }
    let mut json = vec![0u8; n as usize];
    file.read_exact(&mut json)?;
    let metadata: Metadata = serde_json::from_slice(&json)
        .map_err(|e| anyhow::anyhow!("weights file {} has a corrupt header: {e}", path.display()))?;
    let data = metadata.data_len() as u64;
    let have = file_len - 8 - n;
    if have < data {
        return Err(truncated(format!("its header lists {data} bytes of tensor data, the file holds {have}")));
    }
    if have > data {
        bail!(
            "weights file {} is corrupt: {} bytes follow the {data} bytes of tensor data its header lists",
            path.display(),
            have - data
        );
    }
    Ok(Header { path: path.to_path_buf(), header_len: n, metadata })
}

/// One tensor a constructor asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<usize>,
}

impl Expected {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// A `VarBuilder` backend that serves shapes, not values: with headers it checks each
/// requested tensor against them; without, it accepts everything. Either way it records what
/// was asked for.
pub struct StructureBackend {
    headers: Option<Vec<Header>>,
    index: HashMap<String, usize>,
    requested: Arc<Mutex<Vec<Expected>>>,
}

impl StructureBackend {
    /// Checks against `headers` (a tensor is looked up in the first file that has it).
    pub fn checking(headers: Vec<Header>) -> (Self, Arc<Mutex<Vec<Expected>>>) {
        let mut index = HashMap::new();
        for (i, h) in headers.iter().enumerate() {
            for name in h.metadata.tensors().into_keys() {
                index.entry(name).or_insert(i);
            }
        }
        let requested = Arc::default();
        (Self { headers: Some(headers), index, requested: Arc::clone(&requested) }, requested)
    }

    /// Accepts every request and records it. `contains_tensor` answers false, so constructors
    /// that probe for legacy names (old VAE attention keys, a `dinov2.` prefix) take the
    /// current diffusers/transformers names.
    pub fn recording() -> (Self, Arc<Mutex<Vec<Expected>>>) {
        let requested = Arc::default();
        (Self { headers: None, index: HashMap::new(), requested: Arc::clone(&requested) }, requested)
    }

    fn files(&self) -> String {
        let list = self.headers.iter().flatten().map(|h| h.path.display().to_string()).collect::<Vec<_>>();
        list.join(", ")
    }
}

/// A tensor of `shape` that holds one element: enough for constructors, which only keep or
/// reshape what they are given.
fn placeholder(shape: &Shape, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

/// A plain message: these errors are the user's to read (candle's `bail!` would append a
/// backtrace to the text when `RUST_BACKTRACE` is set).
fn msg(text: String) -> candle_core::Error {
    candle_core::Error::Msg(text)
}

fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

impl SimpleBackend for StructureBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.requested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Expected { name: name.to_string(), shape: s.dims().to_vec() });
        if let Some(headers) = &self.headers {
            let Some(&i) = self.index.get(name) else {
                return Err(msg(format!("tensor {name} {:?} is missing from {}", s.dims(), self.files())));
            };
            let (path, info) = (headers[i].path.display(), headers[i].tensor(name).expect("indexed"));
            if info.shape != s.dims() {
                return Err(msg(format!(
                    "tensor {name} in {path} has shape {:?}, the model expects {:?}",
                    info.shape,
                    s.dims()
                )));
            }
            if !is_float(info.dtype) {
                return Err(msg(format!(
                    "tensor {name} in {path} has dtype {:?}, the model needs a float tensor (F32, F16 or BF16)",
                    info.dtype
                )));
            }
        }
        placeholder(&s, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some((headers, &i)) = self.headers.as_ref().zip(self.index.get(name)) else {
            return Err(msg(format!("tensor {name} is missing from {}", self.files())));
        };
        let shape = Shape::from(headers[i].tensor(name).expect("indexed").shape.clone());
        self.requested
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Expected { name: name.to_string(), shape: shape.dims().to_vec() });
        placeholder(&shape, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

/// Structure checks build in f16: the tensor list does not depend on the dtype, and what
/// constructors materialise takes half the memory of f32.
const BUILD_DTYPE: DType = DType::F16;

/// A small JSON file that may be absent (the loaders fall back to the released defaults).
fn optional_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> Result<T> {
    if !path.is_file() {
        return Ok(T::default());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} does not match the expected configuration", path.display()))
}

/// Runs `model`'s constructor on `vb` with the configs found in `dir` (the component folder)
/// and `root` (the repository folder, for configs of sibling folders), as its loader does.
fn construct(model: Model, root: &Path, dir: &Path, vb: VarBuilder) -> Result<()> {
    use partcrafter::encoder::{Dinov2Config, Dinov2Model, PreprocessConfig};
    match model {
        Model::TextEncoder | Model::TextEncoder2 => {
            let cfg: sdxl::clip::ClipTextConfig = weights::read_config(dir)?;
            sdxl::clip::ClipTextModel::new(vb, &cfg, model == Model::TextEncoder2)?;
        }
        Model::Unet => {
            sdxl::unet::UNet::new(vb, &weights::read_config(dir)?)?;
        }
        Model::SdxlVae => {
            sdxl::vae::VaeDecoder::new(vb, &weights::read_config(dir)?)?;
        }
        Model::Rmbg => {
            let cfg: rmbg::Config = optional_json(&dir.join("config.json"))?;
            rmbg::BriaRmbg::new(&cfg, vb)?;
        }
        Model::ImageEncoder => {
            let cfg: Dinov2Config = weights::read_config(dir)?;
            let pre: PreprocessConfig =
                optional_json(&root.join(partcrafter::FEATURE_EXTRACTOR_DIR).join("preprocessor_config.json"))?;
            let crop = match (pre.crop_size.height, pre.crop_size.width) {
                (Some(h), Some(w)) if pre.do_center_crop => Some((h, w)),
                _ => None,
            };
            Dinov2Model::new(vb, &cfg, crop)?;
        }
        Model::Transformer => {
            partcrafter::dit::PartCrafterDit::new(vb, &weights::read_config(dir)?)?;
        }
        Model::SdfVae => {
            partcrafter::vae::SdfDecoder::new(weights::read_config(dir)?, vb)?;
        }
    }
    Ok(())
}

/// Each name once, in the order first asked for.
fn dedup(list: &Mutex<Vec<Expected>>) -> Vec<Expected> {
    let list = list.lock().unwrap_or_else(|p| p.into_inner());
    let mut seen = std::collections::HashSet::new();
    list.iter().filter(|e| seen.insert(e.name.clone())).cloned().collect()
}

/// The tensors `component`'s constructor asks for, with the configs of a repository folder
/// `root` laid out like the hub repo (only its JSON files are read).
pub fn expected_tensors(component: &Component, root: &Path) -> Result<Vec<Expected>> {
    let (backend, requested) = StructureBackend::recording();
    let vb = VarBuilder::from_backend(Box::new(backend), BUILD_DTYPE, Device::Cpu);
    construct(component.model, root, &root.join(component.folder), vb)
        .with_context(|| format!("building {} from its config", component.label()))?;
    Ok(dedup(&requested))
}

/// What the check of one component found.
#[derive(Debug, Clone)]
pub struct ComponentReport {
    pub component: Component,
    pub files: Vec<PathBuf>,
    /// Tensors the constructor read, and their parameter count.
    pub tensors: usize,
    pub params: u64,
}

/// Checks one component of a repository folder `root` from headers only: the loader's file
/// exists, is complete, and holds every tensor its constructor asks for with the right shape
/// and a float dtype. `half`: the device runs in half precision (SDXL then reads `.fp16` files).
pub fn check_component(root: &Path, component: &Component, half: bool) -> Result<ComponentReport> {
    let dir = root.join(component.folder);
    let files = component.weight_files(&dir, component.half_on(half))?;
    let headers = files.iter().map(|f| read_header(f)).collect::<Result<Vec<_>>>()?;
    let (backend, requested) = StructureBackend::checking(headers);
    let vb = VarBuilder::from_backend(Box::new(backend), BUILD_DTYPE, Device::Cpu);
    construct(component.model, root, &dir, vb)?;
    let expected = dedup(&requested);
    Ok(ComponentReport {
        component: *component,
        files,
        tensors: expected.len(),
        params: expected.iter().map(Expected::numel).sum(),
    })
}

/// Checks every weights file the `partcrafter` pipeline would load, from headers only; the
/// repositories are found as the pipeline finds them (a repository that cannot be found is
/// the weights layer's usage error). Every damaged component is reported, each with its file
/// or tensor and what to do.
pub fn check_pipeline(source: &WeightsSource, half: bool, fp16_vae: bool) -> Result<Vec<ComponentReport>> {
    let sdxl = source.resolve(SDXL_TURBO, "unet/config.json")?;
    let rmbg = source.resolve(RMBG, "model.safetensors")?;
    let pc = source.resolve(PARTCRAFTER, "transformer/config.json")?;
    let fix = if fp16_vae { Some(source.resolve(SDXL_VAE_FP16_FIX, "config.json")?) } else { None };
    let mut jobs: Vec<(Component, &Path)> = Vec::new();
    for c in PIPELINE {
        let root = match c.repo {
            r if r == SDXL_TURBO => sdxl.dir.as_path(),
            r if r == RMBG => rmbg.dir.as_path(),
            _ => pc.dir.as_path(),
        };
        match (&fix, c.model) {
            (Some(fix), Model::SdxlVae) => {
                jobs.push((Component::new(SDXL_VAE_FP16_FIX, "", c.model), fix.dir.as_path()))
            }
            _ => jobs.push((c, root)),
        }
    }
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for (c, root) in jobs {
        match check_component(root, &c, half) {
            Ok(r) => reports.push(r),
            Err(e) => errors.push(format!(
                "{}: {e:#} (the checkpoint in {} is incomplete or not the released one: download {} again, \
                 or point --weights at a good copy)",
                c.label(),
                root.display(),
                c.repo.id
            )),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(reports)
}

/// The header bytes (8-byte length + padded JSON) that the Python `safetensors` writer
/// produces for `tensors`: entries ordered by dtype, larger alignment first, then by name;
/// contiguous offsets; `__metadata__` first when given; JSON padded with spaces to a multiple
/// of 8. The data section that follows is Σ numel × itemsize bytes.
pub fn python_header(tensors: &[(String, Dtype, Vec<usize>)], metadata: Option<&[(&str, &str)]>) -> Result<Vec<u8>> {
    let mut sorted: Vec<&(String, Dtype, Vec<usize>)> = tensors.iter().collect();
    sorted.sort_by(|(ln, ld, _), (rn, rd, _)| rd.cmp(ld).then(ln.cmp(rn)));
    let mut offset = 0;
    let infos = sorted
        .into_iter()
        .map(|(name, dtype, shape)| {
            let bytes = shape.iter().product::<usize>() * dtype.bitsize() / 8;
            let info = TensorInfo { dtype: *dtype, shape: shape.clone(), data_offsets: (offset, offset + bytes) };
            offset += bytes;
            (name.clone(), info)
        })
        .collect();
    let meta = metadata.map(|m| m.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    let mut json = serde_json::to_string(&Metadata::new(meta, infos)?)?.into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    Ok(out)
}

/// Bytes of tensor data for `tensors`.
pub fn data_len(tensors: &[(String, Dtype, Vec<usize>)]) -> u64 {
    tensors.iter().map(|(_, d, s)| s.iter().map(|&x| x as u64).product::<u64>() * d.bitsize() as u64 / 8).sum()
}

/// Writes a safetensors file whose header is exactly the Python writer's for `tensors` and
/// whose data section is a hole of the right length (a sparse file: no disk used, reads as
/// zeros). Returns the file size.
pub fn write_header_only(
    path: &Path,
    tensors: &[(String, Dtype, Vec<usize>)],
    metadata: Option<&[(&str, &str)]>,
) -> Result<u64> {
    let header = python_header(tensors, metadata)?;
    let size = header.len() as u64 + data_len(tensors);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut &file, &header)?;
    file.set_len(size)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: Dtype, shape: &[usize]) -> (String, Dtype, Vec<usize>) {
        (name.to_string(), dtype, shape.to_vec())
    }

    /// The layout rules agree with the safetensors crate's own writer, byte for byte.
    #[test]
    fn python_header_matches_the_writer() {
        let tensors = [
            t("b.weight", Dtype::F32, &[2, 3]),
            t("a.num_batches_tracked", Dtype::I64, &[]),
            t("a.weight", Dtype::F32, &[3]),
            t("c", Dtype::F16, &[5]),
        ];
        let data: Vec<Vec<u8>> =
            tensors.iter().map(|(_, d, s)| vec![0u8; data_len(&[t("", *d, s)]) as usize]).collect();
        let views: Vec<_> = tensors
            .iter()
            .zip(&data)
            .map(|((n, d, s), b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let info = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        let written = safetensors::serialize(views, Some(info)).unwrap();
        let header = python_header(&tensors, Some(&[("format", "pt")])).unwrap();
        assert_eq!(&written[..header.len()], &header[..]);
        assert_eq!(written.len() as u64, header.len() as u64 + data_len(&tensors));
        let json = std::str::from_utf8(&header[8..]).unwrap();
        assert!(json.starts_with(r#"{"__metadata__":{"format":"pt"},"a.num_batches_tracked":{"dtype":"I64","shape":[],"data_offsets":[0,8]}"#), "{json}");
    }

    #[test]
    fn header_reader_finds_truncation_and_trailing_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let tensors = [t("w", Dtype::F32, &[4, 4]), t("b", Dtype::F32, &[4])];
        let size = write_header_only(&path, &tensors, None).unwrap();
        let h = read_header(&path).unwrap();
        assert_eq!(h.tensor("w").unwrap().shape, [4, 4]);
        assert_eq!(8 + h.header_len + 80, size);

        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(size - 1).unwrap();
        let err = read_header(&path).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("80 bytes of tensor data, the file holds 79"), "{err}");
        f.set_len(12).unwrap();
        assert!(read_header(&path).unwrap_err().to_string().contains("the header needs"));
        write_header_only(&path, &tensors, None).unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(size + 3).unwrap();
        assert!(read_header(&path).unwrap_err().to_string().contains("3 bytes follow"));
        std::fs::write(&path, b"{\"not\": \"safetensors\"}").unwrap();
        assert!(read_header(&path).is_err());
        let err = read_header(&dir.path().join("gone.safetensors")).unwrap_err().to_string();
        assert!(err.contains("is missing"), "{err}");
    }

    #[test]
    fn the_backend_checks_name_shape_and_dtype() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let tensors = [t("w", Dtype::F16, &[4, 2]), t("n", Dtype::I64, &[4])];
        write_header_only(&path, &tensors, None).unwrap();
        let (backend, requested) = StructureBackend::checking(vec![read_header(&path).unwrap()]);
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
        let w = vb.get((4, 2), "w").unwrap();
        assert_eq!((w.dims(), w.dtype()), (&[4, 2][..], DType::F32));
        let err = vb.get((2, 4), "w").unwrap_err().to_string();
        assert!(err.contains("has shape [4, 2], the model expects [2, 4]"), "{err}");
        let err = vb.get(4, "n").unwrap_err().to_string();
        assert!(err.contains("tensor n") && err.contains("I64"), "{err}");
        let err = vb.get(4, "x").unwrap_err().to_string();
        assert!(err.contains("tensor x [4] is missing from") && err.contains("m.safetensors"), "{err}");
        assert_eq!(requested.lock().unwrap().len(), 4);
    }
}
