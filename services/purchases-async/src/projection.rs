//! The three projections, one per stream. The consumer library has already dropped
//! duplicates and late arrivals (except for orders, see [`Purchases`]), so each event here is
//! newer than what the table holds and is written over it.

use std::sync::Arc;

use consumer::{ApplyError, Event, Projection};
use platform::db::{Database, Param, StoreError, WriteTx};

use crate::changes::{self, Orders, UserChange};
use crate::index::ByUserIndex;
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

/// Orders. Wants late events too: an order's placement carries facts that never change
/// (user, product, quantity, time), so a placement that arrives after its cancellation
/// (possible only when delivery is reordered) still fills them in.
#[derive(Debug, Clone)]
pub struct Purchases {
    pub view: Arc<View>,
    index: Arc<ByUserIndex>,
}

impl Purchases {
    /// The orders projection over `db`. Into a projection that holds no purchases yet it
    /// writes without their by-user index, made once caught up ([`crate::index`]).
    pub async fn prepare(db: Database, view: Arc<View>) -> Result<Self, StoreError> {
        let index = Arc::new(ByUserIndex::defer_if_empty(db).await?);
        Ok(Self { view, index })
    }
}

impl Projection for Users {
    async fn committed(&self, events: &[Event]) {
        self.view
            .apply_users(changes::users(events, self.reader_schema));
    }

    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for change in changes::users(events, self.reader_schema)? {
            upsert_user(tx, &change).await?;
        }
        Ok(())
    }
}

async fn upsert_user(tx: &mut WriteTx, change: &UserChange) -> Result<(), ApplyError> {
    let (id, names, deleted_at) = match change {
        UserChange::Named {
            id,
            name,
            given_name,
            family_name,
        } => (id, Some([name, given_name, family_name]), None),
        UserChange::Deleted { id, at_micros } => (id, None, Some(*at_micros)),
    };
    let [name, given_name, family_name] = names.map_or([""; 3], |names| names.map(String::as_str));
    // A naming lifts the tombstone; a deletion keeps the last known name.
    tx.execute(
        "INSERT INTO p_users (id, name, given_name, family_name, deleted_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET
           name = CASE WHEN $6 THEN excluded.name ELSE p_users.name END,
           given_name = CASE WHEN $6 THEN excluded.given_name ELSE p_users.given_name END,
           family_name = CASE WHEN $6 THEN excluded.family_name ELSE p_users.family_name END,
           deleted_at = excluded.deleted_at",
        &[
            id.to_string().into(),
            name.into(),
            given_name.into(),
            family_name.into(),
            deleted_at.into(),
            names.is_some().into(),
        ],
    )
    .await?;
    Ok(())
}

impl Projection for Products {
    async fn committed(&self, events: &[Event]) {
        self.view
            .apply_products(changes::products(events, self.reader_schema));
    }

    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for product in changes::products(events, self.reader_schema)? {
            tx.execute(
                "INSERT INTO p_products (id, title, image_url, price_cents, currency) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET
                   title = excluded.title, image_url = excluded.image_url, price_cents = excluded.price_cents,
                   currency = excluded.currency",
                &[
                    product.id.to_string().into(),
                    product.title.into(),
                    product.image_url.into(),
                    product.price_cents.into(),
                    product.currency.into(),
                ],
            )
            .await?;
        }
        Ok(())
    }
}

impl Projection for Purchases {
    async fn committed(&self, events: &[Event]) {
        self.view.apply_orders(changes::orders(events));
    }

    fn wants_stale(&self) -> bool {
        true
    }

    async fn caught_up(&self) {
        self.index.make().await;
    }

    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        // Every event is checked first, then the batch is written in a few multi-row
        // statements instead of one per event (a statement costs far more than a row).
        let Orders {
            placements,
            cancellations,
        } = changes::orders(events)?;
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
