//! What the design notes predict of the bus way: it fails like the direct calls when an owner
//! is down, slow or failing (its coupling is the same), and also when the bus is down, where
//! the direct calls and the projection keep answering. Each failure names what failed.

use std::time::Duration;

use harness::{Lab, list};
use testkit::{Backend, assert_status};
use tonic::Code;

/// A lab where one user has bought one product, and the projection holds it.
async fn one_purchase(name: &str) -> (Lab, String) {
    let lab = Lab::start(Backend::Sqlite).await;
    let user = lab.writers.register(name).await.id;
    let product = lab.writers.create_product("Lamp", 4200).await.id;
    lab.writers.place(&user, &product, 1).await;
    lab.caught_up().await;
    (lab, user)
}

fn with_deadline(
    user: &str,
    deadline: Duration,
) -> tonic::Request<contracts::purchases::v1::ListUserPurchasesRequest> {
    let mut request = tonic::Request::new(list(user, 0, ""));
    request.set_timeout(deadline);
    request
}

#[tokio::test]
async fn with_users_down_the_bus_way_fails_naming_users_while_async_answers() {
    let (mut lab, user) = one_purchase("Ada").await;
    lab.bus
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("the bus way answers while users is up");

    lab.users_server
        .take()
        .expect("users is running")
        .stop()
        .await
        .expect("users stops");
    // No instance of users listens any more: NATS says so at once (no responders).
    let status = lab
        .bus
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect_err("no one answers for users");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("users") && status.message().contains("ask.users.GetUser"),
        "{status:?}"
    );
    lab.asynchronous
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("purchases-async asks no one");
}

#[tokio::test]
async fn a_slowed_or_failing_owner_breaks_the_bus_way_as_it_breaks_sync() {
    let (lab, user) = one_purchase("Hedy").await;
    lab.bus
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("the bus way answers");

    // The fault layer sits in the owner's one stack, so it slows questions on the bus as
    // it slows gRPC calls.
    lab.faults
        .products
        .add(
            fault::Fault::new(fault::Target::All)
                .with_latency(fault::Latency::fixed(Duration::from_millis(300))),
        )
        .expect("a valid fault");
    for (mode, client) in [("bus", &lab.bus), ("sync", &lab.sync)] {
        let status = client
            .clone()
            .list_user_purchases(with_deadline(&user, Duration::from_millis(150)))
            .await
            .expect_err("products cannot answer in time");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{mode}: {status:?}");
        assert!(status.message().contains("products"), "{mode}: {status:?}");
    }
    lab.asynchronous
        .clone()
        .list_user_purchases(with_deadline(&user, Duration::from_millis(150)))
        .await
        .expect("purchases-async does not depend on products");
    lab.faults.products.clear();

    lab.faults
        .orders
        .add(
            fault::Fault::new(fault::Target::Service("orders.v1.OrderService".into()))
                .with_failure(1.0, Code::Unavailable),
        )
        .expect("a valid fault");
    for client in [&lab.bus, &lab.sync] {
        assert_status(
            client.clone().list_user_purchases(list(&user, 0, "")).await,
            Code::Unavailable,
            "orders",
        );
    }
    lab.faults.orders.clear();
    lab.bus
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("the bus way recovers once the faults are cleared");
}

#[tokio::test]
async fn with_the_bus_down_only_the_bus_way_fails_and_it_says_so() {
    let (mut lab, user) = one_purchase("Grace").await;
    lab.bus
        .clone()
        .list_user_purchases(list(&user, 0, ""))
        .await
        .expect("the bus way answers");

    lab.nats.server.stop().await.expect("nats-server stops");
    // purchases-bus hears of the lost connection within moments; until then a question
    // may still time out (DEADLINE_EXCEEDED naming the owner it waited on).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let status = lab
            .bus
            .clone()
            .list_user_purchases(with_deadline(&user, Duration::from_secs(1)))
            .await
            .expect_err("no question can be asked without the bus");
        if status.code() == Code::Unavailable || tokio::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("NATS bus"), "{status:?}");
    for (mode, client) in [("sync", &lab.sync), ("async", &lab.asynchronous)] {
        let answer = client
            .clone()
            .list_user_purchases(list(&user, 0, ""))
            .await
            .unwrap_or_else(|status| panic!("{mode} does not need the bus to answer: {status:?}"))
            .into_inner();
        assert_eq!(answer.purchases.len(), 1, "{mode}");
    }

    lab.nats
        .server
        .restart()
        .await
        .expect("nats-server restarts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answered = lab
            .bus
            .clone()
            .list_user_purchases(list(&user, 0, ""))
            .await;
        match answered {
            Ok(answer) => {
                assert_eq!(answer.into_inner().purchases.len(), 1);
                break;
            }
            Err(status) if tokio::time::Instant::now() > deadline => {
                panic!("the bus way did not recover after NATS came back: {status:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
