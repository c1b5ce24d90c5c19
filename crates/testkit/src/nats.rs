//! NATS for tests: a real nats-server per test, publishing events as a producer would, and
//! reading a stream back.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use contracts::events::v1::EventEnvelope;
use natsd::{NatsServer, NatsServerOptions};
use outbox::{OutboxEvent, StreamArgs, StreamSpec};
use prost::Message as _;

/// A URL nothing listens on, for services under test that should run without NATS.
pub const UNREACHABLE_NATS: &str = "nats://127.0.0.1:1";

/// Starts a nats-server of this test's own (ephemeral port, temporary store, fsync always).
pub async fn start_nats() -> NatsServer {
    NatsServer::start(NatsServerOptions::default())
        .await
        .unwrap_or_else(|error| {
            panic!(
                "cannot start nats-server: {}",
                platform::status::error_chain(&error)
            )
        })
}

pub async fn connect(server: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(server.url())
        .await
        .expect("connect to the test's nats-server");
    jetstream::new(client)
}

/// Publishes `event` to its producer's stream, creating the stream first, exactly as the
/// producer's relay would (with the event id as message id).
pub async fn publish_event(js: &jetstream::Context, event: &OutboxEvent) {
    let producer = event
        .subject
        .split('.')
        .next()
        .expect("a subject has a first token");
    StreamSpec::for_producer(producer, &StreamArgs::default())
        .ensure(js)
        .await
        .expect("create the producer's stream");
    publish_raw(
        js,
        &event.subject,
        event.envelope.clone(),
        Some(&event.event_id.to_string()),
    )
    .await;
}

/// Publishes arbitrary bytes to a subject of an existing stream and waits for the ack.
pub async fn publish_raw(
    js: &jetstream::Context,
    subject: &str,
    payload: Vec<u8>,
    message_id: Option<&str>,
) {
    let mut message = PublishMessage::build().payload(payload.into());
    if let Some(id) = message_id {
        message = message.message_id(id);
    }
    js.send_publish(subject.to_owned(), message)
        .await
        .expect("publish")
        .await
        .expect("JetStream acknowledges the publish");
}

/// Every event in `stream`, in stream order, with its subject.
pub async fn stream_events(js: &jetstream::Context, stream: &str) -> Vec<(String, EventEnvelope)> {
    let stream = tokio::time::timeout(Duration::from_secs(10), js.get_stream(stream))
        .await
        .expect("the stream lookup answers")
        .expect("the stream exists");
    let info = stream.get_info().await.expect("stream info");
    let mut events = Vec::new();
    if info.state.messages == 0 {
        return events;
    }
    for sequence in info.state.first_sequence..=info.state.last_sequence {
        let message = stream
            .get_raw_message(sequence)
            .await
            .expect("read a message of the stream");
        let envelope = EventEnvelope::decode(message.payload.as_ref()).expect("an event envelope");
        events.push((message.subject.to_string(), envelope));
    }
    events
}
