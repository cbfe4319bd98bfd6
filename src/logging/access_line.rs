//! A short path for access-log lines: the relay writes one per request, and tracing-subscriber's
//! general formatters (a field map for JSON, `Debug` escaping for text) cost more per line than
//! the rest of the bookkeeping together. Lines of the [`ACCESS_TARGET`] target are written here
//! with the same shape as every other line (timestamp, level, message, fields; JSON adds the
//! target; span context is left out, access lines carry what they need as fields); every other
//! line, and any line on a colour terminal, goes to the usual formatter.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log target of the relay's access log.
pub const ACCESS_TARGET: &str = "ponte::access";

/// Formats access lines itself and hands every other event to `inner`.
pub struct AccessLines<E> {
    /// The formatter for everything else.
    pub inner: E,
    /// JSON objects instead of text lines.
    pub json: bool,
}

impl<S, N, E> FormatEvent<S, N> for AccessLines<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        if meta.target() != ACCESS_TARGET || writer.has_ansi_escapes() {
            return self.inner.format_event(ctx, writer, event);
        }
        if self.json {
            writer.write_str("{\"timestamp\":\"")?;
            SystemTime.format_time(&mut writer)?;
            write!(writer, "\",\"level\":\"{}\"", meta.level())?;
            let mut fields = JsonFields {
                w: &mut writer,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            writeln!(writer, ",\"target\":\"{ACCESS_TARGET}\"}}")
        } else {
            SystemTime.format_time(&mut writer)?;
            write!(writer, " {:>5} ", meta.level().as_str())?;
            let mut fields = TextFields {
                w: &mut writer,
                first: true,
                result: Ok(()),
            };
            event.record(&mut fields);
            fields.result?;
            writer.write_char('\n')
        }
    }
}

/// `,"name":value` for each field.
struct JsonFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    result: fmt::Result,
}

impl JsonFields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = write!(self.w, ",\"{}\":", field.name()).and_then(|()| value(self.w));
        }
    }
}

impl Visit for JsonFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |w| quoted(w, |e| e.write_str(value)));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, |w| write!(w, "{value}"));
        } else {
            self.field(field, |w| w.write_str("null"));
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| quoted(w, |e| write!(e, "{value:?}")));
    }
}

/// `message name=value …`, strings quoted as tracing's text format quotes them.
struct TextFields<'a, 'w> {
    w: &'a mut Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl TextFields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let sep = if std::mem::take(&mut self.first) { "" } else { " " };
        self.result = if field.name() == "message" {
            self.w.write_str(sep).and_then(|()| value(self.w))
        } else {
            write!(self.w, "{sep}{}=", field.name()).and_then(|()| value(self.w))
        };
    }
}

impl Visit for TextFields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.field(field, |w| w.write_str(value));
        } else {
            self.field(field, |w| quoted(w, |e| e.write_str(value)));
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.field(field, |w| write!(w, "{value}"));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |w| write!(w, "{value:?}"));
    }
}

/// Write `"…"` with what `body` writes escaped for JSON (which also reads right in text lines:
/// a path or an agent's error code can never break a line or a quote).
fn quoted(w: &mut Writer<'_>, body: impl FnOnce(&mut Escape<'_, '_>) -> fmt::Result) -> fmt::Result {
    w.write_char('"')?;
    body(&mut Escape(w))?;
    w.write_char('"')
}

/// Escapes `"`, `\` and control characters on the way through.
struct Escape<'a, 'w>(&'a mut Writer<'w>);

impl fmt::Write for Escape<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(i) = rest.find(|c: char| c == '"' || c == '\\' || c.is_control()) {
            self.0.write_str(&rest[..i])?;
            let c = rest[i..].chars().next().unwrap_or_default();
            match c {
                '"' => self.0.write_str("\\\"")?,
                '\\' => self.0.write_str("\\\\")?,
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{:04x}", c as u32)?,
            }
            rest = &rest[i + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn emit() {
        tracing::info!(
            target: ACCESS_TARGET,
            tunnel = Some("demo"),
            method = %http::Method::POST,
            path = "/t/demo/a\"b\\c\u{1}",
            status = 202u16,
            error = None::<&str>,
            duration_ms = 1.5,
            "request"
        );
    }

    #[test]
    fn json_access_lines_are_the_json_other_lines_would_be() {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .json()
            .with_target(true)
            .flatten_event(true)
            .map_event_format(|inner| AccessLines { inner, json: true })
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["message"], "request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], ACCESS_TARGET);
        assert_eq!(v["tunnel"], "demo");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/t/demo/a\"b\\c\u{1}");
        assert_eq!(
            (v["status"].as_u64(), v["duration_ms"].as_f64()),
            (Some(202), Some(1.5))
        );
        assert!(v.get("error").is_none(), "{v}");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    }

    #[test]
    fn text_access_lines_look_like_other_lines() {
        let out = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .with_target(false)
            .map_event_format(|inner| AccessLines { inner, json: false })
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let line = text.trim_end();
        let (_, rest) = line.split_once("Z  INFO ").unwrap_or_else(|| panic!("{line:?}"));
        assert_eq!(
            rest,
            "request tunnel=\"demo\" method=POST path=\"/t/demo/a\\\"b\\\\c\\u0001\" status=202 duration_ms=1.5"
        );
    }
}
