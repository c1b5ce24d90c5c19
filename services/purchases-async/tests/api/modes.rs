//! The same question, three answers (the owners called, the owners asked on the bus, the
//! projection): they agree once the projection has caught up, and the
//! projection converges after its own downtime and after a rebuild. (How purchases-sync
//! fails with its dependencies is tested with purchases-sync; the monolith's answer with
//! the monolith.)

use contracts::orders::v1 as orders_pb;
use contracts::purchases::v1 as pb;
use testkit::{Backend, assert_status, backend_tests};

use tonic::Code;

use harness::{Lab, all_pages, list, random_workload};

backend_tests!(
    sync_bus_and_async_answer_a_random_workload_identically_once_caught_up,
    after_downtime_and_after_a_rebuild_the_projection_converges_with_nothing_lost,
);

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
        let bus = all_pages(&lab.bus, user, 4).await.expect("bus answers");
        assert_eq!(sync, bus, "user {user}: asked on the bus, the same answer");
        assert!(
            sync.1.iter().all(|purchase| purchase.product.is_some()),
            "every product is known"
        );
    }
    for client in [&lab.sync, &lab.bus, &lab.asynchronous] {
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

async fn sync_bus_and_async_answer_a_random_workload_identically_once_caught_up(backend: Backend) {
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
    let bus = lab
        .bus
        .clone()
        .list_user_purchases(list(&users[0], 0, ""))
        .await
        .expect("bus")
        .into_inner();
    assert_eq!(bus.mode(), pb::Mode::Bus);
    assert!(bus.freshness.expect("freshness").live);
    assert_eq!(bus.purchases, sync.purchases);
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
