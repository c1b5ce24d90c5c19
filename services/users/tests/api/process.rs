//! The `users` binary as an operator runs it: help, bad configuration, start and SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use contracts::users::v1 as pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const BINARY: &str = env!("CARGO_BIN_EXE_users");

#[tokio::test]
async fn help_names_every_flag_and_its_environment_variable() {
    let output = Command::new(BINARY)
        .arg("--help")
        .output()
        .await
        .expect("users runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--listen",
        "USERS_LISTEN",
        "--database-url",
        "USERS_DATABASE_URL",
        "127.0.0.1:50051",
        "--nats-url",
        "NATS_URL",
        "--outbox-batch-size",
        "RUST_LOG",
    ] {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
}

/// Runs users with `flag value` and checks it exits 64 naming the flag.
async fn refused(flag: &str, value: &str) {
    let output = Command::new(BINARY)
        .args([flag, value])
        .output()
        .await
        .expect("users runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(flag), "{stderr}");
}

#[tokio::test]
async fn invalid_configuration_exits_64_naming_the_setting() {
    refused("--database-url", "mysql://localhost/users").await;
}

#[tokio::test]
async fn worker_threads_are_checked_and_tokios_own_variable_cannot_crash_the_service() {
    refused("--worker-threads", "0").await;

    // Left to itself, tokio reads TOKIO_WORKER_THREADS and panics on 0.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database_url = format!("sqlite://{}/users.db", dir.path().display());
    let (mut child, addr) = spawn_users_with(
        &database_url,
        testkit::UNREACHABLE_NATS,
        &[("TOKIO_WORKER_THREADS", "0")],
    )
    .await;
    create_users(&mut users_client(&addr).await, 1).await;
    child.start_kill().expect("stop users");
}

/// Starts the binary on port 0 and returns it with the address it logged.
async fn spawn_users(database_url: &str, nats_url: &str) -> (Child, String) {
    spawn_users_with(database_url, nats_url, &[]).await
}

/// The same with more environment variables.
async fn spawn_users_with(
    database_url: &str,
    nats_url: &str,
    env: &[(&str, &str)],
) -> (Child, String) {
    let mut child = Command::new(BINARY)
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--database-url", database_url, "--nats-url", nats_url])
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("users starts");

    // The service logs the address it bound; port 0 means only the log knows it.
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read the log") {
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(addr) = event["fields"]["addr"].as_str() {
                return addr.to_owned();
            }
        }
        panic!("users exited before logging its address");
    })
    .await
    .expect("users logs its address");
    // Keep draining the log so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

async fn users_client(addr: &str) -> UserServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("connect to users");
    UserServiceClient::new(channel)
}

async fn create_users(client: &mut UserServiceClient<tonic::transport::Channel>, n: usize) {
    for _ in 0..n {
        let id = uuid::Uuid::now_v7();
        client
            .create_user(pb::CreateUserRequest {
                email: format!("{id}@example.com"),
                name: "Ada".into(),
            })
            .await
            .expect("the user is created");
    }
}

#[tokio::test]
async fn a_killed_service_publishes_every_committed_event_exactly_once_after_restart() {
    let nats = testkit::start_nats().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database_url = format!("sqlite://{}/users.db", dir.path().display());

    let (mut child, addr) = spawn_users(&database_url, &nats.url()).await;
    let mut client = users_client(&addr).await;
    create_users(&mut client, 60).await;
    // Killed the moment the last write commits: the relay is mid-batch or has not woken.
    child.start_kill().expect("SIGKILL users");
    child.wait().await.expect("users dies");

    let (mut child, addr) = spawn_users(&database_url, &nats.url()).await;
    let mut client = users_client(&addr).await;
    create_users(&mut client, 10).await;

    let js = testkit::connect(&nats).await;
    let outbox = testkit::outbox_events(&database_url).await;
    assert_eq!(outbox.len(), 70, "every committed write has its event");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let stream = loop {
        let stream = match js.get_stream(bus::USERS).await {
            Ok(_) => testkit::stream_events(&js, bus::USERS).await,
            Err(_) => Vec::new(),
        };
        if stream.len() >= outbox.len() {
            break stream;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} events reached the stream",
            stream.len(),
            outbox.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let published: Vec<&str> = stream.iter().map(|(_, e)| e.event_id.as_str()).collect();
    let recorded: Vec<&str> = outbox.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(published, recorded, "each event once, in commit order");
    child.start_kill().expect("stop users");
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let database_url = format!("sqlite://{}/users.db", dir.path().display());
    let (mut child, addr) = spawn_users(&database_url, testkit::UNREACHABLE_NATS).await;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("connect to users");
    let mut health = HealthClient::new(channel);
    let status = health
        .check(HealthCheckRequest {
            service: "users.v1.UserService".to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    drop(health);

    let pid = child.id().expect("the child is running").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("users stops within the grace period")
        .expect("wait for users");
    assert!(exit.success(), "users exited with {exit:?}");
}
