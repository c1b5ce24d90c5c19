//! Purchases as the monolith answers them: one query joining users, orders and products.

use platform::db::{Database, StoreError};
use platform::paging::Cursor;
use platform::sqlite_reads::Columns;
use purchases::{Freshness, Page, PurchaseSource, PurchasesError, Query, UserView};
use uuid::Uuid;

const JOIN: &str = "SELECT u.name, u.deleted_at,
        o.id AS order_id, o.status, o.quantity, o.placed_at, o.product_id,
        p.title, p.image_url, p.price_cents
 FROM users u
 LEFT JOIN orders o
   ON o.user_id = u.id AND (o.placed_at < $2 OR (o.placed_at = $2 AND o.id < $3))
 LEFT JOIN products p ON p.id = o.product_id
 WHERE u.id = $1
 ORDER BY o.placed_at DESC, o.id DESC
 LIMIT $4";

/// The join's rows, read into the user (name, deleted) and their purchases.
#[derive(Debug, Default)]
struct Joined {
    /// The name (gone once the user is deleted) and whether the user is deleted.
    user: Option<(Option<String>, bool)>,
    purchases: Vec<purchases::PurchaseView>,
}

impl Joined {
    fn add(&mut self, row: &impl Columns) -> Result<(), StoreError> {
        if self.user.is_none() {
            self.user = Some((
                row.optional_text("name")?,
                row.optional_integer("deleted_at")?.is_some(),
            ));
        }
        if let Some(purchase) = purchases::rows::decode_purchase(row)? {
            self.purchases.push(purchase);
        }
        Ok(())
    }
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
        let limit = i64::from(query.page_size) + 1;
        let answer = match self.db.sqlite_reads() {
            Some(reads) => reads.read(|conn| {
                let mut statement = platform::sqlite_reads::prepare(conn, JOIN)?;
                let mut rows = statement.query(rusqlite::params![
                    query.user_id.to_string(),
                    after.sort_key,
                    after.id.to_string(),
                    limit
                ])?;
                let mut answer = Joined::default();
                while let Some(row) = rows.next()? {
                    answer.add(row)?;
                }
                Ok(answer)
            })?,
            None => {
                let rows = sqlx::query(JOIN)
                    .bind(query.user_id.to_string())
                    .bind(after.sort_key)
                    .bind(after.id.to_string())
                    .bind(limit)
                    .fetch_all(self.db.pool())
                    .await
                    .map_err(StoreError::from)?;
                let mut answer = Joined::default();
                for row in &rows {
                    answer.add(row)?;
                }
                answer
            }
        };
        let Some((name, deleted)) = answer.user else {
            return Err(PurchasesError::UserNotFound(query.user_id));
        };
        if deleted {
            return Err(PurchasesError::UserNotFound(query.user_id));
        }
        let name = name.unwrap_or_default();
        let mut purchases = answer.purchases;
        let next = Page::cut(&mut purchases, query.page_size);
        Ok(Page {
            user: UserView {
                id: query.user_id,
                name,
            },
            purchases,
            next,
            freshness: Freshness::Live,
        })
    }
}
