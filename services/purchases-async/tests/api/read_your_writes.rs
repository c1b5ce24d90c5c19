//! Reading one's own write: a read that names an order just placed (`wait_for_order_id`)
//! is answered by purchases-async once its projection holds the order, from memory and from
//! the database; one that cannot be satisfied ends in DEADLINE_EXCEEDED saying what was
//! missing; the modes that read the owners answer at once.

use std::time::Duration;

use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use harness::{Lab, list};
use testkit::{Backend, assert_status, backend_tests};
use tonic::Code;
use tonic::transport::Channel;

backend_tests!(
    a_read_that_waits_for_an_order_answers_once_the_event_arrives,
    a_wait_that_cannot_be_met_ends_at_the_deadline_saying_what_is_missing,
    reads_waiting_for_orders_that_never_come_cannot_take_the_service,
);

fn waiting_for(
    user: &str,
    order: &str,
    timeout: Duration,
) -> tonic::Request<pb::ListUserPurchasesRequest> {
    let mut request = tonic::Request::new(pb::ListUserPurchasesRequest {
        wait_for_order_id: order.to_owned(),
        ..list(user, 10, "")
    });
    request.set_timeout(timeout);
    request
}

async fn order_ids(
    client: &PurchaseServiceClient<Channel>,
    request: tonic::Request<pb::ListUserPurchasesRequest>,
) -> Result<Vec<String>, tonic::Status> {
    let answer = client.clone().list_user_purchases(request).await?;
    Ok(answer
        .into_inner()
        .purchases
        .into_iter()
        .map(|purchase| purchase.order_id)
        .collect())
}

async fn a_read_that_waits_for_an_order_answers_once_the_event_arrives(backend: Backend) {
    let mut lab = Lab::start(backend).await;
    let user = lab.writers.register("Ada").await.id;
    let product = lab.writers.create_product("Lamp", 1200).await.id;
    lab.caught_up().await;

    for read_from in [
        purchases_async::ReadFrom::Memory,
        purchases_async::ReadFrom::Database,
    ] {
        lab.stop_async().await;
        lab.start_async_reading_from(false, read_from).await;
        lab.caught_up().await;
        // With NATS away the order's event cannot reach the projection, however fast it is:
        // the read has to hold its answer until NATS is back.
        lab.nats.server.stop().await.expect("nats-server stops");
        let order = lab.writers.place(&user, &product, 2).await.id;
        let now = order_ids(&lab.asynchronous, tonic::Request::new(list(&user, 10, "")))
            .await
            .expect("purchases-async answers without NATS");
        assert!(!now.contains(&order), "{read_from:?}: not there yet");

        let client = lab.asynchronous.clone();
        let (user_id, order_id) = (user.clone(), order.clone());
        let waiting = tokio::spawn(async move {
            order_ids(
                &client,
                waiting_for(&user_id, &order_id, Duration::from_secs(20)),
            )
            .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !waiting.is_finished(),
            "{read_from:?}: the read waits while the order cannot have arrived"
        );
        lab.nats
            .server
            .restart()
            .await
            .expect("nats-server restarts");
        let seen = waiting
            .await
            .expect("the read task")
            .expect("answered once the order arrived");
        assert!(
            seen.contains(&order),
            "{read_from:?}: the answer holds the order it waited for: {seen:?}"
        );
    }
}

async fn a_wait_that_cannot_be_met_ends_at_the_deadline_saying_what_is_missing(backend: Backend) {
    let lab = Lab::start(backend).await;
    let ada = lab.writers.register("Ada").await.id;
    let grace = lab.writers.register("Grace").await.id;
    let product = lab.writers.create_product("Lamp", 1200).await.id;
    let adas = lab.writers.place(&ada, &product, 1).await.id;

    // The order arrives, but under another user: waiting for it as Grace's cannot end well.
    let status = assert_status(
        order_ids(
            &lab.asynchronous,
            waiting_for(&grace, &adas, Duration::from_millis(500)),
        )
        .await,
        Code::DeadlineExceeded,
        &adas,
    );
    assert!(
        status.message().contains("the projection has applied")
            && status.message().contains(&grace),
        "the message says whose purchases were looked at and how far the projection got: {}",
        status.message()
    );
    // Ada's own read of it is answered.
    answered_with(&lab.asynchronous, &ada, &adas, "answered").await;

    for client in [&lab.asynchronous, &lab.sync, &lab.bus] {
        assert_status(
            order_ids(
                client,
                waiting_for(&ada, "not-an-id", Duration::from_secs(5)),
            )
            .await,
            Code::InvalidArgument,
            "wait_for_order_id",
        );
    }
    // The modes that read the owners at request time have every placed order already, and
    // do not wait for one that is not there.
    for client in [&lab.sync, &lab.bus] {
        answered_with(client, &ada, &adas, "answered").await;
        let not_yours = order_ids(client, waiting_for(&grace, &adas, Duration::from_secs(5)))
            .await
            .expect("answered at once");
        assert!(not_yours.is_empty());
    }
}

/// The attack: a client fills the server with reads waiting for orders that will never come
/// (each may hold a request slot for 10 s). Past the cap on waiting reads they are refused at
/// once, while reads that need no wait, and waits for orders already there, are answered.
async fn reads_waiting_for_orders_that_never_come_cannot_take_the_service(backend: Backend) {
    let mut lab = Lab::start(backend).await;
    let user = lab.writers.register("Ada").await.id;
    let product = lab.writers.create_product("Lamp", 1200).await.id;
    let placed = lab.writers.place(&user, &product, 1).await.id;
    lab.caught_up().await;
    lab.stop_async().await;
    lab.start_async_with(false, purchases_async::ReadFrom::Memory, Some(2))
        .await;
    lab.caught_up().await;

    let never = || uuid::Uuid::now_v7().to_string();
    let hold = || {
        let client = lab.asynchronous.clone();
        let (user, order) = (user.clone(), never());
        tokio::spawn(async move {
            order_ids(&client, waiting_for(&user, &order, Duration::from_secs(3))).await
        })
    };
    let mut holders = vec![hold(), hold()];
    // Probes are short waits (50 ms) that compete with the holders for the two slots; a
    // holder refused because a probe was in is sent again, until both hold and a probe is
    // refused. Bounded in time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let refused = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a waiting read beyond the two was never refused"
        );
        for holder in &mut holders {
            if holder.is_finished() {
                *holder = hold();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let probe = order_ids(
            &lab.asynchronous,
            waiting_for(&user, &never(), Duration::from_millis(50)),
        )
        .await;
        match probe {
            Err(status)
                if status.code() == Code::ResourceExhausted
                    && holders.iter().all(|holder| !holder.is_finished()) =>
            {
                break status;
            }
            _ => {}
        }
    };
    assert!(
        refused.message().contains("2 reads are already waiting")
            && refused.message().contains("wait_for_order_id"),
        "the refusal says why and what to do: {}",
        refused.message()
    );
    // Everything that needs no wait is still answered while the two hold on.
    let plain = order_ids(&lab.asynchronous, tonic::Request::new(list(&user, 10, "")))
        .await
        .expect("a plain read is answered");
    assert!(plain.contains(&placed));
    answered_with(
        &lab.asynchronous,
        &user,
        &placed,
        "a wait for an order already there takes no slot",
    )
    .await;
    for holder in holders {
        ended_unanswered(holder.await.expect("the waiting task"));
    }
    // Their slots are free again: the next wait is admitted and runs to its deadline.
    ended_unanswered(
        order_ids(
            &lab.asynchronous,
            waiting_for(&user, &never(), Duration::from_millis(300)),
        )
        .await,
    );
}

/// A read that waits for `order` is answered, with it.
async fn answered_with(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
    order: &str,
    expectation: &str,
) {
    let seen = order_ids(client, waiting_for(user, order, Duration::from_secs(10)))
        .await
        .expect(expectation);
    assert!(seen.contains(&order.to_owned()), "{expectation}: {seen:?}");
}

/// A wait that ran to its deadline: the service's DEADLINE_EXCEEDED, or the caller's own
/// timeout when the answer, sent 5 ms before the deadline, took longer than that to arrive
/// on a busy machine. Either way not refused, and not answered.
fn ended_unanswered(result: Result<Vec<String>, tonic::Status>) {
    let status = result.expect_err("no order to answer with");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "the wait ran to its deadline: {status:?}"
    );
}
