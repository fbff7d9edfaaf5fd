//! One storage test suite, run on the memory, local-folder and GCS stores. The GCS store is
//! object_store's real GCS client talking HTTP to a local XML-API server.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use lumen::store::{PutOutcome, Store, StoreOptions};
use support::gcs::GcsServer;

fn exercise(store: &Store) {
    // Conditional create, no overwrite without force, overwrite with force.
    assert_eq!(store.put("shapes/abc.json", b"one".to_vec(), false).unwrap(), PutOutcome::Created);
    assert_eq!(store.put("shapes/abc.json", b"two".to_vec(), false).unwrap(), PutOutcome::Exists);
    assert_eq!(store.get("shapes/abc.json").unwrap().unwrap().as_ref(), b"one");
    assert_eq!(store.put("shapes/abc.json", b"three".to_vec(), true).unwrap(), PutOutcome::Overwritten);
    assert_eq!(store.get("shapes/abc.json").unwrap().unwrap().as_ref(), b"three");
    assert!(store.exists("shapes/abc.json").unwrap());
    assert!(!store.exists("shapes/missing.json").unwrap());
    assert!(store.get("shapes/missing.json").unwrap().is_none());

    // Listing with a prefix, names that need percent-encoding.
    store.put("shapes/def.json", b"x".to_vec(), false).unwrap();
    store.put("images/abc/a b+c ü.png", b"png".to_vec(), false).unwrap();
    assert_eq!(store.get("images/abc/a b+c ü.png").unwrap().unwrap().as_ref(), b"png");
    let shapes = store.list_shapes().unwrap();
    assert_eq!(shapes, vec![("abc".to_string(), 5), ("def".to_string(), 1)]);
    let all: Vec<String> = store.list("").unwrap().into_iter().map(|(p, _)| p).collect();
    assert!(all.contains(&"images/abc/a b+c ü.png".to_string()), "{all:?}");

    // Manifest read-modify-write.
    assert!(store.read_manifest().unwrap().entries.is_empty());
    for k in ["abc", "def"] {
        store
            .update_manifest(|m| {
                m.entries.insert(
                    k.into(),
                    lumen::store::ManifestEntry {
                        text: k.into(),
                        normalized: k.into(),
                        size: 1,
                        pipeline: "procedural".into(),
                        created_at: "2026-11-26T00:00:00Z".into(),
                        texts: vec![],
                        quality: None,
                    },
                );
            })
            .unwrap();
    }
    let m = store.read_manifest().unwrap();
    assert_eq!(m.entries.keys().cloned().collect::<Vec<_>>(), vec!["abc", "def"]);
    assert_eq!(m.format, "lumen.manifest/1");

    store.delete("shapes/def.json").unwrap();
    store.delete("shapes/def.json").unwrap(); // deleting twice is fine
    assert_eq!(store.list_shapes().unwrap().len(), 1);
}

#[test]
fn memory_store_suite() {
    exercise(&Store::open("memory://", &StoreOptions::default()).unwrap());
}

#[test]
fn local_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("out").to_str().unwrap(), &StoreOptions::default()).unwrap();
    exercise(&store);
    // No staging files are left behind.
    let names: Vec<_> =
        std::fs::read_dir(dir.path().join("out/shapes")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    let url = format!("file://{}", dir.path().join("out").display());
    let again = Store::open(&url, &StoreOptions::default()).unwrap();
    assert_eq!(again.list_shapes().unwrap().len(), 1);
}

fn gcs_store(server: &GcsServer, url: &str, timeout: Duration, retries: usize) -> Store {
    let opts =
        StoreOptions { timeout, max_retries: retries, gcs_service_account_key: Some(server.service_account_key()) };
    Store::open(url, &opts).unwrap()
}

#[test]
fn gcs_store_suite_over_http() {
    let server = GcsServer::start();
    let store = gcs_store(&server, "gs://lumen-test/run1", Duration::from_secs(10), 2);
    exercise(&store);
    // Objects live under the prefix, in the bucket named by the URL.
    let names = server.object_names("lumen-test");
    assert!(names.contains(&"run1/shapes/abc.json".to_string()), "{names:?}");
    // Space and '+' travel percent-encoded in the URL and arrive decoded; object_store itself
    // keeps non-ASCII characters percent-encoded inside its object names.
    assert!(names.iter().any(|n| n.starts_with("run1/images/abc/a b+c ")), "{names:?}");
    // The conditional create reached the server as a generation precondition.
    assert!(server
        .requests()
        .iter()
        .any(|r| r.starts_with("PUT /lumen-test/run1/shapes/abc.json") || r.starts_with("PUT /lumen%2Dtest")));
}

#[test]
fn gcs_retries_server_errors() {
    let server = GcsServer::start();
    let store = gcs_store(&server, "gs://bucket/p", Duration::from_secs(10), 3);
    server.state.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(store.put("shapes/k.json", b"data".to_vec(), true).unwrap(), PutOutcome::Created);
    assert_eq!(server.get("bucket", "p/shapes/k.json").unwrap().data, b"data");
    server.state.fail_next.store(2, Ordering::SeqCst);
    assert_eq!(store.get("shapes/k.json").unwrap().unwrap().as_ref(), b"data");
}

#[test]
fn gcs_gives_up_after_bounded_retries() {
    let server = GcsServer::start();
    let store = gcs_store(&server, "gs://bucket/p", Duration::from_secs(5), 2);
    server.state.fail_next.store(1000, Ordering::SeqCst);
    let err = store.get("shapes/k.json").unwrap_err();
    assert!(
        format!("{err:#}").contains("503") || format!("{err:#}").to_lowercase().contains("service unavailable"),
        "{err:#}"
    );
    // Bounded by count, not by a clock: one try, two retries, then the error while the
    // server would still have failed hundreds more.
    let attempts = server.requests().len();
    assert_eq!(attempts, 3, "one try and two retries");
    assert_eq!(server.state.fail_next.load(Ordering::SeqCst), 1000 - 3);
}

#[test]
fn gcs_retries_slow_answers_after_the_timeout() {
    let server = GcsServer::start();
    server.put_raw("bucket", "p/shapes/slow.json", b"late");
    let store = gcs_store(&server, "gs://bucket/p", Duration::from_millis(400), 3);
    server.state.delay_ms.store(1500, Ordering::SeqCst);
    server.state.slow_next.store(1, Ordering::SeqCst);
    assert_eq!(store.get("shapes/slow.json").unwrap().unwrap().as_ref(), b"late");
    assert!(server.requests().len() >= 2, "the slow request was retried: {:?}", server.requests());
}

#[test]
fn gcs_conditional_create_conflict_is_reported_as_exists() {
    let server = GcsServer::start();
    server.put_raw("bucket", "shapes/taken.json", b"first");
    let store = gcs_store(&server, "gs://bucket", Duration::from_secs(5), 1);
    assert_eq!(store.put("shapes/taken.json", b"second".to_vec(), false).unwrap(), PutOutcome::Exists);
    assert_eq!(server.get("bucket", "shapes/taken.json").unwrap().data, b"first");
}

#[test]
fn gcs_manifest_update_survives_a_concurrent_writer() {
    let server = GcsServer::start();
    let store = gcs_store(&server, "gs://bucket/m", Duration::from_secs(5), 1);
    let entry = |t: &str| lumen::store::ManifestEntry {
        text: t.into(),
        normalized: t.into(),
        size: 1,
        pipeline: "procedural".into(),
        created_at: "x".into(),
        texts: vec![],
        quality: None,
    };
    store
        .update_manifest(|m| {
            m.entries.insert("a".into(), entry("a"));
        })
        .unwrap();
    // Another shard writes between our read and our write on the first attempt.
    let raced = std::sync::atomic::AtomicBool::new(false);
    store
        .update_manifest(|m| {
            if !raced.swap(true, Ordering::SeqCst) {
                let mut other = m.clone();
                other.entries.insert("b".into(), entry("b"));
                server.put_raw("bucket", "m/manifest.json", &serde_json::to_vec(&other).unwrap());
            }
            m.entries.insert("c".into(), entry("c"));
        })
        .unwrap();
    let m = store.read_manifest().unwrap();
    assert_eq!(m.entries.keys().cloned().collect::<Vec<_>>(), vec!["a", "b", "c"]);
}

#[test]
fn bad_store_urls_are_usage_errors() {
    for url in ["s3://bucket/x", "ftp://x", "gs://"] {
        let err = Store::open(url, &StoreOptions::default()).unwrap_err();
        assert!(lumen::error::is_usage(&err), "{url}: {err:#}");
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    let under_a_file = file.path().join("store");
    let err = Store::open(under_a_file.to_str().unwrap(), &StoreOptions::default()).unwrap_err();
    assert!(lumen::error::is_usage(&err) && format!("{err:#}").contains("not writable"), "{err:#}");
}
