//! Log lines as `--log-format json` writes them: one JSON object per line, with the fields of
//! the event and of every span it is in (service, peer, connection id...) as top-level keys,
//! so `jq 'select(.service == "redis")'` finds every line of a service.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats each event as one flat JSON object: `timestamp`, `level`, `target`, the fields
/// of its spans (outermost first; an inner span's field of the same name wins), then the
/// event's own fields (`message` among them). Needs span fields stored as JSON, as
/// `tracing_subscriber::fmt::format::JsonFields` stores them.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut BTreeMap<String, Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            Value::String(format!("{value:?}")),
        );
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_string(), Value::String(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut obj = BTreeMap::new();
        let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
        obj.insert("timestamp".into(), Value::String(now.to_string()));
        obj.insert("level".into(), Value::String(meta.level().to_string()));
        obj.insert("target".into(), Value::String(meta.target().to_string()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields) {
                    obj.extend(map);
                }
            }
        }
        event.record(&mut Fields(&mut obj));
        let line = serde_json::to_string(&obj).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn span_fields_are_top_level_keys_of_one_object_per_line() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let conn = tracing::info_span!(
                "conn",
                service = "redis",
                conn = 7u64,
                peer = tracing::field::Empty
            );
            let _in = conn.enter();
            conn.record("peer", "node-b");
            tracing::info!(up = 12u64, "closed");
            tracing::warn!("a \"quoted\"\nline");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["service"], "redis");
        assert_eq!(first["peer"], "node-b");
        assert_eq!(first["conn"], 7);
        assert_eq!(first["up"], 12);
        assert_eq!(first["message"], "closed");
        assert_eq!(first["level"], "INFO");
        let second: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(second["message"], "a \"quoted\"\nline");
        assert_eq!(second["service"], "redis");
    }
}
