//! The outbox tables on both database backends, without NATS: every appended row is pending
//! until marked, an upgrade from the first schema keeps unpublished rows pending, and pruning
//! removes only old published rows.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Duration;

use contracts::events::v1 as events;
use outbox::Producer;
use platform::db::{Database, DatabaseConfig, Migrations};
use sqlx::Row as _;
use testkit::{Backend, TestDatabase, backend_tests};
use uuid::Uuid;

backend_tests!(
    an_upgrade_keeps_unpublished_rows_pending_and_later_appends_join_them,
    pruning_removes_old_published_rows_and_keeps_pending_ones,
    pruning_takes_every_old_row_across_chunks,
);

const USERS: Producer = Producer::new("users", "user");

async fn open(backend: Backend) -> (TestDatabase, Database) {
    testkit::init_tracing();
    let db = TestDatabase::create(backend).await;
    let database = Database::connect(&DatabaseConfig::new(db.url()))
        .await
        .expect("open the database");
    (db, database)
}

/// A database with the outbox's current schema.
async fn migrated(backend: Backend) -> (TestDatabase, Database) {
    let (db, database) = open(backend).await;
    database
        .migrate([outbox::migrations()])
        .await
        .expect("migrate");
    (db, database)
}

/// Marks the rows `condition` picks published, as the relay does once JetStream has
/// acknowledged them.
async fn mark_published(database: &Database, condition: &'static str, seq: i64) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM outbox_pending WHERE {condition}"
    )))
    .bind(seq)
    .execute(database.pool())
    .await
    .expect("mark published");
}

/// The outbox's migrations up to and including `version`, as a database of that age ran them.
fn migrations_up_to(version: i64) -> Migrations {
    let mut migrations = outbox::migrations();
    for migrator in [&mut migrations.sqlite, &mut migrations.postgres] {
        let kept: Vec<_> = migrator
            .migrations
            .iter()
            .filter(|migration| migration.version <= version)
            .cloned()
            .collect();
        migrator.migrations = Cow::Owned(kept);
    }
    migrations
}

async fn append(database: &Database) {
    let id = Uuid::now_v7();
    let mut tx = database.begin_write().await.expect("begin");
    let payload = events::UserRegistered {
        user_id: id.to_string(),
        email: format!("{id}@example.com"),
        name: "Ada Lovelace".into(),
        ..Default::default()
    };
    USERS
        .record(&mut tx, &id, 1, platform::time::now_micros(), &payload)
        .await
        .expect("record the event");
    tx.commit().await.expect("commit");
}

async fn seqs(database: &Database, sql: &'static str) -> BTreeSet<i64> {
    sqlx::query(sql)
        .fetch_all(database.pool())
        .await
        .expect("read seqs")
        .iter()
        .map(|row| row.get::<i64, _>(0))
        .collect()
}

async fn pending(database: &Database) -> BTreeSet<i64> {
    seqs(database, "SELECT seq FROM outbox_pending").await
}

async fn outbox(database: &Database) -> BTreeSet<i64> {
    seqs(database, "SELECT seq FROM outbox").await
}

/// A database written by the first schema (a `published_at` column, set once published) is
/// upgraded in place: what was not published yet is still the relay's work afterwards.
async fn an_upgrade_keeps_unpublished_rows_pending_and_later_appends_join_them(backend: Backend) {
    let (_db, database) = open(backend).await;
    database
        .migrate([migrations_up_to(1)])
        .await
        .expect("migrate to the first schema");
    // Rows as that version of the code wrote them: the columns of the first schema only.
    for _ in 0..4 {
        let mut tx = database.begin_write().await.expect("begin");
        tx.execute(
            "INSERT INTO outbox (event_id, subject, event_type, aggregate_id, aggregate_version, envelope, created_at)
             VALUES ($1, 'users.user.UserRegistered', 'events.v1.UserRegistered', $1, 1, $2, $3)",
            &[
                Uuid::now_v7().to_string().into(),
                vec![0u8; 16].into(),
                platform::time::now_micros().into(),
            ],
        )
        .await
        .expect("append the old way");
        tx.commit().await.expect("commit");
    }
    let all = outbox(&database).await;
    let published: Vec<i64> = all.iter().copied().take(2).collect();
    sqlx::query("UPDATE outbox SET published_at = 1 WHERE seq = $1 OR seq = $2")
        .bind(published[0])
        .bind(published[1])
        .execute(database.pool())
        .await
        .expect("mark two rows published the old way");

    database
        .migrate([outbox::migrations()])
        .await
        .expect("upgrade");
    let unpublished: BTreeSet<i64> = all.iter().copied().skip(2).collect();
    assert_eq!(pending(&database).await, unpublished);
    assert_eq!(outbox(&database).await, all, "the upgrade keeps every row");

    append(&database).await;
    let newest = *outbox(&database).await.last().expect("a row");
    assert!(
        pending(&database).await.contains(&newest),
        "a row appended after the upgrade is pending"
    );
}

async fn pruning_removes_old_published_rows_and_keeps_pending_ones(backend: Backend) {
    let (_db, database) = migrated(backend).await;
    for _ in 0..5 {
        append(&database).await;
    }
    let all = outbox(&database).await;
    assert_eq!(
        pending(&database).await,
        all,
        "every appended row is pending"
    );
    let published: BTreeSet<i64> = all.iter().copied().take(3).collect();
    for seq in &published {
        mark_published(&database, "seq = $1", *seq).await;
    }

    let pruned = outbox::relay::prune(&database, Duration::from_secs(3600))
        .await
        .expect("prune");
    assert_eq!(pruned, 0, "rows younger than the retention stay");
    assert_eq!(outbox(&database).await, all);

    let pruned = outbox::relay::prune(&database, Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(pruned, 3);
    let left: BTreeSet<i64> = all.difference(&published).copied().collect();
    assert_eq!(
        outbox(&database).await,
        left,
        "pending rows stay, however old"
    );
    assert_eq!(pending(&database).await, left);
}

/// More old published rows than one pruning transaction takes, around a pending one, then
/// young ones.
async fn pruning_takes_every_old_row_across_chunks(backend: Backend) {
    let (_db, database) = migrated(backend).await;
    let (n_old, n_young): (i64, i64) = (4_000, 500);
    let now = platform::time::now_micros();
    let mut tx = database.begin_write().await.expect("begin");
    for n in 0..n_old + n_young {
        let created_at = if n < n_old { n } else { now };
        tx.execute(
            "INSERT INTO outbox (event_id, subject, event_type, aggregate_id, aggregate_version, envelope, created_at)
             VALUES ($1, 'users.user.UserRegistered', 'events.v1.UserRegistered', $1, 1, $2, $3)",
            &[Uuid::now_v7().to_string().into(), vec![0u8; 16].into(), created_at.into()],
        )
        .await
        .expect("append");
    }
    tx.commit().await.expect("commit");
    let all = outbox(&database).await;
    let kept = *all.iter().nth(3_000).expect("a row in the middle");
    mark_published(&database, "seq <> $1", kept).await;

    let pruned = outbox::relay::prune(&database, Duration::from_secs(60))
        .await
        .expect("prune");
    assert_eq!(pruned, n_old.unsigned_abs() - 1);
    let young: BTreeSet<i64> = all.iter().copied().skip(n_old as usize).collect();
    let left: BTreeSet<i64> = young.iter().copied().chain([kept]).collect();
    assert_eq!(
        outbox(&database).await,
        left,
        "the pending row and the young ones stay"
    );
}
