//! The JSON log line: tracing-subscriber's layout (`timestamp`, `level`, `fields`, `target`,
//! `span`, `spans`), written without reading the spans' fields back.
//!
//! tracing-subscriber's JSON format keeps each span's fields as JSON text and, for every line,
//! parses that text into a map and serialises the map again, once for `span` and once more for
//! each entry of `spans`: a request's line parsed its span's fields (eleven declared) twice.
//! Profiled on purchases-async answering pages one at a time, the line's formatting was 7% of the
//! process's CPU, the two spans' round trips through serde_json more than half of it. Here the
//! stored text is copied into the line as it is. That is only sound because
//! [`AppendingJsonFields`](super::json_fields::AppendingJsonFields) keeps it one JSON object
//! with each field once.
//!
//! One difference: `spans` runs from the root to the span the event belongs to, where
//! tracing-subscriber's runs to the thread's current span; they differ only for an event
//! given a parent other than the current span.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime as _, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use super::json_fields::{JsonMembers, json_string, members};

/// One JSON object per event, with the span it belongs to and the spans above it.
#[derive(Debug, Default)]
pub struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    N: for<'writer> FormatFields<'writer> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = Line(Vec::with_capacity(512));
        line.raw("{\"timestamp\":\"");
        let mut timestamp = String::with_capacity(32);
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        line.raw(&timestamp);
        line.raw("\",\"level\":\"");
        line.raw(meta.level().as_str());
        line.raw("\",\"fields\":{");
        event.record(&mut JsonMembers::new(&mut line.0));
        line.raw("},\"target\":");
        line.string(meta.target());
        // The span list walks the scope a second time rather than collecting it.
        if let Some(leaf) = ctx.event_scope().and_then(|mut scope| scope.next()) {
            line.raw(",\"span\":");
            line.span::<S, N>(&leaf);
            line.raw(",\"spans\":[");
            for (index, span) in ctx
                .event_scope()
                .into_iter()
                .flat_map(|scope| scope.from_root())
                .enumerate()
            {
                if index > 0 {
                    line.raw(",");
                }
                line.span::<S, N>(&span);
            }
            line.raw("]");
        }
        line.raw("}\n");
        // Everything written is UTF-8 (strings through serde_json, the rest ASCII or
        // stored UTF-8 text); the check costs less than a line's allocation.
        writer.write_str(std::str::from_utf8(&line.0).map_err(|_| fmt::Error)?)
    }
}

/// A line being written.
struct Line(Vec<u8>);

impl Line {
    fn raw(&mut self, text: &str) {
        self.0.extend_from_slice(text.as_bytes());
    }

    fn string(&mut self, value: &str) {
        json_string(&mut self.0, value);
    }

    /// `{<the span's fields>,"name":<its name>}`, the stored fields copied as they are.
    fn span<S, N>(&mut self, span: &SpanRef<'_, S>)
    where
        S: for<'lookup> LookupSpan<'lookup>,
        N: for<'writer> FormatFields<'writer> + 'static,
    {
        let extensions = span.extensions();
        let members = extensions
            .get::<FormattedFields<N>>()
            .and_then(|fields| members(fields))
            .unwrap_or("");
        self.raw("{");
        if !members.is_empty() {
            self.raw(members);
            self.raw(",");
        }
        self.raw("\"name\":");
        self.string(span.metadata().name());
        self.raw("}");
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::JsonFields;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::json_fields::AppendingJsonFields;

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

    impl Lines {
        /// Every line written, parsed, without its timestamp (two layers read the clock
        /// at different instants).
        fn parsed(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().expect("the lines").clone();
            String::from_utf8(bytes)
                .expect("UTF-8")
                .lines()
                .map(|line| {
                    let mut value: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|error| panic!("{error}: {line}"));
                    let stamp = value
                        .as_object_mut()
                        .and_then(|line| line.remove("timestamp"));
                    assert!(stamp.is_some_and(|stamp| stamp.is_string()), "{line}");
                    value
                })
                .collect()
        }
    }

    /// The same events through tracing-subscriber's own JSON format and through this one
    /// make the same JSON, value for value.
    #[test]
    fn a_line_says_what_tracing_subscribers_json_line_says() {
        let (theirs, ours) = (Lines::default(), Lines::default());
        let (their_writer, our_writer) = (theirs.clone(), ours.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .fmt_fields(JsonFields::new())
                    .with_writer(move || their_writer.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(JsonLine)
                    .fmt_fields(AppendingJsonFields)
                    .with_writer(move || our_writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rpc", answer = 42, "outside any span");
            let request = tracing::info_span!(
                "rpc",
                otel.name = "users.v1.UserService/GetUser",
                rpc.grpc.status_code = tracing::field::Empty,
                trace_id = tracing::field::Empty,
                empty = tracing::field::Empty,
            );
            request.record("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736");
            request.record("rpc.grpc.status_code", 14);
            request.record("rpc.grpc.status_code", 0);
            let _request = request.enter();
            tracing::info!(
                parent: request.id(),
                grpc_code = 0,
                grpc_status = ?tonic::Code::Ok,
                latency_us = 180_u64,
                ratio = 0.5,
                negative = -3_i64,
                shown = true,
                "answered"
            );
            let quiet = tracing::info_span!("quiet");
            let _quiet = quiet.enter();
            let inner = tracing::info_span!("query", sql = "SELECT \"a\"\n\tFROM t", bytes = 3);
            let _inner = inner.enter();
            tracing::error!(
                error = %"line one\nline \"two\" \u{1F980} \\ back",
                nan = f64::NAN,
                "failed: {}",
                "a reason"
            );
        });
        // Each object holds a field once (serde_json, reading a line, would let the last of
        // two hide the first): the status is in `span` and in `spans`, no more.
        let text = String::from_utf8(ours.0.lock().expect("the lines").clone()).expect("UTF-8");
        assert_eq!(
            text.lines()
                .nth(1)
                .map(|line| line.matches("rpc.grpc.status_code").count()),
            Some(2),
            "{text}"
        );
        let (theirs, ours) = (theirs.parsed(), ours.parsed());
        assert_eq!(ours.len(), 3);
        assert_eq!(theirs, ours);
        // The request span's status was recorded twice: its object holds the last one.
        assert_eq!(ours[1]["span"]["rpc.grpc.status_code"], 0, "{}", ours[1]);
        assert_eq!(
            ours[2]["spans"].as_array().map(Vec::len),
            Some(3),
            "{}",
            ours[2]
        );
    }
}
