//! The peer baseline: the upstream PyTorch pipeline's stage times on one H100 80GB (fp16 as
//! the upstream scripts run, released sizes, random weights, medians, device synchronised;
//! measured 2026-11-26 with torch 2.11 + cu130, diffusers 0.33.1, PartCrafter 269bd41).
//!
//! Rows attach these only when they ran at the same size, so the ratio compares like with
//! like on the stage level; a ratio on another card (L4, H200) compares cards as well.

/// A stage of the peer baseline (the whole table: not every row has a bench of its own yet).
#[allow(dead_code)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// SDXL Turbo prompt → image, 512², 1 step.
    SdxlPipeline,
    /// Both text encoders (CLIP-L 7.2 ms + bigG 15.0 ms inside the pipeline).
    SdxlTextEncoders,
    SdxlTextEncoder1,
    SdxlTextEncoder2,
    /// One UNet step, latent 64².
    SdxlUnetStep,
    /// VAE decode to 512², fp32 upcast (as the pipeline does).
    SdxlVaeDecode,
    /// BriaRMBG-1.4 forward at 1024², fp32.
    RmbgForward1024,
    /// DINOv2-L at 224², preprocessing included.
    Dinov2WithPreprocess,
    /// DINOv2-L at 224², the model alone.
    Dinov2Model,
    /// One DiT forward, CFG batch 2N × 1024 tokens.
    DitForwardN4,
    DitForwardN8,
    /// The 50-step sampling loop at 1024 tokens.
    Loop50N4,
    Loop50N8,
    /// SDF decode of a dense 256³ grid (16.8 M points) for one part.
    SdfDecode256,
    /// Upstream extraction of one part (256³ + band to 512³, CPU marching cubes).
    ExtractOnePart,
    /// Estimated whole concept, N = 4.
    ConceptN4,
}

/// Query points of the 256³ grid [`Stage::SdfDecode256`] decodes.
pub const SDF_DECODE_256_POINTS: usize = 256 * 256 * 256;

/// The reference median of `stage`, ms (design/peer-baseline.md).
pub fn ms(stage: Stage) -> f64 {
    use Stage::*;
    match stage {
        SdxlPipeline => 174.9,
        SdxlTextEncoders => 26.4,
        SdxlTextEncoder1 => 7.2,
        SdxlTextEncoder2 => 15.0,
        SdxlUnetStep => 92.0,
        SdxlVaeDecode => 29.6,
        RmbgForward1024 => 19.3,
        Dinov2WithPreprocess => 48.1,
        Dinov2Model => 17.3,
        DitForwardN4 => 81.2,
        DitForwardN8 => 166.4,
        Loop50N4 => 4028.0,
        Loop50N8 => 8313.0,
        SdfDecode256 => 1246.0,
        ExtractOnePart => 5173.0,
        ConceptN4 => 24_800.0,
    }
}

/// The DiT forward reference for `parts` × 1024 tokens, when the baseline measured it.
pub fn dit_forward(parts: usize, tokens: usize) -> Option<f64> {
    match (parts, tokens) {
        (4, 1024) => Some(ms(Stage::DitForwardN4)),
        (8, 1024) => Some(ms(Stage::DitForwardN8)),
        _ => None,
    }
}

/// The 50-step loop reference for `parts` × 1024 tokens.
pub fn loop50(parts: usize, tokens: usize, steps: usize) -> Option<f64> {
    match (parts, tokens, steps) {
        (4, 1024, 50) => Some(ms(Stage::Loop50N4)),
        (8, 1024, 50) => Some(ms(Stage::Loop50N8)),
        _ => None,
    }
}

/// The SDF decode reference scaled linearly to `points` query points (the decode is a
/// per-point cost once the part's latents are prepared).
pub fn sdf_decode(points: usize) -> f64 {
    ms(Stage::SdfDecode256) * points as f64 / SDF_DECODE_256_POINTS as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's sums agree with the baseline's own totals.
    #[test]
    fn baseline_is_consistent() {
        let te = ms(Stage::SdxlTextEncoder1) + ms(Stage::SdxlTextEncoder2);
        assert!(te < ms(Stage::SdxlTextEncoders));
        assert!((ms(Stage::Loop50N4) / 50.0 - ms(Stage::DitForwardN4)).abs() < 2.0);
        let concept = ms(Stage::Loop50N4) + 4.0 * ms(Stage::ExtractOnePart) + ms(Stage::SdxlPipeline);
        assert!((concept + ms(Stage::RmbgForward1024) + ms(Stage::Dinov2WithPreprocess) - 24_800.0).abs() < 200.0);
        assert_eq!(sdf_decode(SDF_DECODE_256_POINTS), 1246.0);
        assert_eq!(dit_forward(4, 512), None);
    }
}
