//! The three projections, one per stream. The consumer library has already dropped
//! duplicates and late arrivals (except for orders, see [`Purchases`]), so each event here is
//! newer than what the table holds and is written over it.

use std::collections::HashMap;
use std::sync::Arc;

use consumer::{ApplyError, Event, Projection, parse_payload_id};
use contracts::events::v1 as events;
use platform::db::{Param, WriteTx};
use prost::Name as _;
use uuid::Uuid;

use crate::view::View;

/// The durable consumers' default name on every stream.
pub const CONSUMER: &str = bus::PURCHASES_DURABLE;

/// The streams the projection follows.
pub const STREAMS: [&str; 3] = bus::SYSTEM_STREAMS;

#[derive(Debug, Clone)]
pub struct Users {
    pub view: Arc<View>,
    /// Below 2, the name parts of schema-2 events are ignored (see `Config::reader_schema`).
    pub reader_schema: u32,
}

#[derive(Debug, Clone)]
pub struct Products {
    pub view: Arc<View>,
    /// Below 2, the currency of schema-2 events is ignored.
    pub reader_schema: u32,
}

/// A user's name as this projection keeps it.
struct Names<'a> {
    name: &'a str,
    given_name: &'a str,
    family_name: &'a str,
}

/// Orders. Wants late events too: an order's placement carries facts that never change
/// (user, product, quantity, time), so a placement that arrives after its cancellation
/// (possible only when delivery is reordered) still fills them in.
#[derive(Debug, Clone)]
pub struct Purchases {
    pub view: Arc<View>,
}

/// The aggregates a committed batch touched, for the view to read back.
fn touched(events: &[Event]) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = events
        .iter()
        .filter_map(|event| event.envelope.aggregate_id.parse().ok())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

impl Projection for Users {
    async fn committed(&self, events: &[Event]) {
        self.view.refresh_users(&touched(events)).await;
    }

    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for event in events {
            let event_type = event.event_type();
            // A reader of schema 1 was built before the name parts existed: it never sees them.
            let parts = |given: &'_ str, family: &'_ str| -> (String, String) {
                if self.reader_schema >= 2 {
                    (given.to_owned(), family.to_owned())
                } else {
                    (String::new(), String::new())
                }
            };
            if event_type == events::UserRegistered::full_name() {
                let user = event.decode::<events::UserRegistered>()?;
                let id = event.aggregate_uuid(&user.user_id)?;
                let (given_name, family_name) = parts(&user.given_name, &user.family_name);
                let names = Names {
                    name: &user.name,
                    given_name: &given_name,
                    family_name: &family_name,
                };
                upsert_user(tx, id, Some(names), None).await?;
            } else if event_type == events::UserRenamed::full_name() {
                let renamed = event.decode::<events::UserRenamed>()?;
                let id = event.aggregate_uuid(&renamed.user_id)?;
                let (given_name, family_name) = parts(&renamed.given_name, &renamed.family_name);
                let names = Names {
                    name: &renamed.name,
                    given_name: &given_name,
                    family_name: &family_name,
                };
                upsert_user(tx, id, Some(names), None).await?;
            } else if event_type == events::UserDeleted::full_name() {
                let deleted = event.decode::<events::UserDeleted>()?;
                let id = event.aggregate_uuid(&deleted.user_id)?;
                upsert_user(tx, id, None, Some(event.occurred_at_micros().max(1))).await?;
            } else {
                return Err(event.unknown_type());
            }
        }
        Ok(())
    }
}

async fn upsert_user(
    tx: &mut WriteTx,
    id: Uuid,
    names: Option<Names<'_>>,
    deleted_at: Option<i64>,
) -> Result<(), ApplyError> {
    // A rename keeps the tombstone off; a deletion keeps the last known name.
    tx.execute(
        "INSERT INTO p_users (id, name, given_name, family_name, deleted_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET
           name = CASE WHEN $6 THEN excluded.name ELSE p_users.name END,
           given_name = CASE WHEN $6 THEN excluded.given_name ELSE p_users.given_name END,
           family_name = CASE WHEN $6 THEN excluded.family_name ELSE p_users.family_name END,
           deleted_at = excluded.deleted_at",
        &[
            id.to_string().into(),
            names.as_ref().map(|names| names.name).unwrap_or_default().into(),
            names.as_ref().map(|names| names.given_name).unwrap_or_default().into(),
            names.as_ref().map(|names| names.family_name).unwrap_or_default().into(),
            deleted_at.into(),
            names.is_some().into(),
        ],
    )
    .await?;
    Ok(())
}

impl Projection for Products {
    async fn committed(&self, events: &[Event]) {
        self.view.refresh_products(&touched(events)).await;
    }

    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for event in events {
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
            // A reader of schema 1 was built before the currency existed: it never sees it.
            let currency = if self.reader_schema >= 2 {
                currency
            } else {
                String::new()
            };
            let id = event.aggregate_uuid(&id)?;
            tx.execute(
                "INSERT INTO p_products (id, title, image_url, price_cents, currency) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET
                   title = excluded.title, image_url = excluded.image_url, price_cents = excluded.price_cents,
                   currency = excluded.currency",
                &[
                    id.to_string().into(),
                    title.into(),
                    image_url.into(),
                    price_cents.into(),
                    currency.into(),
                ],
            )
            .await?;
        }
        Ok(())
    }
}

impl Projection for Purchases {
    async fn committed(&self, events: &[Event]) {
        self.view.refresh_orders(&touched(events)).await;
    }

    fn wants_stale(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        // Every event is checked first, then the batch is written in a few multi-row
        // statements instead of one per event (a statement costs far more than a row). The
        // two upserts commute: a placement's facts never change and it leaves the status
        // alone, and a cancellation only sets the status, so their order does not matter.
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
        let placements: Vec<_> = placements.into_iter().collect();
        for chunk in placements.chunks(ROWS_PER_STATEMENT) {
            let values = rows_of_placeholders(chunk.len(), 5, "'placed'");
            // Only numbered placeholders are interpolated; the values are bound.
            let sql = format!(
                "INSERT INTO p_purchases (order_id, user_id, product_id, quantity, placed_at, status)
                 VALUES {values}
                 ON CONFLICT (order_id) DO UPDATE SET
                   user_id = excluded.user_id, product_id = excluded.product_id,
                   quantity = excluded.quantity, placed_at = excluded.placed_at"
            );
            let mut params: Vec<Param> = Vec::with_capacity(chunk.len() * 5);
            for (id, placement) in chunk {
                params.extend([
                    id.to_string().into(),
                    placement.user_id.to_string().into(),
                    placement.product_id.to_string().into(),
                    placement.quantity.into(),
                    placement.placed_at.into(),
                ]);
            }
            tx.execute(&sql, &params).await?;
        }
        let cancellations: Vec<_> = cancellations.into_iter().collect();
        for chunk in cancellations.chunks(ROWS_PER_STATEMENT) {
            let values = rows_of_placeholders(chunk.len(), 2, "'cancelled'");
            // Only numbered placeholders are interpolated; the values are bound.
            let sql = format!(
                "INSERT INTO p_purchases (order_id, user_id, status) VALUES {values}
                 ON CONFLICT (order_id) DO UPDATE SET status = 'cancelled'"
            );
            let params: Vec<Param> = chunk
                .iter()
                .flat_map(|(id, user_id)| [id.to_string().into(), user_id.to_string().into()])
                .collect();
            tx.execute(&sql, &params).await?;
        }
        Ok(())
    }
}

/// The facts of one placement, as the projection stores them.
#[derive(Debug)]
struct Placement {
    user_id: Uuid,
    product_id: Uuid,
    quantity: i32,
    placed_at: i64,
}

/// Rows per multi-row statement: 5 bound values a row stays far below every backend's limit
/// on parameters.
const ROWS_PER_STATEMENT: usize = 200;

/// `($1, $2, literal), ($3, $4, literal), ...`: `rows` rows of `per_row` placeholders each,
/// then a constant.
fn rows_of_placeholders(rows: usize, per_row: usize, constant: &str) -> String {
    (0..rows)
        .map(|row| {
            let placeholders: Vec<String> = (1..=per_row)
                .map(|column| format!("${}", row * per_row + column))
                .collect();
            format!("({}, {constant})", placeholders.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_placeholders_number_every_value_once() {
        assert_eq!(
            rows_of_placeholders(2, 2, "'x'"),
            "($1, $2, 'x'), ($3, $4, 'x')"
        );
    }
}
