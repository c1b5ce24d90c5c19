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

    /// Called when this consumer has caught up with its stream, or nearly: after a
    /// committed batch that left fewer than a batch of events pending, and when a pull opens
    /// on a stream holding fewer than that for it. It runs before the position that says so
    /// is published and before the next batch is applied, so a position at the stream's end
    /// means whatever this finishes is finished. The place for work a bulk load puts off (an
    /// index made once the table is full, say). Called at every such point: once its work
    /// is done it must return at once. Must not fail: what it cannot do now it does at the
    /// next call.
    fn caught_up(&self) -> impl Future<Output = ()> + Send {
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

/// The highest aggregate version believed: an entity changed once a second would take 136
/// years to get there. A version past it can only be forged or corrupt, and applying it would
/// make every real event of that aggregate look stale, for good.
pub const MAX_PLAUSIBLE_VERSION: u64 = 1 << 32;

/// Checks that an envelope belongs where it arrived: on `subject` of `stream`, whose owner
/// alone publishes there. Authorization keeps others from publishing at all; this is the
/// defence behind it, against a producer's bug, a misconfigured server, or a forgery that
/// got through.
pub(crate) fn validate_origin(
    envelope: &EventEnvelope,
    subject: &str,
    stream: &bus::Stream,
) -> Result<(), String> {
    let Some(parts) = bus::SubjectParts::parse(subject) else {
        return Err(format!(
            "subject {:?} is not <producer>.<entity>.<Event>",
            platform::fields::truncate(subject, 100)
        ));
    };
    if parts.producer != stream.producer {
        return Err(format!(
            "subject {subject} is outside stream {}, which holds {}",
            stream.name,
            stream.subjects()
        ));
    }
    if envelope.producer != stream.producer {
        return Err(format!(
            "producer {:?} is not {}, which alone publishes to {}",
            platform::fields::truncate(&envelope.producer, 64),
            stream.producer,
            stream.name
        ));
    }
    if envelope.aggregate_type != parts.entity {
        return Err(format!(
            "aggregate type {:?} is not the entity {:?} of subject {subject}",
            platform::fields::truncate(&envelope.aggregate_type, 64),
            parts.entity
        ));
    }
    let named = envelope
        .event_type
        .rsplit_once('.')
        .map_or(envelope.event_type.as_str(), |(_, name)| name);
    if named != parts.event {
        return Err(format!(
            "event type {:?} is not the event {:?} of subject {subject}",
            platform::fields::truncate(&envelope.event_type, 64),
            parts.event
        ));
    }
    Ok(())
}

/// Why a version cannot be believed, if it cannot: past [`MAX_PLAUSIBLE_VERSION`], or more than
/// `max_jump` past a version already applied (a few versions missing is a gap the consumer
/// handles; millions is a forgery or corruption).
pub(crate) fn implausible_version(applied: u64, version: u64, max_jump: u64) -> Option<String> {
    if version > MAX_PLAUSIBLE_VERSION {
        return Some(format!(
            "aggregate version {version} is beyond any real entity's ({MAX_PLAUSIBLE_VERSION})"
        ));
    }
    (applied > 0 && version > applied.saturating_add(max_jump)).then(|| {
        format!(
            "aggregate version {version} jumps implausibly far past the applied version {applied} (more than {max_jump})"
        )
    })
}

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
    fn an_envelope_must_match_the_stream_and_subject_it_arrived_on() {
        let users = bus::Stream::named(bus::USERS);
        let good = EventEnvelope {
            producer: "users".into(),
            ..envelope()
        };
        let subject = "users.user.UserRegistered";
        assert_eq!(validate_origin(&good, subject, &users), Ok(()));
        let cases: [(EventEnvelope, &str, &str); 5] = [
            (
                EventEnvelope {
                    producer: "orders".into(),
                    ..good.clone()
                },
                subject,
                "producer",
            ),
            (
                EventEnvelope {
                    aggregate_type: "order".into(),
                    ..good.clone()
                },
                subject,
                "aggregate type",
            ),
            (good.clone(), "users.user.UserRenamed", "event type"),
            (good.clone(), "users.user", "subject"),
            (good.clone(), "orders.user.UserRegistered", "outside stream"),
        ];
        for (bad, subject, needle) in cases {
            let reason = validate_origin(&bad, subject, &users).expect_err(needle);
            assert!(reason.contains(needle), "{reason}");
        }
    }

    #[test]
    fn versions_far_past_the_applied_one_are_not_believed() {
        assert_eq!(implausible_version(3, 4, 10), None);
        assert_eq!(implausible_version(3, 13, 10), None);
        assert!(implausible_version(3, 14, 10).is_some());
        assert_eq!(
            implausible_version(0, 5_000, 10),
            None,
            "a first sight may be at any real version"
        );
        assert!(implausible_version(0, 1 << 62, 10).is_some());
        assert!(implausible_version(7, u64::MAX, u64::MAX).is_some());
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
