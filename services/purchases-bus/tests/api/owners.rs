//! The owners on the bus: registered as NATS services that discovery finds, answering a
//! question with the bytes and the status their gRPC API gives for the same request.

use std::time::Duration;

use contracts::users::v1 as users_pb;
use harness::Lab;
use prost::Message as _;
use testkit::Backend;

/// Asks `subject` as the lab's administrator, who may ask anything.
async fn ask(lab: &Lab, subject: String, payload: Vec<u8>) -> async_nats::Message {
    let admin = lab.nats.client(bus::access::ADMIN).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        admin.request(subject, payload.into()),
    )
    .await
    .expect("answered in time")
    .expect("someone answers")
}

#[tokio::test]
async fn each_owner_is_a_nats_service_that_discovery_finds() {
    let lab = Lab::start(Backend::Sqlite).await;
    for owner in ["users", "products", "orders"] {
        let info = ask(&lab, format!("$SRV.INFO.{owner}"), Vec::new()).await;
        let info: serde_json::Value =
            serde_json::from_slice(&info.payload).expect("INFO answers JSON");
        assert_eq!(info["name"], owner);
        assert_eq!(info["version"], bus::ask::SERVICE_VERSION);
        let endpoints = info["endpoints"].as_array().expect("endpoints");
        let mut expected: Vec<String> = bus::ask::answered_by(owner)
            .iter()
            .map(bus::ask::Question::subject)
            .collect();
        expected.sort();
        let mut subjects: Vec<&str> = endpoints
            .iter()
            .map(|endpoint| endpoint["subject"].as_str().expect("a subject"))
            .collect();
        subjects.sort_unstable();
        assert_eq!(subjects, expected, "{owner}'s endpoints");
        assert!(
            endpoints
                .iter()
                .all(|endpoint| endpoint["queue_group"] == bus::ask::QUEUE_GROUP),
            "instances share questions: {endpoints:?}"
        );
    }
}

#[tokio::test]
async fn a_question_gets_the_answer_and_the_status_grpc_gives() {
    let lab = Lab::start(Backend::Sqlite).await;
    let user = lab.writers.register("Ada").await;
    let question = |id: &str| users_pb::GetUserRequest { id: id.into() }.encode_to_vec();

    let answer = ask(&lab, bus::ask::GET_USER.subject(), question(&user.id)).await;
    assert!(
        platform::answers::status_of_answer(&answer).is_none(),
        "{:?}",
        answer.headers
    );
    let on_bus = users_pb::GetUserResponse::decode(answer.payload).expect("a GetUser answer");
    let on_grpc = lab
        .writers
        .users
        .clone()
        .get_user(users_pb::GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .expect("gRPC answers")
        .into_inner();
    assert_eq!(on_bus, on_grpc);

    for id in ["not-a-uuid", &uuid::Uuid::now_v7().to_string()] {
        let answer = ask(&lab, bus::ask::GET_USER.subject(), question(id)).await;
        let on_bus = platform::answers::status_of_answer(&answer).expect("an error answer");
        let on_grpc = lab
            .writers
            .users
            .clone()
            .get_user(users_pb::GetUserRequest { id: id.into() })
            .await
            .expect_err("an error on gRPC too");
        assert_eq!(on_bus.code(), on_grpc.code(), "{id}");
        assert_eq!(on_bus.message(), on_grpc.message(), "{id}");
    }

    let garbage = ask(&lab, bus::ask::GET_USER.subject(), vec![0xff, 0xff, 0xff]).await;
    assert_eq!(
        platform::answers::status_of_answer(&garbage)
            .expect("an error answer")
            .code(),
        tonic::Code::Internal,
        "a body that is not a GetUserRequest is refused as gRPC refuses it"
    );
}
