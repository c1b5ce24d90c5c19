//! What gets onto the bus is checked again where it is read, and what falls off it can be
//! put back: a forged event is dead-lettered (and can be listed, replayed and discarded
//! through the admin API) without changing an answer, and a projection built after the
//! streams lost their history reaches the same answers from the owners' re-emitted state.

use std::time::Duration;

use contracts::events::v1 as events;
use contracts::ops::v1 as ops;
use contracts::ops::v1::dead_letter_admin_client::DeadLetterAdminClient;
use contracts::ops::v1::outbox_admin_client::OutboxAdminClient;
use contracts::purchases::v1 as pb;
use contracts::users::v1 as users_pb;
use harness::{Lab, admin_channel, all_pages, list};
use outbox::{Aggregate, OutboxEvent};
use purchases_async::ReadFrom;
use testkit::{Backend, backend_tests};
use tonic::transport::Channel;
use uuid::Uuid;

backend_tests!(
    a_forged_event_is_dead_lettered_listed_and_changes_no_answer,
    a_projection_built_after_the_streams_lost_their_history_matches_from_re_emitted_state,
);

/// What purchases-async says of `stream` in its answers for `user`.
async fn position(
    client: &pb::purchase_service_client::PurchaseServiceClient<Channel>,
    user: &str,
    stream: &str,
) -> Option<pb::StreamPosition> {
    client
        .clone()
        .list_user_purchases(list(user, 1, ""))
        .await
        .ok()?
        .into_inner()
        .freshness?
        .streams
        .into_iter()
        .find(|position| position.stream == stream)
}

/// Waits (bounded) until `check` holds of the answer's `stream` position.
async fn wait_for_position(
    client: &pb::purchase_service_client::PurchaseServiceClient<Channel>,
    user: &str,
    stream: &str,
    check: impl Fn(&pb::StreamPosition) -> bool,
) -> pb::StreamPosition {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let seen = position(client, user, stream).await;
        if let Some(seen) = seen.as_ref().filter(|seen| check(seen)) {
            return seen.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the {stream} position never got there: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_forged_event_is_dead_lettered_listed_and_changes_no_answer(backend: Backend) {
    let lab = Lab::start(backend).await;
    let ada = lab.writers.register("Ada").await;
    lab.caught_up().await;
    let user_id: Uuid = ada.id.parse().expect("a uuid");

    // What an anonymous client did before authorization: a rename at a version no real
    // write reaches, and a rename that claims to come from another producer. Only the
    // administrator can publish on USERS now; it plays the outsider here.
    let js = lab.nats.admin().await;
    let forge = |version: u64, name: &str| {
        OutboxEvent::new(
            Aggregate {
                producer: "users",
                kind: "user",
                id: &user_id,
                version,
            },
            platform::time::now_micros(),
            &events::UserRenamed {
                user_id: ada.id.clone(),
                name: name.to_owned(),
                ..Default::default()
            },
        )
    };
    testkit::publish_event(&js, &forge(1 << 62, "Mallory")).await;
    let mut impostor = forge(2, "Eve");
    let mut envelope: events::EventEnvelope =
        prost::Message::decode(impostor.envelope.as_slice()).expect("an envelope");
    envelope.producer = "orders".into();
    impostor.envelope = prost::Message::encode_to_vec(&envelope);
    testkit::publish_event(&js, &impostor).await;

    wait_for_position(&lab.asynchronous, &ada.id, "USERS", |position| {
        position.dead_lettered >= 2
    })
    .await;
    let answer = lab
        .asynchronous
        .clone()
        .list_user_purchases(list(&ada.id, 0, ""))
        .await
        .expect("answers")
        .into_inner();
    assert_eq!(
        answer.user.expect("a user").name,
        "Ada",
        "no forgery was applied"
    );

    // A real rename lands: the forged version did not make it look stale.
    lab.writers
        .users
        .clone()
        .update_user(users_pb::UpdateUserRequest {
            id: ada.id.clone(),
            name: "Ada King".into(),
            expected_version: Some(1),
        })
        .await
        .expect("renamed");
    lab.caught_up().await;
    let (user, _, _) = all_pages(&lab.asynchronous, &ada.id, 10)
        .await
        .expect("answers");
    assert_eq!(user.expect("a user").name, "Ada King");

    // The admin API lists both letters with their reasons, in purchases-async and in
    // orders' replica alike.
    let mut admin = DeadLetterAdminClient::new(admin_channel(
        lab.async_admin
            .expect("purchases-async serves its admin APIs"),
    ));
    let letters = admin
        .list_dead_letters(ops::ListDeadLettersRequest {
            stream: "USERS".into(),
            ..Default::default()
        })
        .await
        .expect("listed")
        .into_inner()
        .dead_letters;
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(
        letters[0].reason.contains("beyond any real entity"),
        "{letters:?}"
    );
    assert!(
        letters[1].reason.contains("producer \"orders\""),
        "{letters:?}"
    );
    let replicas = DeadLetterAdminClient::new(admin_channel(lab.admin.orders))
        .list_dead_letters(ops::ListDeadLettersRequest::default())
        .await
        .expect("listed")
        .into_inner()
        .dead_letters;
    assert_eq!(replicas.len(), 2, "orders' replica set them aside too");

    // A replay runs the same checks: a forgery stays one.
    let replayed = admin
        .replay_dead_letters(ops::ReplayDeadLettersRequest {
            ids: Vec::new(),
            all: true,
        })
        .await
        .expect("replayed")
        .into_inner()
        .outcomes;
    assert!(
        replayed
            .iter()
            .all(|outcome| outcome.result() == ops::replay_outcome::Result::StillFailing),
        "{replayed:?}"
    );
    let discarded = admin
        .discard_dead_letters(ops::DiscardDeadLettersRequest {
            ids: letters.iter().map(|letter| letter.id).collect(),
        })
        .await
        .expect("discarded")
        .into_inner()
        .discarded;
    assert_eq!(discarded, 2);
    let refused = admin
        .replay_dead_letters(ops::ReplayDeadLettersRequest {
            ids: vec![letters[0].id],
            all: false,
        })
        .await
        .expect_err("gone");
    assert_eq!(refused.code(), tonic::Code::NotFound);
}

async fn a_projection_built_after_the_streams_lost_their_history_matches_from_re_emitted_state(
    backend: Backend,
) {
    let lab = Lab::start(backend).await;
    let (users, deleted) = harness::random_workload(&lab.writers, 11).await;
    lab.caught_up().await;

    // Retention drops every event the streams hold.
    let js = lab.nats.admin().await;
    for stream in bus::SYSTEM_STREAMS {
        js.get_stream(stream)
            .await
            .expect("the stream")
            .purge()
            .await
            .expect("purged");
    }
    let (_db, _server, rebuilt) = lab.start_second_async("second", ReadFrom::Memory).await;
    let before = rebuilt
        .clone()
        .list_user_purchases(list(&users[0], 0, ""))
        .await;
    assert_eq!(
        before
            .expect_err("a projection built from nothing knows no one")
            .code(),
        tonic::Code::NotFound
    );

    for addr in [lab.admin.users, lab.admin.products, lab.admin.orders] {
        let done = OutboxAdminClient::new(admin_channel(addr))
            .re_emit_state(ops::ReEmitStateRequest {})
            .await
            .expect("re-emitted")
            .into_inner();
        assert!(
            done.entities > 0 && done.events >= done.entities,
            "{done:?}"
        );
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for user in &users {
        loop {
            let original = all_pages(&lab.asynchronous, user, 4)
                .await
                .expect("answers");
            let from_state = all_pages(&rebuilt, user, 4).await;
            if from_state.as_ref().ok() == Some(&original) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "user {user}: the rebuilt projection answers {from_state:?}, the original {original:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for client in [&lab.asynchronous, &rebuilt] {
        let gone = client
            .clone()
            .list_user_purchases(list(&deleted, 0, ""))
            .await
            .expect_err("a deleted user is not found");
        assert_eq!(gone.code(), tonic::Code::NotFound);
    }
    let streams = rebuilt
        .clone()
        .list_user_purchases(list(&users[0], 1, ""))
        .await
        .expect("answers")
        .into_inner()
        .freshness
        .expect("freshness")
        .streams;
    assert!(
        streams.iter().all(|position| position.missed > 0),
        "the rebuilt projection says what it never read: {streams:?}"
    );
}
