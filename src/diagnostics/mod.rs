//! Diagnostics: the benchmark suites, the golden cases and the device self-check.
pub mod bench;
pub mod goldens;
