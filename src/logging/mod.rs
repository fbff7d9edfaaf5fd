//! The log: how the `tracing` events and spans that lumen's library code (and its
//! dependencies) emit become lines on stderr.
//!
//! The library only emits; `main` installs the one subscriber built here, so tests and other
//! callers of the library choose their own. What it does:
//! - **Levels**: INFO and up by default (dependencies: WARN and up); `-q` errors only; `-v`
//!   adds DEBUG (stage timings, hub and GCS client events), `-vv` DEBUG from every crate and
//!   TRACE from lumen, `-vvv` everything. `RUST_LOG`, when set, replaces all of that.
//! - **Formats**: `text` for a terminal ([`text`]), `json` for Cloud Logging ([`json`]); the
//!   default is text when stderr is a terminal and json otherwise, because a Cloud Run job's
//!   stderr is no terminal and is read line by line by Cloud Logging.
//! - **The `log` crate** (reqwest, tokenizers): its records become events of the same log
//!   (tracing-log, set up when `main` installs the subscriber).
//! - **Progress bars**: every line is written through [`crate::progress::suspend`], so a
//!   line never lands inside a bar.

use std::io::Write;

use anyhow::Result;
use tracing::Subscriber;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};
use crate::error::UsageError;

pub mod json;
pub mod text;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOptions {
    /// −1 with `-q`, else the number of `-v`.
    pub verbosity: i8,
    pub format: Format,
    /// `RUST_LOG`, which replaces the level choice when set.
    pub rust_log: Option<String>,
}

impl LogOptions {
    /// From the command line and the environment; `stderr_is_tty` picks the default format.
    pub fn from_args(a: &LogArgs, stderr_is_tty: bool) -> Self {
        let format = match a.log_format {
            Some(LogFormat::Text) => Format::Text,
            Some(LogFormat::Json) => Format::Json,
            None if stderr_is_tty => Format::Text,
            None => Format::Json,
        };
        let verbosity = if a.quiet { -1 } else { a.verbose.min(3) as i8 };
        let rust_log = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
        Self { verbosity, format, rust_log }
    }
}

/// The directives a verbosity stands for (see the module note).
pub fn directives(verbosity: i8) -> &'static str {
    match verbosity {
        ..=-1 => "error",
        0 => "warn,lumen=info",
        1 => "info,lumen=debug,object_store=debug,reqwest=debug,tokenizers=debug",
        2 => "debug,lumen=trace",
        _ => "trace",
    }
}

/// Which events get through: `RUST_LOG` when set (a malformed one is a usage error), else
/// the verbosity's directives.
pub fn filter(opts: &LogOptions) -> Result<EnvFilter> {
    match &opts.rust_log {
        Some(spec) => EnvFilter::builder()
            .parse(spec)
            .map_err(|e| UsageError(format!("RUST_LOG={spec:?} is not a log filter: {e}")).into()),
        None => Ok(EnvFilter::new(directives(opts.verbosity))),
    }
}

/// The subscriber `main` installs: [`filter`], then the chosen format, writing to stderr.
pub fn subscriber(opts: &LogOptions) -> Result<impl Subscriber + Send + Sync> {
    let text = (opts.format == Format::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .event_format(text::TextFormat { context: opts.verbosity > 0 })
            .with_writer(StderrLines)
    });
    let json = (opts.format == Format::Json).then(|| json::JsonLayer::new(StderrLines));
    Ok(tracing_subscriber::registry().with(filter(opts)?).with(text).with(json))
}

/// Stderr, one whole line at a time, written with the progress bars suspended.
pub struct StderrLines;

/// One event's bytes, written out when the formatter is done with it.
pub struct LineBuffer(Vec<u8>);

impl<'a> MakeWriter<'a> for StderrLines {
    type Writer = LineBuffer;

    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer(Vec::with_capacity(256))
    }
}

impl Write for LineBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        // A closed stderr leaves nowhere to say so.
        crate::progress::suspend(|| {
            let _ = std::io::stderr().lock().write_all(&self.0);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use serde_json::Value;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Everything written, for the tests to read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// A concept span around a stage span around events, as a model run logs them.
    fn log_a_concept() {
        let concept = tracing::info_span!("concept", key = "3d7eb3d3dab17ee5", parts = 4u64);
        let _c = concept.enter();
        tracing::info!("outside any stage");
        let stage = tracing::info_span!("stage", stage = "sdxl_unet", device = "cpu");
        let _s = stage.enter();
        tracing::warn!(step = 3u64, "latents are \"odd\"");
        tracing::debug!("a detail");
        tracing::trace!("not logged at debug");
    }

    #[test]
    fn json_lines_carry_severity_message_timestamp_and_span_fields() {
        let out = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(EnvFilter::new("debug")).with(json::JsonLayer::new(out.clone()));
        tracing::subscriber::with_default(subscriber, log_a_concept);
        let lines: Vec<Value> = out.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3, "{}", out.text());
        let severities: Vec<&str> = lines.iter().map(|l| l["severity"].as_str().unwrap()).collect();
        assert_eq!(severities, ["INFO", "WARNING", "DEBUG"]);
        assert_eq!(lines[0]["key"], "3d7eb3d3dab17ee5");
        assert_eq!(lines[0]["parts"], 4);
        assert!(lines[0].get("stage").is_none(), "{}", lines[0]);
        assert_eq!(lines[1]["message"], "latents are \"odd\"");
        assert_eq!(
            (&lines[1]["key"], &lines[1]["stage"], &lines[1]["device"]),
            (&"3d7eb3d3dab17ee5".into(), &"sdxl_unet".into(), &"cpu".into())
        );
        assert_eq!(lines[1]["step"], 3);
        for l in &lines {
            let ts = l["timestamp"].as_str().unwrap();
            assert!(ts.len() == 24 && ts.as_bytes()[10] == b'T' && ts.ends_with('Z'), "not RFC 3339: {ts}");
            assert!(l["target"].as_str().unwrap().starts_with("lumen::logging"), "{l}");
        }
    }

    #[test]
    fn text_lines_name_their_level_and_with_context_their_spans() {
        for context in [false, true] {
            let out = Captured::default();
            let layer =
                tracing_subscriber::fmt::layer().event_format(text::TextFormat { context }).with_writer(out.clone());
            let subscriber = tracing_subscriber::registry().with(EnvFilter::new("debug")).with(layer);
            tracing::subscriber::with_default(subscriber, log_a_concept);
            let text = out.text();
            let lines: Vec<&str> = text.lines().collect();
            if context {
                assert_eq!(lines[0], "[key=\"3d7eb3d3dab17ee5\" parts=4] outside any stage");
                assert!(lines[1].starts_with("warning: [key="), "{text}");
                assert!(
                    lines[1].contains("stage=\"sdxl_unet\"") && lines[1].ends_with("latents are \"odd\" step=3"),
                    "{text}"
                );
            } else {
                assert_eq!(lines, ["outside any stage", "warning: latents are \"odd\" step=3", "debug: a detail"]);
            }
        }
    }

    #[test]
    fn verbosity_and_rust_log_choose_the_filter() {
        let opts = |verbosity, rust_log: Option<&str>| LogOptions {
            verbosity,
            format: Format::Text,
            rust_log: rust_log.map(str::to_string),
        };
        assert_eq!(filter(&opts(-1, None)).unwrap().to_string(), "error");
        assert!(filter(&opts(0, None)).unwrap().to_string().contains("lumen=info"));
        assert!(filter(&opts(1, None)).unwrap().to_string().contains("object_store=debug"));
        assert_eq!(filter(&opts(-1, Some("lumen::stage=debug"))).unwrap().to_string(), "lumen::stage=debug");
        let err = filter(&opts(0, Some("lumen=loud"))).unwrap_err();
        assert!(crate::error::is_usage(&err) && format!("{err:#}").contains("RUST_LOG"), "{err:#}");
    }
}
