//! The purchases-by-user index is put off while a projection fills from nothing and made
//! once the orders consumer has caught up, before the position that says so is published;
//! reads from the database answer right meanwhile; a run that stopped before making it
//! leaves it to the next start.

use platform::db::{Database, DatabaseConfig};
use purchases_async::ReadFrom;
use purchases_async::index::{self, ByUserIndex};
use testkit::{Backend, TestDatabase, backend_tests};

use harness::{Lab, all_pages};

backend_tests!(
    an_empty_projection_puts_the_index_off_and_a_filled_one_keeps_it,
    a_rebuild_read_from_the_database_answers_right_and_ends_with_the_index,
    a_restart_makes_the_index_a_stopped_rebuild_left_missing,
);

async fn open(url: &str) -> Database {
    Database::connect(&DatabaseConfig::new(url))
        .await
        .expect("open the projection database")
}

async fn has_index(db: &Database) -> bool {
    index::exists(db).await.expect("read the catalogue")
}

async fn defer(db: &Database) -> ByUserIndex {
    ByUserIndex::defer_if_empty(db.clone())
        .await
        .expect("look at the index")
}

async fn drop_index(db: &Database) {
    let mut tx = db.begin_write().await.expect("begin");
    tx.execute("DROP INDEX p_purchases_by_user", &[])
        .await
        .expect("drop the index");
    tx.commit().await.expect("commit");
}

async fn an_empty_projection_puts_the_index_off_and_a_filled_one_keeps_it(backend: Backend) {
    let test_db = TestDatabase::create(backend).await;
    let db = open(test_db.url()).await;
    db.migrate([purchases_async::migrations()])
        .await
        .expect("migrate");
    assert!(has_index(&db).await, "the migrations make it");

    let empty = defer(&db).await;
    assert!(empty.is_missing());
    assert!(!has_index(&db).await, "dropped while empty");
    empty.make().await;
    assert!(!empty.is_missing());
    assert!(has_index(&db).await, "made when asked");
    empty.make().await;
    assert!(has_index(&db).await, "made once, kept");

    let mut tx = db.begin_write().await.expect("begin");
    tx.execute(
        "INSERT INTO p_purchases (order_id, user_id, status) VALUES ($1, $2, 'cancelled')",
        &[
            uuid::Uuid::now_v7().to_string().into(),
            uuid::Uuid::now_v7().to_string().into(),
        ],
    )
    .await
    .expect("insert a purchase");
    tx.commit().await.expect("commit");
    let filled = defer(&db).await;
    assert!(!filled.is_missing());
    assert!(
        has_index(&db).await,
        "a projection with purchases keeps its index"
    );

    // As a rebuild that stopped before making it leaves it.
    drop_index(&db).await;
    let left_missing = defer(&db).await;
    assert!(left_missing.is_missing());
    left_missing.make().await;
    assert!(has_index(&db).await);
    db.close().await;
}

/// More order events than one batch holds, so a fill from nothing runs without the index
/// for a while.
const ORDERS: usize = 300;

async fn a_rebuild_read_from_the_database_answers_right_and_ends_with_the_index(backend: Backend) {
    let mut lab = Lab::start(backend).await;
    let user = lab.writers.register("Ada").await.id;
    let other = lab.writers.register("Brian").await.id;
    let product = lab.writers.create_product("Lamp", 4200).await.id;
    for n in 0..ORDERS {
        let buyer = if n % 3 == 0 { &other } else { &user };
        lab.writers.place(buyer, &product, 1).await;
    }
    lab.caught_up().await;
    let db = open(lab.async_db.url()).await;
    assert!(
        has_index(&db).await,
        "the first fill made the index once caught up"
    );

    lab.stop_async().await;
    lab.start_async_reading_from(true, ReadFrom::Database).await;
    lab.caught_up().await;
    // caught_up waits for the positions the answers report, published only after the
    // index was made.
    assert!(
        has_index(&db).await,
        "the rebuild made the index before saying it had caught up"
    );
    for buyer in [&user, &other] {
        let sync = all_pages(&lab.sync, buyer, 50).await.expect("sync answers");
        let rebuilt = all_pages(&lab.asynchronous, buyer, 50)
            .await
            .expect("async answers from its tables");
        assert_eq!(
            sync, rebuilt,
            "user {buyer}: the rebuilt tables answer alike"
        );
    }
    db.close().await;
}

async fn a_restart_makes_the_index_a_stopped_rebuild_left_missing(backend: Backend) {
    let mut lab = Lab::start(backend).await;
    let user = lab.writers.register("Chen").await.id;
    let product = lab.writers.create_product("Desk", 15000).await.id;
    lab.writers.place(&user, &product, 1).await;
    lab.caught_up().await;
    lab.stop_async().await;

    let db = open(lab.async_db.url()).await;
    drop_index(&db).await;
    // Events to apply after the restart, so the answers' positions move only once it has
    // looked at the index.
    for quantity in 2..=6 {
        lab.writers.place(&user, &product, quantity).await;
    }
    lab.start_async_reading_from(false, ReadFrom::Database)
        .await;
    lab.caught_up().await;
    assert!(has_index(&db).await, "made again before the position moved");
    let sync = all_pages(&lab.sync, &user, 2).await.expect("sync answers");
    let restarted = all_pages(&lab.asynchronous, &user, 2)
        .await
        .expect("async answers");
    assert_eq!(sync.1.len(), 6);
    assert_eq!(sync, restarted);
    db.close().await;
}
