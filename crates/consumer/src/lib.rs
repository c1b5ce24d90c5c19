//! Applies the events of a JetStream stream to a local database, exactly once in effect.
//!
//! A [`Consumer`] reads one stream through a durable pull consumer, in bounded batches, and
//! hands each batch to a [`Projection`] inside one database transaction. It acknowledges the
//! batch only after that transaction has committed, so a crash anywhere leaves the events to
//! be redelivered, and redelivery is harmless:
//!
//! - **Idempotent, order-safe apply.** The crate keeps, per consumer and aggregate, the highest
//!   aggregate version applied (`consumer_versions`). An event at or below it is a duplicate
//!   or arrived late: it is acknowledged and skipped ([`Freshness::Stale`]).
//! - **Version gaps.** An event more than one version ahead of the stored one means events in
//!   between were never seen here (the stream dropped them by age, the consumer was created
//!   late, or they were dead-lettered). Events in this system carry the full state of what
//!   they change, so applying the newer one is right for that state; the crate applies it,
//!   marks it [`Freshness::AfterGap`] so a projection can act on it, counts it and logs the
//!   missing versions. Anything older that turns up later is stale and skipped.
//! - **Poison events** (an undecodable envelope, an invalid one, an event the projection
//!   rejects, one that keeps failing) go to `consumer_dead_letters` with the reason, in the
//!   same transaction as the batch's other effects, and are acknowledged: one bad message
//!   never stops a feed. Unknown payload fields and newer schema versions are not poison:
//!   protobuf decoding ignores what it does not know.
//! - **Observability.** Position, lag and counts are kept in `consumer_positions`, published on
//!   a watch channel ([`Consumer::status`]) and logged.
//!
//! The crate owns those three tables and nothing else: what an event means is the
//! projection's business.

pub mod admin;
mod event;
mod feed;
mod store;

pub use event::{
    ApplyError, Event, Freshness, MAX_PLAUSIBLE_VERSION, Projection, parse_payload_id,
};
pub use feed::{Consumer, ConsumerSpec, ReplayOutcome, Replayer};
pub use store::{
    DeadLetter, DeadLetterFilter, Position, dead_letters, discard_dead_letters, list_dead_letters,
    load_position, reset,
};

use platform::db::Migrations;

/// The consumer tables' migrations, to run beside the consuming service's own.
pub fn migrations() -> Migrations {
    Migrations {
        name: "consumer",
        sqlite: sqlx::migrate!("migrations/sqlite"),
        postgres: sqlx::migrate!("migrations/postgres"),
    }
}
