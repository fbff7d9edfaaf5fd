//! Diagnostics: the benchmark suites, the golden cases and the device self-check.
//!
//! One layer above the models and pipelines: these run the models to judge them (speed,
//! agreement with the reference, a sane device), so they may import any stage, and no
//! stage imports them. They share one comparison ([`compare`]).

pub mod bench;
pub mod compare;
pub mod goldens;
pub mod self_check;
