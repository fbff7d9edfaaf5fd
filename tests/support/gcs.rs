//! A small Google Cloud Storage XML-API server for tests, on 127.0.0.1:0.
//!
//! No emulator from the reachable registries accepts object_store's GCS writes, so the
//! GCS path is tested against this server over real HTTP: PUT/GET/HEAD/DELETE of objects
//! (percent-decoded bucket and object names), bucket listing with prefix and delimiter,
//! generations with `x-goog-if-generation-match` (412 when it does not hold, `0` meaning
//! "must not exist"), and injectable faults: 5xx answers and slow answers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lumen::store::percent_decode;

#[derive(Debug, Clone)]
pub struct Object {
    pub data: Vec<u8>,
    pub generation: u64,
}

#[derive(Default)]
pub struct State {
    /// (bucket, object name) → object.
    pub objects: Mutex<BTreeMap<(String, String), Object>>,
    next_generation: AtomicU64,
    /// Answer the next N requests with 503.
    pub fail_next: AtomicUsize,
    /// Delay the next N requests by `delay_ms` before answering (only those of the method
    /// `slow_method` names, when it is set).
    pub slow_next: AtomicUsize,
    pub delay_ms: AtomicU64,
    pub slow_method: Mutex<Option<String>>,
    /// Every request seen: "METHOD path?query".
    pub log: Mutex<Vec<String>>,
    /// Every request answered, in order: ("METHOD path", status).
    pub answered: Mutex<Vec<(String, u16)>>,
    stop: AtomicBool,
}

pub struct GcsServer {
    pub addr: std::net::SocketAddr,
    pub state: Arc<State>,
}

impl GcsServer {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1:0")
    }

    /// On `addr` (a container's `0.0.0.0:PORT`; see `tests/containers.rs`).
    pub fn start_on(addr: &str) -> Self {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State { next_generation: AtomicU64::new(1), ..Default::default() });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let st = st.clone();
                    std::thread::spawn(move || serve(conn, st));
                }
            }
        });
        Self { addr, state }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Service-account key JSON that points object_store at this server without OAuth.
    pub fn service_account_key(&self) -> String {
        format!(
            r#"{{"gcs_base_url":"{}","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}}"#,
            self.base_url()
        )
    }

    pub fn object_names(&self, bucket: &str) -> Vec<String> {
        self.state.objects.lock().unwrap().keys().filter(|(b, _)| b == bucket).map(|(_, n)| n.clone()).collect()
    }

    pub fn get(&self, bucket: &str, name: &str) -> Option<Object> {
        self.state.objects.lock().unwrap().get(&(bucket.to_string(), name.to_string())).cloned()
    }

    pub fn put_raw(&self, bucket: &str, name: &str, data: &[u8]) {
        let generation = self.state.next_generation.fetch_add(1, Ordering::SeqCst);
        self.state
            .objects
            .lock()
            .unwrap()
            .insert((bucket.into(), name.into()), Object { data: data.to_vec(), generation });
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.log.lock().unwrap().clone()
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut body = Vec::new();
    if headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = headers.get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body = vec![0; n];
        r.read_exact(&mut body).ok()?;
    }
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Some(Request { method, path: path.to_string(), query, headers, body })
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn respond(status: u16, body: &str) -> Response {
    Response {
        status,
        headers: vec![("Content-Type".into(), "application/xml".into())],
        body: body.as_bytes().to_vec(),
    }
}

fn object_headers(o: &Object) -> Vec<(String, String)> {
    vec![
        ("ETag".into(), format!("\"g{}\"", o.generation)),
        ("x-goog-generation".into(), o.generation.to_string()),
        ("Last-Modified".into(), "Thu, 26 Nov 2026 12:00:00 GMT".into()),
        ("Content-Type".into(), "application/octet-stream".into()),
    ]
}

fn handle(req: &Request, st: &State) -> Response {
    let path = req.path.trim_start_matches('/');
    let (bucket_enc, object_enc) = path.split_once('/').unwrap_or((path, ""));
    let bucket = percent_decode(bucket_enc);
    let name = percent_decode(object_enc);
    let mut objects = st.objects.lock().unwrap();
    match (req.method.as_str(), name.is_empty()) {
        ("GET", true) => {
            let prefix = req.query.get("prefix").cloned().unwrap_or_default();
            let delimiter = req.query.get("delimiter").cloned().filter(|d| !d.is_empty());
            let mut contents = String::new();
            let mut prefixes = std::collections::BTreeSet::new();
            for ((b, n), o) in objects.iter() {
                if *b != bucket || !n.starts_with(&prefix) {
                    continue;
                }
                if let Some(d) = &delimiter {
                    if let Some(pos) = n[prefix.len()..].find(d.as_str()) {
                        prefixes.insert(n[..prefix.len() + pos + d.len()].to_string());
                        continue;
                    }
                }
                contents.push_str(&format!(
                    "<Contents><Key>{}</Key><Size>{}</Size><LastModified>2026-11-26T12:00:00.000Z</LastModified><ETag>\"g{}\"</ETag></Contents>",
                    xml_escape(n),
                    o.data.len(),
                    o.generation
                ));
            }
            let cps: String = prefixes
                .iter()
                .map(|p| format!("<CommonPrefixes><Prefix>{}</Prefix></CommonPrefixes>", xml_escape(p)))
                .collect();
            respond(
                200,
                &format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Name>{}</Name><Prefix>{}</Prefix><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated>{contents}{cps}</ListBucketResult>",
                    xml_escape(&bucket),
                    xml_escape(&prefix)
                ),
            )
        }
        ("PUT", false) => {
            let key = (bucket.clone(), name.clone());
            if let Some(cond) = req.headers.get("x-goog-if-generation-match") {
                let current = objects.get(&key).map(|o| o.generation).unwrap_or(0);
                if cond.parse::<u64>().ok() != Some(current) {
                    return respond(412, "<Error><Code>PreconditionFailed</Code></Error>");
                }
            }
            let generation = st.next_generation.fetch_add(1, Ordering::SeqCst);
            let o = Object { data: req.body.clone(), generation };
            let headers = object_headers(&o);
            objects.insert(key, o);
            Response { status: 200, headers, body: vec![] }
        }
        ("GET" | "HEAD", false) => match objects.get(&(bucket, name)) {
            Some(o) => Response {
                status: 200,
                headers: object_headers(o),
                // HEAD answers the object's length too; `serve` leaves the body out.
                body: o.data.clone(),
            },
            None => respond(404, "<Error><Code>NoSuchKey</Code></Error>"),
        },
        ("DELETE", false) => match objects.remove(&(bucket, name)) {
            Some(_) => Response { status: 204, headers: vec![], body: vec![] },
            None => respond(404, "<Error><Code>NoSuchKey</Code></Error>"),
        },
        _ => respond(501, "<Error><Code>NotImplemented</Code></Error>"),
    }
}

fn serve(conn: TcpStream, st: Arc<State>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let q: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        st.log.lock().unwrap().push(format!("{} {}?{}", req.method, req.path, q.join("&")));
        let method_is_slow = st.slow_method.lock().unwrap().as_ref().is_none_or(|m| *m == req.method);
        if method_is_slow && st.slow_next.load(Ordering::SeqCst) > 0 {
            st.slow_next.fetch_sub(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(st.delay_ms.load(Ordering::SeqCst)));
        }
        let resp = if st.fail_next.load(Ordering::SeqCst) > 0 {
            st.fail_next.fetch_sub(1, Ordering::SeqCst);
            respond(503, "<Error><Code>ServiceUnavailable</Code></Error>")
        } else {
            handle(&req, &st)
        };
        st.answered.lock().unwrap().push((format!("{} {}", req.method, req.path), resp.status));
        let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n", resp.status, resp.body.len());
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let send_body = req.method != "HEAD";
        if writer.write_all(head.as_bytes()).is_err() || (send_body && writer.write_all(&resp.body).is_err()) {
            return;
        }
        let _ = writer.flush();
    }
}
