//! The two SDXL prompt tokenizers: CLIP byte-level BPE, always 77 ids.
//!
//! Both tokenizers share one vocabulary and differ only in padding, as diffusers' two
//! `CLIPTokenizer`s do: tokenizer 1 pads with `<|endoftext|>` (49407), tokenizer 2 with
//! `!` (id 0). Because `!` is tokenizer 2's pad token it is a *special* token there, so a
//! literal `!` in a prompt becomes id 0 rather than `!</w>` (HF's behaviour, which
//! diffusers inherits). Longer prompts are truncated to bos + 75 tokens + eos with a
//! warning, as diffusers does (candle's example refuses them instead).
//!
//! A folder is read from its `tokenizer.json` when present, otherwise from the slow
//! tokenizer's `vocab.json` + `merges.txt` (the hub repo's layout), with the pad token
//! taken from `special_tokens_map.json` / `tokenizer_config.json`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

/// CLIP's context length.
pub const MAX_LENGTH: usize = 77;

/// One SDXL prompt tokenizer producing exactly [`MAX_LENGTH`] ids.
pub struct ClipTokenizer {
    inner: Tokenizer,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
}

const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

impl ClipTokenizer {
    /// Loads a tokenizer folder (`tokenizer/` or `tokenizer_2/` of the checkpoint).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json_file = dir.join("tokenizer.json");
        let (inner, pad) = if json_file.is_file() {
            let tok = Tokenizer::from_file(&json_file)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", json_file.display()))?;
            let pad = tok.get_padding().map(|p| p.pad_token.clone());
            let pad = match pad {
                Some(p) => p,
                None => pad_token_from_config(dir)?,
            };
            (tok, pad)
        } else {
            let pad = pad_token_from_config(dir)?;
            (from_vocab_merges(dir, &pad)?, pad)
        };
        Self::new(inner, &pad)
    }

    fn new(mut inner: Tokenizer, pad: &str) -> Result<Self> {
        // Truncation and padding are done here, the same way for both file formats.
        inner.with_truncation(None).map_err(|e| anyhow::anyhow!("disabling truncation: {e}"))?;
        inner.with_padding(None);
        let id = |t: &str| inner.token_to_id(t).with_context(|| format!("tokenizer has no token {t:?}"));
        Ok(Self { bos_id: id(BOS)?, eos_id: id(EOS)?, pad_id: id(pad)?, inner })
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// bos, the prompt's tokens (at most 75), eos, then padding to 77.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(prompt, false).map_err(|e| anyhow::anyhow!("tokenizing {prompt:?}: {e}"))?;
        let mut body = enc.get_ids().to_vec();
        let room = MAX_LENGTH - 2;
        if body.len() > room {
            tracing::warn!("prompt has {} tokens, CLIP reads {room}; the rest is dropped: {prompt:?}", body.len());
            body.truncate(room);
        }
        let mut ids = Vec::with_capacity(MAX_LENGTH);
        ids.push(self.bos_id);
        ids.extend(body);
        ids.push(self.eos_id);
        ids.resize(MAX_LENGTH, self.pad_id);
        Ok(ids)
    }
}

/// The pad token named by the slow tokenizer's side files (`<|endoftext|>` when absent).
fn pad_token_from_config(dir: &Path) -> Result<String> {
    for file in ["special_tokens_map.json", "tokenizer_config.json"] {
        let path = dir.join(file);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let v: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
            // Either a plain string or an AddedToken object {"content": ...}.
            let pad = &v["pad_token"];
            if let Some(s) = pad.as_str().or_else(|| pad["content"].as_str()) {
                return Ok(s.to_string());
            }
        }
    }
    Ok(EOS.to_string())
}

/// Builds CLIP's fast tokenizer from `vocab.json` and `merges.txt`: NFC, whitespace runs
/// collapsed, lower case, CLIP's split pattern, byte-level BPE with a `</w>` word suffix.
fn from_vocab_merges(dir: &Path, pad: &str) -> Result<Tokenizer> {
    let vocab_path = dir.join("vocab.json");
    let merges_path = dir.join("merges.txt");
    if !vocab_path.is_file() || !merges_path.is_file() {
        bail!("tokenizer folder {} has neither tokenizer.json nor vocab.json + merges.txt", dir.display());
    }
    let vocab: Value = serde_json::from_str(
        &std::fs::read_to_string(&vocab_path).with_context(|| format!("reading {}", vocab_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", vocab_path.display()))?;
    let merges_text =
        std::fs::read_to_string(&merges_path).with_context(|| format!("reading {}", merges_path.display()))?;
    // The first line is the "#version" header; CLIP uses every merge after it.
    let merges: Vec<&str> =
        merges_text.lines().filter(|l| !l.starts_with("#version") && !l.trim().is_empty()).collect();
    let id_of = |t: &str| vocab[t].as_u64();
    let mut added = Vec::new();
    for (tok, normalized) in [(pad, false), (BOS, true), (EOS, true)] {
        let id = id_of(tok).with_context(|| format!("{} has no token {tok:?}", vocab_path.display()))?;
        if added.iter().any(|a: &Value| a["content"] == tok) {
            continue;
        }
        added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": normalized, "special": true}));
    }
    let spec = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex":
                "'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"},
             "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": EOS, "continuing_subword_prefix": "",
            "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let text = serde_json::to_string(&spec)?;
    text.parse::<Tokenizer>().map_err(|e| anyhow::anyhow!("building the tokenizer from {}: {e}", dir.display()))
}
