//! `--log-format json`: one JSON object per line, in the shape Cloud Logging reads from a
//! container's stderr.
//!
//! Cloud Logging takes `severity` (its names: DEBUG, INFO, WARNING, ERROR), `message` and
//! `timestamp` (RFC 3339) from each line and keeps every other key as a searchable field of
//! the entry's payload. So each line carries those three, the event's `target`, the event's
//! own fields and the fields of every span it happened in (outermost first, an inner span's
//! field replacing an outer one of the same name): a line logged while a concept's stage ran
//! carries `key`, `parts`, `stage` and `device` without the message repeating them.
//!
//! A layer of its own rather than tracing-subscriber's JSON formatter, which nests span
//! fields under `spans` and names levels `WARN`/`TRACE`, which Cloud Logging does not know.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Writes each event as one JSON line to `W`.
pub struct JsonLayer<W> {
    make_writer: W,
}

impl<W> JsonLayer<W> {
    pub fn new(make_writer: W) -> Self {
        Self { make_writer }
    }
}

/// A span's fields, kept in the span's extensions until it closes.
struct SpanFields(Map<String, Value>);

/// Cloud Logging's severity for a tracing level (TRACE has no name there: DEBUG).
pub fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, W> Layer<S> for JsonLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = FieldVisitor::default();
        attrs.record(&mut fields);
        span.extensions_mut().insert(SpanFields(fields.map));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(SpanFields(map)) = ext.get_mut::<SpanFields>() {
            let mut fields = FieldVisitor { map: std::mem::take(map), ..Default::default() };
            values.record(&mut fields);
            *map = fields.map;
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                    line.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut fields = FieldVisitor::default();
        event.record(&mut fields);
        line.extend(fields.map);
        let meta = event.normalized_metadata();
        let meta = meta.as_ref().unwrap_or_else(|| event.metadata());
        line.insert("target".into(), meta.target().into());
        line.insert("message".into(), fields.message.unwrap_or_default().into());
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert("timestamp".into(), crate::time::now_rfc3339_millis().into());
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        // A log line that cannot be written has nowhere to be reported.
        let _ = self.make_writer.make_writer().write_all(text.as_bytes());
    }
}

/// Collects fields as JSON values; the event's `message` apart, and the `log` crate's
/// bookkeeping fields (`log.target`, `log.file`, …) left out: the target is taken from them
/// through the normalised metadata.
#[derive(Default)]
struct FieldVisitor {
    map: Map<String, Value>,
    message: Option<String>,
}

impl FieldVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.message = Some(value.as_str().map_or_else(|| value.to_string(), str::to_string)),
            name if name.starts_with("log.") => {}
            name => {
                self.map.insert(name.to_string(), value);
            }
        }
    }
}

impl Visit for FieldVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
