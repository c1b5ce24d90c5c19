//! The transactional outbox. A service that changes an entity calls [`append`] with the
//! event describing the change inside the same database transaction, so the change and its
//! event commit together or not at all; nothing is published from inside a request.
//!
//! A [`relay::Relay`] per service then publishes the recorded events, in commit order, to the
//! service's JetStream stream ([`stream::StreamSpec`]), and prunes them once published.
//!
//! This crate owns the `outbox` table and its migrations. It knows nothing of any service's
//! entities: callers hand it an event payload and the aggregate it belongs to.

pub mod admin;
pub mod relay;
pub mod stream;

pub use relay::{Relay, RelayArgs, RelayConfig, Wakeup};

pub use stream::{StreamArgs, StreamIdentity, StreamSpec};

/// Runs `service`'s relay for the life of `host`, publishing to the service's own stream.
/// Returns the wake-up its stores commit through.
pub fn spawn_relay(
    host: &platform::host::ServiceHost,
    client: async_nats::Client,
    service: &'static str,
    args: &RelayArgs,
) -> Wakeup {
    let wakeup = Wakeup::new();
    let relay = Relay::new(
        host.database().clone(),
        client,
        StreamSpec::for_producer(service, &args.stream),
        wakeup.clone(),
        RelayConfig::from_args(args),
    );
    host.spawn(|cancel| relay.run(cancel));
    wakeup
}

use contracts::events::v1::EventEnvelope;
use platform::db::{Migrations, StoreError, WriteTx};
use uuid::Uuid;

/// The outbox table's migrations, to run beside the owning service's own.
pub fn migrations() -> Migrations {
    Migrations {
        name: "outbox",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}

/// Version of the payload schemas a producer writes unless told otherwise (see events.v1's
/// evolution rules).
pub const SCHEMA_VERSION: u32 = 1;

/// The newest payload schema version a producer can write.
pub const LATEST_SCHEMA_VERSION: u32 = 2;

/// Which event schema version a producing service writes, flattened into its `Config`.
/// Rolling out version 2 is a restart with `--event-schema 2`: readers built for version 1
/// go on working (they skip the added fields), newer readers use them.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct EventSchemaArgs {
    /// Event schema version to publish: 1, or 2 (adds fields; see proto/events/v1).
    #[arg(long, env = "EVENT_SCHEMA", default_value_t = SCHEMA_VERSION, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub event_schema: u32,
}

impl Default for EventSchemaArgs {
    fn default() -> Self {
        Self {
            event_schema: SCHEMA_VERSION,
        }
    }
}

/// Which entity an event is about, and where events about it are published.
#[derive(Debug, Clone, Copy)]
pub struct Aggregate<'a> {
    /// The owning service, also the first token of the subject: "users".
    pub producer: &'static str,
    /// The kind of entity: "user".
    pub kind: &'static str,
    pub id: &'a Uuid,
    /// The entity's version after the change.
    pub version: u64,
}

/// An event ready to be stored: the encoded envelope plus the columns the relay needs
/// without decoding it.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub event_id: Uuid,
    pub subject: String,
    pub event_type: String,
    pub aggregate_id: String,
    pub aggregate_version: u64,
    pub envelope: Vec<u8>,
    pub occurred_at_micros: i64,
    /// The W3C traceparent of the write, when it was traced.
    pub traceparent: Option<String>,
}

impl OutboxEvent {
    /// Wraps `payload` in an envelope. The subject is `<producer>.<kind>.<EventName>`, e.g.
    /// `users.user.UserRegistered`, so a stream can capture `users.>` and a consumer can
    /// filter by entity kind or event without decoding anything.
    pub fn new<M: prost::Message + prost::Name>(
        aggregate: Aggregate<'_>,
        occurred_at_micros: i64,
        payload: &M,
    ) -> Self {
        Self::with_schema(aggregate, occurred_at_micros, SCHEMA_VERSION, payload)
    }

    /// The same, for a payload of a later schema version (fields added since version 1).
    pub fn with_schema<M: prost::Message + prost::Name>(
        aggregate: Aggregate<'_>,
        occurred_at_micros: i64,
        schema_version: u32,
        payload: &M,
    ) -> Self {
        let event_id = Uuid::now_v7();
        // The write's trace travels with its event: the relay's publish and every consumer's
        // apply continue it, however long the event waits in the outbox.
        let metadata = platform::telemetry::propagation::current_map();
        let traceparent = metadata
            .get(platform::telemetry::propagation::TRACEPARENT)
            .cloned();
        let envelope = EventEnvelope {
            event_id: event_id.to_string(),
            event_type: M::full_name(),
            aggregate_type: aggregate.kind.to_owned(),
            aggregate_id: aggregate.id.to_string(),
            aggregate_version: aggregate.version,
            occurred_at: Some(platform::time::to_timestamp(occurred_at_micros)),
            producer: aggregate.producer.to_owned(),
            schema_version,
            payload: payload.encode_to_vec(),
            metadata,
        };
        Self {
            event_id,
            subject: format!("{}.{}.{}", aggregate.producer, aggregate.kind, M::NAME),
            event_type: envelope.event_type.clone(),
            aggregate_id: envelope.aggregate_id.clone(),
            aggregate_version: aggregate.version,
            envelope: prost::Message::encode_to_vec(&envelope),
            occurred_at_micros,
            traceparent,
        }
    }
}

/// The source of one kind of event: an owning service, the kind of entity it writes, and
/// the schema version of the payloads it writes.
#[derive(Debug, Clone, Copy)]
pub struct Producer {
    pub service: &'static str,
    pub kind: &'static str,
    pub schema_version: u32,
}

impl Producer {
    /// A producer of schema version 1 payloads.
    pub const fn new(service: &'static str, kind: &'static str) -> Self {
        Self {
            service,
            kind,
            schema_version: SCHEMA_VERSION,
        }
    }

    /// The same producer writing payloads of `schema_version` (fields added since 1).
    #[must_use]
    pub const fn with_schema_version(self, schema_version: u32) -> Self {
        Self {
            schema_version,
            ..self
        }
    }

    /// Records that entity `id` reached `version` by the change `payload` describes. `tx`
    /// must be the transaction that makes the change.
    pub async fn record<M: prost::Message + prost::Name>(
        &self,
        tx: &mut WriteTx,
        id: &Uuid,
        version: u64,
        occurred_at_micros: i64,
        payload: &M,
    ) -> Result<(), StoreError> {
        let aggregate = Aggregate {
            producer: self.service,
            kind: self.kind,
            id,
            version,
        };
        append(
            tx,
            &OutboxEvent::with_schema(aggregate, occurred_at_micros, self.schema_version, payload),
        )
        .await
    }
}

/// Records `event` in `tx`, which must be the transaction that makes the change.
pub async fn append(tx: &mut WriteTx, event: &OutboxEvent) -> Result<(), StoreError> {
    let aggregate_version = i64::try_from(event.aggregate_version).map_err(|_| {
        StoreError::Corrupt(format!(
            "aggregate version {} overflows",
            event.aggregate_version
        ))
    })?;
    tx.execute(
        "INSERT INTO outbox (event_id, subject, event_type, aggregate_id, aggregate_version, envelope, created_at, traceparent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        &[
            event.event_id.to_string().into(),
            event.subject.as_str().into(),
            event.event_type.as_str().into(),
            event.aggregate_id.as_str().into(),
            aggregate_version.into(),
            event.envelope.clone().into(),
            event.occurred_at_micros.into(),
            event.traceparent.as_deref().into(),
        ],
    )
    .await?;
    Ok(())
}
