//! ListUserPurchases end to end with the real grpcurl, through reflection, in all four modes.

use testkit::Backend;
use testkit::run_grpcurl;

use harness::{Lab, Monolith};

async fn list_purchases(addr: &str, user_id: &str) -> serde_json::Value {
    let listed = run_grpcurl(&["-plaintext", addr, "list"]).await;
    assert!(listed.contains("purchases.v1.PurchaseService"), "{listed}");
    let answer = run_grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"user_id": "{user_id}", "page_size": 10}}"#),
        addr,
        "purchases.v1.PurchaseService/ListUserPurchases",
    ])
    .await;
    serde_json::from_str(&answer).expect("grpcurl prints JSON")
}

#[tokio::test]
async fn grpcurl_lists_a_users_purchases_in_every_mode() {
    let lab = Lab::start(Backend::Sqlite).await;
    let user = lab.writers.register("Ada").await.id;
    let product = lab.writers.create_product("Blue mug", 1250).await.id;
    lab.writers.place(&user, &product, 2).await;
    lab.caught_up().await;

    let monolith = Monolith::start(Backend::Sqlite).await;
    let monolith_user = monolith.writers.register("Ada").await.id;
    let monolith_product = monolith.writers.create_product("Blue mug", 1250).await.id;
    monolith
        .writers
        .place(&monolith_user, &monolith_product, 2)
        .await;

    let async_addr = lab
        .async_server
        .as_ref()
        .expect("purchases-async runs")
        .addr()
        .to_string();
    // Read your own write, as the README shows it: place, then a read that waits for it.
    let placed = lab.writers.place(&user, &product, 3).await.id;
    let answer = run_grpcurl(&[
        "-plaintext",
        "-max-time",
        "10",
        "-d",
        &format!(r#"{{"user_id": "{user}", "wait_for_order_id": "{placed}"}}"#),
        &async_addr,
        "purchases.v1.PurchaseService/ListUserPurchases",
    ])
    .await;
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("grpcurl prints JSON");
    assert_eq!(
        answer["purchases"][0]["orderId"],
        placed.as_str(),
        "{answer}"
    );

    for (addr, user, mode) in [
        (lab.sync_server.addr().to_string(), &user, "MODE_SYNC"),
        (lab.bus_server.addr().to_string(), &user, "MODE_BUS"),
        (async_addr, &user, "MODE_ASYNC"),
        (
            monolith.server.addr().to_string(),
            &monolith_user,
            "MODE_MONOLITH",
        ),
    ] {
        let answer = list_purchases(&addr, user).await;
        assert_eq!(answer["mode"], mode, "{answer}");
        assert_eq!(answer["user"]["name"], "Ada", "{answer}");
        assert_eq!(
            answer["purchases"][0]["quantity"],
            if mode == "MODE_MONOLITH" { 2 } else { 3 },
            "{answer}"
        );
        assert_eq!(
            answer["purchases"][0]["product"]["title"], "Blue mug",
            "{answer}"
        );
        assert_eq!(
            answer["purchases"][0]["status"], "ORDER_STATUS_PLACED",
            "{answer}"
        );
    }
}
