//! CLIP text tower as SDXL uses it (transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`), with every size from the checkpoint's `config.json`.
//!
//! Written here rather than taken from candle because SDXL needs what candle's
//! stable-diffusion CLIP does not give: configurable sizes, the exact (erf) GELU where
//! the config says `gelu` (candle's `Activation::Gelu` is the tanh form), the
//! penultimate hidden states *without* the final layer norm, and the pooled, projected
//! output of encoder 2.

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, linear_no_bias, Embedding, LayerNorm, Linear, VarBuilder};
use serde::Deserialize;

use crate::attention::attention;

fn default_eps() -> f64 {
    1e-5
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eos() -> u32 {
    2
}
fn default_positions() -> usize {
    77
}

/// `config.json` of `text_encoder/` and `text_encoder_2/` (transformers' CLIPTextConfig keys).
#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Width of `text_projection` (encoder 2 only).
    #[serde(default)]
    pub projection_dim: Option<usize>,
    /// The legacy value 2 means "pool at argmax(ids)", see [`ClipTextModel::pooled_index`].
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
}

#[derive(Debug, Clone, Copy)]
enum Act {
    QuickGelu,
    /// transformers' "gelu" is the exact erf form.
    GeluErf,
    GeluTanh,
}

impl Act {
    fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" => Act::GeluTanh,
            other => candle_core::bail!("CLIP text config: unsupported hidden_act {other:?}"),
        })
    }

    fn forward(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Act::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Act::GeluErf => xs.gelu_erf(),
            Act::GeluTanh => xs.gelu(),
        }
    }
}

struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        if h % cfg.num_attention_heads != 0 {
            candle_core::bail!("CLIP text config: hidden_size {h} not divisible by num_attention_heads");
        }
        Ok(Self {
            q_proj: linear(h, h, vb.pp("q_proj"))?,
            k_proj: linear(h, h, vb.pp("k_proj"))?,
            v_proj: linear(h, h, vb.pp("v_proj"))?,
            out_proj: linear(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, l, c) = xs.dims3()?;
        let split = |t: Tensor| t.reshape((b, l, self.heads, self.head_dim))?.transpose(1, 2);
        let q = split(self.q_proj.forward(xs)?)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        // The causal mask is the only mask: diffusers passes no padding mask.
        let o = attention(&q, &k, &v, 1.0 / (self.head_dim as f64).sqrt(), true)?;
        self.out_proj.forward(&o.transpose(1, 2)?.reshape((b, l, c))?)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Act,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipTextConfig, act: Act) -> Result<Self> {
        let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            layer_norm1: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            self_attn: ClipAttention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: layer_norm(h, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
            fc1: linear(h, m, vb.pp("mlp").pp("fc1"))?,
            fc2: linear(m, h, vb.pp("mlp").pp("fc2"))?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.self_attn.forward(&self.layer_norm1.forward(xs)?)?)?;
        let mlp = self.fc2.forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&xs)?)?)?)?;
        xs + mlp
    }
}

/// What SDXL takes from one text encoder.
#[derive(Debug)]
pub struct ClipOutput {
    /// hidden_states[-2]: output of encoder layer L−2 (0-based), no final norm. (B, 77, hidden)
    pub penultimate: Tensor,
    /// Final-layer-norm output of the last layer (what candle's `forward` returns). (B, 77, hidden)
    pub last_hidden_state: Tensor,
    /// `text_projection(last_hidden_state[eos])`, only for a model with a projection. (B, projection_dim)
    pub text_embeds: Option<Tensor>,
}

/// CLIP text transformer, optionally with `text_projection` (encoder 2).
pub struct ClipTextModel {
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    eos_token_id: u32,
}

impl ClipTextModel {
    /// `vb` is the root of the checkpoint file (tensors `text_model.*`, `text_projection.*`).
    /// `with_projection` loads `text_projection.weight` (CLIPTextModelWithProjection).
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig, with_projection: bool) -> Result<Self> {
        let act = Act::parse(&cfg.hidden_act)?;
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(tm.pp("encoder").pp("layers").pp(i), cfg, act))
            .collect::<Result<Vec<_>>>()?;
        let text_projection = if with_projection {
            let p = cfg.projection_dim.unwrap_or(cfg.hidden_size);
            Some(linear_no_bias(cfg.hidden_size, p, vb.pp("text_projection"))?)
        } else {
            None
        };
        Ok(Self {
            token_embedding: embedding(cfg.vocab_size, cfg.hidden_size, emb.pp("token_embedding"))?,
            position_embedding: embedding(cfg.max_position_embeddings, cfg.hidden_size, emb.pp("position_embedding"))?,
            layers,
            final_layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, tm.pp("final_layer_norm"))?,
            text_projection,
            eos_token_id: cfg.eos_token_id,
        })
    }

    /// The row pooled for `text_embeds`. transformers keeps a legacy rule for configs whose
    /// `eos_token_id` is 2 (both SDXL encoders): the position of the largest id, i.e. the
    /// first `<|endoftext|>` (49407 is the largest id in the vocabulary). Otherwise the first
    /// position holding `eos_token_id`.
    fn pooled_index(&self, ids: &[u32]) -> usize {
        if self.eos_token_id == 2 {
            // First maximum, as torch.argmax returns.
            let mut best = 0;
            for (i, &id) in ids.iter().enumerate() {
                if id > ids[best] {
                    best = i;
                }
            }
            best
        } else {
            ids.iter().position(|&id| id == self.eos_token_id).unwrap_or(ids.len() - 1)
        }
    }

    /// `ids`: (B, L) u32 token ids.
    pub fn forward(&self, ids: &Tensor) -> Result<ClipOutput> {
        let (_b, l) = ids.dims2()?;
        if self.layers.len() < 2 {
            candle_core::bail!("SDXL needs the penultimate layer: the text encoder has {} layers", self.layers.len());
        }
        let positions = Tensor::arange(0u32, l as u32, ids.device())?;
        let mut xs = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?.unsqueeze(0)?)?;
        let mut penultimate = None;
        for (i, layer) in self.layers.iter().enumerate() {
            xs = layer.forward(&xs)?;
            if i + 2 == self.layers.len() {
                penultimate = Some(xs.clone());
            }
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        let text_embeds = match &self.text_projection {
            None => None,
            Some(proj) => {
                let ids_host: Vec<Vec<u32>> = ids.to_device(&Device::Cpu)?.to_vec2()?;
                let rows = ids_host
                    .iter()
                    .enumerate()
                    .map(|(i, row)| last_hidden_state.get(i)?.get(self.pooled_index(row)))
                    .collect::<Result<Vec<_>>>()?;
                Some(proj.forward(&Tensor::stack(&rows, 0)?)?)
            }
        };
        let penultimate =
            penultimate.ok_or_else(|| candle_core::Error::Msg("text encoder has no penultimate layer".into()))?;
        Ok(ClipOutput { penultimate, last_hidden_state, text_embeds })
    }
}

/// Token ids (rows of 77) as a (B, 77) u32 tensor.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let l = rows.first().map_or(0, |r| r.len());
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), l), device)
}

/// SDXL's `prompt_embeds`: both encoders' penultimate states side by side.
pub fn concat_features(te1: &ClipOutput, te2: &ClipOutput) -> Result<Tensor> {
    Tensor::cat(&[&te1.penultimate, &te2.penultimate.to_dtype(te1.penultimate.dtype())?], D::Minus1)
}
