//! A small Hugging Face Hub for tests, on 127.0.0.1:0, speaking the endpoints the download
//! client calls:
//!
//! * `HEAD`/`GET /{owner}/{name}/resolve/{revision}/{path}`: `X-Repo-Commit`; plain files answer
//!   200 with `ETag` = git blob sha1; LFS files (weights, ONNX) answer 302 to the CDN path with
//!   `X-Linked-Etag` = sha256 and `X-Linked-Size`, as the real hub does. Revisions: `main` or
//!   the repo's commit (else 404 `RevisionNotFound`); a missing file is 404 `EntryNotFound`; an
//!   unknown repo is 401 `RepoNotFound`; a gated repo wants `Authorization: Bearer {token}`
//!   (401 without one, 403 with a wrong one).
//! * `GET`/`HEAD /cdn/{sha256}` on another origin (`localhost` instead of `127.0.0.1`, so the
//!   client must not send the token there): the bytes, with `Range: bytes=N-` answered 206.
//!
//! Faults to inject: 503 for the next N requests, a corrupted byte in a file's body, a body
//! dropped after N bytes (once), a body that stalls after N bytes until released. Every
//! request is logged.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;

/// One file of a served repo.
#[derive(Debug, Clone)]
pub struct HubFile {
    pub data: Arc<Vec<u8>>,
    pub lfs: bool,
    pub sha256: String,
    pub git_sha1: String,
}

impl HubFile {
    /// Weights and exports are LFS files on the hub; configs and tokenizer files are not.
    pub fn new(path: &str, data: Vec<u8>) -> Self {
        let lfs =
            [".safetensors", ".onnx", ".onnx_data", ".bin", ".pth", ".png", ".jpg"].iter().any(|e| path.ends_with(e));
        let sha256 = hex(&sha2::Sha256::digest(&data));
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", data.len()).as_bytes());
        h.update(&data);
        Self { git_sha1: hex(&h.finalize()), sha256, lfs, data: Arc::new(data) }
    }

    /// The etag the client sees and names the blob by.
    pub fn etag(&self) -> &str {
        if self.lfs {
            &self.sha256
        } else {
            &self.git_sha1
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Debug, Clone, Default)]
pub struct HubRepo {
    pub commit: String,
    pub files: BTreeMap<String, HubFile>,
    /// Gated: requests must carry this token.
    pub token: Option<String>,
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub auth: bool,
    pub status: u16,
}

#[derive(Default)]
pub struct State {
    /// Repo id → repo.
    pub repos: Mutex<BTreeMap<String, HubRepo>>,
    /// Answer the next N requests with 503.
    pub fail_next: AtomicUsize,
    /// Repo file paths (`owner/name/path`) whose served bytes have one byte flipped.
    pub corrupt: Mutex<BTreeSet<String>>,
    /// `owner/name/path` → drop the connection after this many body bytes (once).
    pub drop_after: Mutex<BTreeMap<String, usize>>,
    /// `owner/name/path` → send this many body bytes, then wait for `release`.
    pub stall_after: Mutex<BTreeMap<String, usize>>,
    pub release: AtomicBool,
    pub log: Mutex<Vec<Logged>>,
    stop: AtomicBool,
}

pub struct HubServer {
    pub addr: std::net::SocketAddr,
    pub state: Arc<State>,
}

impl HubServer {
    pub fn start(repos: BTreeMap<String, HubRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State { repos: Mutex::new(repos), ..Default::default() });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let st = st.clone();
                    std::thread::spawn(move || serve(conn, st, addr.port()));
                }
            }
        });
        Self { addr, state }
    }

    /// `HF_ENDPOINT` for the client.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// The repo file paths (`owner/name/path`) whose bytes were requested (GET of the file or of
    /// its CDN blob), in order.
    pub fn downloaded_paths(&self) -> Vec<String> {
        let repos = self.state.repos.lock().unwrap();
        let mut out = Vec::new();
        for r in self.requests().iter().filter(|r| r.method == "GET") {
            if let Some(sha) = r.path.strip_prefix("/cdn/") {
                for (id, repo) in repos.iter() {
                    for (p, f) in &repo.files {
                        if f.lfs && f.sha256 == sha {
                            out.push(format!("{id}/{p}"));
                        }
                    }
                }
            } else if let Some((id, _, path)) = parse_resolve(&r.path) {
                out.push(format!("{id}/{path}"));
            }
        }
        out
    }

    /// Every repo file path a request named or fetched (HEAD, GET, CDN).
    pub fn touched_paths(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self.downloaded_paths().into_iter().collect();
        for r in self.requests() {
            if let Some((id, _, path)) = parse_resolve(&r.path) {
                out.insert(format!("{id}/{path}"));
            }
        }
        out
    }

    pub fn file(&self, repo: &str, path: &str) -> HubFile {
        self.state.repos.lock().unwrap()[repo].files[path].clone()
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.release.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// `/{owner}/{name}/resolve/{rev}/{path}` → (repo id, revision, path).
fn parse_resolve(path: &str) -> Option<(String, String, String)> {
    let mut it = path.trim_start_matches('/').splitn(5, '/');
    let (owner, name, kw, rev, file) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    (kw == "resolve").then(|| (format!("{owner}/{name}"), rev.replace("%2F", "/"), file.to_string()))
}

struct Request {
    method: String,
    path: String,
    headers: BTreeMap<String, String>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.split('?').next()?.to_string();
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
    Some(Request { method, path, headers })
}

/// What to send: status, headers, body, and the body's fault policy.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Arc<Vec<u8>>,
    /// Body byte range to send.
    range: (usize, usize),
    /// `owner/name/path` when the body is a repo file (faults are keyed by it).
    file_key: Option<String>,
}

fn error(status: u16, code: &str) -> Response {
    let body = format!("{{\"error\":\"{code}\"}}").into_bytes();
    let len = body.len();
    Response {
        status,
        headers: vec![("X-Error-Code".into(), code.into()), ("X-Error-Message".into(), format!("{code} (test hub)"))],
        body: Arc::new(body),
        range: (0, len),
        file_key: None,
    }
}

fn handle(req: &Request, st: &State, port: u16) -> Response {
    let repos = st.repos.lock().unwrap();
    if let Some(sha) = req.path.strip_prefix("/cdn/") {
        let found = repos.iter().find_map(|(id, r)| {
            r.files.iter().find(|(_, f)| f.lfs && f.sha256 == sha).map(|(p, f)| (format!("{id}/{p}"), f.clone()))
        });
        let Some((key, f)) = found else { return error(404, "NoSuchBlob") };
        let len = f.data.len();
        let start = req
            .headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
        return match start {
            Some(s) if s >= len => error(416, "RangeNotSatisfiable"),
            Some(s) => Response {
                status: 206,
                headers: vec![
                    ("Content-Range".into(), format!("bytes {s}-{}/{len}", len - 1)),
                    ("Accept-Ranges".into(), "bytes".into()),
                ],
                body: f.data.clone(),
                range: (s, len),
                file_key: Some(key),
            },
            None => Response {
                status: 200,
                headers: vec![("Accept-Ranges".into(), "bytes".into())],
                body: f.data.clone(),
                range: (0, len),
                file_key: Some(key),
            },
        };
    }
    let Some((id, rev, path)) = parse_resolve(&req.path) else { return error(404, "NotFound") };
    let Some(repo) = repos.get(&id) else { return error(401, "RepoNotFound") };
    if let Some(token) = &repo.token {
        match req.headers.get("authorization") {
            None => return error(401, "GatedRepo"),
            Some(a) if *a != format!("Bearer {token}") => return error(403, "GatedRepo"),
            Some(_) => {}
        }
    }
    if rev != "main" && rev != repo.commit {
        return error(404, "RevisionNotFound");
    }
    let Some(f) = repo.files.get(&path) else { return error(404, "EntryNotFound") };
    let mut headers = vec![("X-Repo-Commit".into(), repo.commit.clone())];
    if f.lfs {
        headers.push(("X-Linked-Etag".into(), format!("\"{}\"", f.sha256)));
        headers.push(("X-Linked-Size".into(), f.data.len().to_string()));
        headers.push(("ETag".into(), "\"0000000000000000000000000000000000000000\"".into()));
        headers.push(("Location".into(), format!("http://localhost:{port}/cdn/{}", f.sha256)));
        return Response { status: 302, headers, body: Arc::new(Vec::new()), range: (0, 0), file_key: None };
    }
    headers.push(("ETag".into(), format!("\"{}\"", f.git_sha1)));
    let len = f.data.len();
    Response { status: 200, headers, body: f.data.clone(), range: (0, len), file_key: Some(format!("{id}/{path}")) }
}

fn serve(conn: TcpStream, st: Arc<State>, port: u16) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(req) = read_request(&mut reader) {
        let resp = if st.fail_next.load(Ordering::SeqCst) > 0 {
            st.fail_next.fetch_sub(1, Ordering::SeqCst);
            error(503, "ServiceUnavailable")
        } else {
            handle(&req, &st, port)
        };
        st.log.lock().unwrap().push(Logged {
            method: req.method.clone(),
            path: req.path.clone(),
            range: req.headers.get("range").cloned(),
            auth: req.headers.contains_key("authorization"),
            status: resp.status,
        });
        let (from, to) = resp.range;
        let mut head = format!("HTTP/1.1 {} X\r\nContent-Length: {}\r\n", resp.status, to - from);
        for (k, v) in &resp.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        if req.method == "HEAD" {
            let _ = writer.flush();
            continue;
        }
        let mut body = resp.body[from..to].to_vec();
        let key = resp.file_key.unwrap_or_default();
        if st.corrupt.lock().unwrap().contains(&key) && !body.is_empty() {
            let mid = body.len() / 2;
            body[mid] ^= 0x5a;
        }
        let dropped = st.drop_after.lock().unwrap().remove(&key);
        let stall = st.stall_after.lock().unwrap().get(&key).copied();
        if let Some(n) = dropped.or(stall).filter(|&n| n < body.len()) {
            let _ = writer.write_all(&body[..n]);
            let _ = writer.flush();
            if stall.is_some() {
                while !st.release.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            // Close without the rest: the client sees a body cut short.
            let _ = writer.shutdown(std::net::Shutdown::Both);
            return;
        }
        if writer.write_all(&body).is_err() {
            return;
        }
        let _ = writer.flush();
    }
}
