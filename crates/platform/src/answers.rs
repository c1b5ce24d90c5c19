//! An owner answering questions on the bus (NATS request/reply, `bus::ask`) through the very
//! stack that serves its gRPC requests: the question becomes a gRPC request (its body framed,
//! its deadline and trace context as headers) and goes through the server's tracing, request
//! timeout, shedding, admission, concurrency limit and fault layers to the same handler, and
//! the handler's answer or status goes back on the bus. So validation, error messages,
//! bounds and injected faults are the same on both paths by construction, not by copy:
//! `lab chaos slow-products` slows both.
//!
//! The owner is a NATS service (the services API: `$SRV.PING`, `INFO`, `STATS` discovery, one
//! endpoint per question, the queue group `bus::ask::QUEUE_GROUP` shared by its instances).
//! A failed answer carries the services API's error headers: `Nats-Service-Error-Code` is the
//! gRPC status code, `Nats-Service-Error` its message.

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures::StreamExt as _;
use http_body_util::BodyExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::body::Body;
use tonic::codegen::Body as HttpBody;
use tower::ServiceExt as _;

/// An owner's NATS connection, to answer its questions on.
#[derive(Debug, Clone)]
pub struct BusAnswers {
    pub client: async_nats::Client,
    /// The owner's name, which is also its NATS service's name: `users`.
    pub owner: &'static str,
}

/// Marks a request that arrived as a question on the bus, with its subject, for the span.
#[derive(Debug, Clone)]
pub struct AskedOnBus(pub String);

/// Why the owner could not start answering.
#[derive(Debug, thiserror::Error)]
#[error("cannot register the {owner} NATS service: {reason}")]
pub struct AnswerError {
    owner: &'static str,
    reason: String,
}

/// How long registering may hold up the start while NATS is reachable.
pub(crate) const REGISTERED_WITHIN: Duration = Duration::from_secs(2);

/// Headers of a question passed on to the handler, as gRPC metadata carries them.
const PASSED_ON: [&str; 3] = [bus::ask::DEADLINE_HEADER, "traceparent", "tracestate"];

/// Registers the owner's NATS service and answers its questions with `stack` until `stop`
/// is cancelled, then stops taking questions (the queue group hands new ones to the other
/// instances) and lets the ones in hand finish.
pub(crate) async fn answer<S, B>(
    answers: BusAnswers,
    stack: S,
    stop: CancellationToken,
    registered: tokio::sync::oneshot::Sender<()>,
) -> Result<(), AnswerError>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    use async_nats::service::ServiceExt as _;
    let owner = answers.owner;
    let failed = |reason: String| AnswerError { owner, reason };
    let service = answers
        .client
        .service_builder()
        .description(format!(
            "{owner}'s reads for Service D, asked on the bus (gRPC messages as bodies)"
        ))
        .queue_group(bus::ask::QUEUE_GROUP)
        .start(owner, bus::ask::SERVICE_VERSION)
        .await
        .map_err(|error| failed(error.to_string()))?;
    let mut endpoints = Vec::new();
    for question in bus::ask::answered_by(owner) {
        let endpoint = service
            .endpoint_builder()
            .name(question.method)
            .add(question.subject())
            .await
            .map_err(|error| failed(error.to_string()))?;
        endpoints.push(endpoint.map(move |request| (question, request)));
    }
    // Once the server has the subscriptions, a question finds the owner: the server may then
    // report SERVING. With NATS down they are sent when it connects.
    if tokio::time::timeout(REGISTERED_WITHIN, answers.client.flush())
        .await
        .is_ok_and(|flushed| flushed.is_ok())
    {
        let _ = registered.send(());
    }
    let mut questions = futures::stream::select_all(endpoints);
    let in_hand = TaskTracker::new();
    tracing::info!(service = owner, questions = ?bus::ask::answered_by(owner).iter().map(|q| q.subject()).collect::<Vec<_>>(), "answering on the bus");
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            next = questions.next() => {
                let Some((question, request)) = next else { break };
                // Each question is a task of its own, as each gRPC request is: admission
                // counts it, and the stack's bounds shed it when too many are in hand.
                in_hand.spawn(one(stack.clone(), question, request));
            }
        }
    }
    drop(questions);
    if let Err(error) = service.stop().await {
        tracing::debug!(service = owner, %error, "stopping the NATS service");
    }
    in_hand.close();
    in_hand.wait().await;
    Ok(())
}

/// Answers one question.
async fn one<S, B>(stack: S, question: bus::ask::Question, request: async_nats::service::Request)
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let answer = match as_grpc_request(&question, &request.message) {
        Ok(grpc) => match stack.oneshot(grpc).await {
            Ok(response) => read_answer(response).await,
            Err(never) => match never {},
        },
        Err(status) => Err(status),
    };
    let reply = answer.map_err(|status| async_nats::service::error::Error {
        code: status.code() as usize,
        status: one_line(status.message()),
    });
    if let Err(error) = request.respond(reply).await {
        // The asker is gone or NATS is: either way no one is left to tell.
        tracing::debug!(subject = %request.message.subject, %error, "cannot send an answer");
    }
}

/// The question as the gRPC request its handler takes.
fn as_grpc_request(
    question: &bus::ask::Question,
    message: &async_nats::Message,
) -> Result<http::Request<Body>, tonic::Status> {
    let length = u32::try_from(message.payload.len())
        .map_err(|_| tonic::Status::resource_exhausted("the question is too large"))?;
    let mut framed = BytesMut::with_capacity(5 + message.payload.len());
    framed.put_u8(0);
    framed.put_u32(length);
    framed.extend_from_slice(&message.payload);
    let mut builder = http::Request::builder()
        .method(http::Method::POST)
        .uri(question.grpc_path())
        .version(http::Version::HTTP_2)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .extension(AskedOnBus(message.subject.to_string()));
    if let Some(headers) = &message.headers {
        for name in PASSED_ON {
            // A header that HTTP cannot carry is dropped, as a malformed one is on gRPC.
            if let Some(value) = headers
                .get(name)
                .and_then(|value| http::HeaderValue::from_str(value.as_str()).ok())
            {
                builder = builder.header(name, value);
            }
        }
    }
    builder
        .body(Body::new(http_body_util::Full::new(framed.freeze())))
        .map_err(|error| tonic::Status::invalid_argument(format!("a malformed question: {error}")))
}

/// The handler's answer: the response message's bytes, or its status.
async fn read_answer<B>(response: http::Response<B>) -> Result<Bytes, tonic::Status>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    // Every error is answered trailers-only: the status is in the headers.
    if let Some(status) = tonic::Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|error| tonic::Status::internal(format!("the answer failed: {error}")))?;
    if let Some(status) = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    unframe(collected.to_bytes())
}

/// The one message of a unary gRPC answer, out of its frame.
fn unframe(mut data: Bytes) -> Result<Bytes, tonic::Status> {
    let malformed = || tonic::Status::internal("the handler's answer is not one gRPC message");
    if data.len() < 5 {
        return Err(malformed());
    }
    let compressed = data.get_u8();
    let length = data.get_u32() as usize;
    if compressed != 0 || data.len() != length {
        return Err(malformed());
    }
    Ok(data)
}

/// A NATS header value holds one line.
fn one_line(message: &str) -> String {
    message.replace(['\r', '\n'], " ")
}

/// The gRPC status an answer carries: the message's services API error headers, read back.
/// None for a successful answer.
pub fn status_of_answer(message: &async_nats::Message) -> Option<tonic::Status> {
    let headers = message.headers.as_ref()?;
    let code = headers.get(async_nats::service::NATS_SERVICE_ERROR_CODE)?;
    let text = headers
        .get(async_nats::service::NATS_SERVICE_ERROR)
        .map(|value| value.as_str().to_owned())
        .unwrap_or_default();
    let code = code
        .as_str()
        .parse::<i32>()
        .ok()
        .filter(|code| (1..=16).contains(code))
        .map_or(tonic::Code::Unknown, tonic::Code::from_i32);
    Some(tonic::Status::new(code, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_out_of_its_frame() {
        let mut framed = BytesMut::new();
        framed.put_u8(0);
        framed.put_u32(3);
        framed.extend_from_slice(b"abc");
        assert_eq!(unframe(framed.freeze()).expect("one message"), "abc");
        for bad in [&b"\0\0\0"[..], b"\0\0\0\0\x05abc", b"\x01\0\0\0\x01a"] {
            assert!(unframe(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_error_code_travels_as_the_grpc_code() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::service::NATS_SERVICE_ERROR_CODE, "5");
        headers.insert(async_nats::service::NATS_SERVICE_ERROR, "user x not found");
        let message = async_nats::Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: Bytes::new(),
            headers: Some(headers.clone()),
            status: None,
            description: None,
            length: 0,
        };
        let status = status_of_answer(&message).expect("an error");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "user x not found");
        headers.insert(async_nats::service::NATS_SERVICE_ERROR_CODE, "503");
        let message = async_nats::Message {
            headers: Some(headers),
            ..message
        };
        assert_eq!(
            status_of_answer(&message).expect("an error").code(),
            tonic::Code::Unknown,
            "a code gRPC does not have"
        );
        assert_eq!(one_line("a\r\nb"), "a  b");
    }
}
