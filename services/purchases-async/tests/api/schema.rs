//! Event schema evolution: events of schema 2 (name split into given and family name,
//! prices with a currency) reach a projection built for schema 1 and one built for schema 2.
//! The older one goes on answering, without the new fields; the newer one serves them.

use std::time::Duration;

use contracts::events::v1 as events;
use contracts::purchases::v1 as pb;
use harness::{Lab, list};
use outbox::{Aggregate, OutboxEvent};
use purchases_async::ReadFrom;
use testkit::{Backend, backend_tests};
use tonic::transport::Channel;
use uuid::Uuid;

backend_tests!(an_older_reader_ignores_schema_2_fields_and_a_newer_one_serves_them);

/// Publishes a schema-2 event as its producer's relay would.
async fn publish_v2<M: prost::Message + prost::Name>(
    lab: &Lab,
    producer: &'static str,
    kind: &'static str,
    id: &Uuid,
    payload: &M,
) {
    let js = lab.nats.admin().await;
    let aggregate = Aggregate {
        producer,
        kind,
        id,
        version: 1,
    };
    let event = OutboxEvent::with_schema(aggregate, platform::time::now_micros(), 2, payload);
    testkit::publish_event(&js, &event).await;
}

/// The projection's answer for `user` once it holds a purchase (bounded wait).
async fn answer_with_a_purchase(
    client: &pb::purchase_service_client::PurchaseServiceClient<Channel>,
    user: &str,
) -> pb::ListUserPurchasesResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(answer) = client.clone().list_user_purchases(list(user, 0, "")).await {
            let answer = answer.into_inner();
            if answer
                .purchases
                .first()
                .is_some_and(|purchase| purchase.product.is_some())
            {
                return answer;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projection never showed the purchase"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn an_older_reader_ignores_schema_2_fields_and_a_newer_one_serves_them(backend: Backend) {
    let lab = Lab::start(backend).await;
    let (_db, _server, older) = lab
        .start_second_async_reading("schema-1-reader", ReadFrom::Memory, 1)
        .await;
    let (user, product) = (Uuid::now_v7(), Uuid::now_v7());
    publish_v2(
        &lab,
        "users",
        "user",
        &user,
        &events::UserRegistered {
            user_id: user.to_string(),
            email: "ada@example.com".into(),
            name: "Ada King Lovelace".into(),
            given_name: "Ada King".into(),
            family_name: "Lovelace".into(),
        },
    )
    .await;
    publish_v2(
        &lab,
        "products",
        "product",
        &product,
        &events::ProductCreated {
            product_id: product.to_string(),
            title: "Analytical Engine".into(),
            image_url: "https://example.com/engine.png".into(),
            price_cents: 1_842,
            currency: "GBP".into(),
        },
    )
    .await;
    // orders learns of both from the same events, whatever their schema.
    lab.writers
        .place(&user.to_string(), &product.to_string(), 2)
        .await;

    let newer = answer_with_a_purchase(&lab.asynchronous, &user.to_string()).await;
    let older = answer_with_a_purchase(&older, &user.to_string()).await;

    let newer_user = newer.user.expect("a user");
    assert_eq!(
        (
            newer_user.name.as_str(),
            newer_user.given_name.as_str(),
            newer_user.family_name.as_str()
        ),
        ("Ada King Lovelace", "Ada King", "Lovelace")
    );
    let newer_product = newer.purchases[0].product.clone().expect("a product");
    assert_eq!(newer_product.currency, "GBP");

    let older_user = older.user.expect("a user");
    assert_eq!(
        older_user.name, "Ada King Lovelace",
        "the old field still carries the name"
    );
    assert_eq!(
        (
            older_user.given_name.as_str(),
            older_user.family_name.as_str()
        ),
        ("", "")
    );
    let older_product = older.purchases[0].product.clone().expect("a product");
    assert_eq!(
        (
            older_product.title.as_str(),
            older_product.price_cents,
            older_product.currency.as_str()
        ),
        ("Analytical Engine", 1_842, "")
    );
    assert_eq!(
        older.purchases[0].order_id, newer.purchases[0].order_id,
        "both readers hold the same purchase"
    );
}
