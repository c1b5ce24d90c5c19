//! The helper starts a real, recent-enough nats-server and stops, kills and restarts it with
//! its data intact.

use std::time::Duration;

use async_nats::jetstream;
use natsd::{MIN_VERSION, NatsServer, NatsServerOptions, SyncPolicy};

async fn publish_and_count(url: &str, n: usize) -> u64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let mut stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe.>".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("create a stream");
    for _ in 0..n {
        js.publish("probe.x", "hello".into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test]
async fn the_server_found_is_recent_enough_and_runs_jetstream_on_an_ephemeral_port() {
    let binary = natsd::find_nats_server().expect("a nats-server is found or provisioned");
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .expect("run nats-server --version");
    let version = String::from_utf8_lossy(&output.stdout);
    let numbers: Vec<u32> = version
        .trim()
        .trim_start_matches("nats-server: v")
        .split(['.', '-'])
        .take(3)
        .map(|part| part.parse().expect("a number"))
        .collect();
    assert!(
        (numbers[0], numbers[1], numbers[2]) >= MIN_VERSION,
        "{version} is older than {MIN_VERSION:?}"
    );

    let server = NatsServer::start(NatsServerOptions::default())
        .await
        .expect("start");
    assert_ne!(server.port(), 4222, "never the machine's shared server");
    let config = std::fs::read_to_string(server.store_dir().join("nats-server.conf"))
        .expect("the config is written");
    assert!(config.contains("sync_interval: always"), "{config}");
    assert_eq!(publish_and_count(&server.url(), 3).await, 3);
}

#[tokio::test]
async fn acknowledged_messages_survive_a_kill_and_a_restart_on_the_same_port() {
    let mut server = NatsServer::start(NatsServerOptions {
        sync: SyncPolicy::Always,
        ..NatsServerOptions::default()
    })
    .await
    .expect("start");
    let port = server.port();
    assert_eq!(publish_and_count(&server.url(), 5).await, 5);

    server.kill().await.expect("kill");
    assert!(!server.is_running());
    assert!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await
        .map_or(true, |connected| connected.is_err()),
        "nothing listens after a kill"
    );

    server.restart().await.expect("restart");
    assert_eq!(server.port(), port, "the same port, so clients reconnect");
    assert_eq!(
        publish_and_count(&server.url(), 1).await,
        6,
        "nothing acknowledged was lost"
    );

    server.stop().await.expect("graceful stop");
    server
        .restart()
        .await
        .expect("restart after a graceful stop");
    assert_eq!(publish_and_count(&server.url(), 0).await, 6);
}
