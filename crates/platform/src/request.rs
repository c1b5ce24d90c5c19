//! What every request goes through between the server's span and its handler: it is counted
//! on its connection (so a busy connection is never closed as idle), held to its deadline
//! (the server's request timeout, or the caller's `grpc-timeout` when sooner, read as the gRPC
//! spec says), and whatever the layers inside fail with (a shed request, a deadline) becomes
//! the gRPC status a caller reads. The answer carries the method it answers, for the
//! request's log line and metrics outside.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::connections::ConnectionInfo;
use crate::telemetry::rpc::RpcMethod;

/// The caller's deadline, from the `grpc-timeout` header ("100m" is 100 ms). The gRPC spec
/// (PROTOCOL-HTTP2.md) allows 1 to 8 ASCII digits and one unit of H, M, S, m, u or n;
/// anything else is malformed and ignored, as if absent (the server's own request timeout
/// still applies). Eight digits of hours fit a `Duration`.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value, read as [`grpc_timeout`] reads it.
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    let (digits, unit) = raw.split_at(raw.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// A deadline as a `grpc-timeout` value, as precise as eight digits allow: microseconds up
/// to 100 s, then milliseconds, then seconds (a caller passing its deadline on, over gRPC or
/// the bus).
pub fn encode_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let micros = timeout.as_micros();
    if micros <= MAX {
        return format!("{micros}u");
    }
    let millis = timeout.as_millis();
    if millis <= MAX {
        return format!("{millis}m");
    }
    format!("{}S", timeout.as_secs().min(MAX as u64))
}

/// The layer: see the module documentation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLayer {
    /// Longest any request may run, whatever its caller asked.
    pub(crate) timeout: Duration,
}

impl<S> tower::Layer<S> for RequestLayer {
    type Service = Request<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Request {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Request<S> {
    inner: S,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for Request<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, std::convert::Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An error here is the inner service's to report: the call after it fails, and its
        // error becomes the request's status.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = RpcMethod(crate::telemetry::rpc::method_of(request.uri().path()));
        let guard = request
            .extensions()
            .get::<ConnectionInfo>()
            .map(ConnectionInfo::request_started);
        let deadline =
            grpc_timeout(request.headers()).map_or(self.timeout, |asked| asked.min(self.timeout));
        let response = self.inner.call(request);
        Box::pin(async move {
            let outcome = tokio::time::timeout(deadline, response).await;
            drop(guard);
            let mut response = match outcome {
                Ok(Ok(response)) => response,
                Ok(Err(error)) => status_of(error.into()).into_http(),
                Err(_) => tonic::Status::deadline_exceeded(format!(
                    "the request did not finish within its deadline of {} ms",
                    deadline.as_millis()
                ))
                .into_http(),
            };
            response.extensions_mut().insert(method);
            Ok(response)
        })
    }
}

/// The status a caller reads for what a layer failed with.
fn status_of(error: BoxError) -> tonic::Status {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return tonic::Status::resource_exhausted(
            "the server has as many requests in hand as it takes; retry with backoff",
        );
    }
    match error.downcast::<tonic::Status>() {
        Ok(status) => *status,
        Err(error) => {
            tracing::error!(error = %crate::status::error_chain(error.as_ref()), "a request failed in the server's layers");
            tonic::Status::internal("internal error")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_by_the_spec() {
        let mut headers = http::HeaderMap::new();
        for (raw, expected) in [
            ("2S", Duration::from_secs(2)),
            ("150m", Duration::from_millis(150)),
            ("900u", Duration::from_micros(900)),
            ("1M", Duration::from_secs(60)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ] {
            headers.insert("grpc-timeout", raw.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&headers), Some(expected), "{raw}");
        }
        for malformed in [
            "12x",
            "123456789S",
            "18446744073709551615H",
            "S",
            "+5S",
            "-5S",
            "5 S",
            "1.5S",
        ] {
            headers.insert("grpc-timeout", malformed.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&headers), None, "{malformed}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[test]
    fn a_deadline_passed_on_reads_back_as_itself() {
        for timeout in [
            Duration::from_micros(1),
            Duration::from_millis(150),
            Duration::from_secs(99),
            Duration::from_secs(3600),
        ] {
            let encoded = encode_grpc_timeout(timeout);
            assert_eq!(parse_grpc_timeout(&encoded), Some(timeout), "{encoded}");
        }
        assert_eq!(
            encode_grpc_timeout(Duration::from_secs(u64::MAX)),
            "99999999S"
        );
    }
}
