//! Clients that hold connections instead of making calls: idle sockets never lock a caller
//! out, count as no request, and are closed once idle.

use std::time::Duration;

use testkit::Backend;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::spawn_app_with;

/// Opens `n` TCP connections to `addr` that never send a byte.
async fn idle_sockets(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(TcpStream::connect(addr).await.expect("connect"));
    }
    sockets
}

/// How many of `sockets` the server has closed (end of stream or a reset) by `deadline`.
/// What the server sent first (its HTTP/2 settings) is read past.
async fn closed_by(sockets: &mut [TcpStream], deadline: tokio::time::Instant) -> usize {
    let mut closed = 0;
    let mut buf = [0_u8; 1024];
    for socket in sockets {
        let until_closed = async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout_at(deadline, until_closed)
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    closed
}

async fn served(app: &crate::helpers::TestApp) {
    // A caller on a connection of its own: the test's long-lived client idles through the
    // set-up past the short idle timeout these tests use, and the server closes its
    // connection by design; a request sent at the moment of that close may fail (see
    // `platform::connections`), which is not what is tested here.
    let channel = app.server.channel();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("the health check answers")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let user = contracts::users::v1::user_service_client::UserServiceClient::new(channel)
        .create_user(contracts::users::v1::CreateUserRequest {
            email: format!("{}@example.com", uuid::Uuid::now_v7()),
            name: "Ada".to_owned(),
        })
        .await
        .expect("the user is created")
        .into_inner()
        .user
        .expect("a created user is returned");
    assert_eq!(user.name, "Ada", "a real call is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_neither_shed_a_call_nor_outlive_the_idle_timeout() {
    platform::process::raise_open_files_limit();
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.common.connection_idle_timeout_ms = 2_000;
    })
    .await;
    let mut sockets = idle_sockets(app.server.addr(), 2_000).await;
    // Before: each idle socket counted as a request, and past 256 every call, health checks
    // included, failed with RESOURCE_EXHAUSTED.
    served(&app).await;
    let closed = closed_by(
        &mut sockets,
        tokio::time::Instant::now() + Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        closed, 2_000,
        "every idle socket is closed after the idle timeout"
    );
    served(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_bound_a_caller_takes_the_place_of_an_idle_socket() {
    let app = spawn_app_with(Backend::Sqlite, |config| {
        config.common.max_connections = 50;
    })
    .await;
    let mut sockets = idle_sockets(app.server.addr(), 100).await;
    served(&app).await;
    let closed = closed_by(
        &mut sockets,
        tokio::time::Instant::now() + Duration::from_secs(5),
    )
    .await;
    assert!(
        closed >= 50,
        "the oldest idle sockets made room: {closed} of 100 closed"
    );
}
