//! A span's fields in JSON log lines, with a value recorded later appended in place.
//!
//! tracing-subscriber's `JsonFields` keeps a span's fields as one JSON object and, for every
//! `Span::record`, parses that object, inserts the value and writes it all again. Each request
//! span records three values after it opens (its trace and span ids, then its status code):
//! profiled on purchases-async answering health checks one at a time, those re-writes were
//! about 9% of the process's CPU, more than the health service itself. Here a recorded value
//! is appended to the object instead. A field recorded twice appears twice in the object; the
//! JSON line that embeds it reads it back with serde_json, where the later value wins, as it
//! did before.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};

/// [`JsonFields`], appending recorded values instead of writing the span's fields again.
#[derive(Debug)]
pub struct AppendingJsonFields(JsonFields);

impl Default for AppendingJsonFields {
    fn default() -> Self {
        Self(JsonFields::new())
    }
}

impl<'writer> FormatFields<'writer> for AppendingJsonFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        self.0.format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = String::new();
        FormatFields::format_fields(&self.0, Writer::new(&mut added), fields)?;
        append_members(&mut current.fields, &added);
        Ok(())
    }
}

/// Adds the members of the JSON object `added` to the JSON object `object` (either may be
/// empty text, which stands for no fields).
fn append_members(object: &mut String, added: &str) {
    let Some(members) = added
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .filter(|members| !members.is_empty())
    else {
        return;
    };
    match object.strip_suffix('}') {
        Some(open) if open.len() > 1 => {
            object.truncate(open.len());
            object.push(',');
            object.push_str(members);
            object.push('}');
        }
        _ => {
            object.clear();
            object.push_str(added);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[test]
    fn members_are_appended_to_an_object_or_start_one() {
        let mut object = String::from(r#"{"a":1}"#);
        append_members(&mut object, r#"{"b":"x","c":true}"#);
        assert_eq!(object, r#"{"a":1,"b":"x","c":true}"#);
        append_members(&mut object, "{}");
        append_members(&mut object, "");
        assert_eq!(object, r#"{"a":1,"b":"x","c":true}"#);
        for empty in ["", "{}"] {
            let mut object = String::from(empty);
            append_members(&mut object, r#"{"d":2}"#);
            assert_eq!(object, r#"{"d":2}"#);
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("the lines").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_carries_every_value_its_span_recorded_the_last_one_winning() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .fmt_fields(AppendingJsonFields::default())
                .with_writer(move || writer.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "rpc",
                method = "Check",
                code = tracing::field::Empty,
                trace_id = tracing::field::Empty
            );
            span.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            span.record("code", 14);
            span.record("code", 0);
            let _entered = span.enter();
            tracing::info!("answered \"quoted\"");
        });
        let text = String::from_utf8(lines.0.lock().expect("the lines").clone()).expect("utf-8");
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        for span in [&line["span"], &line["spans"][0]] {
            assert_eq!(span["method"], "Check", "{line}");
            assert_eq!(
                span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
                "{line}"
            );
            assert_eq!(span["code"], 0, "{line}");
        }
        assert_eq!(line["fields"]["message"], "answered \"quoted\"");
    }
}
