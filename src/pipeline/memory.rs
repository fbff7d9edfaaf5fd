//! Running out of device memory: a failure of one concept at one size, never of the batch.
//!
//! How much memory a concept needs grows with its parts × latent tokens (the DiT's attention
//! and the SDF decoder's cross-attention), so an out-of-memory in those stages is retried with
//! half the tokens per part. Fewer tokens, not fewer parts: the shape keeps the part count the
//! catalogue asked for, at a coarser latent. The retry is never silent: a warning, an entry in
//! the asset's `pipeline.settings.memory_retry`, and the same in the command's result. An
//! out-of-memory in a stage that does not depend on tokens (SDXL, BriaRMBG, DINOv2), or below
//! [`MIN_RETRY_TOKENS`], fails the concept with [`OutOfDeviceMemory`]'s message.

use serde::Serialize;

use crate::device::MemoryInfo;

/// Never retry below this many tokens per part (the released model is trained at 512–2048;
/// below 256 the shapes fall apart).
pub const MIN_RETRY_TOKENS: usize = 256;

/// Stages whose memory grows with the tokens per part.
const TOKEN_BOUND_STAGES: [&str; 3] = ["partcrafter_sample", "sdf_trunk", "sdf_extract"];

/// The tokens per part to retry with after running out of memory in `stage` at `tokens`, or
/// `None` when fewer tokens would not help or would be too few.
pub fn retry_tokens(stage: &str, tokens: usize) -> Option<usize> {
    let next = tokens / 2;
    (TOKEN_BOUND_STAGES.contains(&stage) && next >= MIN_RETRY_TOKENS).then_some(next)
}

/// One retry after running out of device memory, as the asset and the result record it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryRetry {
    pub stage: String,
    pub tokens_from: usize,
    pub tokens_to: usize,
    /// What the driver reported right after the failure (absent on the CPU).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_mib: Option<u64>,
}

impl MemoryRetry {
    pub fn new(stage: &str, tokens_from: usize, tokens_to: usize, memory: Option<MemoryInfo>) -> Self {
        Self {
            stage: stage.to_string(),
            tokens_from,
            tokens_to,
            free_mib: memory.map(|m| m.free_bytes >> 20),
            total_mib: memory.map(|m| m.total_bytes >> 20),
        }
    }
}

/// The context put on a concept's error when the device ran out of memory: which stage, at
/// what size, and how much memory was left. Shown first in the concept's error message.
#[derive(Debug, Clone, PartialEq)]
pub struct OutOfDeviceMemory {
    pub stage: String,
    pub parts: usize,
    pub tokens: usize,
    pub memory: Option<MemoryInfo>,
}

impl std::fmt::Display for OutOfDeviceMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let memory = describe_memory(self.memory);
        write!(
            f,
            "out of device memory in {} ({} parts, {} tokens per part; {memory})",
            self.stage, self.parts, self.tokens
        )
    }
}

/// The driver's memory report for a message; the CPU has none.
pub fn describe_memory(memory: Option<MemoryInfo>) -> String {
    memory.map(|m| m.summary()).unwrap_or_else(|| "device memory not reported on the CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_token_bound_stages_retry_and_never_below_the_floor() {
        assert_eq!(retry_tokens("partcrafter_sample", 1024), Some(512));
        assert_eq!(retry_tokens("sdf_extract", 512), Some(256));
        assert_eq!(retry_tokens("sdf_extract", 256), None);
        assert_eq!(retry_tokens("sdxl_unet", 1024), None);
        assert_eq!(retry_tokens("rmbg", 1024), None);
    }

    #[test]
    fn the_message_names_stage_size_and_memory() {
        let memory = MemoryInfo { free_bytes: 300 << 20, total_bytes: 23034 << 20 };
        let e = OutOfDeviceMemory { stage: "partcrafter_sample".into(), parts: 8, tokens: 1024, memory: Some(memory) };
        assert_eq!(
            e.to_string(),
            "out of device memory in partcrafter_sample (8 parts, 1024 tokens per part; \
             device memory 300 MiB free of 23034 MiB)"
        );
    }
}
