//! The GCS test server (`tests/support/gcs.rs`) as a process of its own, for a container:
//! this test binary, copied into the container and started on its one ignored test
//! (`gcs_server_process`), serves on `LUMEN_TEST_GCS_LISTEN` until the container is removed.
//! Every answered request goes to stdout as `ANSWER <status> <METHOD> <path>`, so the test
//! reads the server's request log with `docker logs`.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::gcs::GcsServer;
use lumen::store::percent_decode;

/// Where the server listens inside its container.
pub const PORT: u16 = 4443;
pub const LISTEN_VAR: &str = "LUMEN_TEST_GCS_LISTEN";
/// Delay every request of this method (`PUT`) by `LUMEN_TEST_GCS_DELAY_MS`: slow answers make
/// a task slow enough to be killed mid-run, without a hook in lumen.
pub const SLOW_METHOD_VAR: &str = "LUMEN_TEST_GCS_SLOW_METHOD";
pub const DELAY_VAR: &str = "LUMEN_TEST_GCS_DELAY_MS";
/// The test that is the server's entry point (run with `--ignored --exact`).
pub const ENTRY_TEST: &str = "gcs_server_process";

/// Serves forever when `LUMEN_TEST_GCS_LISTEN` is set; returns at once otherwise.
pub fn serve_from_env() {
    let Ok(listen) = std::env::var(LISTEN_VAR) else {
        println!("{ENTRY_TEST}: {LISTEN_VAR} is not set; this is the container tests' GCS server, not a test");
        return;
    };
    let server = GcsServer::start_on(&listen);
    if let Ok(ms) = std::env::var(DELAY_VAR) {
        server.state.delay_ms.store(ms.parse().expect("delay in ms"), Ordering::SeqCst);
        server.state.slow_next.store(usize::MAX, Ordering::SeqCst);
        *server.state.slow_method.lock().unwrap() = std::env::var(SLOW_METHOD_VAR).ok();
    }
    println!("LISTENING {}", server.addr);
    let mut printed = 0;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let answered = server.state.answered.lock().unwrap();
        let mut out = std::io::stdout().lock();
        for (request, status) in &answered[printed..] {
            let _ = writeln!(out, "ANSWER {status} {request}");
        }
        let _ = out.flush();
        printed = answered.len();
    }
}

/// One answered request from the server's log (path decoded).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub method: String,
    pub path: String,
}

pub fn answers(log: &str) -> Vec<Answer> {
    log.lines()
        .filter_map(|l| {
            let mut it = l.strip_prefix("ANSWER ")?.splitn(3, ' ');
            let (status, method) = (it.next()?.parse().ok()?, it.next()?.to_string());
            // The GCS client sends object names percent-encoded (`p%2Fshapes%2Fk%2Ejson`).
            Some(Answer { status, method, path: percent_decode(it.next()?) })
        })
        .collect()
}

/// The shape key a request's path names (`/BUCKET/PREFIX/shapes/<key>.json`), if any.
pub fn shape_key(path: &str) -> Option<&str> {
    let (_, file) = path.rsplit_once("/shapes/")?;
    file.strip_suffix(".json")
}
