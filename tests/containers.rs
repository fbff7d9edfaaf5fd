//! lumen as the team deploys it: the images under `deploy/`, run as containers.
//!
//! Drives the `docker` CLI against a local daemon (`.ci/run` installs and starts one; without
//! a daemon these tests print SKIPPED, and fail under CI). No registry is needed: the base
//! image comes from `deploy/base-image.sh` (debootstrap), and the CPU image is built from
//! `deploy/Dockerfile.cpu` with the lumen binary cargo built for this test run.
//!
//! - the CPU image runs `lumen preflight --pipeline procedural` as its non-root user;
//! - the Cloud Run Job's tasks as containers on a private network, writing to the GCS test
//!   server in a container of its own; one task is killed mid-run and rerun;
//! - the job definitions and CI configs set only variables lumen reads, and all it needs;
//! - the CUDA image's library list against the CUDA binary (see `cuda_runtime_libraries`).

mod support;

#[path = "containers/cuda_libs.rs"]
mod cuda_libs;
#[path = "containers/docker.rs"]
mod docker;
#[path = "containers/gcs_process.rs"]
mod gcs_process;
#[path = "containers/jobs.rs"]
mod jobs;
#[path = "containers/sharded.rs"]
mod sharded;

use std::collections::BTreeSet;

use docker::{docker, docker_ok};
use lumen::env_vars::{self, PREGENERATE_JOB_SETS, SET_BY_PLATFORM};

/// The uid `deploy/Dockerfile.*` give the image's user (job definitions name it too).
const IMAGE_UID: u64 = 10001;

#[test]
fn cpu_image_runs_preflight_as_its_non_root_user() {
    if !docker::available("cpu_image_runs_preflight_as_its_non_root_user") {
        return;
    }
    let image = docker::cpu_image();
    let user = docker_ok(&["run", "--rm", "--entrypoint", "id", image, "-u"]);
    assert_eq!(user.trim(), IMAGE_UID.to_string(), "the image runs as its own user, not root");
    let entrypoint = docker_ok(&["image", "inspect", "-f", "{{json .Config.Entrypoint}}", image]);
    assert_eq!(entrypoint.trim(), r#"["lumen"]"#);

    // The default store (out/ in the working folder) must be writable by that user, and the
    // default catalogue (concepts/top50.json) readable: preflight checks both.
    let out = docker(&["run", "--rm", "--network", "none", image, "preflight", "--pipeline", "procedural", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "preflight in the image failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("preflight --json prints JSON");
    let text = report.to_string();
    for check in ["store", "catalog", "procedural end-to-end"] {
        assert!(text.contains(check), "preflight reported no {check:?} check: {text}");
    }
}

/// The Cloud Run Job's tasks as containers; see `containers/sharded.rs`.
#[test]
fn job_tasks_share_one_bucket_and_a_killed_task_reruns_without_rewrites() {
    if !docker::available("job_tasks_share_one_bucket_and_a_killed_task_reruns_without_rewrites") {
        return;
    }
    sharded::run();
}

#[test]
fn job_definitions_set_what_lumen_reads_and_all_it_needs() {
    let cloud_run = jobs::load("cloudrun-job.yaml");
    let k8s = jobs::load("k8s-indexed-job.yaml");
    let cr_container = jobs::cloud_run_container(&cloud_run);
    let k8s_container = jobs::k8s_container(&k8s);
    let cr_env = jobs::container_env(cr_container);
    let k8s_env = jobs::container_env(k8s_container);

    for (platform, env) in [("cloud-run", &cr_env), ("kubernetes", &k8s_env)] {
        let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names.len(), env.len(), "{platform}: a variable is set twice");
        let unread: Vec<_> = names.iter().filter(|n| !env_vars::is_read(n)).collect();
        assert!(unread.is_empty(), "{platform} sets variables lumen never reads: {unread:?}");
        let platform_sets = SET_BY_PLATFORM.iter().find(|(p, _)| *p == platform).unwrap().1;
        let overridden: Vec<_> = platform_sets.iter().filter(|n| names.contains(*n)).collect();
        assert!(overridden.is_empty(), "{platform} sets what the platform sets itself: {overridden:?}");
        let missing: Vec<_> = PREGENERATE_JOB_SETS.iter().filter(|n| !names.contains(*n)).collect();
        assert!(missing.is_empty(), "{platform} does not set {missing:?}");
        let value = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str()).unwrap();
        assert!(value("LUMEN_STORE").starts_with("gs://"), "{platform}: the store must outlive the container");
        assert_eq!(value("HF_HUB_OFFLINE"), "1", "{platform}: nothing may download at task start");
    }
    // The same run on both platforms.
    assert_eq!(cr_container["args"], k8s_container["args"]);
    let without_count: Vec<_> = k8s_env.iter().filter(|(k, _)| k != "LUMEN_SHARD_COUNT").cloned().collect();
    assert_eq!(cr_env, without_count, "the two definitions set different variables");

    check_args_and_weights(cr_container, &cr_env);
    check_args_and_weights(k8s_container, &k8s_env);
    check_cloud_run_resources(&cloud_run);
    check_k8s_indexed_job(&k8s, &k8s_env);
}

fn check_args_and_weights(container: &serde_json::Value, env: &[(String, String)]) {
    let args = jobs::string_list(&container["args"]);
    assert_eq!(args[0], "pregenerate");
    let catalog = docker::repo().join(&args[1]);
    lumen::concept::Catalog::load(&catalog).expect("the job's catalogue is in the image (concepts/ of the repository)");
    // The weights cache is on the mounted volume.
    let hf_home = &env.iter().find(|(k, _)| k == "HF_HOME").unwrap().1;
    let mounts = container["volumeMounts"].as_array().expect("a weights volume is mounted");
    assert!(
        mounts.iter().any(|m| hf_home.starts_with(m["mountPath"].as_str().unwrap())),
        "HF_HOME {hf_home} is not on a mounted volume"
    );
}

fn check_cloud_run_resources(job: &serde_json::Value) {
    let task = jobs::at(job, "/spec/template/spec/template/spec");
    assert_eq!(task["nodeSelector"]["run.googleapis.com/accelerator"], "nvidia-l4");
    let limits = &task["containers"][0]["resources"]["limits"];
    assert_eq!(limits["nvidia.com/gpu"], "1");
    assert!(limits["cpu"].as_str().is_some() && limits["memory"].as_str().is_some());
    let timeout: u64 = task["timeoutSeconds"].as_str().expect("timeoutSeconds").parse().unwrap();
    assert!(timeout >= 600, "a task must outlive model loading");
    assert!(task["maxRetries"].as_u64().expect("maxRetries") >= 1);
    assert!(jobs::cloud_run_task_count(job) >= 2);
}

fn check_k8s_indexed_job(job: &serde_json::Value, env: &[(String, String)]) {
    assert_eq!(job["spec"]["completionMode"], "Indexed");
    let completions = job["spec"]["completions"].as_u64().expect("completions");
    let count = &env.iter().find(|(k, _)| k == "LUMEN_SHARD_COUNT").expect("LUMEN_SHARD_COUNT").1;
    assert_eq!(count, &completions.to_string(), "LUMEN_SHARD_COUNT must equal completions");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(IMAGE_UID));
    assert_eq!(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(pod["restartPolicy"], "Never");
    let dockerfile = std::fs::read_to_string(docker::repo().join("deploy/Dockerfile.cpu")).unwrap();
    assert!(dockerfile.contains(&format!("--uid {IMAGE_UID}")), "Dockerfile.cpu's user is not uid {IMAGE_UID}");
}

#[test]
fn ci_configs_and_images_set_only_what_lumen_reads() {
    let workflow = jobs::load("ci/github-pregenerate.yml");
    let cloud_build = jobs::load("ci/cloudbuild.yaml");
    let mut sets = vec![("ci/github-pregenerate.yml", jobs::workflow_env_names(&workflow))];
    sets.push(("ci/cloudbuild.yaml", jobs::cloud_build_env_names(&cloud_build)));
    // The dynamic loader's search path is the one variable an image sets for something else.
    for rel in ["Dockerfile.cpu", "Dockerfile.cuda"] {
        let names = jobs::dockerfile_env_names(rel).into_iter().filter(|n| n != "LD_LIBRARY_PATH").collect();
        sets.push((rel, names));
    }
    for (file, names) in &sets {
        let unread: Vec<_> = names.iter().filter(|n| !env_vars::is_read(n)).collect();
        assert!(unread.is_empty(), "{file} sets variables lumen never reads: {unread:?}");
    }
    assert!(sets[0].1.iter().any(|n| n == "LUMEN_STORE"), "the workflow names its store");
    // The workflow keeps what the run produced.
    let text = std::fs::read_to_string(docker::repo().join("deploy/ci/github-pregenerate.yml")).unwrap();
    for needle in ["preflight", "pregenerate", "--json", "--contact-sheet", "upload-artifact"] {
        assert!(text.contains(needle), "the workflow lacks {needle}");
    }
}

/// The CUDA image's runtime libraries (`deploy/cuda-runtime-libs.txt`) against the CUDA
/// binary; see `containers/cuda_libs.rs` for what is checked where.
#[test]
fn cuda_runtime_libraries() {
    cuda_libs::check();
}

/// Not a test: the GCS test server's entry point inside its container (see gcs_process.rs).
#[test]
#[ignore = "the GCS server process of the container tests; returns at once unless LUMEN_TEST_GCS_LISTEN is set"]
fn gcs_server_process() {
    gcs_process::serve_from_env();
}
