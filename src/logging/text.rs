//! `--log-format text`: lines for a person at a terminal.
//!
//! An INFO line is its message alone, as lumen's log always read; the other levels say what
//! they are in front ("warning: …", "error: …", "debug: …"), so the level is in the line
//! without anyone typing it into the message. With `-v` a line also names the spans it was
//! logged in (`[key=… parts=… stage=… device=…]`) and, for another crate's event, its target.

use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

pub struct TextFormat {
    /// Span fields and foreign targets too (`-v` and more).
    pub context: bool,
}

fn prefix(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "error: ",
        Level::WARN => "warning: ",
        Level::INFO => "",
        Level::DEBUG => "debug: ",
        Level::TRACE => "trace: ",
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        let meta = event.normalized_metadata();
        let meta = meta.as_ref().unwrap_or_else(|| event.metadata());
        w.write_str(prefix(meta.level()))?;
        if self.context {
            let spans: Vec<String> = ctx
                .event_scope()
                .into_iter()
                .flat_map(|scope| scope.from_root())
                .filter_map(|span| {
                    let ext = span.extensions();
                    ext.get::<FormattedFields<N>>().filter(|f| !f.fields.is_empty()).map(|f| f.fields.clone())
                })
                .collect();
            if !spans.is_empty() {
                write!(w, "[{}] ", spans.join(" "))?;
            }
            if !meta.target().starts_with("lumen") {
                write!(w, "{}: ", meta.target())?;
            }
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}
