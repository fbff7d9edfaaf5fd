//! Error kinds that decide the exit code.
//!
//! Everything that is the user's to fix (bad arguments, unreadable catalogue, unknown
//! store URL, unwritable folder) is a [`UsageError`] and exits 2; other failures exit 1
//! (a concept failed) or 3 (preflight). The binary looks for a `UsageError` anywhere in
//! an `anyhow` chain.

/// A usage or configuration error: exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit codes (PRODUCT.md): 0 success, 1 some concepts failed, 2 usage or configuration
/// error, 3 preflight failed.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const PREFLIGHT: u8 = 3;
}

/// True when `err` or any of its causes is a [`UsageError`].
pub fn is_usage(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.downcast_ref::<UsageError>().is_some())
}
