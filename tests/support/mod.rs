//! Shared helpers for the integration tests: the local GCS server and CLI runners.
#![allow(dead_code)]

pub mod gcs;
pub mod hub;

use std::path::Path;
use std::process::{Command, Output};

/// The real `lumen` binary built by cargo for these tests.
pub fn lumen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lumen"));
    // Never let a test reach a real cloud or hub.
    c.env("HF_HUB_OFFLINE", "1")
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .env_remove("GOOGLE_SERVICE_ACCOUNT_KEY")
        .env_remove("GOOGLE_SERVICE_ACCOUNT")
        .env_remove("LUMEN_STORE")
        .env_remove("LUMEN_WEIGHTS")
        .env_remove("LUMEN_QUALITY_THRESHOLDS")
        // The log's level and format are the flags' (each test sets what it needs).
        .env_remove("RUST_LOG")
        .env_remove("LUMEN_LOG_FORMAT");
    c
}

/// Runs `lumen args…` in `dir` and returns its output.
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    lumen().current_dir(dir).args(args).output().expect("lumen runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A temp folder with a copy of the project's `concepts/`.
pub fn workdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("concepts");
    std::fs::create_dir_all(d.path().join("concepts")).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.path().join("concepts").join(e.file_name())).unwrap();
    }
    d
}
