//! Every environment variable lumen reads, in one list.
//!
//! The variables are read where they are used (clap's `env =`, `std::env::var` in the store,
//! weights, hub and shard code); this list is the one place that names them all, so a job
//! definition or container image can be checked against it (`tests/containers.rs` does: every
//! variable a file under `deploy/` sets must be here). A unit test below scans `src/` for
//! variable names in string literals, so a variable read in the code but missing here (or
//! listed here but no longer read) fails the build's tests.

/// Who reads a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBy {
    /// lumen's own code.
    Lumen,
    /// object_store's Google Cloud Storage credential chain (`GoogleCloudStorageBuilder::from_env`).
    ObjectStore,
}

#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    pub name: &'static str,
    pub read_by: ReadBy,
    pub purpose: &'static str,
}

const fn lumen(name: &'static str, purpose: &'static str) -> EnvVar {
    EnvVar { name, read_by: ReadBy::Lumen, purpose }
}

const fn gcs(name: &'static str, purpose: &'static str) -> EnvVar {
    EnvVar { name, read_by: ReadBy::ObjectStore, purpose }
}

pub const READ: &[EnvVar] = &[
    lumen("LUMEN_STORE", "default of --store (folder, file://, gs://BUCKET/PREFIX, memory://)"),
    lumen("LUMEN_WEIGHTS", "default of --weights (a folder of model files instead of the hub cache)"),
    lumen("LUMEN_REVISION", "revision overrides REPO=REV, comma-separated (--revision wins)"),
    lumen("LUMEN_QUALITY_THRESHOLDS", "default of --quality-thresholds (a JSON file overriding grading thresholds)"),
    lumen("LUMEN_STORE_TIMEOUT_MS", "timeout of one remote store request"),
    lumen("LUMEN_STORE_RETRIES", "retries of a remote store request"),
    lumen("LUMEN_SHARD_COUNT", "shard count beside JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's completions)"),
    lumen("CLOUD_RUN_TASK_INDEX", "shard index; set by Cloud Run Jobs"),
    lumen("CLOUD_RUN_TASK_COUNT", "shard count; set by Cloud Run Jobs"),
    lumen("JOB_COMPLETION_INDEX", "shard index; set by Kubernetes for an Indexed Job"),
    lumen("HF_HUB_OFFLINE", "1: never download weights, use only the cache"),
    lumen("HF_HOME", "Hugging Face home: the cache is $HF_HOME/hub, the token $HF_HOME/token"),
    lumen("HF_HUB_CACHE", "the Hugging Face hub cache folder itself (wins over HF_HOME)"),
    lumen("HUGGINGFACE_HUB_CACHE", "older name of HF_HUB_CACHE"),
    lumen("XDG_CACHE_HOME", "cache root when no HF_* variable is set ($XDG_CACHE_HOME/huggingface/hub)"),
    lumen("HOME", "last resort for the cache (~/.cache/huggingface/hub) and the token"),
    lumen("HF_ENDPOINT", "the hub's address (a mirror)"),
    lumen("HF_TOKEN", "hub token for gated or private repos"),
    lumen("HF_TOKEN_PATH", "file holding the hub token"),
    lumen("LUMEN_LOG_FORMAT", "default of --log-format (text | json; json when stderr is not a terminal)"),
    lumen("RUST_LOG", "log filter (tracing's EnvFilter syntax); wins over -v/-q"),
    lumen("LUMEN_CUDNN_TF32", "0: cuDNN convolutions without TF32"),
    lumen("LUMEN_BENCH_PC_PARTS", "bench only: PartCrafter parts"),
    lumen("LUMEN_BENCH_PC_TOKENS", "bench only: PartCrafter tokens per part"),
    lumen("LUMEN_BENCH_PC_STEPS", "bench only: PartCrafter loop steps"),
    gcs("GOOGLE_SERVICE_ACCOUNT_KEY", "GCS service-account key JSON"),
    gcs("GOOGLE_SERVICE_ACCOUNT", "GCS service-account key file"),
    gcs("GOOGLE_SERVICE_ACCOUNT_PATH", "GCS service-account key file"),
    gcs("GOOGLE_APPLICATION_CREDENTIALS", "GCS credentials file (application default credentials)"),
];

/// What the platform itself sets in a job's containers, per platform: a job definition must
/// not set these (Cloud Run and Kubernetes refuse or override them).
pub const SET_BY_PLATFORM: &[(&str, &[&str])] =
    &[("cloud-run", &["CLOUD_RUN_TASK_INDEX", "CLOUD_RUN_TASK_COUNT"]), ("kubernetes", &["JOB_COMPLETION_INDEX"])];

/// What a production `pregenerate` job definition must set: the store (else assets land on
/// the container's disk and are lost with it), where the weights cache is (the mounted
/// volume or the image's folder) and offline mode (nothing downloaded at task start).
/// A Kubernetes Indexed Job also sets LUMEN_SHARD_COUNT (its completions).
pub const PREGENERATE_JOB_SETS: &[&str] = &["LUMEN_STORE", "HF_HOME", "HF_HUB_OFFLINE"];

/// Is `name` one lumen (or its GCS client) reads?
pub fn is_read(name: &str) -> bool {
    READ.iter().any(|v| v.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Upper-case literals in `src/` that are not variables: the CUDA, cuBLAS and cuDNN error
    /// names `device::is_out_of_memory` looks for in error messages.
    const NOT_VARIABLES: &[&str] =
        &["CUDA_ERROR_OUT_OF_MEMORY", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"];

    /// Upper-case names with an underscore (or `HOME`) in string literals of `src/`, less the
    /// compile-time ones (`env!`, `option_env!`, build-script output) and [`NOT_VARIABLES`].
    fn names_in_source() -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("env_vars.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    for line in text.lines().filter(|l| !l.contains("env!(") && !l.contains("rustc-env")) {
                        found.extend(quoted_names(line).into_iter().filter(|n| !NOT_VARIABLES.contains(&n.as_str())));
                    }
                }
            }
        }
        found
    }

    fn quoted_names(line: &str) -> Vec<String> {
        line.split('"')
            .skip(1)
            .step_by(2)
            .filter(|s| {
                let upper =
                    !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                upper && (s.contains('_') || *s == "HOME") && s.starts_with(|c: char| c.is_ascii_uppercase())
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn the_list_is_what_the_code_reads() {
        let in_code = names_in_source();
        let listed: BTreeSet<String> =
            READ.iter().filter(|v| v.read_by == ReadBy::Lumen).map(|v| v.name.to_string()).collect();
        let unlisted: Vec<_> = in_code.difference(&listed).collect();
        let stale: Vec<_> = listed.difference(&in_code).collect();
        assert!(unlisted.is_empty(), "read in src/ but missing from env_vars::READ: {unlisted:?}");
        assert!(stale.is_empty(), "in env_vars::READ but no longer read in src/: {stale:?}");
    }

    #[test]
    fn the_scan_finds_names_and_skips_other_literals() {
        assert_eq!(
            quoted_names(r#"std::env::var("HF_HOME").or(var("HOME")), "lower_case", "ABC""#),
            ["HF_HOME", "HOME"]
        );
        assert!(is_read("LUMEN_STORE") && !is_read("LUMEN_STORAGE"));
        let names: BTreeSet<_> = READ.iter().map(|v| v.name).collect();
        assert_eq!(names.len(), READ.len(), "a variable is listed twice");
        for (_, vars) in SET_BY_PLATFORM {
            assert!(vars.iter().all(|v| is_read(v)));
        }
        assert!(PREGENERATE_JOB_SETS.iter().all(|v| is_read(v)));
    }
}
