//! What a projection sees: validated events, how they relate to what it already applied, and
//! the errors it may answer with.

use std::future::Future;

use contracts::events::v1::EventEnvelope;
use platform::db::{StoreError, WriteTx};

/// How an event relates to the last version of its aggregate applied by this consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// The version right after the stored one (or version 1 of an aggregate not seen yet).
    Next,
    /// Newer than the stored version with `missing` versions in between never seen here.
    AfterGap { missing: u64 },
    /// At or below the stored version: a duplicate or a late arrival. Only projections that
    /// ask for them ([`Projection::wants_stale`]) see these.
    Stale { applied: u64 },
}

impl Freshness {
    pub(crate) fn classify(applied: u64, version: u64) -> Self {
        if version <= applied {
            Self::Stale { applied }
        } else if version == applied + 1 {
            Self::Next
        } else {
            Self::AfterGap {
                missing: version - applied - 1,
            }
        }
    }

    pub fn is_stale(self) -> bool {
        matches!(self, Self::Stale { .. })
    }
}

/// One event off the stream, its envelope already validated.
#[derive(Debug, Clone)]
pub struct Event {
    pub envelope: EventEnvelope,
    pub subject: String,
    pub stream_sequence: u64,
    pub freshness: Freshness,
}

impl Event {
    /// When the change happened at its producer, in microseconds since the epoch.
    pub fn occurred_at_micros(&self) -> i64 {
        self.envelope
            .occurred_at
            .as_ref()
            .map_or(0, platform::time::from_timestamp)
    }

    pub fn event_type(&self) -> &str {
        &self.envelope.event_type
    }

    /// Decodes the payload as `M`. Fields added by newer producers are ignored; a payload
    /// that is not an `M` at all is rejected, which dead-letters the event.
    pub fn decode<M: prost::Message + prost::Name + Default>(&self) -> Result<M, ApplyError> {
        if self.envelope.event_type != M::full_name() {
            return Err(ApplyError::Rejected(format!(
                "event type {} is not {}",
                self.envelope.event_type,
                M::full_name()
            )));
        }
        M::decode(self.envelope.payload.as_slice()).map_err(|error| {
            ApplyError::Rejected(format!(
                "payload of {} does not decode: {error}",
                self.envelope.event_type
            ))
        })
    }

    /// The aggregate id a payload names, which must be a UUID and the envelope's aggregate.
    pub fn aggregate_uuid(&self, payload_id: &str) -> Result<uuid::Uuid, ApplyError> {
        let id = parse_payload_id("payload id", payload_id)?;
        if payload_id != self.envelope.aggregate_id {
            return Err(ApplyError::Rejected(format!(
                "payload id {payload_id} differs from the envelope's aggregate id {}",
                self.envelope.aggregate_id
            )));
        }
        Ok(id)
    }

    /// The rejection for an event type this projection does not know.
    pub fn unknown_type(&self) -> ApplyError {
        ApplyError::Rejected(format!(
            "unknown event type {} on {}",
            self.envelope.event_type, self.subject
        ))
    }
}

/// A UUID from a payload field; anything else rejects the event.
pub fn parse_payload_id(field: &str, raw: &str) -> Result<uuid::Uuid, ApplyError> {
    platform::fields::parse_id(field, raw)
        .map_err(|violation| ApplyError::Rejected(violation.to_string()))
}

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The event itself is unacceptable (wrong payload, unknown type, values out of range):
    /// retrying cannot help, so it is dead-lettered at once.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The database failed. When it is unavailable the batch is retried until it is back;
    /// any other failure is retried a few times and then dead-lettered.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ApplyError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// Turns events into local state. `apply` gets the fresh events of one batch in stream order
/// (several may concern one aggregate, in version order) and the transaction to write them
/// in; it must not commit. After a failure the crate calls it again with one event at a
/// time, to find the culprit.
pub trait Projection: Send + Sync + 'static {
    fn apply(
        &self,
        tx: &mut WriteTx,
        events: &[Event],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send;

    /// Called after the transaction holding `events` (as given to `apply`) has committed: the
    /// place to bring anything kept outside the database, such as an in-memory view, in step
    /// with it. Must not fail: what it cannot do it must repair later by itself.
    fn committed(&self, events: &[Event]) -> impl Future<Output = ()> + Send {
        let _ = events;
        async {}
    }

    /// Whether `apply` also wants stale events, for a projection that can use a late event
    /// to fill in facts that never change (an order's product, say) even though the newer
    /// state is already there. Most projections want only fresh ones.
    fn wants_stale(&self) -> bool {
        false
    }
}

/// Longest aggregate type, id or event type accepted, so a corrupt envelope cannot bloat the
/// version table.
const MAX_NAME_LEN: usize = 200;

/// Checks the envelope fields the crate relies on. The payload is the projection's to check.
pub(crate) fn validate(envelope: &EventEnvelope) -> Result<(), String> {
    let named = [
        ("event_type", &envelope.event_type),
        ("aggregate_type", &envelope.aggregate_type),
        ("aggregate_id", &envelope.aggregate_id),
    ];
    for (field, value) in named {
        if value.is_empty() {
            return Err(format!("envelope field {field} is empty"));
        }
        if value.len() > MAX_NAME_LEN {
            return Err(format!(
                "envelope field {field} is longer than {MAX_NAME_LEN} bytes"
            ));
        }
    }
    if uuid::Uuid::try_parse(&envelope.event_id).is_err() {
        return Err(format!(
            "envelope event_id {:?} is not a UUID",
            platform::fields::truncate(&envelope.event_id, 64)
        ));
    }
    if envelope.aggregate_version == 0 || i64::try_from(envelope.aggregate_version).is_err() {
        return Err(format!(
            "envelope aggregate_version {} is out of range",
            envelope.aggregate_version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_classified_against_the_applied_one() {
        assert_eq!(Freshness::classify(0, 1), Freshness::Next);
        assert_eq!(Freshness::classify(4, 5), Freshness::Next);
        assert_eq!(Freshness::classify(4, 4), Freshness::Stale { applied: 4 });
        assert_eq!(Freshness::classify(4, 2), Freshness::Stale { applied: 4 });
        assert_eq!(
            Freshness::classify(4, 7),
            Freshness::AfterGap { missing: 2 }
        );
        assert_eq!(
            Freshness::classify(0, 3),
            Freshness::AfterGap { missing: 2 }
        );
    }

    fn envelope() -> EventEnvelope {
        EventEnvelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: "users.v1.UserRegistered".into(),
            aggregate_type: "user".into(),
            aggregate_id: uuid::Uuid::now_v7().to_string(),
            aggregate_version: 1,
            ..Default::default()
        }
    }

    #[test]
    fn envelopes_missing_what_the_consumer_needs_are_invalid() {
        assert_eq!(validate(&envelope()), Ok(()));
        type Breakage = fn(&mut EventEnvelope);
        let cases: [(Breakage, &str); 5] = [
            (|e| e.event_id = "nope".into(), "event_id"),
            (|e| e.aggregate_type.clear(), "aggregate_type"),
            (|e| e.aggregate_id = "x".repeat(201), "aggregate_id"),
            (|e| e.aggregate_version = 0, "aggregate_version"),
            (|e| e.aggregate_version = u64::MAX, "aggregate_version"),
        ];
        for (break_it, field) in cases {
            let mut bad = envelope();
            break_it(&mut bad);
            let reason = validate(&bad).expect_err(field);
            assert!(reason.contains(field), "{reason}");
        }
    }
}
