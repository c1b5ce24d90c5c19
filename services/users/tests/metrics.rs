//! The users service's metrics, scraped as Prometheus would: every call the test makes moves
//! the request counter of its method and status by exactly one, the latency histogram counts
//! them, and promtool accepts the exposition. A binary of its own: the metrics recorder is
//! one per process, and no other test may call in between.

use std::collections::BTreeMap;

use contracts::users::v1 as pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use outbox::RelayArgs;
use platform::config::{CommonArgs, DatabaseArgs};
use platform::nats::NatsArgs;
use testkit::{Backend, RunningServer, TestDatabase};
use users::{Application, Config};

/// Every sample of an exposition, by its full name with labels as written.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, name: &str) -> f64 {
    after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn the_request_counters_move_by_exactly_the_calls_made() {
    let db = TestDatabase::create(Backend::Sqlite).await;
    let mut common = CommonArgs::default();
    common.telemetry.metrics_listen = Some("127.0.0.1:0".parse().expect("an address"));
    let app = Application::build(Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        database_url: db.url().to_owned(),
        nats: NatsArgs::new(testkit::UNREACHABLE_NATS),
        relay: RelayArgs::default(),
        events: outbox::EventSchemaArgs::default(),
        db: DatabaseArgs::default(),
        common,
    })
    .await
    .expect("users starts");
    let metrics = app.metrics_addr().expect("a metrics endpoint");
    let server = RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop));
    let mut client = UserServiceClient::new(server.channel());
    // One call first, so every series exists and the first scrape is a baseline.
    client
        .get_user(pb::GetUserRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("no such user");
    let before = samples(&testkit::scrape_metrics(metrics).await);

    for n in 0..3 {
        client
            .create_user(pb::CreateUserRequest {
                email: format!("metrics-{n}@example.com"),
                name: "Ada".into(),
            })
            .await
            .expect("created");
    }
    for _ in 0..2 {
        client
            .get_user(pb::GetUserRequest {
                id: uuid::Uuid::now_v7().to_string(),
            })
            .await
            .expect_err("no such user");
    }
    client
        .create_user(pb::CreateUserRequest {
            email: "not an email".into(),
            name: "Ada".into(),
        })
        .await
        .expect_err("invalid");

    let exposition = testkit::scrape_metrics(metrics).await;
    let after = samples(&exposition);
    let create = r#"rpc_method="users.v1.UserService/CreateUser""#;
    let get = r#"rpc_method="users.v1.UserService/GetUser""#;
    assert_eq!(
        delta(
            &before,
            &after,
            &format!(r#"rpc_server_requests_total{{{create},grpc_code="Ok"}}"#)
        ),
        3.0,
        "{exposition}"
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &format!(r#"rpc_server_requests_total{{{create},grpc_code="InvalidArgument"}}"#)
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &format!(r#"rpc_server_requests_total{{{get},grpc_code="NotFound"}}"#)
        ),
        2.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &format!("rpc_server_duration_seconds_count{{{create}}}")
        ),
        4.0,
        "the histogram counts every CreateUser"
    );
    assert!(
        after.contains_key(&format!(
            r#"rpc_server_duration_seconds_bucket{{{create},le="0.0001"}}"#
        )),
        "the latency buckets resolve 100 µs:\n{exposition}"
    );
    assert!(
        after.contains_key(r#"outbox_pending_rows{stream="USERS"}"#),
        "the outbox is measured, NATS or not:\n{exposition}"
    );
    testkit::check_exposition(&exposition);
}
