//! Requests no well-behaved client sends: purchases-sync answers each with a gRPC status,
//! never a panic and never a reset stream.

use contracts::purchases::v1 as pb;
use platform::config::CommonArgs;
use prost::Message as _;
use purchases::fanout::Order;
use purchases_sync::{Application, Config};
use testkit::RunningServer;
use testkit::raw::grpc_call;

const LIST: &str = "/purchases.v1.PurchaseService/ListUserPurchases";

/// purchases-sync with every dependency unreachable: any call that gets as far as the
/// fan-out fails with UNAVAILABLE naming a dependency.
async fn alone() -> RunningServer {
    testkit::init_tracing();
    let nowhere = "http://127.0.0.1:1".to_owned();
    let app = Application::build(Config {
        listen: "127.0.0.1:0".parse().expect("an address"),
        users_url: nowhere.clone(),
        orders_url: nowhere.clone(),
        products_url: nowhere,
        fanout: Order::Parallel,
        call_timeout_ms: 500,
        max_calls_per_dependency: 8,
        hedge_after_ms: None,
        common: CommonArgs::default(),
    })
    .await
    .expect("purchases-sync starts");
    RunningServer::spawn(app.local_addr(), |stop| app.run_until_stopped(stop))
}

fn request() -> Vec<u8> {
    pb::ListUserPurchasesRequest {
        user_id: uuid::Uuid::now_v7().to_string(),
        page_size: 5,
        page_token: String::new(),
        ..Default::default()
    }
    .encode_to_vec()
}

#[tokio::test]
async fn a_grpc_timeout_beyond_the_spec_is_ignored_and_the_call_answered() {
    let server = alone().await;
    // More digits than the spec's 8, a value that overflows an Instant, a bad unit, and
    // the largest valid one.
    for timeout in [
        "18446744073709551615H",
        "18446744073709551615S",
        "99999999999999999999H",
        "123456789S",
        "5x",
        "-1S",
        "99999999H",
    ] {
        let answer = grpc_call(
            server.addr(),
            LIST,
            &[("grpc-timeout", timeout.to_owned())],
            &request(),
        )
        .await
        .unwrap_or_else(|error| panic!("grpc-timeout {timeout}: {error}"));
        assert_eq!(answer.http_status, 200, "{timeout}: {answer:?}");
        assert_eq!(
            answer.grpc_status.as_deref(),
            Some("14"),
            "{timeout}: UNAVAILABLE, as without a deadline: {answer:?}"
        );
        assert!(
            answer
                .grpc_message
                .as_deref()
                .is_some_and(|message| message.contains("users") || message.contains("orders")),
            "{timeout}: the message names the dependency: {answer:?}"
        );
    }
}

#[tokio::test]
async fn a_huge_header_block_is_refused_and_the_service_serves_on() {
    let server = alone().await;
    let huge = "x".repeat(64 * 1024);
    let refused = grpc_call(server.addr(), LIST, &[("x-padding", huge)], &request()).await;
    assert!(
        refused
            .as_ref()
            .map_or(true, |answer| answer.http_status != 200
                || answer.grpc_status.as_deref() != Some("0")),
        "a 64 KiB header block is not served: {refused:?}"
    );
    let answer = grpc_call(server.addr(), LIST, &[], &request())
        .await
        .expect("the next caller is answered");
    assert_eq!(answer.grpc_status.as_deref(), Some("14"), "{answer:?}");
}
