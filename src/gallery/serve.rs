//! `gallery --serve`: a minimal static file server for the gallery folder, for people who
//! prefer http:// to opening files. GET and HEAD only, files under the folder only, one
//! thread per connection; it runs until the process is stopped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};

/// Binds `addr` (an error is the user's to fix) and returns the listener and its real address
/// (port 0 picks a free port).
pub fn bind(addr: &str) -> Result<(TcpListener, std::net::SocketAddr)> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        crate::error::UsageError(format!("cannot listen on {addr:?}: {e} (use HOST:PORT, e.g. 127.0.0.1:8000)"))
    })?;
    let local = listener.local_addr().context("reading the bound address")?;
    Ok((listener, local))
}

/// Serves `root` forever.
pub fn serve(listener: TcpListener, root: &Path) -> Result<()> {
    for conn in listener.incoming() {
        let Ok(stream) = conn else { continue };
        let root = root.to_path_buf();
        std::thread::spawn(move || {
            let _ = handle(stream, &root);
        });
    }
    Ok(())
}

fn handle(mut stream: TcpStream, root: &Path) -> std::io::Result<()> {
    let mut line = String::new();
    let mut reader = BufReader::new(stream.try_clone()?);
    reader.read_line(&mut line)?;
    // Drain the headers; bodies are not expected.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut words = line.split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or("/"));
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, "405 Method Not Allowed", "text/plain", b"GET only\n", method == "HEAD");
    }
    match resolve(root, target) {
        Some(path) => match std::fs::read(&path) {
            Ok(body) => respond(&mut stream, "200 OK", content_type(&path), &body, method == "HEAD"),
            Err(_) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", method == "HEAD"),
        },
        None => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n", method == "HEAD"),
    }
}

/// The file a request target names, never outside `root`.
fn resolve(root: &Path, target: &str) -> Option<PathBuf> {
    let path = target.split(['?', '#']).next().unwrap_or("/");
    let decoded = crate::store::percent_decode(path);
    let rel = Path::new(decoded.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = root.join(rel);
    if full.is_dir() {
        Some(full.join("index.html"))
    } else {
        Some(full)
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8], head_only: bool) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_stay_inside_the_folder() {
        let root = Path::new("/srv/g");
        assert_eq!(resolve(root, "/assets/a.html?x=1"), Some(root.join("assets/a.html")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/assets/%2e%2e/%2e%2e/x"), None);
    }
}
