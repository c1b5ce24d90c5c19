//! W3C trace context (`traceparent`, `tracestate`) in and out of whatever carries it between
//! processes: HTTP/2 headers and gRPC metadata, NATS message headers, and the string map an
//! event envelope keeps it in.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The W3C header carrying the trace and parent span.
pub const TRACEPARENT: &str = "traceparent";

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The caller's context from request headers (an invalid or absent one gives an empty
/// context: the span then starts a trace of its own).
pub fn from_headers(headers: &http::HeaderMap) -> Context {
    propagator().extract(&Headers(headers))
}

/// Puts `span`'s context into outgoing gRPC metadata.
pub fn into_metadata(span: &Span, metadata: &mut tonic::metadata::MetadataMap) {
    let mut headers = std::mem::take(metadata).into_headers();
    propagator().inject_context(&span.context(), &mut HeadersMut(&mut headers));
    *metadata = tonic::metadata::MetadataMap::from_headers(headers);
}

struct NatsHeadersMut<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// Puts `span`'s context into an outgoing NATS message's headers.
pub fn into_nats_headers(span: &Span, headers: &mut async_nats::HeaderMap) {
    propagator().inject_context(&span.context(), &mut NatsHeadersMut(headers));
}

/// The current span's context as a string map (`traceparent`, and `tracestate` when set), to
/// keep with something that outlives the request, such as an event in the outbox. Empty
/// when the current span is not being recorded for export: nothing to continue.
pub fn current_map() -> HashMap<String, String> {
    let context = Span::current().context();
    let mut map = HashMap::new();
    if context.span().span_context().is_sampled() {
        propagator().inject_context(&context, &mut map);
    }
    map
}

/// A context from a string map such as [`current_map`] wrote.
pub fn from_map(map: &HashMap<String, String>) -> Context {
    propagator().extract(map)
}

/// A context from a bare `traceparent` value.
pub fn from_traceparent(traceparent: &str) -> Context {
    from_map(&HashMap::from([(
        TRACEPARENT.to_owned(),
        traceparent.to_owned(),
    )]))
}

/// `span`'s own context as a `traceparent` value, when it is recorded.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_sampled() {
        return None;
    }
    let mut map = HashMap::new();
    propagator().inject_context(&context, &mut map);
    map.remove(TRACEPARENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_from_headers_and_a_garbled_one_ignored() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let context = from_headers(&headers);
        let span = context.span();
        let read = span.span_context();
        assert_eq!(
            read.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(read.is_sampled() && read.is_remote());
        headers.insert(TRACEPARENT, http::HeaderValue::from_static("00-zz-01"));
        assert!(!from_headers(&headers).span().span_context().is_valid());
    }
}
