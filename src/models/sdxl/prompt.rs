//! Concept → the text prompt SDXL Turbo is given.
//!
//! The image only feeds background removal and an image→parts model, so the prompt asks
//! for what those stages need: one whole object, centred, on a plain white background,
//! evenly lit, no text or watermark. Turbo runs without classifier-free guidance
//! (guidance 0), so there is no negative prompt; everything is said positively here.

/// The canonical prompt for a concept such as "chair" or "  Office   Chair ".
///
/// Whitespace is collapsed and the concept lower-cased so that spelling variants of the
/// same concept give the same prompt (and, with the same seed, the same image). The
/// result stays well under CLIP's 75-token limit for any concept of a few words.
pub fn canonical_prompt(concept: &str) -> String {
    let concept = concept.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    format!(
        "a single {concept}, one whole object centred in the frame, full view, \
         3d render, plain white background, soft even lighting, no text"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_one_centred_object_on_white() {
        assert_eq!(
            canonical_prompt("chair"),
            "a single chair, one whole object centred in the frame, full view, 3d render, \
             plain white background, soft even lighting, no text"
        );
    }

    #[test]
    fn normalises_spacing_and_case() {
        assert_eq!(canonical_prompt("  Office\t Chair "), canonical_prompt("office chair"));
        assert!(canonical_prompt("office chair").contains("single office chair"));
    }
}
