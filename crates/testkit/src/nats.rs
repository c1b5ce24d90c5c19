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

/// Starts a nats-server of this test's own (ephemeral port, temporary store, fsync always),
/// open to anyone: for tests of mechanisms that have nothing to do with access.
pub async fn start_nats() -> NatsServer {
    start_with(NatsServerOptions::default()).await
}

async fn start_with(options: NatsServerOptions) -> NatsServer {
    NatsServer::start(options).await.unwrap_or_else(|error| {
        panic!(
            "cannot start nats-server: {}",
            platform::status::error_chain(&error)
        )
    })
}

/// A nats-server of this test's own that admits only the system's services, each as its NATS
/// user with the permissions `bus::access` gives it, and an administrator: as the system runs.
#[derive(Debug)]
pub struct SecureNats {
    pub server: NatsServer,
    pub credentials: natsd::Credentials,
    _dir: tempfile::TempDir,
}

/// Durable names the purchases-async user may read through in tests and benches: its own
/// and the second projections they start beside it.
pub const TEST_PROJECTIONS: [&str; 4] = [
    bus::PURCHASES_DURABLE,
    "purchases-sql",
    "schema-1-reader",
    "second",
];

impl SecureNats {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nats-auth-")
            .tempdir()
            .expect("a temporary directory for NATS credentials");
        let (authorization, credentials) = natsd::auth::provision(
            dir.path(),
            &bus::access::system_roles(&TEST_PROJECTIONS),
            bus::access::ADMIN,
        )
        .expect("NATS credentials");
        let server = start_with(NatsServerOptions {
            authorization: Some(authorization),
            ..NatsServerOptions::default()
        })
        .await;
        Self {
            server,
            credentials,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A service's connection settings: this server, as `identity`.
    pub fn args(&self, identity: &str) -> platform::nats::NatsArgs {
        let seed = self
            .credentials
            .seed_file(identity)
            .unwrap_or_else(|| panic!("no NATS identity {identity}"));
        platform::nats::NatsArgs::new(self.url()).with_nkey(seed)
    }

    /// A client connected as `identity`, with its own inbox prefix, as the service connects.
    pub async fn client(&self, identity: &str) -> async_nats::Client {
        let seed = self
            .credentials
            .seed(identity)
            .expect("the identity's seed");
        async_nats::ConnectOptions::with_nkey(seed)
            .custom_inbox_prefix(bus::inbox_prefix(identity))
            .connect(self.url())
            .await
            .unwrap_or_else(|error| panic!("connect to NATS as {identity}: {error}"))
    }

    /// JetStream as the administrator, to read streams back or publish as a test must.
    pub async fn admin(&self) -> jetstream::Context {
        jetstream::new(self.client(bus::access::ADMIN).await)
    }
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
