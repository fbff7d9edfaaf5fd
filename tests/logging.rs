//! The log through the real binary: levels (`-q`, `-v`, `RUST_LOG`), the two formats, and
//! other crates' events (object_store's `tracing`, reqwest's `log`) in the same log.

mod support;

use std::sync::atomic::Ordering;

use serde_json::Value;
use support::gcs::GcsServer;
use support::{run_in, stderr, stdout, workdir};

const CHAIR: &[&str] = &["generate", "chair", "--pipeline", "procedural", "--force"];

/// `lumen generate chair --pipeline procedural --force EXTRA…`.
fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    CHAIR.iter().copied().chain(extra.iter().copied()).collect()
}

/// Every stderr line as a JSON object; fails on a line that is not one.
fn json_lines(o: &std::process::Output) -> Vec<Value> {
    stderr(o)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .inspect(|v| assert!(v.is_object(), "{v}"))
        .collect()
}

fn is_rfc3339_utc(ts: &str) -> bool {
    let b = ts.as_bytes();
    ts.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && ts.ends_with('Z')
}

#[test]
fn quiet_prints_only_the_result() {
    let w = workdir();
    let plain = run_in(w.path(), &with(&["--log-format", "text"]));
    let quiet = run_in(w.path(), &with(&["-q"]));
    assert_eq!(quiet.status.code(), Some(0), "{}", stderr(&quiet));
    assert_eq!(stderr(&quiet), "", "-q leaves stderr empty");
    let lines: Vec<String> = stdout(&quiet).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("overwritten chair"), "{lines:?}");
    assert_eq!(stdout(&plain).lines().count(), 1, "the result is the same without -q");
}

#[test]
fn verbose_text_shows_stage_timings_as_debug_events_in_their_span() {
    let w = workdir();
    run_in(w.path(), &with(&[]));
    let normal = run_in(w.path(), &with(&["--log-format", "text"]));
    assert!(!stderr(&normal).contains("debug:"), "{}", stderr(&normal));
    let o = run_in(w.path(), &with(&["-v", "--log-format", "text"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    for stage in ["procedural", "sampling"] {
        let line = err
            .lines()
            .find(|l| l.contains(&format!("{stage}: ")) && l.contains(" ms"))
            .unwrap_or_else(|| panic!("no {stage} timing in:\n{err}"));
        assert!(line.starts_with("debug: ["), "{line}");
        assert!(line.contains(&format!("stage={stage}")) && line.contains("device=cpu"), "{line}");
    }
    // The asset's size may differ by a digit of its recorded timings; the rest is the same.
    assert_eq!(without_size(&stdout(&o)), without_size(&stdout(&normal)), "results on stdout do not change with -v");
}

/// A result line without its byte count (` 39898 bytes)` → ` N bytes)`).
fn without_size(line: &str) -> String {
    line.split(' ')
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| if w[1].starts_with("bytes") && w[0].chars().all(|c| c.is_ascii_digit()) { "N" } else { w[0] })
        .chain(line.rsplit(' ').next())
        .collect::<Vec<_>>()
        .join(" ")
}

/// One object per line with Cloud Logging's keys, the stage span's fields on the timing
/// events. (The concept span with `key` is not on this branch: only its presence is
/// checked when it is there.)
#[test]
fn json_lines_have_severity_message_timestamp_and_span_fields() {
    let w = workdir();
    let o = run_in(w.path(), &with(&["-v", "--log-format", "json"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = json_lines(&o);
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(["DEBUG", "INFO", "WARNING", "ERROR"].contains(&l["severity"].as_str().unwrap()), "{l}");
        assert!(l["message"].is_string(), "{l}");
        assert!(is_rfc3339_utc(l["timestamp"].as_str().unwrap()), "{l}");
        if let Some(key) = l.get("key") {
            assert_eq!(key, "3d7eb3d3dab17ee5", "{l}");
        }
    }
    let sampling = lines.iter().find(|l| l["stage"] == "sampling").expect("a line in the sampling stage");
    assert_eq!((sampling["severity"].as_str(), sampling["device"].as_str()), (Some("DEBUG"), Some("cpu")));
    assert!(sampling["elapsed_ms"].is_number(), "{sampling}");
}

/// Off a terminal (as on Cloud Run) the default is JSON; errors are ERROR lines, exit 2.
#[test]
fn json_is_the_default_off_a_terminal_and_errors_are_error_lines() {
    let w = workdir();
    let o = run_in(w.path(), &["generate", "chair", "--pipeline", "procedural", "--store", "ftp://nowhere"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let lines = json_lines(&o);
    let last = lines.last().expect("an error line");
    assert_eq!(last["severity"], "ERROR", "{last}");
    assert!(last["message"].as_str().unwrap().contains("ftp://nowhere"), "{last}");
    assert_eq!(stdout(&o), "");
    let text = support::lumen()
        .current_dir(w.path())
        .env("LUMEN_LOG_FORMAT", "text")
        .args(["generate", "chair", "--pipeline", "procedural", "--store", "ftp://nowhere"])
        .output()
        .unwrap();
    assert!(stderr(&text).starts_with("error: "), "{}", stderr(&text));
}

#[test]
fn rust_log_overrides_the_flags_and_a_bad_one_is_a_usage_error() {
    let w = workdir();
    let run = |rust_log: &str, extra: &[&str]| {
        support::lumen().current_dir(w.path()).env("RUST_LOG", rust_log).args(with(extra)).output().unwrap()
    };
    let o = run("lumen::stage=debug", &["-q", "--log-format", "text"]);
    assert!(stderr(&o).contains("debug: sampling: "), "RUST_LOG wins over -q: {}", stderr(&o));
    let o = run("error", &["-v", "--log-format", "text"]);
    assert_eq!(stderr(&o), "", "RUST_LOG wins over -v");
    let o = run("lumen=loud", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("RUST_LOG"), "{}", stderr(&o));
}

/// object_store's retry events (`tracing`) and reqwest's connection events (`log`) reach
/// the log at -v, and neither is shown by default.
#[test]
fn dependency_events_reach_the_log_at_verbose() {
    let w = workdir();
    let server = GcsServer::start();
    let stats = |extra: &[&str]| {
        server.state.fail_next.store(1, Ordering::SeqCst);
        support::lumen()
            .current_dir(w.path())
            .env("GOOGLE_SERVICE_ACCOUNT_KEY", server.service_account_key())
            .args(["stats", "--store", "gs://lumen-test/logs", "--log-format", "json"])
            .args(extra)
            .output()
            .unwrap()
    };
    let targets = |o: &std::process::Output| -> Vec<String> {
        json_lines(o).iter().map(|l| l["target"].as_str().unwrap_or("").to_string()).collect()
    };
    let quiet = stats(&[]);
    assert_eq!(quiet.status.code(), Some(0), "{}", stderr(&quiet));
    assert!(!targets(&quiet).iter().any(|t| !t.starts_with("lumen")), "{}", stderr(&quiet));
    let verbose = stats(&["-v"]);
    assert_eq!(verbose.status.code(), Some(0), "{}", stderr(&verbose));
    let t = targets(&verbose);
    assert!(t.iter().any(|t| t.starts_with("object_store")), "no object_store retry event: {}", stderr(&verbose));
    assert!(t.iter().any(|t| t.starts_with("reqwest")), "no reqwest (log crate) event: {}", stderr(&verbose));
}
