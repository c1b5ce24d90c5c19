use contracts::events::v1 as events;
use contracts::orders::v1 as pb;
use testkit::{Backend, assert_status, backend_tests, payload};
use tonic::Code;

use crate::helpers::{new_id, spawn_app};

backend_tests!(
    a_placed_order_can_be_read_back_and_leaves_one_event,
    invalid_input_is_rejected_naming_the_field,
    an_unknown_order_is_not_found,
    a_users_orders_are_paged_newest_first,
    an_order_is_cancelled_once_and_versions_are_checked,
);

async fn a_placed_order_can_be_read_back_and_leaves_one_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let (user_id, product_id) = (app.user().await, app.product().await);
    let placed = app.place(&user_id, &product_id, 3).await;
    assert_eq!(placed.user_id, user_id);
    assert_eq!(placed.product_id, product_id);
    assert_eq!(placed.quantity, 3);
    assert_eq!(placed.status(), pb::OrderStatus::Placed);
    assert_eq!(placed.version, 1);

    let fetched = app
        .client
        .clone()
        .get_order(pb::GetOrderRequest {
            id: placed.id.clone(),
        })
        .await
        .expect("the order is found")
        .into_inner()
        .order;
    assert_eq!(fetched.as_ref(), Some(&placed));

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].aggregate_type, "order");
    assert_eq!(outbox[0].aggregate_id, placed.id);
    let event: events::OrderPlaced = payload(&outbox[0]);
    assert_eq!(event.user_id, user_id);
    assert_eq!(event.product_id, product_id);
    assert_eq!(event.quantity, 3);
    assert_eq!(event.placed_at, placed.placed_at);
}

async fn invalid_input_is_rejected_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client.clone();
    let order = |user_id: &str, product_id: &str, quantity: i32| pb::PlaceOrderRequest {
        user_id: user_id.to_owned(),
        product_id: product_id.to_owned(),
        quantity,
    };
    let (user, product) = (new_id(), new_id());
    for (request, field) in [
        (order("", &product, 1), "user_id"),
        (order("someone", &product, 1), "user_id"),
        (order(&user, "", 1), "product_id"),
        (order(&user, "12345", 1), "product_id"),
        (order(&user, &product, 0), "quantity"),
        (order(&user, &product, -2), "quantity"),
        (order(&user, &product, 1_001), "quantity"),
    ] {
        assert_status(
            client.place_order(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    let list = |user_id: &str, page_size: i32, page_token: &str| pb::ListOrdersByUserRequest {
        user_id: user_id.to_owned(),
        page_size,
        page_token: page_token.to_owned(),
    };
    for (request, field) in [
        (list("", 10, ""), "user_id"),
        (list(&user, 5_000, ""), "page_size"),
        (list(&user, 10, "not-a-token"), "page_token"),
    ] {
        assert_status(
            client.list_orders_by_user(request).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(
        client
            .cancel_order(pb::CancelOrderRequest {
                id: "x".to_owned(),
                expected_version: None,
            })
            .await,
        Code::InvalidArgument,
        "id",
    );
    assert!(app.outbox().await.is_empty());
}

async fn an_unknown_order_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let unknown = new_id();
    let mut client = app.client.clone();
    assert_status(
        client
            .get_order(pb::GetOrderRequest {
                id: unknown.clone(),
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .cancel_order(pb::CancelOrderRequest {
                id: unknown.clone(),
                expected_version: None,
            })
            .await,
        Code::NotFound,
        &unknown,
    );
}

async fn a_users_orders_are_paged_newest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let (alice, bob, product) = (app.user().await, app.user().await, app.product().await);
    let mut alices = Vec::new();
    for order_idx in 0..5 {
        alices.push(app.place(&alice, &product, order_idx + 1).await.id);
        app.place(&bob, &product, 1).await;
    }
    alices.reverse();

    let mut listed = Vec::new();
    let mut token = String::new();
    let mut n_pages = 0;
    loop {
        let page = app
            .client
            .clone()
            .list_orders_by_user(pb::ListOrdersByUserRequest {
                user_id: alice.clone(),
                page_size: 2,
                page_token: token,
            })
            .await
            .expect("a page")
            .into_inner();
        n_pages += 1;
        assert!(
            page.orders.iter().all(|order| order.user_id == alice),
            "only Alice's orders"
        );
        listed.extend(page.orders.into_iter().map(|order| order.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
        assert!(n_pages < 10, "pagination must end");
    }
    assert_eq!(n_pages, 3);
    assert_eq!(listed, alices, "newest first, each once");

    let nobody = app
        .client
        .clone()
        .list_orders_by_user(pb::ListOrdersByUserRequest {
            user_id: new_id(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .expect("an empty list is an answer")
        .into_inner();
    assert!(nobody.orders.is_empty() && nobody.next_page_token.is_empty());
}

async fn an_order_is_cancelled_once_and_versions_are_checked(backend: Backend) {
    let app = spawn_app(backend).await;
    let placed = app.place(&app.user().await, &app.product().await, 1).await;
    let mut client = app.client.clone();

    assert_status(
        client
            .cancel_order(pb::CancelOrderRequest {
                id: placed.id.clone(),
                expected_version: Some(2),
            })
            .await,
        Code::Aborted,
        "version 1",
    );
    let cancelled = client
        .cancel_order(pb::CancelOrderRequest {
            id: placed.id.clone(),
            expected_version: Some(1),
        })
        .await
        .expect("the cancellation applies")
        .into_inner()
        .order
        .expect("the order is returned");
    assert_eq!(cancelled.status(), pb::OrderStatus::Cancelled);
    assert_eq!(cancelled.version, 2);

    assert_status(
        client
            .cancel_order(pb::CancelOrderRequest {
                id: placed.id.clone(),
                expected_version: None,
            })
            .await,
        Code::FailedPrecondition,
        "already cancelled",
    );

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[1].aggregate_version, 2);
    let event: events::OrderCancelled = payload(&outbox[1]);
    assert_eq!(event.order_id, placed.id);
    assert_eq!(event.user_id, placed.user_id);
}
