//! Orders checks the users and products an order names against its own replica, fed by the
//! USERS and PRODUCTS streams, and publishes its own events to ORDERS.

use std::time::{Duration, Instant};

use contracts::events::v1 as events;
use contracts::orders::v1 as pb;
use testkit::{Backend, assert_status, backend_tests};
use tonic::Code;
use uuid::Uuid;

use crate::helpers::{PRODUCTS, USERS, new_id, spawn_app};

backend_tests!(
    an_order_naming_an_unknown_user_or_product_fails_naming_it,
    an_order_for_a_product_created_a_moment_ago_succeeds_once_the_replica_has_it,
    a_deleted_user_cannot_order,
    placed_and_cancelled_orders_reach_the_orders_stream_in_order,
);

fn order(user_id: &str, product_id: &str) -> pb::PlaceOrderRequest {
    pb::PlaceOrderRequest {
        user_id: user_id.to_owned(),
        product_id: product_id.to_owned(),
        quantity: 1,
    }
}

async fn an_order_naming_an_unknown_user_or_product_fails_naming_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user, product) = (app.user().await, app.product().await);
    let mut client = app.client.clone();
    let stranger = new_id();
    let status = assert_status(
        client.place_order(order(&stranger, &product)).await,
        Code::FailedPrecondition,
        &format!("user {stranger} is unknown"),
    );
    assert!(status.message().contains("GetUser"), "{status:?}");
    let nothing = new_id();
    assert_status(
        client.place_order(order(&user, &nothing)).await,
        Code::FailedPrecondition,
        &format!("product {nothing} is unknown"),
    );
    assert!(
        app.outbox().await.is_empty(),
        "a refused order records no event"
    );
}

async fn an_order_for_a_product_created_a_moment_ago_succeeds_once_the_replica_has_it(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let user = app.user().await;
    let product = Uuid::now_v7();
    let created = events::ProductCreated {
        product_id: product.to_string(),
        title: "Kettle".into(),
        image_url: String::new(),
        price_cents: 2500,
        ..Default::default()
    };
    app.publish(PRODUCTS, &product, 1, &created).await;

    // Right after the event is published the replica may not have it yet: the only
    // acceptable answers meanwhile are success and "unknown product".
    let mut client = app.client.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let placed = loop {
        match client.place_order(order(&user, &product.to_string())).await {
            Ok(response) => break response.into_inner().order.expect("an order"),
            Err(status) => {
                assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                assert!(status.message().contains("unknown"), "{status:?}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "the replica never learned of the product"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(placed.product_id, product.to_string());
}

async fn a_deleted_user_cannot_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user, product) = (app.user().await, app.product().await);
    let user_id: Uuid = user.parse().expect("a uuid");
    app.publish(
        USERS,
        &user_id,
        2,
        &events::UserDeleted {
            user_id: user.clone(),
        },
    )
    .await;

    let mut client = app.client.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.place_order(order(&user, &product)).await {
            Err(status) if status.message().contains("deleted") => {
                assert_eq!(status.code(), Code::FailedPrecondition);
                break;
            }
            // Before the deletion reaches the replica the order is still accepted.
            Ok(_) => {}
            Err(status) => panic!("unexpected status {status:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the deletion never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn placed_and_cancelled_orders_reach_the_orders_stream_in_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let placed = app.place(&app.user().await, &app.product().await, 2).await;
    app.client
        .clone()
        .cancel_order(pb::CancelOrderRequest {
            id: placed.id.clone(),
            expected_version: Some(1),
        })
        .await
        .expect("the order is cancelled");

    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = if app.js.get_stream("ORDERS").await.is_ok() {
            testkit::stream_events(&app.js, "ORDERS").await
        } else {
            Vec::new()
        };
        if events.len() >= 2 {
            break events;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never published both events"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let subjects: Vec<&str> = events.iter().map(|(subject, _)| subject.as_str()).collect();
    assert_eq!(
        subjects,
        ["orders.order.OrderPlaced", "orders.order.OrderCancelled"]
    );
    let outbox = app.outbox().await;
    let ids = |envelopes: Vec<&contracts::events::v1::EventEnvelope>| -> Vec<String> {
        envelopes.iter().map(|e| e.event_id.clone()).collect()
    };
    assert_eq!(
        ids(events.iter().map(|(_, e)| e).collect()),
        ids(outbox.iter().collect()),
        "the stream holds the outbox's events, each once, in commit order"
    );
    assert!(events.iter().all(|(_, e)| e.aggregate_id == placed.id));
}
