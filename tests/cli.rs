//! The real `lumen` binary driven end to end on temp folders.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lumen::asset::Asset;
use support::gcs::GcsServer;
use support::{lumen, run_in, stderr, stdout, workdir};

fn shapes_in(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let shapes = dir.join("shapes");
    if !shapes.exists() {
        return BTreeMap::new();
    }
    // Only finished assets: object_store stages a write as `<name>#<n>` and renames it, and a
    // file can vanish between listing and reading while a run is going on.
    std::fs::read_dir(shapes)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), std::fs::read(&p).ok()?)))
        .collect()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

/// `lumen pregenerate concepts/top50.json --pipeline procedural --json EXTRA…` in `dir`.
fn pregenerate_top50(dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["pregenerate", "concepts/top50.json", "--pipeline", "procedural", "--json"];
    args.extend_from_slice(extra);
    run_in(dir, &args)
}

#[test]
fn generate_writes_a_decodable_asset() {
    let w = workdir();
    let o = run_in(w.path(), &["generate", "chair", "Bald Eagle", "--pipeline", "procedural", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["failed"], 0);
    let shapes = shapes_in(&w.path().join("out"));
    assert_eq!(shapes.len(), 2);
    for bytes in shapes.values() {
        let (asset, points) = Asset::decode(bytes).unwrap();
        assert_eq!(asset.num_points, 2048);
        assert_eq!(points.positions.len(), 2048);
        assert_eq!(asset.pipeline.name, "procedural");
        assert!(points.part_ids.iter().all(|&id| id >= 1 && id as usize <= asset.part_names.len()));
    }
    let chair = &v["results"][0];
    assert_eq!(chair["status"], "created");
    assert_eq!(chair["parts"], 6, "the catalogue gives chair 6 parts");
    // The manifest lists both.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("out/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["entries"].as_object().unwrap().len(), 2);

    // Same seed, same asset points; a rerun without --force keeps the stored blob.
    let before = shapes_in(&w.path().join("out"));
    let o = run_in(w.path(), &["generate", "chair", "--pipeline", "procedural"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("exists"), "{}", stdout(&o));
    assert_eq!(before, shapes_in(&w.path().join("out")));
    let o = run_in(w.path(), &["generate", "chair", "--pipeline", "procedural", "--force", "--store", "again"]);
    assert_eq!(o.status.code(), Some(0));
    let (a, pa) =
        Asset::decode(before.values().find(|b| Asset::decode(b).unwrap().0.text == "chair").unwrap()).unwrap();
    let again = shapes_in(&w.path().join("again"));
    let (b, pb) = Asset::decode(again.values().next().unwrap()).unwrap();
    assert_eq!((a.key, pa.positions, pa.part_ids), (b.key, pb.positions, pb.part_ids));
}

#[test]
fn bad_input_exits_2_with_a_clear_message_and_writes_nothing() {
    let w = workdir();
    let long = "x".repeat(10_000);
    let file = w.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    let under_file = format!("{}/store", file.display());
    std::fs::write(w.path().join("bad.json"), "{ not json").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["generate", ""], "empty"),
        (vec!["generate", "   "], "empty"),
        (vec!["generate", &long], "characters long"),
        (vec!["generate", "chair\u{1b}[31m"], "control characters"),
        (vec!["generate", "chair", "--parts", "0"], "between 1 and 16"),
        (vec!["generate", "chair", "--parts", "17"], "between 1 and 16"),
        (vec!["generate", "chair", "--store", "s3://bucket/x"], "unknown store URL scheme"),
        (vec!["generate", "chair", "--pipeline", "procedural", "--store", &under_file], "not writable"),
        (vec!["pregenerate", "missing.json", "--pipeline", "procedural"], "cannot read catalogue"),
        (vec!["pregenerate", "bad.json", "--pipeline", "procedural"], "malformed catalogue"),
        (vec!["pregenerate", "concepts/top50.json", "--shard", "3/2"], "--shard"),
        (vec!["generate"], "CONCEPT"),
        (vec!["frobnicate"], "unrecognized subcommand"),
    ];
    for (args, needle) in cases {
        let o = run_in(w.path(), &args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err:?} lacks {needle:?}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert!(shapes_in(&w.path().join("out")).is_empty());
}

#[test]
fn pregenerate_twice_skips_everything_the_second_time() {
    let w = workdir();
    let o = pregenerate_top50(w.path(), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!((v["done"].as_u64(), v["skipped"].as_u64(), v["failed"].as_u64()), (Some(50), Some(0), Some(0)));
    let first = shapes_in(&w.path().join("out"));
    assert_eq!(first.len(), 50);
    let mtimes: Vec<_> = std::fs::read_dir(w.path().join("out/shapes"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().modified().unwrap())
        .collect();
    let o = pregenerate_top50(w.path(), &[]);
    assert_eq!(o.status.code(), Some(0));
    let v = json(&o);
    assert_eq!((v["done"].as_u64(), v["skipped"].as_u64()), (Some(0), Some(50)));
    assert_eq!(first, shapes_in(&w.path().join("out")));
    let again: Vec<_> = std::fs::read_dir(w.path().join("out/shapes"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().modified().unwrap())
        .collect();
    assert_eq!(mtimes, again, "nothing was rewritten");

    let o = run_in(w.path(), &["stats", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let s = json(&o);
    assert_eq!(s["assets"], 50);
    assert_eq!(s["pipelines"]["procedural"], 50);
    assert_eq!(s["manifest"]["entries"], 50);
    assert!(s["timings_ms"]["sampling"]["p50"].as_f64().unwrap() > 0.0);
}

#[test]
fn shards_split_the_catalogue_without_overlap() {
    let w = workdir();
    let mut total = 0;
    for i in 0..3 {
        let o = pregenerate_top50(w.path(), &["--shard", &format!("{i}/3")]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = json(&o);
        assert_eq!(v["skipped"], 0, "shard {i} saw another shard's key");
        total += v["done"].as_u64().unwrap();
    }
    assert_eq!(total, 50);
    // The Cloud Run variables pick the shard when --shard is absent.
    let o = lumen()
        .current_dir(w.path())
        .args(["pregenerate", "concepts/top50.json", "--pipeline", "procedural", "--json"])
        .env("CLOUD_RUN_TASK_INDEX", "1")
        .env("CLOUD_RUN_TASK_COUNT", "3")
        .output()
        .unwrap();
    assert_eq!(json(&o)["shard"], "1/3");
}

/// A run killed halfway (SIGKILL) leaves only whole assets, and the next run generates
/// exactly the rest. The run is slowed from outside: the GCS test server delays every answer.
#[test]
fn killed_pregenerate_resumes_and_leaves_no_partial_blob() {
    let w = workdir();
    let server = GcsServer::start();
    server.state.delay_ms.store(40, std::sync::atomic::Ordering::SeqCst);
    server.state.slow_next.store(usize::MAX / 2, std::sync::atomic::Ordering::SeqCst);
    let url = "gs://lumen-test/shapes-v1";
    let shapes = |server: &GcsServer| -> Vec<String> {
        server.object_names("lumen-test").into_iter().filter(|n| n.starts_with("shapes-v1/shapes/")).collect()
    };
    let mut child = lumen()
        .current_dir(w.path())
        .args(["pregenerate", "concepts/top50.json", "--pipeline", "procedural", "--jobs", "2", "--store", url])
        .env("GOOGLE_SERVICE_ACCOUNT_KEY", server.service_account_key())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while shapes(&server).len() < 8 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = shapes(&server);
    assert!(partial.len() >= 8 && partial.len() < 50, "killed after {} assets", partial.len());
    for name in &partial {
        Asset::decode(&server.get("lumen-test", name).unwrap().data).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    server.state.slow_next.store(0, std::sync::atomic::Ordering::SeqCst);
    let o = lumen()
        .current_dir(w.path())
        .args(["pregenerate", "concepts/top50.json", "--pipeline", "procedural", "--json", "--store", url])
        .env("GOOGLE_SERVICE_ACCOUNT_KEY", server.service_account_key())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["skipped"].as_u64().unwrap() as usize, partial.len());
    assert_eq!(v["done"].as_u64().unwrap() as usize, 50 - partial.len());
    let all = shapes(&server);
    assert_eq!(all.len(), 50);
    for name in &all {
        Asset::decode(&server.get("lumen-test", name).unwrap().data).unwrap();
    }
    let manifest = server.get("lumen-test", "shapes-v1/manifest.json").expect("manifest written");
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.data).unwrap();
    assert_eq!(manifest["entries"].as_object().unwrap().len(), 50, "the rerun reconciles the manifest");
}

#[test]
fn pregenerate_and_stats_against_gcs() {
    let w = workdir();
    let server = GcsServer::start();
    let run = |args: &[&str]| {
        lumen()
            .current_dir(w.path())
            .args(args)
            .env("GOOGLE_SERVICE_ACCOUNT_KEY", server.service_account_key())
            .output()
            .unwrap()
    };
    let url = "gs://lumen-test/shapes-v1";
    let o = run(&["pregenerate", "concepts/top50.json", "--pipeline", "procedural", "--store", url, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["done"], 50);
    let names = server.object_names("lumen-test");
    assert_eq!(names.iter().filter(|n| n.starts_with("shapes-v1/shapes/")).count(), 50);
    assert!(names.contains(&"shapes-v1/manifest.json".to_string()));
    for n in names.iter().filter(|n| n.contains("/shapes/")) {
        Asset::decode(&server.get("lumen-test", n).unwrap().data).unwrap();
    }
    let puts_before = server.requests().iter().filter(|r| r.starts_with("PUT") && r.contains("/shapes/")).count();
    let o = run(&["pregenerate", "concepts/top50.json", "--pipeline", "procedural", "--store", url, "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(json(&o)["skipped"], 50);
    let puts_after = server.requests().iter().filter(|r| r.starts_with("PUT") && r.contains("/shapes/")).count();
    assert_eq!(puts_before, puts_after, "the second run wrote no asset");
    let o = run(&["stats", "--store", url, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["assets"], 50);
    let o = run(&["preflight", "--store", url, "--pipeline", "procedural"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn stats_lists_corrupt_blobs_and_repair_rebuilds_the_manifest() {
    let w = workdir();
    let o = run_in(w.path(), &["generate", "chair", "mug", "--pipeline", "procedural"]);
    assert_eq!(o.status.code(), Some(0));
    let out = w.path().join("out");
    std::fs::write(out.join("shapes/00000000deadbeef.json"), b"{\"format\":\"lumen.shape/1\",\"trunc").unwrap();
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    let o = run_in(w.path(), &["stats", "--json"]);
    assert_eq!(o.status.code(), Some(2), "invalid blobs exit 2");
    let s = json(&o);
    assert_eq!(s["assets"], 2);
    assert_eq!(s["invalid"][0]["key"], "00000000deadbeef");
    assert!(s["invalid"][0]["error"].as_str().unwrap().contains("not JSON"));
    assert_eq!(s["manifest"]["missing"].as_array().unwrap().len(), 2);
    let o = run_in(w.path(), &["stats", "--repair"]);
    assert!(stdout(&o).contains("INVALID") && stdout(&o).contains("(rebuilt)"), "{}", stdout(&o));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["entries"].as_object().unwrap().len(), 2);
}

#[test]
fn collisions_are_reported() {
    let w = workdir();
    std::fs::write(w.path().join("c.json"), r#"[{"name":"Chair"},{"name":"chair."},{"name":"lamp"}]"#).unwrap();
    let o = run_in(w.path(), &["pregenerate", "c.json", "--pipeline", "procedural", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("same key"), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["collisions"][0]["texts"], serde_json::json!(["Chair", "chair."]));
    assert_eq!(v["done"], 2);
    let s = json(&run_in(w.path(), &["stats", "--json"]));
    assert_eq!(s["collisions"][0]["texts"], serde_json::json!(["Chair", "chair."]));
}

#[test]
fn partcrafter_without_weights_fails_clearly_and_falls_back_when_asked() {
    let w = workdir();
    // Missing weights are a configuration error: exit 2, naming the repo and how to fetch it.
    let o = run_in(w.path(), &["generate", "chair"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("partcrafter pipeline cannot run") && err.contains("stabilityai/sdxl-turbo"), "{err}");
    assert!(err.contains("lumen fetch --pipeline partcrafter --device cpu"), "{err}");
    let o = run_in(w.path(), &["generate", "chair", "--weights", "no-such-dir"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not found under --weights no-such-dir"), "{}", stderr(&o));
    assert!(shapes_in(&w.path().join("out")).is_empty(), "no fake asset");
    let o = run_in(w.path(), &["generate", "chair", "--fallback", "procedural", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["results"][0]["pipeline"], "procedural");
}

#[test]
fn preflight_reports_each_check() {
    let w = workdir();
    let o = run_in(w.path(), &["preflight", "--pipeline", "procedural", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let v = json(&o);
    let names: Vec<&str> = v["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"store") && names.contains(&"device") && names.contains(&"catalog"));
    let licences = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "model licences").unwrap();
    assert_eq!(licences["status"], "skipped", "no models in the procedural pipeline");
    // Without weights the model check fails: exit 3, the other checks still ran, and the
    // licence check names the models that are not for commercial use.
    let o = run_in(w.path(), &["preflight", "--json"]);
    assert_eq!(o.status.code(), Some(3));
    let v = json(&o);
    assert_eq!(v["ok"], false);
    let checks = v["checks"].as_array().unwrap();
    let ok: Vec<&str> = checks.iter().filter(|c| c["status"] == "ok").map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(ok, ["store", "device", "catalog", "procedural end-to-end", "model licences"]);
    let detail = checks.iter().find(|c| c["name"] == "model licences").unwrap()["detail"].as_str().unwrap();
    let restricted = detail.split_once("not for commercial use").map(|(_, r)| r).unwrap_or_else(|| panic!("{detail}"));
    assert!(restricted.contains("stabilityai/sdxl-turbo") && restricted.contains("briaai/RMBG-1.4"), "{detail}");
    assert!(!restricted.contains("PartCrafter") && detail.contains("wgsxm/PartCrafter: mit"), "{detail}");
    // A broken catalogue fails preflight too.
    std::fs::write(w.path().join("concepts/top50.json"), "[]").unwrap();
    let o = run_in(w.path(), &["preflight", "--pipeline", "procedural"]);
    assert_eq!(o.status.code(), Some(3));
    assert!(stdout(&o).contains("FAIL"));
}

#[test]
fn help_explains_each_subcommand() {
    let w = workdir();
    for (cmd, needle) in [
        ("generate", "--fallback"),
        ("pregenerate", "CLOUD_RUN_TASK_INDEX"),
        ("preflight", "Exits 3"),
        ("stats", "--repair"),
    ] {
        let o = run_in(w.path(), &[cmd, "--help"]);
        assert_eq!(o.status.code(), Some(0));
        assert!(stdout(&o).contains(needle), "{cmd} --help lacks {needle}");
    }
    let o = run_in(w.path(), &["--help"]);
    assert!(stdout(&o).contains("Exit codes"));
}

/// Unmounts the small filesystem of `full_disk_fails_cleanly` whatever the test's outcome.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_fails_cleanly_and_keeps_what_was_stored() {
    let w = workdir();
    let disk = w.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    // A 100 KiB filesystem holds two assets of ~40 KB. Mounting needs root; skip loudly without.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=100k", "tmpfs"])
        .arg(&disk)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("\n*** SKIPPED full_disk_fails_cleanly: cannot mount a small tmpfs here (needs root) ***\n");
        return;
    }
    let _guard = Mounted(disk.clone());
    let store = disk.join("out");
    let o = run_in(
        w.path(),
        &[
            "generate",
            "chair",
            "mug",
            "eagle",
            "dog",
            "--pipeline",
            "procedural",
            "--json",
            "--store",
            store.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json(&o);
    let failed: Vec<_> = v["results"].as_array().unwrap().iter().filter(|r| r["status"] == "failed").collect();
    assert!(!failed.is_empty());
    assert!(failed.iter().all(|r| r["error"].as_str().unwrap().contains("No space left on device")), "{failed:?}");
    // What was stored is whole; nothing partial is visible as an asset.
    let stored = shapes_in(&store);
    assert_eq!(stored.len() + failed.len(), 4);
    for bytes in stored.values() {
        Asset::decode(bytes).unwrap();
    }
    let o = run_in(w.path(), &["stats", "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json(&o)["assets"].as_u64().unwrap() as usize, stored.len());

    // A batch keeps going past every failing concept and ends with the summary, exit 1.
    let o = pregenerate_top50(w.path(), &["--store", store.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(v["skipped"].as_u64().unwrap() as usize, stored.len(), "the stored concepts are all in top50");
    assert_eq!(v["failed"].as_u64().unwrap() + v["done"].as_u64().unwrap() + v["skipped"].as_u64().unwrap(), 50);
    assert!(v["failed"].as_u64().unwrap() >= 45, "{}", v["failed"]);
    assert_eq!(v["failures"].as_array().unwrap().len() as u64, v["failed"].as_u64().unwrap());
    for bytes in shapes_in(&store).values() {
        Asset::decode(bytes).unwrap();
    }
}

/// `lumen generate a b c | head -0`: the reader is gone before the first result line; the
/// run still stores every concept, updates the manifest and exits with the work's code.
#[test]
fn a_closed_stdout_stops_the_output_not_the_work() {
    let w = workdir();
    let mut child = lumen()
        .current_dir(w.path())
        .args(["generate", "chair", "table", "lamp", "--pipeline", "procedural"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(shapes_in(&w.path().join("out")).len(), 3);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("out/manifest.json")).expect("manifest written")).unwrap();
    assert_eq!(manifest["entries"].as_object().unwrap().len(), 3, "{manifest}");
}
