//! `scripts/gpu-check.sh` on this machine (no GPU), against the built binary: what comes back
//! from a GPU machine is at most a few files of `$OUT`, so the script must leave at most four,
//! a results JSON that names every step, and a failing step's stderr tail on stdout.
//!
//! A failing step is made without a hook in the script or the binary: `LUMEN_BIN` points at a
//! wrapper that runs the real binary except for one subcommand, which writes numbered lines to
//! stderr and fails. `GPU_CHECK_STEPS` keeps the run to seconds.

use std::path::{Path, PathBuf};
use std::process::Command;

const STEPS: [&str; 13] = [
    "smoke",
    "goldens",
    "attention_check",
    "conv_check",
    "conv_check_strict",
    "bench_concept",
    "memory",
    "bench_partcrafter_dit",
    "bench_sdxl",
    "bench_attention",
    "bench_conv",
    "bench_partcrafter_geometry",
    "bench_rmbg",
];

/// A `lumen` that fails (60 numbered stderr lines, exit 1) when its arguments start with
/// `fail_on`, and is the real binary otherwise.
fn wrapper(dir: &Path, fail_on: &str) -> PathBuf {
    let path = dir.join("lumen-wrapper.sh");
    let script = format!(
        "#!/usr/bin/env bash\ncase \"$*\" in\n  \"{fail_on}\"*) for i in $(seq 1 60); do echo \"fake-stderr-line-$i\" >&2; done; exit 1 ;;\nesac\nexec \"{}\" \"$@\"\n",
        env!("CARGO_BIN_EXE_lumen")
    );
    std::fs::write(&path, script).unwrap();
    Command::new("chmod").arg("+x").arg(&path).status().unwrap();
    path
}

struct Run {
    code: Option<i32>,
    stdout: String,
    files: Vec<String>,
    results: serde_json::Value,
}

fn run_script(out: &Path, bin: &Path, steps: &str) -> Run {
    let output = Command::new("bash")
        .arg("scripts/gpu-check.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("OUT", out)
        .env("LUMEN_BIN", bin)
        .env("GPU_CHECK_STEPS", steps)
        .env("GPU_CHECK_BUDGET", "120")
        // This machine has no GPU; make sure the script does not find one on the PATH either.
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .output()
        .expect("bash runs the script");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let mut files: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert!(e.file_type().unwrap().is_file(), "{:?} is not a plain file", e.path());
            e.file_name().to_string_lossy().to_string()
        })
        .collect();
    files.sort();
    let text =
        std::fs::read_to_string(out.join("results.json")).unwrap_or_else(|e| panic!("results.json: {e}\n{stdout}"));
    let results = serde_json::from_str(&text).unwrap_or_else(|e| panic!("results.json does not parse: {e}"));
    Run { code: output.status.code(), stdout, files, results }
}

fn step<'a>(results: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    results["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

fn has_python() -> bool {
    Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn failing_step_tail_is_printed_and_out_holds_at_most_four_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let bin = wrapper(tmp.path(), "bench attention_check");
    let run = run_script(&out, &bin, "smoke,attention_check,memory");
    println!("{}", run.stdout);

    assert_eq!(run.code, Some(1), "a failed step fails the script");
    assert!(run.files.len() <= 4, "{:?}", run.files);
    for want in ["gpu-check.log", "results.json"] {
        assert!(run.files.iter().any(|f| f == want), "{want} missing from {:?}", run.files);
    }
    assert!(run.files.iter().any(|f| f.starts_with("gpu-check-files.tar.")), "{:?}", run.files);
    // Every step is named, in order, with a status.
    let names: Vec<&str> =
        run.results["steps"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, STEPS);
    assert_eq!(step(&run.results, "smoke")["status"], "ok");
    assert_eq!(step(&run.results, "memory")["status"], "ok");
    let failed = step(&run.results, "attention_check");
    assert_eq!((failed["status"].as_str(), failed["rc"].as_i64()), (Some("fail"), Some(1)));
    assert!(failed["output"].is_null());
    for s in STEPS.iter().filter(|s| !["smoke", "attention_check", "memory"].contains(s)) {
        assert_eq!(step(&run.results, s)["status"], "skipped", "{s}");
    }
    // The last 40 stderr lines of the failed step, and not the ones before.
    for i in 21..=60 {
        assert!(run.stdout.contains(&format!("fake-stderr-line-{i}\n")), "line {i} of the tail missing");
    }
    assert!(!run.stdout.contains("fake-stderr-line-20\n"));
    if has_python() {
        // Parsed outputs: preflight's report object, the memory suite's rows.
        assert_eq!(step(&run.results, "smoke")["output"]["ok"], true);
        let rows = step(&run.results, "memory")["output"].as_array().unwrap();
        assert!(rows.iter().any(|r| r["name"] == "predicted L4 verdict"));
        assert!(run.files.iter().any(|f| f == "table.txt"));
    } else {
        println!("no python3 on this machine: parsed outputs not checked");
    }
}

/// When the smoke step fails nothing else runs (a missing library costs seconds).
#[test]
fn a_failed_smoke_step_skips_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let bin = wrapper(tmp.path(), "preflight");
    let run = run_script(&out, &bin, "smoke,memory");
    assert_ne!(run.code, Some(0));
    assert!(run.files.len() <= 4, "{:?}", run.files);
    assert_eq!(step(&run.results, "smoke")["status"], "fail");
    let memory = step(&run.results, "memory");
    assert_eq!(memory["status"], "skipped");
    assert_eq!(memory["note"], "the smoke step failed");
    assert!(run.stdout.contains("fake-stderr-line-60"));
}

/// The suites the script runs are the binary's (`bench --list`), the new memory suite among them.
#[test]
fn the_binary_lists_every_suite_the_script_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_lumen")).args(["bench", "--list"]).output().unwrap();
    let list = String::from_utf8(out.stdout).unwrap();
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu-check.sh")).unwrap();
    for suite in list.lines() {
        let runs = script.contains(&format!("bench {suite} ")) || script.contains(&format!("bench {suite}\n"));
        assert!(runs || suite == "sampling", "the script never runs suite {suite}");
    }
    assert!(list.lines().any(|l| l == "memory"));
}
