//! The purchases-by-user index, put off while the projection fills from nothing.
//!
//! Why: a projection rebuilt from the streams (a first start, `--rebuild`) writes every order
//! ever placed, and each one lands in a leaf of `p_purchases_by_user` that no other event of
//! its batch touches, so every commit writes about one index page per event. So the index is
//! dropped before a projection that holds no purchases starts filling, and made in one pass
//! when the orders consumer has caught up (see `consumer::Projection::caught_up`), before
//! the position that says so is published. The criterion `catch_up` case (100,000 events,
//! issue 25), alternating runs before and after: SQLite 63,000 -> 104,000-106,000 events/s,
//! PostgreSQL 38,000 -> 41,000-43,000; making the index at the end is under 1% of a profile.
//!
//! Meanwhile reads from memory (the default) do not need it; reads from the database scan
//! the table, slower but right. A crash before the index was made leaves it missing: the
//! next start finds it missing and makes it the same way. A later migration that touches the
//! index must use `IF EXISTS` / `IF NOT EXISTS`: on a running projection it may be absent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use platform::db::{Backend, Database, StoreError};

const NAME: &str = "p_purchases_by_user";
const CREATE: &str = "CREATE INDEX IF NOT EXISTS p_purchases_by_user
    ON p_purchases (user_id, placed_at DESC, order_id DESC)";

/// The index, and whether it is still to be made.
#[derive(Debug)]
pub struct ByUserIndex {
    db: Database,
    missing: AtomicBool,
}

impl ByUserIndex {
    /// Drops the index when the projection holds no purchases yet, and notes whether it is
    /// missing (dropped now, or left missing by a run that stopped before making it).
    pub async fn defer_if_empty(db: Database) -> Result<Self, StoreError> {
        let empty = db
            .read_optional("SELECT 1 AS found FROM p_purchases LIMIT 1", &[], |row| {
                row.integer("found")
            })
            .await?
            .is_none();
        let present = exists(&db).await?;
        if empty && present {
            let mut tx = db.begin_write().await?;
            tx.execute(&format!("DROP INDEX IF EXISTS {NAME}"), &[])
                .await?;
            tx.commit().await?;
            tracing::info!(
                index = NAME,
                "the projection holds no purchases: their by-user index is made once the orders stream has been read"
            );
        }
        let missing = empty || !present;
        if !present && !empty {
            tracing::info!(
                index = NAME,
                "the by-user index is missing (a rebuild stopped before making it): it is made once the orders stream has been read"
            );
        }
        Ok(Self {
            db,
            missing: AtomicBool::new(missing),
        })
    }

    /// Whether the index is still to be made.
    pub fn is_missing(&self) -> bool {
        self.missing.load(Ordering::Acquire)
    }

    /// Makes the index if it is missing. A failure (the database unreachable) is logged and
    /// left for the next call.
    pub async fn make(&self) {
        if !self.is_missing() {
            return;
        }
        let started = Instant::now();
        match self.create().await {
            Ok(()) => {
                self.missing.store(false, Ordering::Release);
                tracing::info!(
                    index = NAME,
                    took_ms = started.elapsed().as_millis(),
                    "made the purchases-by-user index"
                );
            }
            Err(error) => tracing::warn!(
                index = NAME,
                error = %platform::status::error_chain(&error),
                "cannot make the purchases-by-user index yet; trying again after the next batch"
            ),
        }
    }

    async fn create(&self) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await?;
        tx.execute(CREATE, &[]).await?;
        tx.commit().await
    }
}

/// Whether the index exists, from the database's catalogue.
pub async fn exists(db: &Database) -> Result<bool, StoreError> {
    let sql = match db.backend() {
        Backend::Sqlite => {
            "SELECT 1 AS found FROM sqlite_master WHERE type = 'index' AND name = $1"
        }
        Backend::Postgres => {
            "SELECT 1 AS found FROM pg_indexes WHERE schemaname = current_schema() AND indexname = $1"
        }
    };
    let found = db
        .read_optional(sql, &[NAME.into()], |row| row.integer("found"))
        .await?;
    Ok(found.is_some())
}
