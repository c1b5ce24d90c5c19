//! Purchases as the monolith answers them: one query joining users, orders and products.

use platform::db::{Columns, Database, StoreError};
use platform::paging::Cursor;
use purchases::{Freshness, Page, PurchaseSource, PurchasesError, Query, UserView};
use uuid::Uuid;

const JOIN: &str = "SELECT u.name, u.deleted_at,
        o.id AS order_id, o.status, o.quantity, o.placed_at, o.product_id,
        p.title, p.image_url, p.price_cents, CAST(NULL AS TEXT) AS currency
 FROM users u
 LEFT JOIN orders o
   ON o.user_id = u.id AND (o.placed_at < $2 OR (o.placed_at = $2 AND o.id < $3))
 LEFT JOIN products p ON p.id = o.product_id
 WHERE u.id = $1
 ORDER BY o.placed_at DESC, o.id DESC
 LIMIT $4";

/// One row of the join: the user's name (gone once the user is deleted), whether the user
/// is deleted, and the purchase the row carries, if any.
type JoinedRow = (Option<String>, bool, Option<purchases::PurchaseView>);

fn decode(row: &dyn Columns) -> Result<JoinedRow, StoreError> {
    Ok((
        row.optional_text("name")?,
        row.optional_integer("deleted_at")?.is_some(),
        purchases::rows::decode_purchase(row)?,
    ))
}

#[derive(Debug, Clone)]
pub struct JoinSource {
    db: Database,
}

impl JoinSource {
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

impl PurchaseSource for JoinSource {
    async fn list(
        &self,
        query: Query,
        _deadline: Option<std::time::Duration>,
    ) -> Result<Page, PurchasesError> {
        let after = query.after.unwrap_or(Cursor {
            sort_key: i64::MAX,
            id: Uuid::max(),
        });
        // The user's row comes back even without orders (LEFT JOIN), so one query answers
        // both "who" and "what"; one row more than the page tells whether another follows.
        let params = [
            query.user_id.to_string().into(),
            after.sort_key.into(),
            after.id.to_string().into(),
            (i64::from(query.page_size) + 1).into(),
        ];
        let rows = self.db.read_rows(JOIN, &params, decode).await?;
        let Some((name, deleted, _)) = rows.first() else {
            return Err(PurchasesError::UserNotFound(query.user_id));
        };
        if *deleted {
            return Err(PurchasesError::UserNotFound(query.user_id));
        }
        let name = name.clone().unwrap_or_default();
        let mut purchases: Vec<_> = rows
            .into_iter()
            .filter_map(|(_, _, purchase)| purchase)
            .collect();
        let next = Page::cut(&mut purchases, query.page_size);
        Ok(Page {
            // One schema, read in place: there are no event versions to roll out here.
            user: UserView {
                id: query.user_id,
                name,
                given_name: String::new(),
                family_name: String::new(),
            },
            purchases,
            next,
            freshness: Freshness::Live,
        })
    }
}
