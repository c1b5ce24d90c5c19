//! The per-item fan-out (one GetProduct per product of the page) gives the batch fan-out's
//! answers, hedged or not: width changes how a request can be slow, never what it answers.

use harness::{Lab, all_pages, list, random_workload};
use purchases::fanout::Order;
use testkit::{Backend, assert_status};
use tonic::Code;

#[tokio::test]
async fn the_per_item_fan_out_answers_as_the_batch_fan_out_does() {
    let lab = Lab::start(Backend::Sqlite).await;
    let (users, deleted) = random_workload(&lab.writers, 11).await;
    let (_per_item_server, per_item) = lab.start_sync(Order::PerItem, None).await;
    // Hedging after 1 ms sends nearly every call twice: the answers must not change.
    let (_hedged_server, hedged) = lab.start_sync(Order::PerItem, Some(1)).await;
    let mut purchases = 0;
    for user in &users {
        let batch = all_pages(&lab.sync, user, 3).await.expect("batch answers");
        purchases += batch.1.len();
        for (name, client) in [("per-item", &per_item), ("hedged per-item", &hedged)] {
            let answer = all_pages(client, user, 3)
                .await
                .unwrap_or_else(|status| panic!("{name} answers: {status:?}"));
            assert_eq!(answer, batch, "{name}, user {user}");
        }
    }
    assert!(purchases > 0, "the workload placed orders");
    for client in [&per_item, &hedged] {
        assert_status(
            client
                .clone()
                .list_user_purchases(list(&deleted, 0, ""))
                .await,
            Code::NotFound,
            &deleted,
        );
    }
}
