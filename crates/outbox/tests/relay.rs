//! The relay against a real nats-server and both database backends: outages of NATS and
//! kills of the relay lose nothing, duplicate nothing and keep each aggregate's order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream;
use contracts::events::v1 as events;
use natsd::NatsServer;
use outbox::{Producer, Relay, RelayArgs, RelayConfig, StreamArgs, StreamSpec, Wakeup};
use platform::db::{Database, DatabaseConfig};
use sqlx::Row as _;
use testkit::{Backend, TestDatabase, backend_tests};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

backend_tests!(
    events_written_while_nats_is_down_all_arrive_in_order_once_it_is_back,
    killing_the_relay_mid_stream_loses_and_duplicates_nothing,
    rows_committed_without_a_wake_up_are_published_by_the_next_rescan,
    a_deleted_stream_is_made_again_with_everything_the_outbox_keeps,
);

const USERS: Producer = Producer::new("users", "user");

struct Fixture {
    _db: TestDatabase,
    database: Database,
    nats: NatsServer,
    js: jetstream::Context,
    wakeup: Wakeup,
}

impl Fixture {
    async fn new(backend: Backend) -> Self {
        testkit::init_tracing();
        let db = TestDatabase::create(backend).await;
        let database = Database::connect(&DatabaseConfig::new(db.url()))
            .await
            .expect("open the database");
        database
            .migrate([outbox::migrations()])
            .await
            .expect("migrate");
        let nats = testkit::start_nats().await;
        let js = testkit::connect(&nats).await;
        Self {
            _db: db,
            database,
            nats,
            js,
            wakeup: Wakeup::new(),
        }
    }

    async fn relay(&self, batch_size: u32) -> Relay {
        let client = async_nats::connect(self.nats.url()).await.expect("connect");
        let args = RelayArgs {
            outbox_batch_size: batch_size,
            ..RelayArgs::default()
        };
        Relay::new(
            self.database.clone(),
            client,
            StreamSpec::for_producer("users", &StreamArgs::default()),
            self.wakeup.clone(),
            RelayConfig::from_args(&args),
        )
    }

    async fn write(&self, id: &Uuid, version: u64) {
        Writer {
            database: self.database.clone(),
            wakeup: self.wakeup.clone(),
        }
        .write(id, version)
        .await;
    }

    async fn unpublished(&self) -> i64 {
        sqlx::query("SELECT COUNT(*) AS n FROM outbox_pending")
            .fetch_one(self.database.pool())
            .await
            .expect("count")
            .get("n")
    }

    async fn outbox_ids(&self) -> HashSet<String> {
        sqlx::query("SELECT event_id FROM outbox")
            .fetch_all(self.database.pool())
            .await
            .expect("read the outbox")
            .iter()
            .map(|row| row.get("event_id"))
            .collect()
    }

    /// Waits (bounded) until the relay has published everything.
    async fn drained(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.unpublished().await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} events still unpublished",
                self.unpublished().await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stream's events: each outbox event exactly once, and each aggregate's versions
    /// in increasing order.
    async fn assert_stream_matches_outbox(&self, n_events: usize) {
        let stream = testkit::stream_events(&self.js, bus::USERS).await;
        assert_eq!(
            stream.len(),
            n_events,
            "every event in the stream exactly once"
        );
        let ids: HashSet<String> = stream.iter().map(|(_, e)| e.event_id.clone()).collect();
        assert_eq!(ids.len(), n_events, "no event id twice");
        assert_eq!(
            ids,
            self.outbox_ids().await,
            "the stream holds exactly the outbox"
        );
        let mut last_version: HashMap<&str, u64> = HashMap::new();
        for (subject, envelope) in &stream {
            assert_eq!(subject, "users.user.UserRenamed");
            let last = last_version.entry(&envelope.aggregate_id).or_default();
            assert_eq!(
                envelope.aggregate_version,
                *last + 1,
                "aggregate {} out of order",
                envelope.aggregate_id
            );
            *last = envelope.aggregate_version;
        }
    }
}

async fn events_written_while_nats_is_down_all_arrive_in_order_once_it_is_back(backend: Backend) {
    let mut fixture = Fixture::new(backend).await;
    let cancel = CancellationToken::new();
    let relay = tokio::spawn(fixture.relay(32).await.run(cancel.clone()));

    // One event through first, so the stream exists and the relay is known to work.
    let first = Uuid::now_v7();
    fixture.write(&first, 1).await;
    fixture.drained().await;

    fixture.nats.stop().await.expect("stop nats-server");
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for version in 1..=10 {
        for id in &ids {
            fixture.write(id, version).await; // writes succeed with NATS down
        }
    }
    assert_eq!(
        fixture.unpublished().await,
        200,
        "the events wait in the outbox"
    );

    fixture.nats.restart().await.expect("restart nats-server");
    fixture.drained().await;
    cancel.cancel();
    relay.await.expect("the relay stops cleanly");
    fixture.assert_stream_matches_outbox(201).await;
}

/// Rows another process commits (it cannot wake this relay), or that PostgreSQL commits
/// under a seq lower than rows already published, are found by the periodic rescan.
async fn rows_committed_without_a_wake_up_are_published_by_the_next_rescan(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let cancel = CancellationToken::new();
    let relay = tokio::spawn(fixture.relay(8).await.run(cancel.clone()));
    let woken = Uuid::now_v7();
    fixture.write(&woken, 1).await;
    fixture.drained().await;

    // Through a wake-up the relay does not listen to, as another process would write.
    let elsewhere = Writer {
        database: fixture.database.clone(),
        wakeup: Wakeup::new(),
    };
    let ids: Vec<Uuid> = (0..20).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        elsewhere.write(id, 1).await;
    }
    fixture.drained().await;
    cancel.cancel();
    relay.await.expect("the relay stops cleanly");
    fixture.assert_stream_matches_outbox(21).await;
}

async fn killing_the_relay_mid_stream_loses_and_duplicates_nothing(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let ids: Vec<Uuid> = (0..30).map(|_| Uuid::now_v7()).collect();
    let n_versions = 10;
    let writer = {
        let database = fixture.database.clone();
        let wakeup = fixture.wakeup.clone();
        let ids = ids.clone();
        tokio::spawn(async move {
            let writer = Writer { database, wakeup };
            for version in 1..=n_versions {
                for id in &ids {
                    writer.write(id, version).await;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    // Relays started and aborted at arbitrary points: between publishing and marking, in
    // the middle of a batch's acks, while idle. Small batches make mid-batch kills likely.
    for round in 0..8u64 {
        let relay = tokio::spawn(fixture.relay(8).await.run(CancellationToken::new()));
        tokio::time::sleep(Duration::from_millis(3 + round * 4)).await;
        relay.abort();
        let _ = relay.await;
    }
    writer.await.expect("the writer finishes");
    let cancel = CancellationToken::new();
    let relay = tokio::spawn(fixture.relay(8).await.run(cancel.clone()));
    fixture.drained().await;
    cancel.cancel();
    relay.await.expect("the relay stops cleanly");
    fixture
        .assert_stream_matches_outbox(ids.len() * n_versions as usize)
        .await;
}

/// The writing half of the fixture, movable into a task.
struct Writer {
    database: Database,
    wakeup: Wakeup,
}

impl Writer {
    /// One committed change: user `id` renamed to reach `version`.
    async fn write(&self, id: &Uuid, version: u64) {
        let mut tx = self.database.begin_write().await.expect("begin");
        let payload = events::UserRenamed {
            user_id: id.to_string(),
            name: format!("v{version}"),
            ..Default::default()
        };
        USERS
            .record(&mut tx, id, version, platform::time::now_micros(), &payload)
            .await
            .expect("record the event");
        self.wakeup.commit(tx).await.expect("commit");
    }
}

async fn a_deleted_stream_is_made_again_with_everything_the_outbox_keeps(backend: Backend) {
    let fixture = Fixture::new(backend).await;
    let cancel = CancellationToken::new();
    let relay = tokio::spawn(fixture.relay(32).await.run(cancel.clone()));
    let ids: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for id in &ids {
        fixture.write(id, 1).await;
    }
    fixture.drained().await;
    fixture.assert_stream_matches_outbox(5).await;

    // Someone deletes the stream: five events a reader may not have read yet are gone.
    fixture
        .js
        .delete_stream(bus::USERS)
        .await
        .expect("delete USERS");
    // The next publish fails; the relay makes the stream again and publishes what the
    // outbox keeps, the five published ones included, then the new one.
    fixture.write(&ids[0], 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let in_stream = match fixture.js.get_stream(bus::USERS).await {
            Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
            Err(_) => 0,
        };
        if in_stream == 6 && fixture.unpublished().await == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream holds {in_stream} events, not 6"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fixture.assert_stream_matches_outbox(6).await;
    cancel.cancel();
    relay.await.expect("the relay stops");
}
