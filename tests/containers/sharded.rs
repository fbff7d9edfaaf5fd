//! The Cloud Run Job as containers: its tasks (the env the job definition sets, plus the
//! CLOUD_RUN_TASK_* variables Cloud Run sets) on a private Docker network, writing to the
//! GCS test server in a fourth container. The server answers every PUT slowly, so a task is
//! still running when it is killed (`docker kill`, as a lost instance); its rerun (Cloud Run's
//! retry: same index, next attempt) must finish the shard without writing anything twice.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::docker::{self, docker_ok, Scope};
use super::gcs_process::{self, answers, shape_key, Answer};
use super::jobs;
use lumen::concept::{Catalog, Concept, Shard};

/// Slow enough that a shard of ~17 concepts takes several seconds, fast enough for CI.
const PUT_DELAY_MS: u64 = 400;
/// The task killed mid-run.
const VICTIM: usize = 1;
/// Kill the victim once this many of its assets are stored.
const KILL_AFTER_STORED: usize = 2;

pub fn run() {
    let started = Instant::now();
    let image = docker::cpu_image();
    let job = jobs::load("cloudrun-job.yaml");
    let container = jobs::cloud_run_container(&job);
    let env = jobs::container_env(container);
    let tasks = jobs::cloud_run_task_count(&job);
    let args = procedural_args(&jobs::string_list(&container["args"]));
    let store = env.iter().find(|(k, _)| k == "LUMEN_STORE").unwrap().1.clone();
    let shards = keys_by_shard(&args[1], tasks);
    let all_keys: BTreeSet<&String> = shards.iter().flatten().collect();

    let mut scope = Scope::new("shards");
    let net = scope.network();
    let gcs = start_gcs_server(&mut scope, &net, image);
    // Points the GCS client at the test server: the one variable the test adds (on Cloud
    // Run, credentials come from the metadata server).
    let key = format!(
        r#"{{"gcs_base_url":"http://gcs:{}","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}}"#,
        gcs_process::PORT
    );
    let mut task = |index: usize, attempt: usize| {
        let mut opts: Vec<String> = vec!["--network".into(), net.clone()];
        let platform = [
            ("CLOUD_RUN_TASK_INDEX", index.to_string()),
            ("CLOUD_RUN_TASK_COUNT", tasks.to_string()),
            ("CLOUD_RUN_TASK_ATTEMPT", attempt.to_string()),
            ("CLOUD_RUN_JOB", "lumen-pregenerate".to_string()),
        ];
        let test_only = [("GOOGLE_SERVICE_ACCOUNT_KEY", key.clone())];
        for (k, v) in env
            .iter()
            .cloned()
            .chain(platform.map(|(k, v)| (k.to_string(), v)))
            .chain(test_only.map(|(k, v)| (k.to_string(), v)))
        {
            opts.extend(["-e".into(), format!("{k}={v}")]);
        }
        opts.push(image.to_string());
        opts.extend(args.iter().cloned());
        scope.create(&format!("task{index}-attempt{attempt}"), &opts)
    };

    let first: Vec<String> = (0..tasks).map(|i| task(i, 0)).collect();
    for c in &first {
        docker::start(c);
    }
    let stored_at_kill = kill_mid_run(&gcs, &first[VICTIM], &shards[VICTIM]);
    let killed_code = docker::wait(&first[VICTIM]);
    assert_eq!(killed_code, 137, "the killed task exits by SIGKILL");
    for (i, c) in first.iter().enumerate().filter(|(i, _)| *i != VICTIM) {
        let summary = finished(c);
        assert_eq!(summary["done"].as_u64(), Some(shards[i].len() as u64), "task {i}: {summary}");
    }
    let rerun = task(VICTIM, 1);
    docker::start(&rerun);
    let summary = finished(&rerun);
    let skipped = summary["skipped"].as_u64().unwrap() as usize;
    let done = summary["done"].as_u64().unwrap() as usize;
    assert!(skipped >= stored_at_kill, "the rerun regenerated stored assets: {summary}");
    assert_eq!(skipped + done, shards[VICTIM].len(), "{summary}");

    let log = answers(&docker::logs(&gcs).0);
    let puts = successful_puts(&log);
    let refused = log.iter().filter(|a| a.method == "PUT" && a.status == 412 && shape_key(&a.path).is_some()).count();
    let rewritten: Vec<_> = puts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(rewritten.is_empty(), "assets written more than once: {rewritten:?}");
    let stored: BTreeSet<&String> = puts.keys().collect();
    assert_eq!(stored, all_keys, "the stored keys are not the catalogue's");
    assert!(!log.iter().any(|a| a.method == "DELETE" && shape_key(&a.path).is_some()), "an asset was deleted");
    check_stats(&mut scope, &net, image, &store, &key, all_keys.len());
    println!(
        "sharded job: {} keys in {tasks} tasks, 1 killed after {stored_at_kill} stored, rerun skipped {skipped} and made {done}; \
         {} successful shape PUTs, {refused} refused (412), 0 rewrites; {:.1} s",
        all_keys.len(),
        puts.values().sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
}

/// The job's arguments with the procedural pipeline (this image has no weights and no GPU).
fn procedural_args(args: &[String]) -> Vec<String> {
    let at = args.iter().position(|a| a == "--pipeline").expect("the job names its pipeline");
    let mut out = args.to_vec();
    out[at + 1] = "procedural".into();
    out
}

fn keys_by_shard(catalog: &str, tasks: usize) -> Vec<Vec<String>> {
    let catalog = Catalog::load(&docker::repo().join(catalog)).unwrap();
    let keys: BTreeSet<String> = catalog.entries.iter().map(|e| Concept::parse(&e.name).unwrap().key).collect();
    (0..tasks)
        .map(|i| {
            let shard = Shard::parse(&format!("{i}/{tasks}")).unwrap();
            keys.iter().filter(|k| shard.contains(k)).cloned().collect()
        })
        .collect()
}

/// This test binary as the GCS server, in a container reachable as `gcs` on `net`.
fn start_gcs_server(scope: &mut Scope, net: &str, image: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let opts: Vec<String> = [
        "--network",
        net,
        "--network-alias",
        "gcs",
        "-e",
        &format!("{}=0.0.0.0:{}", gcs_process::LISTEN_VAR, gcs_process::PORT),
        "-e",
        &format!("{}=PUT", gcs_process::SLOW_METHOD_VAR),
        "-e",
        &format!("{}={PUT_DELAY_MS}", gcs_process::DELAY_VAR),
        "--entrypoint",
        "/usr/local/bin/gcs-test-server",
        image,
        gcs_process::ENTRY_TEST,
        "--exact",
        "--ignored",
        "--nocapture",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let gcs = scope.create("gcs", &opts);
    docker_ok(&["cp", exe.to_str().unwrap(), &format!("{gcs}:/usr/local/bin/gcs-test-server")]);
    docker::start(&gcs);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !docker::logs(&gcs).0.contains("LISTENING") {
        assert!(Instant::now() < deadline, "the GCS server did not start: {:?}", docker::logs(&gcs));
        std::thread::sleep(Duration::from_millis(100));
    }
    gcs
}

/// Kills `victim` once KILL_AFTER_STORED of its keys are stored and before all are; returns
/// how many were stored at the kill.
fn kill_mid_run(gcs: &str, victim: &str, keys: &[String]) -> usize {
    assert!(keys.len() > KILL_AFTER_STORED + 1, "the victim's shard is too small to kill mid-way");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored = successful_puts(&answers(&docker::logs(gcs).0)).keys().filter(|k| keys.contains(k)).count();
        if stored >= KILL_AFTER_STORED {
            assert!(stored < keys.len(), "the victim finished before it could be killed");
            docker_ok(&["kill", victim]);
            return stored;
        }
        assert!(Instant::now() < deadline, "the victim stored nothing in 120 s: {:?}", docker::logs(victim));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Shape key → successful (2xx) PUTs of it.
fn successful_puts(log: &[Answer]) -> BTreeMap<String, usize> {
    let mut puts = BTreeMap::new();
    for a in log.iter().filter(|a| a.method == "PUT" && (200..300).contains(&a.status)) {
        if let Some(k) = shape_key(&a.path) {
            *puts.entry(k.to_string()).or_insert(0) += 1;
        }
    }
    puts
}

/// Waits for a task container; it must exit 0 with its JSON summary on stdout.
fn finished(container: &str) -> Value {
    let code = docker::wait(container);
    let (stdout, stderr) = docker::logs(container);
    assert_eq!(code, 0, "{container} exited {code}:\n{stdout}\n{stderr}");
    let summary: Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{container}: no JSON summary ({e}):\n{stdout}"));
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
    summary
}

/// `lumen stats` over the bucket, in a container on the network: every asset decodes, no
/// collision, the manifest lists exactly the stored assets.
fn check_stats(scope: &mut Scope, net: &str, image: &str, store: &str, key: &str, keys: usize) {
    let opts: Vec<String> = [
        "--network",
        net,
        "-e",
        &format!("GOOGLE_SERVICE_ACCOUNT_KEY={key}"),
        image,
        "stats",
        "--store",
        store,
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let stats = scope.create("stats", &opts);
    docker::start(&stats);
    let code = docker::wait(&stats);
    let (stdout, stderr) = docker::logs(&stats);
    assert_eq!(code, 0, "stats exited {code}:\n{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("stats --json");
    assert_eq!(report["assets"].as_u64(), Some(keys as u64), "{report}");
    assert_eq!(report["invalid"], serde_json::json!([]), "{report}");
    assert_eq!(report["collisions"], serde_json::json!([]), "{report}");
    assert_eq!(report["manifest"]["entries"].as_u64(), Some(keys as u64), "{report}");
    assert_eq!(report["manifest"]["missing"], serde_json::json!([]), "{report}");
    assert_eq!(report["manifest"]["stale"], serde_json::json!([]), "{report}");
}
