//! Reading purchases back from SQL, for the modes that answer from a database (the
//! projection's tables, the monolith's join). Both select the same columns under the same
//! names: order_id, status, quantity, placed_at, product_id, title, image_url, price_cents,
//! currency.

use platform::db::{Columns, StoreError};
use uuid::Uuid;

use crate::{OrderStatus, ProductView, PurchaseView};

impl OrderStatus {
    /// The status as the tables store it ("placed", "cancelled").
    pub fn parse_stored(raw: &str) -> Result<Self, StoreError> {
        match raw {
            "placed" => Ok(Self::Placed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(StoreError::Corrupt(format!(
                "unknown order status {other:?}"
            ))),
        }
    }
}

/// A stored UUID; anything else means the table is corrupt.
pub fn stored_uuid(raw: &str, column: &str) -> Result<Uuid, StoreError> {
    raw.parse()
        .map_err(|_| StoreError::Corrupt(format!("{column} {raw:?} is not a UUID")))
}

/// A row's purchase, with its product when the row has one (`title` not null). None when the
/// row carries no order at all (`order_id` null: a LEFT JOIN's user-only row).
pub fn decode_purchase(row: &dyn Columns) -> Result<Option<PurchaseView>, StoreError> {
    let Some(order_id) = row.optional_text("order_id")? else {
        return Ok(None);
    };
    let status = OrderStatus::parse_stored(&row.text("status")?)?;
    let product_id = stored_uuid(&row.text("product_id")?, "product_id")?;
    let product = match row.optional_text("title")? {
        Some(title) => Some(ProductView {
            id: product_id,
            title,
            image_url: row.text("image_url")?,
            price_cents: row.integer("price_cents")?,
            currency: row.optional_text("currency")?.unwrap_or_default(),
        }),
        None => None,
    };
    let quantity = row.integer("quantity")?;
    Ok(Some(PurchaseView {
        order_id: stored_uuid(&order_id, "order_id")?,
        status,
        quantity: i32::try_from(quantity)
            .map_err(|_| StoreError::Corrupt(format!("quantity {quantity} out of range")))?,
        placed_at_micros: row.integer("placed_at")?,
        product_id,
        product,
    }))
}
