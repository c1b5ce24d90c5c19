//! purchases-sync with its real dependencies (the in-process harness): it is as available as
//! the least available of users, orders and products and fails naming the one it could not
//! reach, and a caller's deadline runs out inside it naming the dependency it waited on.
//! purchases-async, beside it on the same data, answers throughout.

use std::time::Duration;

use harness::{Lab, list};
use testkit::{Backend, assert_status, backend_tests};
use tonic::Code;

backend_tests!(
    with_users_down_sync_fails_naming_users_while_async_answers,
    with_products_slowed_sync_misses_a_deadline_that_async_meets,
    faults_injected_into_the_owners_break_sync_and_leave_async_alone,
);

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
