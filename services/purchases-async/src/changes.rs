//! What a committed batch of events does to the projection, as plain values that both sides
//! of it apply: the tables (`crate::projection`, in the batch's transaction) and the in-memory
//! view (`crate::view`, after the commit). Each side decodes the batch through the same
//! functions here (twice in all: the consumer hands `committed` the events, not what `apply`
//! made of them, and decoding is a few percent of an apply), which is what keeps them equal:
//! the view is brought in step from the batch itself, without reading the rows back, and the
//! rules each side follows are written beside each other below.

use std::collections::HashMap;

use consumer::{ApplyError, Event, parse_payload_id};
use contracts::events::v1 as events;
use prost::Name as _;
use purchases::ProductView;
use uuid::Uuid;

/// A user event's effect. A naming (registration or rename) sets the names and lifts a
/// tombstone; a deletion sets the tombstone and keeps the last known name (none, for a user
/// whose registration was never seen).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    Named {
        id: Uuid,
        name: String,
        given_name: String,
        family_name: String,
    },
    Deleted {
        id: Uuid,
        at_micros: i64,
    },
}

/// The user events of a batch, in order. `reader_schema` below 2 drops the name parts of
/// schema-2 events (a reader built before they existed never sees them).
pub fn users(events: &[Event], reader_schema: u32) -> Result<Vec<UserChange>, ApplyError> {
    // Registrations and renames carry the same names.
    let named = |event: &Event,
                 user_id: &str,
                 name: String,
                 given_name: String,
                 family_name: String|
     -> Result<UserChange, ApplyError> {
        let (given_name, family_name) = if reader_schema >= 2 {
            (given_name, family_name)
        } else {
            (String::new(), String::new())
        };
        Ok(UserChange::Named {
            id: event.aggregate_uuid(user_id)?,
            name,
            given_name,
            family_name,
        })
    };
    events
        .iter()
        .map(|event| {
            let event_type = event.event_type();
            if event_type == events::UserRegistered::full_name() {
                let user = event.decode::<events::UserRegistered>()?;
                named(
                    event,
                    &user.user_id,
                    user.name,
                    user.given_name,
                    user.family_name,
                )
            } else if event_type == events::UserRenamed::full_name() {
                let user = event.decode::<events::UserRenamed>()?;
                named(
                    event,
                    &user.user_id,
                    user.name,
                    user.given_name,
                    user.family_name,
                )
            } else if event_type == events::UserDeleted::full_name() {
                let deleted = event.decode::<events::UserDeleted>()?;
                Ok(UserChange::Deleted {
                    id: event.aggregate_uuid(&deleted.user_id)?,
                    at_micros: event.occurred_at_micros().max(1),
                })
            } else {
                Err(event.unknown_type())
            }
        })
        .collect()
}

/// The product events of a batch, in order: each carries the product's whole state, written
/// over what was there. `reader_schema` below 2 drops the currency.
pub fn products(events: &[Event], reader_schema: u32) -> Result<Vec<ProductView>, ApplyError> {
    events
        .iter()
        .map(|event| {
            let event_type = event.event_type();
            let (id, title, image_url, price_cents, currency) =
                if event_type == events::ProductCreated::full_name() {
                    let p = event.decode::<events::ProductCreated>()?;
                    (
                        p.product_id,
                        p.title,
                        p.image_url,
                        p.price_cents,
                        p.currency,
                    )
                } else if event_type == events::ProductUpdated::full_name() {
                    let p = event.decode::<events::ProductUpdated>()?;
                    (
                        p.product_id,
                        p.title,
                        p.image_url,
                        p.price_cents,
                        p.currency,
                    )
                } else {
                    return Err(event.unknown_type());
                };
            Ok(ProductView {
                id: event.aggregate_uuid(&id)?,
                title,
                image_url,
                price_cents,
                currency: if reader_schema >= 2 {
                    currency
                } else {
                    String::new()
                },
            })
        })
        .collect()
}

/// The facts of one placement, which never change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub user_id: Uuid,
    pub product_id: Uuid,
    pub quantity: i32,
    pub placed_at: i64,
}

/// The order events of a batch. The two kinds commute, which is why a batch can be applied
/// as all its placements and then all its cancellations: a placement fills in its order's
/// facts (and its user) and leaves the status alone, "placed" for an order not seen before;
/// a cancellation only sets the status, creating a row without facts when its placement has
/// not arrived (possible only when delivery is reordered), which is not answered until the
/// placement fills it in.
#[derive(Debug, Default)]
pub struct Orders {
    pub placements: Vec<(Uuid, Placement)>,
    /// Order id and the user it belongs to.
    pub cancellations: Vec<(Uuid, Uuid)>,
}

/// Orders' projection wants stale events too (see `crate::projection::Purchases`): of those,
/// types it does not know are ignored rather than refused.
pub fn orders(events: &[Event]) -> Result<Orders, ApplyError> {
    let mut placements: HashMap<Uuid, Placement> = HashMap::new();
    let mut cancellations: HashMap<Uuid, Uuid> = HashMap::new();
    for event in events {
        let event_type = event.event_type();
        if event_type == events::OrderPlaced::full_name() {
            let placed = event.decode::<events::OrderPlaced>()?;
            let id = event.aggregate_uuid(&placed.order_id)?;
            let user_id = parse_payload_id("user_id", &placed.user_id)?;
            let product_id = parse_payload_id("product_id", &placed.product_id)?;
            if !(1..=1_000).contains(&placed.quantity) {
                return Err(ApplyError::Rejected(format!(
                    "quantity {} is out of range",
                    placed.quantity
                )));
            }
            let placed_at = placed.placed_at.as_ref().map_or_else(
                || event.occurred_at_micros(),
                platform::time::from_timestamp,
            );
            placements.insert(
                id,
                Placement {
                    user_id,
                    product_id,
                    quantity: placed.quantity,
                    placed_at,
                },
            );
        } else if event_type == events::OrderCancelled::full_name() {
            let cancelled = event.decode::<events::OrderCancelled>()?;
            let id = event.aggregate_uuid(&cancelled.order_id)?;
            let user_id = parse_payload_id("user_id", &cancelled.user_id)?;
            cancellations.insert(id, user_id);
        } else if !event.freshness.is_stale() {
            return Err(event.unknown_type());
        }
    }
    Ok(Orders {
        placements: placements.into_iter().collect(),
        cancellations: cancellations.into_iter().collect(),
    })
}
