//! The replica of user and product ids that PlaceOrder checks, fed by the USERS and PRODUCTS
//! streams through the consumer library. The library has already dropped duplicates and late
//! arrivals, so every event here is newer than what the replica holds and can simply be
//! written over it.

use consumer::{ApplyError, Event, Projection};
use contracts::events::v1 as events;
use platform::db::WriteTx;

/// The durable consumers' name on both streams.
pub const CONSUMER: &str = bus::ORDERS_DURABLE;

#[derive(Debug, Clone, Copy)]
pub struct UsersReplica;

#[derive(Debug, Clone, Copy)]
pub struct ProductsReplica;

impl Projection for UsersReplica {
    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for event in events {
            let (id, deleted) = match event.event_type() {
                t if t == <events::UserRegistered as prost::Name>::full_name() => {
                    (event.decode::<events::UserRegistered>()?.user_id, false)
                }
                t if t == <events::UserRenamed as prost::Name>::full_name() => {
                    (event.decode::<events::UserRenamed>()?.user_id, false)
                }
                t if t == <events::UserDeleted as prost::Name>::full_name() => {
                    (event.decode::<events::UserDeleted>()?.user_id, true)
                }
                _ => return Err(event.unknown_type()),
            };
            let id = event.aggregate_uuid(&id)?;
            tx.execute(
                "INSERT INTO known_users (id, deleted_at, learned_at) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET deleted_at = excluded.deleted_at, learned_at = excluded.learned_at",
                &[
                    id.to_string().into(),
                    deleted.then(|| event.occurred_at_micros()).into(),
                    platform::time::now_micros().into(),
                ],
            )
            .await?;
        }
        Ok(())
    }
}

impl Projection for ProductsReplica {
    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for event in events {
            let id = match event.event_type() {
                t if t == <events::ProductCreated as prost::Name>::full_name() => {
                    event.decode::<events::ProductCreated>()?.product_id
                }
                t if t == <events::ProductUpdated as prost::Name>::full_name() => {
                    event.decode::<events::ProductUpdated>()?.product_id
                }
                _ => return Err(event.unknown_type()),
            };
            let id = event.aggregate_uuid(&id)?;
            tx.execute(
                "INSERT INTO known_products (id, learned_at) VALUES ($1, $2)
                 ON CONFLICT (id) DO NOTHING",
                &[id.to_string().into(), platform::time::now_micros().into()],
            )
            .await?;
        }
        Ok(())
    }
}
