//! The `users` binary as an operator runs it: help, bad configuration, start and SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
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
        "RUST_LOG",
    ] {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
}

#[tokio::test]
async fn invalid_configuration_exits_64_naming_the_setting() {
    let output = Command::new(BINARY)
        .args(["--database-url", "mysql://localhost/users"])
        .output()
        .await
        .expect("users runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--database-url"), "{stderr}");
}

#[tokio::test]
async fn sigterm_stops_the_service_cleanly() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(BINARY)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--database-url",
        ])
        .arg(format!("sqlite://{}/users.db", dir.path().display()))
        .env("RUST_LOG", "info")
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
