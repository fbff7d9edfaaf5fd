//! The gallery built by the real binary and opened in a real browser: headless Chromium
//! (Debian's package, installed by .ci/run) renders the index and the viewers with WebGL on
//! SwiftShader. Checked: what each page decoded equals lumen's own decoder, the screenshot
//! shows every part's colour, and a corrupt blob is shown as invalid without breaking the page.
//!
//! Without Chromium the browser checks skip loudly; under CI (CI=true) they fail instead.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use image::RgbImage;
use lumen::asset::Asset;
use lumen::preview::palette;
use support::{run_in, stderr, stdout, workdir};

const CORRUPT_KEY: &str = "00000000deadbeef";

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", stdout(o)))
}

/// A store with three procedural assets, one relabelled as a partcrafter asset (both
/// pipelines' assets go through the same pages) made before quality verdicts existed, one
/// graded weak (a strict aspect threshold), and one truncated blob.
fn store_with_a_corrupt_blob(dir: &Path) -> PathBuf {
    let o = run_in(dir, &["generate", "chair", "mug", "--pipeline", "procedural"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::write(dir.join("strict.json"), r#"{"bbox_aspect_weak_above": 1.5}"#).unwrap();
    let o = run_in(dir, &["generate", "Bald Eagle", "--pipeline", "procedural", "--quality-thresholds", "strict.json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = dir.join("out");
    let mug = lumen::concept::Concept::parse("mug").unwrap().key;
    let path = out.join(format!("shapes/{mug}.json"));
    let (mut asset, _) = Asset::decode(&std::fs::read(&path).unwrap()).unwrap();
    asset.pipeline.name = "partcrafter".into();
    asset.quality = None;
    std::fs::write(&path, asset.to_json_bytes()).unwrap();
    std::fs::write(out.join(format!("shapes/{CORRUPT_KEY}.json")), b"{\"format\":\"lumen.shape/1\",\"trunc").unwrap();
    out
}

fn asset_of(store: &Path, key: &str) -> (Asset, lumen::asset::PointData) {
    Asset::decode(&std::fs::read(store.join(format!("shapes/{key}.json"))).unwrap()).unwrap()
}

#[test]
fn gallery_lists_every_asset_flags_the_corrupt_one_and_paginates() {
    let w = workdir();
    store_with_a_corrupt_blob(w.path());
    let o = run_in(w.path(), &["gallery", "--out", "gal", "--json"]);
    assert_eq!(o.status.code(), Some(2), "invalid blobs exit 2, as in stats: {}", stderr(&o));
    let v = json(&o);
    assert_eq!((v["assets"].as_u64(), v["invalid"].as_u64()), (Some(3), Some(1)), "{v}");
    assert_eq!(v["pages"], serde_json::json!(["index.html"]));
    let gal = w.path().join("gal");
    let index = std::fs::read_to_string(gal.join("index.html")).unwrap();
    for text in ["chair", "mug", "Bald Eagle"] {
        assert!(index.contains(&format!(">{text}</a>")), "index lacks {text}");
    }
    assert!(index.contains(&format!("<tr class=\"invalid\" data-key=\"{CORRUPT_KEY}\"")));
    assert!(index.contains("partcrafter") && index.contains("procedural"));
    assert!(index.contains("quality 1 ok, 1 weak, 0 bad, 1 unknown"), "{index}");
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path().join("gal/gallery.json")).unwrap()).unwrap();
    let entry = |text: &str| listing["entries"].as_array().unwrap().iter().find(|e| e["text"] == text).unwrap().clone();
    assert_eq!(entry("chair")["quality"]["verdict"], "ok");
    assert_eq!(entry("Bald Eagle")["quality"]["verdict"], "weak");
    assert!(entry("mug").get("quality").is_none(), "an old asset has no verdict");
    assert!(!index.contains("http://") && !index.contains("https://"), "nothing is fetched from the network");
    for key in ["viewer.js", "palette.js", "style.css", &format!("assets/{CORRUPT_KEY}.html")] {
        assert!(gal.join(key).is_file(), "{key} missing");
    }
    let viewer = std::fs::read_to_string(gal.join("viewer.js")).unwrap();
    assert!(!viewer.contains("http"), "the viewer script loads nothing");

    // Two assets a page: two index pages that link to each other; a rebuild drops old pages.
    let o = run_in(w.path(), &["gallery", "--out", "gal", "--page-size", "2", "--json"]);
    assert_eq!(json(&o)["pages"], serde_json::json!(["index.html", "page-2.html"]));
    assert!(std::fs::read_to_string(gal.join("index.html")).unwrap().contains("href=\"page-2.html\""));
    assert!(std::fs::read_to_string(gal.join("page-2.html")).unwrap().contains("href=\"index.html\""));
    let o = run_in(w.path(), &["gallery", "--out", "gal"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).contains("INVALID") && !gal.join("page-2.html").exists());
    let o = run_in(w.path(), &["gallery", "--help"]);
    assert!(stdout(&o).contains("--serve") && stdout(&o).contains("Examples"));
}

/// Debian's Chromium, or `None` (a loud skip) outside CI.
fn chromium() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("LUMEN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{} is missing under CI: .ci/run installs Debian's chromium", path.display());
    }
    eprintln!("\n*** SKIPPED browser checks: no {} (apt-get install chromium) ***\n", path.display());
    None
}

/// Headless Chromium on a file: WebGL through SwiftShader, no network, a fresh profile.
fn browse(chromium: &Path, profile: &Path, page: &Path, extra: &[String]) -> std::process::Output {
    browse_url(chromium, profile, url::Url::from_file_path(page).unwrap().as_str(), extra)
}

fn browse_url(chromium: &Path, profile: &Path, url: &str, extra: &[String]) -> std::process::Output {
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--use-angle=swiftshader",
            "--enable-unsafe-swiftshader",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(o.status.success(), "chromium failed on {url}: {}", stderr(&o));
    o
}

/// The `<tr>` of `key` in an index page.
fn index_row(dom: &str, key: &str) -> String {
    let start = dom.find(&format!("data-key=\"{key}\"")).unwrap_or_else(|| panic!("no row for {key}"));
    let end = start + dom[start..].find("</tr>").unwrap();
    dom[start..end].to_string()
}

/// The JSON the page wrote into `<pre id="decoded">`.
fn decoded(dom: &str) -> serde_json::Value {
    let start = dom.find("<pre id=\"decoded\">").unwrap_or_else(|| panic!("no decoded element in {dom}")) + 18;
    let end = start + dom[start..].find("</pre>").unwrap();
    let text = dom[start..end].replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("decoded is not JSON ({e}): {text:?}"))
}

/// Pixels of each palette part colour (any shade, within a tolerance that absorbs GPU
/// rounding) inside `rect` of a screenshot.
fn part_pixels(img: &RgbImage, rect: (u32, u32, u32, u32), parts: usize) -> (Vec<usize>, usize) {
    let mut counts = vec![0usize; parts + 1];
    let mut not_background = 0;
    let (x0, y0, w, h) = rect;
    for y in y0..(y0 + h).min(img.height()) {
        for x in x0..(x0 + w).min(img.width()) {
            let p = img.get_pixel(x, y).0.map(|c| c as f64);
            if p.iter().zip(palette::BACKGROUND).any(|(a, b)| (a - b as f64).abs() > 6.0) {
                not_background += 1;
            }
            // The part whose colour, scaled, is nearest this pixel.
            let best = (1..=parts as u8)
                .map(|id| {
                    let b = palette::part(id).map(|c| c as f64);
                    let k = (p[0] * b[0] + p[1] * b[1] + p[2] * b[2]) / (b[0] * b[0] + b[1] * b[1] + b[2] * b[2]);
                    let err =
                        ((p[0] - k * b[0]).powi(2) + (p[1] - k * b[1]).powi(2) + (p[2] - k * b[2]).powi(2)).sqrt();
                    (id, k, err)
                })
                .filter(|&(_, k, err)| (0.3..=1.05).contains(&k) && err < 14.0)
                .min_by(|a, b| a.2.total_cmp(&b.2));
            if let Some((id, _, _)) = best {
                counts[id as usize] += 1;
            }
        }
    }
    (counts, not_background)
}

#[test]
fn gallery_and_viewer_in_headless_chromium() {
    let Some(chromium) = chromium() else { return };
    let w = workdir();
    let store = store_with_a_corrupt_blob(w.path());
    let o = run_in(w.path(), &["gallery", "--out", "gal"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let gal = w.path().join("gal");
    let profile = w.path().join("chromium-profile");

    // The index: every asset listed, the corrupt one flagged, thumbnails drawn.
    let dom = stdout(&browse(&chromium, &profile, &gal.join("index.html"), &["--dump-dom".into()]));
    assert_eq!(dom.matches("<tr class=\"ok\"").count(), 3, "{dom}");
    for (text, badge) in [("chair", "ok"), ("Bald Eagle", "weak"), ("mug", "unknown")] {
        let key = lumen::concept::Concept::parse(text).unwrap().key;
        let row = index_row(&dom, &key);
        assert!(row.contains(&format!("class=\"badge {badge}\"")), "{text}: no {badge} badge in {row}");
        assert!(row.contains(&format!(">{badge}</span>")), "{text}: {row}");
    }
    let eagle = index_row(&dom, &lumen::concept::Concept::parse("Bald Eagle").unwrap().key);
    assert!(eagle.contains("title=\"bounding box aspect"), "the reasons are the badge's tooltip: {eagle}");
    assert!(dom.contains(&format!("<tr class=\"invalid\" data-key=\"{CORRUPT_KEY}\"")));
    let shot = w.path().join("index.png");
    browse(
        &chromium,
        &profile,
        &gal.join("index.html"),
        &[format!("--screenshot={}", shot.display()), "--window-size=1100,900".into()],
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    let (_, drawn) = part_pixels(&img, (0, 0, img.width(), img.height()), 16);
    assert!(drawn > 10_000, "the index screenshot is nearly blank ({drawn} pixels)");

    // Each valid viewer: decoded exactly as lumen decodes, drawn with every part's colour.
    for text in ["chair", "mug", "Bald Eagle"] {
        let key = lumen::concept::Concept::parse(text).unwrap().key;
        let (asset, points) = asset_of(&store, &key);
        let page = gal.join(format!("assets/{key}.html"));
        let d = decoded(&stdout(&browse(&chromium, &profile, &page, &["--dump-dom".into()])));
        println!("{text}: {d}");
        assert_eq!(d["status"], "ok", "{d}");
        assert_eq!(d["webgl"], true, "{d}");
        assert_eq!(d["num_points"].as_u64().unwrap() as usize, points.positions.len());
        assert_eq!(d["num_parts"].as_u64().unwrap() as usize, asset.part_names.len());
        assert_eq!(d["part_names"], serde_json::json!(asset.part_names));
        assert_eq!(d["pipeline"], asset.pipeline.name);
        let counts: Vec<usize> = asset.parts.iter().map(|p| p.points).collect();
        assert_eq!(d["part_counts"], serde_json::json!(counts));
        // The verdict and its reasons, as the asset records them (unknown for an old asset).
        let (verdict, reasons) = match &asset.quality {
            Some(q) => (q.verdict.to_string(), q.reasons.clone()),
            None => ("unknown".to_string(), vec![]),
        };
        assert_eq!(d["quality"]["verdict"], verdict.as_str(), "{d}");
        assert_eq!(d["quality"]["reasons"], serde_json::json!(reasons), "{d}");
        let dom = stdout(&browse(&chromium, &profile, &page, &["--dump-dom".into()]));
        assert!(dom.contains(&format!("<span class=\"badge {verdict}\">{verdict}</span>")), "{text}: {dom}");
        for r in &reasons {
            assert!(dom.contains(&format!("<li>{r}</li>")), "{text}: reason {r:?} not shown");
        }

        let shot = w.path().join(format!("{key}.png"));
        browse(
            &chromium,
            &profile,
            &page,
            &[format!("--screenshot={}", shot.display()), "--window-size=1100,700".into()],
        );
        let img = image::open(&shot).unwrap().to_rgb8();
        let c = &d["canvas"];
        let rect = (
            c["x"].as_f64().unwrap() as u32 + 2,
            c["y"].as_f64().unwrap() as u32 + 2,
            c["width"].as_f64().unwrap() as u32 - 4,
            c["height"].as_f64().unwrap() as u32 - 4,
        );
        let (per_part, drawn) = part_pixels(&img, rect, asset.part_names.len());
        println!("{text}: {drawn} drawn pixels in the canvas, per part {:?}", &per_part[1..]);
        assert!(drawn > (rect.2 * rect.3 / 50) as usize, "{text}: the canvas is nearly blank ({drawn} pixels)");
        for (i, name) in asset.part_names.iter().enumerate() {
            assert!(
                per_part[i + 1] >= 20,
                "{text}: part {} ({name}) has {} pixels of its colour",
                i + 1,
                per_part[i + 1]
            );
        }
    }

    // Parts hidden from the link: the seat's colour is gone, the legs still show; and the
    // attachment colouring.
    let key = lumen::concept::Concept::parse("chair").unwrap().key;
    let page = gal.join(format!("assets/{key}.html"));
    let hidden = format!("{}#hide=1", url::Url::from_file_path(&page).unwrap());
    let shot = w.path().join("hidden.png");
    let d = decoded(&stdout(&browse_url(&chromium, &profile, &hidden, &["--dump-dom".into()])));
    assert_eq!(d["hidden"], serde_json::json!([1]), "{d}");
    browse_url(
        &chromium,
        &profile,
        &hidden,
        &[format!("--screenshot={}", shot.display()), "--window-size=1100,700".into()],
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    let c = &d["canvas"];
    let rect = (c["x"].as_f64().unwrap() as u32 + 2, c["y"].as_f64().unwrap() as u32 + 2, 638, 558);
    let (per_part, _) = part_pixels(&img, rect, 6);
    println!("chair with the seat hidden: per part {:?}", &per_part[1..]);
    assert!(per_part[1] < 20, "the hidden seat still has {} pixels", per_part[1]);
    assert!(per_part[2..].iter().all(|&n| n >= 20), "{per_part:?}");
    let attach = format!("{}#mode=attachment", url::Url::from_file_path(&page).unwrap());
    assert_eq!(
        decoded(&stdout(&browse_url(&chromium, &profile, &attach, &["--dump-dom".into()])))["mode"],
        "attachment"
    );

    // The corrupt blob: shown as invalid, the page itself intact.
    let dom =
        stdout(&browse(&chromium, &profile, &gal.join(format!("assets/{CORRUPT_KEY}.html")), &["--dump-dom".into()]));
    let d = decoded(&dom);
    assert_eq!(d["status"], "invalid", "{d}");
    assert!(d["error"].as_str().unwrap().contains("not JSON"), "{d}");
    assert!(dom.contains("<div id=\"problem\">Invalid asset: not JSON"), "{dom}");
}

#[test]
fn serve_answers_on_localhost_and_stays_inside_the_folder() {
    use std::io::{BufRead, Read, Write};
    let w = workdir();
    let o = run_in(w.path(), &["generate", "chair", "--pipeline", "procedural"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut child = support::lumen()
        .current_dir(w.path())
        .args(["gallery", "--out", "gal", "--serve", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            l.split("http://").nth(1).map(|rest| rest.trim_end_matches(|c| c != '/').trim_end_matches('/').to_string())
        })
        .expect("the server says where it listens");
    let get = |path: &str| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let index = get("/");
    let outside = get("/../Cargo.toml");
    let script = get("/viewer.js");
    // A multi-byte character right after `%` once panicked the request thread.
    let odd = get("/%a\u{e9}");
    let after = get("/");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(index.starts_with("HTTP/1.1 200") && index.contains("lumen gallery"), "{index}");
    assert!(outside.starts_with("HTTP/1.1 404"), "{outside}");
    assert!(script.contains("Content-Type: text/javascript"), "{script}");
    assert!(odd.starts_with("HTTP/1.1 404"), "{odd:?}");
    assert!(after.starts_with("HTTP/1.1 200"), "{after}");
}

#[test]
fn gallery_and_previews_of_a_gcs_store() {
    let w = workdir();
    let server = support::gcs::GcsServer::start();
    let run = |args: &[&str]| {
        support::lumen()
            .current_dir(w.path())
            .args(args)
            .env("GOOGLE_SERVICE_ACCOUNT_KEY", server.service_account_key())
            .output()
            .unwrap()
    };
    let url = "gs://lumen-test/shapes-v1";
    let o = run(&["generate", "chair", "mug", "--pipeline", "procedural", "--preview", "--store", url]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    server.put_raw("lumen-test", &format!("shapes-v1/shapes/{CORRUPT_KEY}.json"), b"not json");
    let names = server.object_names("lumen-test");
    assert_eq!(names.iter().filter(|n| n.starts_with("shapes-v1/previews/") && n.ends_with(".png")).count(), 2);
    let o = run(&["gallery", "--store", url, "--out", "gal", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!((v["assets"].as_u64(), v["invalid"].as_u64()), (Some(2), Some(1)), "{v}");
    assert!(w.path().join(format!("gal/assets/{CORRUPT_KEY}.html")).is_file());
}
