//! The whole feed on a three-node JetStream cluster whose servers are killed one after another
//! while events flow: outbox, relay, replicated stream, consumer. Every committed event must
//! be applied exactly once, whichever server led the stream or the consumer when it died.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use consumer::{ApplyError, Consumer, ConsumerSpec, Event, Projection};
use contracts::events::v1 as events;
use natsd::{NatsCluster, SyncPolicy};
use outbox::{Producer, Relay, RelayArgs, RelayConfig, StreamArgs, StreamSpec, Wakeup};
use platform::db::{Database, DatabaseConfig, WriteTx};
use sqlx::Row as _;
use testkit::{Backend, TestDatabase};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USERS: Producer = Producer::new("users", "user");
const CONSUMER: &str = "failover";

/// Records every event id it applies; the table's primary key makes a second apply fail loudly.
#[derive(Debug, Clone, Copy)]
struct Ledger;

impl Projection for Ledger {
    async fn apply(&self, tx: &mut WriteTx, events: &[Event]) -> Result<(), ApplyError> {
        for event in events {
            tx.execute(
                "INSERT INTO ledger (event_id, stream_sequence) VALUES ($1, $2)",
                &[
                    event.envelope.event_id.as_str().into(),
                    i64::try_from(event.stream_sequence).expect("small").into(),
                ],
            )
            .await?;
        }
        Ok(())
    }
}

async fn open(backend: Backend) -> (TestDatabase, Database) {
    let db = TestDatabase::create(backend).await;
    let database = Database::connect(&DatabaseConfig::new(db.url()))
        .await
        .expect("open the database");
    (db, database)
}

/// Which member a round kills: the one leading the stream, the one leading the consumer, or
/// the one the consumer's connection is attached to. Each loses deliveries differently.
#[derive(Debug, Clone, Copy)]
enum Victim {
    StreamLeader,
    ConsumerLeader,
    ConsumerConnection,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_cluster_members_one_after_another_loses_and_duplicates_no_event() {
    testkit::init_tracing();
    let root = tempfile::tempdir().expect("a temp dir");
    let mut cluster = NatsCluster::start(3, SyncPolicy::Always, root.path(), None)
        .await
        .expect("start a three-node cluster");
    let url = cluster.url();

    let (_producer_db, producer) = open(Backend::Sqlite).await;
    producer
        .migrate([outbox::migrations()])
        .await
        .expect("migrate the producer");
    let (_consumer_db, projection) = open(Backend::Sqlite).await;
    projection
        .migrate([consumer::migrations()])
        .await
        .expect("migrate the consumer");
    sqlx::query("CREATE TABLE ledger (event_id TEXT PRIMARY KEY, stream_sequence BIGINT NOT NULL)")
        .execute(projection.pool())
        .await
        .expect("create the ledger");

    let stream_args = StreamArgs {
        stream_replicas: 3,
        ..StreamArgs::default()
    };
    let spec = StreamSpec::for_producer("users", &stream_args);
    let admin = jetstream::new(connect(&url, "admin").await);
    let created = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match spec.ensure(&admin).await {
                Ok(_) => break,
                // The cluster elects its meta leader a moment after starting.
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    assert!(created.is_ok(), "the cluster never accepted the stream");

    let stop = CancellationToken::new();
    let wakeup = Wakeup::new();
    let relay = Relay::new(
        producer.clone(),
        connect(&url, "relay").await,
        spec.clone(),
        wakeup.clone(),
        RelayConfig::from_args(&RelayArgs::default()),
    );
    let relay = tokio::spawn(relay.run(stop.clone()));

    let consumer_client = connect(&url, "consumer").await;
    let mut consumer_spec = ConsumerSpec::new(CONSUMER, bus::USERS);
    consumer_spec.batch_size = 64;
    let feed = Consumer::new(
        projection.clone(),
        consumer_client.clone(),
        consumer_spec,
        Ledger,
    )
    .await
    .expect("read the position");
    let mut status = feed.status();
    let feed = tokio::spawn(feed.run(stop.clone()));

    let writing = CancellationToken::new();
    let writer = tokio::spawn(write_steadily(producer.clone(), wakeup, writing.clone()));

    let victims = [
        Victim::StreamLeader,
        Victim::ConsumerLeader,
        Victim::ConsumerConnection,
    ];
    let mut n_killed = 0;
    for victim in victims.iter().cycle().take(9) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let name = match victim {
            Victim::StreamLeader => leader_of(&admin, None).await,
            Victim::ConsumerLeader => leader_of(&admin, Some(CONSUMER)).await,
            Victim::ConsumerConnection => Some(consumer_client.server_info().server_name),
        };
        let Some(name) = name else {
            tracing::info!(
                ?victim,
                "no leader to kill: the last election is still going on"
            );
            continue;
        };
        tracing::info!(member = %name, ?victim, "killing a cluster member");
        let server = cluster.server_mut(&name).expect("a member of the cluster");
        server.kill().await.expect("kill the member");
        tokio::time::sleep(Duration::from_secs(4)).await;
        server.restart().await.expect("restart the member");
        n_killed += 1;
    }
    assert!(n_killed >= 6, "only {n_killed} members were killed");
    writing.cancel();
    let written = writer.await.expect("the writer finishes");

    let expected = outbox_ids(&producer).await;
    assert_eq!(expected.len(), written, "every write committed its event");
    let applied = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let applied = ledger(&projection).await;
            if applied.len() >= expected.len() {
                return applied;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let position = status.borrow_and_update().clone();
    let applied = match applied {
        Ok(applied) => applied,
        Err(_) => ledger(&projection).await,
    };
    stop.cancel();
    let _ = relay.await;
    let _ = feed.await;

    let missing: Vec<&String> = expected
        .iter()
        .filter(|id| !applied.contains_key(*id))
        .collect();
    let unexpected: Vec<&String> = applied
        .keys()
        .filter(|id| !expected.contains(*id))
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{} of {} events never applied ({missing:?}), {} applied that were never written; consumer at {position:?}; the stream holds {:?}",
        missing.len(),
        expected.len(),
        unexpected.len(),
        stream_sequences_of(&admin, &missing).await,
    );
    assert_eq!(position.n_dead_lettered, 0, "{position:?}");
}

/// Connects as the services do: to every member, failing over between them.
async fn connect(url: &str, name: &'static str) -> async_nats::Client {
    platform::nats::connect(&platform::nats::NatsArgs::new(url), name)
        .await
        .expect("connect to the cluster")
}

/// Commits one event every few milliseconds until told to stop; returns how many.
async fn write_steadily(database: Database, wakeup: Wakeup, stop: CancellationToken) -> usize {
    let mut written = 0;
    while !stop.is_cancelled() {
        let id = Uuid::now_v7();
        let mut tx = database.begin_write().await.expect("begin");
        let payload = events::UserRegistered {
            user_id: id.to_string(),
            email: format!("{id}@example.com"),
            name: format!("user {written}"),
            ..Default::default()
        };
        USERS
            .record(&mut tx, &id, 1, platform::time::now_micros(), &payload)
            .await
            .expect("record the event");
        wakeup.commit(tx).await.expect("commit");
        written += 1;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    written
}

/// The member leading the USERS stream, or the consumer `consumer` on it, asked for up to
/// 10 s while the cluster settles after the last kill.
async fn leader_of(js: &jetstream::Context, consumer: Option<&str>) -> Option<String> {
    let ask = || async {
        let mut stream = js.get_stream(bus::USERS).await.ok()?;
        match consumer {
            None => stream.info().await.ok()?.cluster.clone()?.leader,
            Some(name) => stream.consumer_info(name).await.ok()?.cluster?.leader,
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(leader)) = tokio::time::timeout(Duration::from_secs(2), ask()).await {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

async fn outbox_ids(database: &Database) -> HashSet<String> {
    sqlx::query("SELECT event_id FROM outbox")
        .fetch_all(database.pool())
        .await
        .expect("read the outbox")
        .iter()
        .map(|row| row.get("event_id"))
        .collect()
}

async fn ledger(database: &Database) -> BTreeMap<String, i64> {
    sqlx::query("SELECT event_id, stream_sequence FROM ledger")
        .fetch_all(database.pool())
        .await
        .expect("read the ledger")
        .iter()
        .map(|row| (row.get("event_id"), row.get("stream_sequence")))
        .collect()
}

/// Where the stream holds each of `event_ids`, to tell a loss on the way in from one on the
/// way out.
async fn stream_sequences_of(js: &jetstream::Context, event_ids: &[&String]) -> Vec<String> {
    if event_ids.is_empty() {
        return Vec::new();
    }
    let events = testkit::stream_events(js, bus::USERS).await;
    event_ids
        .iter()
        .map(|id| {
            let at: Vec<usize> = events
                .iter()
                .enumerate()
                .filter(|(_, (_, envelope))| &envelope.event_id == *id)
                .map(|(index, _)| index + 1)
                .collect();
            format!("{id} at {at:?} of {}", events.len())
        })
        .collect()
}
