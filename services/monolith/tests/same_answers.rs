//! The monolith against the microservices: the same random workload written into both gives
//! the same purchases, the same paging and the same refusals.

use contracts::purchases::v1 as pb;
use harness::{Lab, Monolith, all_pages, list, random_workload};
use testkit::{Backend, assert_status, backend_tests};
use tonic::Code;

backend_tests!(the_monolith_answers_the_same_workload_with_the_same_purchases);

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

    let monolith = Monolith::start(backend).await;
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
