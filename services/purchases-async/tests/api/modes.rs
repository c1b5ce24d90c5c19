//! The same question, two answers: they agree once the projection has caught up, and differ
//! exactly where the design says they should (failures, freshness).

use contracts::orders::v1 as orders_pb;
use contracts::products::v1 as products_pb;
use contracts::purchases::v1 as pb;
use contracts::users::v1 as users_pb;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use std::time::Duration;
use testkit::{Backend, assert_status, backend_tests};

use tonic::Code;

use system::{Lab, Writers, all_pages, list};

backend_tests!(
    sync_and_async_answer_a_random_workload_identically_once_caught_up,
    with_users_down_sync_fails_naming_users_while_async_answers,
    after_downtime_and_after_a_rebuild_the_projection_converges_with_nothing_lost,
    the_monolith_answers_the_same_workload_with_the_same_purchases,
    with_products_slowed_sync_misses_a_deadline_that_async_meets,
    faults_injected_into_the_owners_break_sync_and_leave_async_alone,
);

/// Registrations, product creations and updates, orders, cancellations and a deleted user,
/// chosen by a seeded generator so a failure can be replayed.
pub(crate) async fn random_workload(writers: &Writers, seed: u64) -> (Vec<String>, String) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut users = Vec::new();
    for user_idx in 0..5 {
        users.push(writers.register(&format!("User {user_idx}")).await.id);
    }
    let mut products = Vec::new();
    for product_idx in 0..6 {
        products.push(
            writers
                .create_product(&format!("Product {product_idx}"), 100 + product_idx)
                .await
                .id,
        );
    }
    let mut orders: Vec<orders_pb::Order> = Vec::new();
    for _ in 0..30 {
        let user = &users[rng.random_range(0..users.len())];
        let product = &products[rng.random_range(0..products.len())];
        orders.push(writers.place(user, product, rng.random_range(1..=5)).await);
    }
    for product in products.iter().take(3) {
        writers
            .products
            .clone()
            .update_product(products_pb::UpdateProductRequest {
                id: product.clone(),
                title: Some(format!("Renamed {}", rng.random_range(0..1000))),
                image_url: None,
                price_cents: Some(rng.random_range(1..100_000)),
                expected_version: None,
            })
            .await
            .expect("the product is updated");
    }
    for _ in 0..5 {
        let order = &orders[rng.random_range(0..orders.len())];
        // Picking one twice is fine: the second cancellation is refused.
        let _ = writers
            .orders
            .clone()
            .cancel_order(orders_pb::CancelOrderRequest {
                id: order.id.clone(),
                expected_version: None,
            })
            .await;
    }
    let deleted = users.pop().expect("five users");
    writers
        .users
        .clone()
        .delete_user(users_pb::DeleteUserRequest {
            id: deleted.clone(),
            expected_version: None,
        })
        .await
        .expect("the user is deleted");
    (users, deleted)
}

async fn assert_modes_agree(lab: &Lab, users: &[String], deleted: &str) {
    for user in users {
        let sync = all_pages(&lab.sync, user, 4).await.expect("sync answers");
        let asynchronous = all_pages(&lab.asynchronous, user, 4)
            .await
            .expect("async answers");
        assert_eq!(
            sync, asynchronous,
            "user {user}: the same user, purchases and page tokens"
        );
        assert!(
            sync.1.iter().all(|purchase| purchase.product.is_some()),
            "every product is known"
        );
    }
    for client in [&lab.sync, &lab.asynchronous] {
        assert_status(
            client
                .clone()
                .list_user_purchases(list(deleted, 0, ""))
                .await,
            Code::NotFound,
            deleted,
        );
    }
}

async fn sync_and_async_answer_a_random_workload_identically_once_caught_up(backend: Backend) {
    let lab = Lab::start(backend).await;
    let (users, deleted) = random_workload(&lab.writers, 7).await;
    lab.caught_up().await;
    assert_modes_agree(&lab, &users, &deleted).await;

    let total: usize = {
        let mut n = 0;
        for user in &users {
            n += all_pages(&lab.sync, user, 1000)
                .await
                .expect("answers")
                .1
                .len();
        }
        n
    };
    assert!(
        total > 0,
        "the workload placed orders for the remaining users"
    );

    let sync = lab
        .sync
        .clone()
        .list_user_purchases(list(&users[0], 0, ""))
        .await
        .expect("sync")
        .into_inner();
    let asynchronous = lab
        .asynchronous
        .clone()
        .list_user_purchases(list(&users[0], 0, ""))
        .await
        .expect("async")
        .into_inner();
    assert_eq!(sync.mode(), pb::Mode::Sync);
    assert_eq!(asynchronous.mode(), pb::Mode::Async);
    assert!(sync.freshness.expect("freshness").live);
    let freshness = asynchronous.freshness.expect("freshness");
    assert!(!freshness.live);
    let streams: Vec<&str> = freshness
        .streams
        .iter()
        .map(|s| s.stream.as_str())
        .collect();
    assert_eq!(streams, ["USERS", "PRODUCTS", "ORDERS"]);
    assert!(
        freshness
            .streams
            .iter()
            .all(|s| s.sequence > 0 && s.last_event_at.is_some())
    );
}

async fn with_users_down_sync_fails_naming_users_while_async_answers(backend: Backend) {
    let mut lab = Lab::start(backend).await;
    let user = lab.writers.register("Ada").await.id;
    let product = lab.writers.create_product("Mug", 1250).await.id;
    lab.writers.place(&user, &product, 2).await;
    lab.caught_up().await;

    lab.users_server
        .take()
        .expect("users is running")
        .stop()
        .await
        .expect("users stops");
    sync_fails_naming(&lab, &user, "users").await;
    let answer = lab
        .asynchronous
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("purchases-async answers without users")
        .into_inner();
    assert_eq!(answer.purchases.len(), 1);
    assert_eq!(
        answer.purchases[0]
            .product
            .as_ref()
            .map(|p| p.title.as_str()),
        Some("Mug")
    );
}

async fn after_downtime_and_after_a_rebuild_the_projection_converges_with_nothing_lost(
    backend: Backend,
) {
    let mut lab = Lab::start(backend).await;
    let user = lab.writers.register("Grace").await.id;
    let product = lab.writers.create_product("Kettle", 2500).await.id;
    lab.writers.place(&user, &product, 1).await;
    lab.caught_up().await;

    lab.stop_async().await;
    let late_product = lab.writers.create_product("Teapot", 1999).await.id;
    let mut placed = Vec::new();
    for quantity in 1..=20 {
        let product = if quantity % 2 == 0 {
            &product
        } else {
            &late_product
        };
        placed.push(lab.writers.place(&user, product, quantity).await);
    }
    lab.writers
        .orders
        .clone()
        .cancel_order(orders_pb::CancelOrderRequest {
            id: placed[3].id.clone(),
            expected_version: Some(1),
        })
        .await
        .expect("cancelled");
    lab.start_async(false).await;
    lab.caught_up().await;
    let sync = all_pages(&lab.sync, &user, 7).await.expect("sync answers");
    let caught_up = all_pages(&lab.asynchronous, &user, 7)
        .await
        .expect("async answers");
    assert_eq!(sync.1.len(), 21, "every order is there");
    assert_eq!(
        sync, caught_up,
        "caught up after its downtime, nothing lost"
    );

    lab.stop_async().await;
    lab.start_async(true).await;
    lab.caught_up().await;
    // caught_up reads the committed positions; the in-memory view is refreshed just after
    // each commit, so its answer may trail them for a moment.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let rebuilt = loop {
        let rebuilt = all_pages(&lab.asynchronous, &user, 7)
            .await
            .expect("async answers");
        if rebuilt == sync || tokio::time::Instant::now() > deadline {
            break rebuilt;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(sync, rebuilt, "a rebuild reaches the same state");
}

/// A purchase as (product title, price, quantity, status).
type PurchaseShape = (String, i64, i32, i32);

/// What a purchases answer says, without the ids and times that differ between two systems
/// given the same workload: the user's name, the purchases, and how many pages.
fn shape(
    answer: (Option<pb::User>, Vec<pb::Purchase>, Vec<String>),
) -> (String, Vec<PurchaseShape>, usize) {
    let (user, purchases, tokens) = answer;
    (
        user.map(|user| user.name).unwrap_or_default(),
        purchases
            .into_iter()
            .map(|purchase| {
                let product = purchase.product.unwrap_or_default();
                (
                    product.title,
                    product.price_cents,
                    purchase.quantity,
                    purchase.status,
                )
            })
            .collect(),
        tokens.len(),
    )
}

async fn the_monolith_answers_the_same_workload_with_the_same_purchases(backend: Backend) {
    let lab = Lab::start(backend).await;
    let (users, _) = random_workload(&lab.writers, 11).await;
    lab.caught_up().await;

    let monolith = system::Monolith::start(backend).await;
    let (monolith_users, monolith_deleted) = random_workload(&monolith.writers, 11).await;
    for (user, monolith_user) in users.iter().zip(&monolith_users) {
        let microservices = shape(
            all_pages(&lab.asynchronous, user, 4)
                .await
                .expect("async answers"),
        );
        let joined = shape(
            all_pages(&monolith.purchases, monolith_user, 4)
                .await
                .expect("monolith answers"),
        );
        assert_eq!(
            microservices, joined,
            "same workload, same purchases, same paging"
        );
    }
    assert_status(
        monolith
            .purchases
            .clone()
            .list_user_purchases(list(&monolith_deleted, 0, ""))
            .await,
        Code::NotFound,
        &monolith_deleted,
    );
    let answer = monolith
        .purchases
        .clone()
        .list_user_purchases(list(&monolith_users[0], 0, ""))
        .await
        .expect("monolith answers")
        .into_inner();
    assert_eq!(answer.mode(), pb::Mode::Monolith);
    assert!(answer.freshness.expect("freshness").live);
}

/// purchases-sync answers UNAVAILABLE, and says which dependency it could not reach.
async fn sync_fails_naming(lab: &Lab, user: &str, dependency: &str) {
    assert_status(
        lab.sync
            .clone()
            .list_user_purchases(list(user, 0, ""))
            .await,
        Code::Unavailable,
        dependency,
    );
}

/// A lab where one user has bought one product, and the projection holds it.
async fn one_purchase(backend: Backend, name: &str, title: &str) -> (Lab, String) {
    let lab = Lab::start(backend).await;
    let user = lab.writers.register(name).await.id;
    let product = lab.writers.create_product(title, 4200).await.id;
    lab.writers.place(&user, &product, 1).await;
    lab.caught_up().await;
    (lab, user)
}

async fn with_products_slowed_sync_misses_a_deadline_that_async_meets(backend: Backend) {
    let (lab, user) = one_purchase(backend, "Hedy", "Lamp").await;
    // Warm both paths so connection set-up is not part of what follows.
    lab.sync
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("sync answers");

    // Products now takes at least 300 ms to hear any request: a caller allowing 150 ms
    // cannot get an answer through purchases-sync, whose deadline propagation says which
    // dependency was too slow; purchases-async never asks products.
    lab.products_proxy.set_delay(Duration::from_millis(300));
    let with_deadline = || {
        let mut request = tonic::Request::new(list(&user, 0, ""));
        request.set_timeout(Duration::from_millis(150));
        request
    };
    let status = lab
        .sync
        .clone()
        .list_user_purchases(with_deadline())
        .await
        .expect_err("products cannot answer in time");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("products"), "{status:?}");
    let answer = lab
        .asynchronous
        .clone()
        .list_user_purchases(with_deadline())
        .await
        .expect("purchases-async does not depend on products")
        .into_inner();
    assert_eq!(answer.purchases.len(), 1);

    lab.products_proxy.set_delay(Duration::ZERO);
    lab.sync
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("sync recovers with products");
}

async fn faults_injected_into_the_owners_break_sync_and_leave_async_alone(backend: Backend) {
    let (lab, user) = one_purchase(backend, "Grace", "Compiler").await;

    // Every OrderService call fails; the orders server itself still reports SERVING.
    lab.faults
        .orders
        .add(
            fault::Fault::new(fault::Target::Service("orders.v1.OrderService".into()))
                .with_failure(1.0, Code::Unavailable),
        )
        .expect("a valid fault");
    sync_fails_naming(&lab, &user, "orders").await;
    let health = tonic_health::pb::health_client::HealthClient::new(lab.orders_server.channel())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is never faulted")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    lab.faults.orders.clear();

    // Users black-holed: a caller's deadline runs out inside purchases-sync, which says it
    // was waiting on users.
    lab.faults
        .users
        .add(fault::Fault::new(fault::Target::All).with_blackhole())
        .expect("a valid fault");
    let mut request = tonic::Request::new(list(&user, 0, ""));
    request.set_timeout(Duration::from_millis(200));
    let status = lab
        .sync
        .clone()
        .list_user_purchases(request)
        .await
        .expect_err("users never answers");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("users"), "{status:?}");
    let answer = lab
        .asynchronous
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("purchases-async calls no one")
        .into_inner();
    assert_eq!(answer.purchases.len(), 1);

    lab.faults.users.clear();
    let answer = lab
        .sync
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("sync recovers once the faults are cleared")
        .into_inner();
    assert_eq!(answer.purchases.len(), 1);
}
