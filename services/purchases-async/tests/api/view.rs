//! The in-memory view is brought in step from each committed batch, not read back from the
//! tables: these tests hold it to the tables. Random batches of user, product and order events
//! (duplicates, late arrivals, cancellations before their placement, deletions before a
//! registration, renames after a deletion) go through the projections as the consumer drives
//! them, and after every batch the view answers every user exactly as a view loaded afresh
//! from the tables does.

use consumer::{Event, Freshness, Projection};
use contracts::events::v1 as events;
use platform::db::{Database, DatabaseConfig};
use purchases::Query;
use purchases_async::projection::{Products, Purchases, Users};
use purchases_async::view::View;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use testkit::{Backend, TestDatabase};
use uuid::Uuid;

testkit::backend_tests!(a_view_fed_by_batches_answers_as_one_loaded_from_the_tables);

fn event<M: prost::Message + prost::Name>(
    aggregate_type: &str,
    id: Uuid,
    version: u64,
    occurred_at_micros: i64,
    payload: &M,
    freshness: Freshness,
) -> Event {
    Event {
        envelope: events::EventEnvelope {
            event_id: Uuid::now_v7().to_string(),
            event_type: M::full_name(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: id.to_string(),
            aggregate_version: version,
            occurred_at: Some(platform::time::to_timestamp(occurred_at_micros)),
            producer: String::new(),
            schema_version: 2,
            payload: payload.encode_to_vec(),
            metadata: Default::default(),
        },
        subject: String::new(),
        stream_sequence: version,
        freshness,
    }
}

/// A random world: a few users and products, many orders, every kind of event and the
/// orders' events now and then out of order (the projection gets late ones as stale).
struct World {
    rng: StdRng,
    users: Vec<Uuid>,
    products: Vec<Uuid>,
    /// Order, its user, whether its placement was sent, whether its cancellation was.
    orders: Vec<(Uuid, Uuid, bool, bool)>,
    clock: i64,
}

impl World {
    fn tick(&mut self) -> i64 {
        self.clock += 1_000;
        self.clock
    }

    fn user_events(&mut self) -> Vec<Event> {
        let mut batch = Vec::new();
        for _ in 0..self.rng.random_range(1..6) {
            let at = self.tick();
            let id = self.users[self.rng.random_range(0..self.users.len())];
            let version = u64::try_from(at).unwrap_or(1);
            let user_id = id.to_string();
            batch.push(match self.rng.random_range(0..4) {
                0 => event(
                    "user",
                    id,
                    version,
                    at,
                    &events::UserRegistered {
                        user_id,
                        name: format!("user {at}"),
                        given_name: "Ada".into(),
                        family_name: format!("{at}"),
                        ..Default::default()
                    },
                    Freshness::Next,
                ),
                1 | 2 => event(
                    "user",
                    id,
                    version,
                    at,
                    &events::UserRenamed {
                        user_id,
                        name: format!("renamed {at}"),
                        given_name: "Grace".into(),
                        family_name: format!("{at}"),
                    },
                    Freshness::Next,
                ),
                _ => event(
                    "user",
                    id,
                    version,
                    at,
                    &events::UserDeleted { user_id },
                    Freshness::Next,
                ),
            });
        }
        batch
    }

    fn product_events(&mut self) -> Vec<Event> {
        let mut batch = Vec::new();
        for _ in 0..self.rng.random_range(1..4) {
            let at = self.tick();
            let id = self.products[self.rng.random_range(0..self.products.len())];
            let product = events::ProductUpdated {
                product_id: id.to_string(),
                title: format!("product {at}"),
                image_url: format!("https://example.com/{at}.png"),
                price_cents: at % 10_000,
                currency: "EUR".into(),
            };
            batch.push(event(
                "product",
                id,
                u64::try_from(at).unwrap_or(1),
                at,
                &product,
                Freshness::Next,
            ));
        }
        batch
    }

    fn order_events(&mut self) -> Vec<Event> {
        let mut batch = Vec::new();
        for _ in 0..self.rng.random_range(1..30) {
            let at = self.tick();
            let fresh_order = self.orders.len() < 20 || self.rng.random_bool(0.4);
            let index = if fresh_order {
                let user = self.users[self.rng.random_range(0..self.users.len())];
                self.orders.push((Uuid::now_v7(), user, false, false));
                self.orders.len() - 1
            } else {
                self.rng.random_range(0..self.orders.len())
            };
            let (order_id, user_id, placed, cancelled) = self.orders[index];
            // A cancellation before its placement, a repeated placement (a duplicate), a
            // placement after its cancellation: all reach the projection.
            let cancel = !cancelled && (placed || self.rng.random_bool(0.2));
            let (mut sent, version) = if cancel {
                self.orders[index].3 = true;
                let cancelled = events::OrderCancelled {
                    order_id: order_id.to_string(),
                    user_id: user_id.to_string(),
                    ..Default::default()
                };
                (
                    event("order", order_id, 2, at, &cancelled, Freshness::Next),
                    2,
                )
            } else {
                self.orders[index].2 = true;
                let product = self.products[self.rng.random_range(0..self.products.len())];
                let placed_event = events::OrderPlaced {
                    order_id: order_id.to_string(),
                    user_id: user_id.to_string(),
                    product_id: product.to_string(),
                    quantity: self.rng.random_range(1..5),
                    placed_at: Some(platform::time::to_timestamp(at)),
                };
                (
                    event("order", order_id, 1, at, &placed_event, Freshness::Next),
                    1,
                )
            };
            // What the consumer tells the projection: stale when that version, or a later
            // one, was applied before.
            if version == 1 && (cancelled || placed) {
                sent.freshness = Freshness::Stale { applied: 2 };
            }
            batch.push(sent);
        }
        batch
    }
}

async fn commit<P: Projection>(db: &Database, projection: &P, batch: &[Event]) {
    let mut tx = db.begin_write().await.expect("begin");
    projection.apply(&mut tx, batch).await.expect("apply");
    tx.commit().await.expect("commit");
    projection.committed(batch).await;
}

/// Every user's whole answer, as text for a readable diff.
fn answers(view: &View, users: &[Uuid]) -> Vec<String> {
    users
        .iter()
        .map(|user_id| {
            let query = Query {
                wait_for_order: None,
                user_id: *user_id,
                page_size: 1_000,
                after: None,
            };
            format!("{:?}", view.page(&query).map_err(|error| error.to_string()))
        })
        .collect()
}

async fn a_view_fed_by_batches_answers_as_one_loaded_from_the_tables(backend: Backend) {
    let test_db = TestDatabase::create(backend).await;
    let db = Database::connect(&DatabaseConfig::new(test_db.url()))
        .await
        .expect("connect");
    db.migrate([purchases_async::migrations()])
        .await
        .expect("migrate");
    let view = View::load(db.clone()).await.expect("load");
    let users = Users {
        view: view.clone(),
        reader_schema: 2,
    };
    let products = Products {
        view: view.clone(),
        reader_schema: 2,
    };
    let orders = Purchases::prepare(db.clone(), view.clone())
        .await
        .expect("the orders projection");
    let mut world = World {
        rng: StdRng::seed_from_u64(25),
        users: (0..6).map(|_| Uuid::now_v7()).collect(),
        products: (0..5).map(|_| Uuid::now_v7()).collect(),
        orders: Vec::new(),
        clock: 1_700_000_000_000_000,
    };
    let everyone = world.users.clone();
    let mut answered = 0;
    for round in 0..60 {
        match round % 3 {
            0 => commit(&db, &users, &world.user_events()).await,
            1 => commit(&db, &products, &world.product_events()).await,
            _ => commit(&db, &orders, &world.order_events()).await,
        }
        let loaded = View::load(db.clone()).await.expect("load");
        let fed = answers(&view, &everyone);
        assert_eq!(
            fed,
            answers(&loaded, &everyone),
            "after batch {round} the view fed by batches differs from the tables"
        );
        assert!(view.is_trusted());
        answered = fed.iter().filter(|answer| answer.starts_with("Ok")).count();
    }
    assert!(
        world.orders.len() > 50 && answered > 0,
        "the workload is too small to show anything"
    );
}
