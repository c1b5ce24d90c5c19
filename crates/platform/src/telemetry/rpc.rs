//! One RPC, as a span, a log line and metrics, by OpenTelemetry's RPC conventions: the span
//! is named `<package.Service>/<Method>` and carries `rpc.system`, `rpc.service`,
//! `rpc.method` and `rpc.grpc.status_code`; a server span continues the caller's trace (W3C
//! `traceparent`), a client span passes its own on.
//!
//! A question asked on the bus (`crate::answers`) goes through the same server layer and
//! its span also carries `messaging.system = nats` and the subject it was asked on; the
//! asker's client span likewise.
//!
//! The server side is tower-http's `TraceLayer` with its gRPC classifier, given the span to
//! make and what to do when the answer comes: the log line (at info; health checks at debug)
//! and the request metrics.

use std::time::Duration;

use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics as names;

/// The request's path split into its gRPC service and method: `/users.v1.UserService/GetUser`.
fn service_and_method(path: &str) -> (&str, &str) {
    path.trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""))
}

/// Health checks and reflection: answered all day long, by probes, not worth a log line.
fn is_plumbing(method: &str) -> bool {
    method.starts_with("grpc.health.") || method.starts_with("grpc.reflection.")
}

/// `<service>/<method>` of a request's path.
pub fn method_of(path: &str) -> String {
    let (service, method) = service_and_method(path);
    format!("{service}/{method}")
}

/// The span of one request a server received, continuing the caller's trace.
fn server_span<B>(request: &http::Request<B>) -> Span {
    let (service, method) = service_and_method(request.uri().path());
    let span = tracing::info_span!(
        target: "rpc",
        "rpc",
        otel.name = %format!("{service}/{method}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
        messaging.system = tracing::field::Empty,
        messaging.destination.name = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    if let Some(crate::answers::AskedOnBus(subject)) = request.extensions().get() {
        span.record("messaging.system", "nats");
        span.record("messaging.destination.name", subject.as_str());
    }
    let _ = span.set_parent(super::propagation::from_headers(request.headers()));
    super::record_ids(&span);
    span
}

/// The status code of an answer whose status travels in its headers (a trailers-only answer:
/// every error); an answer that carries a message has it in its trailers, OK in this
/// system's unary calls.
fn status_in_headers(headers: &http::HeaderMap) -> i32 {
    headers
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0)
}

/// Codes that mean the server failed, not the caller (OpenTelemetry's RPC conventions for
/// server spans).
fn is_server_error(code: i32) -> bool {
    matches!(
        tonic::Code::from_i32(code),
        tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
    )
}

/// Records an answer: on the span, as the request's log line, and in the metrics.
fn answered(span: &Span, method: &str, code: i32, latency: Duration) {
    span.record("rpc.grpc.status_code", code);
    if is_server_error(code) {
        span.record("otel.status_code", "ERROR");
    }
    let status = tonic::Code::from_i32(code);
    let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    if is_plumbing(method) {
        tracing::debug!(target: "rpc", parent: span.id(), grpc_code = code, grpc_status = ?status, latency_us, "answered");
    } else {
        tracing::info!(target: "rpc", parent: span.id(), grpc_code = code, grpc_status = ?status, latency_us, "answered");
    }
    metrics::counter!(
        names::SERVER_REQUESTS,
        "rpc_method" => method.to_owned(),
        "grpc_code" => format!("{status:?}"),
    )
    .increment(1);
    metrics::histogram!(names::SERVER_DURATION, "rpc_method" => method.to_owned())
        .record(latency.as_secs_f64());
}

/// The `<service>/<method>` a response answers, which the request layer puts in its
/// extensions (the callbacks below see the response, not the request).
#[derive(Debug, Clone)]
pub struct RpcMethod(pub String);

/// The server's tracing layer, as [`server_layer`] builds it.
pub type ServerTraceLayer = TraceLayer<
    SharedClassifier<GrpcErrorsAsFailures>,
    MakeSpan,
    OnRequest,
    OnResponse,
    (),
    OnEos,
    (),
>;
type MakeSpan = fn(&http::Request<tonic::body::Body>) -> Span;
type OnRequest = fn(&http::Request<tonic::body::Body>, &Span);
type OnResponse = fn(&http::Response<tonic::body::Body>, Duration, &Span);
type OnEos = fn(Option<&http::HeaderMap>, Duration, &Span);

/// The server's tracing layer: a span per request, one log line per answer, the request
/// metrics.
pub fn server_layer() -> ServerTraceLayer {
    TraceLayer::new_for_grpc()
        .make_span_with(server_span::<tonic::body::Body> as MakeSpan)
        .on_request(on_request as OnRequest)
        .on_response(on_response as OnResponse)
        .on_body_chunk(())
        .on_eos(on_eos as OnEos)
        .on_failure(())
}

/// Counts the request as received: one its caller gives up on is never answered, and this is
/// where it still shows (how many calls a hedging client really makes).
fn on_request(request: &http::Request<tonic::body::Body>, _span: &Span) {
    let method = method_of(request.uri().path());
    if !is_plumbing(&method) {
        metrics::counter!(names::SERVER_RECEIVED, "rpc_method" => method).increment(1);
    }
}

fn on_response(response: &http::Response<tonic::body::Body>, latency: Duration, span: &Span) {
    let method = response
        .extensions()
        .get::<RpcMethod>()
        .map_or("unknown", |method| method.0.as_str());
    answered(span, method, status_in_headers(response.headers()), latency);
}

fn on_eos(trailers: Option<&http::HeaderMap>, _stream: Duration, span: &Span) {
    // An answer that failed after its headers were sent (its message could not be encoded):
    // rare enough to say so on its own line.
    let late = trailers.map(status_in_headers).unwrap_or(0);
    if late != 0 {
        span.record("rpc.grpc.status_code", late);
        tracing::warn!(target: "rpc", parent: span.id(), grpc_code = late, "failed after its headers were sent");
    }
}

/// A call this service makes to another: a client span whose context the call carries.
#[derive(Debug)]
pub struct ClientCall {
    span: Span,
    dependency: &'static str,
    started: std::time::Instant,
}

impl ClientCall {
    /// Starts the span of a call to `dependency`'s `service`/`method`, a child of the
    /// current span, and puts its context into `request`'s metadata.
    pub fn start<T>(
        dependency: &'static str,
        service: &'static str,
        method: &'static str,
        request: &mut tonic::Request<T>,
    ) -> Self {
        let span = tracing::info_span!(
            target: "rpc",
            "rpc.client",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = dependency,
        );
        super::propagation::into_metadata(&span, request.metadata_mut());
        Self {
            span,
            dependency,
            started: std::time::Instant::now(),
        }
    }

    /// Starts the span of a question to `dependency` asked on the bus on `subject`, a child
    /// of the current span, and puts its context into the message's `headers`.
    pub fn start_on_bus(
        dependency: &'static str,
        question: &bus::ask::Question,
        subject: &str,
        headers: &mut async_nats::HeaderMap,
    ) -> Self {
        let span = tracing::info_span!(
            target: "rpc",
            "rpc.client",
            otel.name = %format!("{}/{}", question.service, question.method),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = question.service,
            rpc.method = question.method,
            rpc.grpc.status_code = tracing::field::Empty,
            messaging.system = "nats",
            messaging.destination.name = subject,
            server.address = dependency,
        );
        super::propagation::into_nats_headers(&span, headers);
        Self {
            span,
            dependency,
            started: std::time::Instant::now(),
        }
    }

    /// The span, to run the call in.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Records how the call ended: `code` (when the dependency answered) and an `outcome`
    /// for the metrics (the code's name, or `unreachable`, `overloaded`, `deadline_exceeded`
    /// when the dependency gave none).
    pub fn finish(self, code: Option<tonic::Code>, outcome: &'static str) {
        if let Some(code) = code {
            self.span.record("rpc.grpc.status_code", code as i32);
            if code != tonic::Code::Ok && code != tonic::Code::NotFound {
                self.span.record("otel.status_code", "ERROR");
            }
        } else {
            self.span.record("otel.status_code", "ERROR");
        }
        metrics::counter!(names::CLIENT_CALLS, "dependency" => self.dependency, "outcome" => outcome)
            .increment(1);
        metrics::histogram!(names::CLIENT_DURATION, "dependency" => self.dependency)
            .record(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_names_the_service_and_method() {
        assert_eq!(
            service_and_method("/users.v1.UserService/GetUser"),
            ("users.v1.UserService", "GetUser")
        );
        assert!(is_plumbing(&method_of("/grpc.health.v1.Health/Check")));
        assert!(is_server_error(14) && !is_server_error(5) && !is_server_error(0));
    }
}
