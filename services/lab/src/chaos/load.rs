//! The steady load every scenario runs under: a reader per mode at a fixed rate, the writer
//! placing orders into the microservices and the monolith, and a share of the orders timed
//! until purchases-async shows them. Every call is a sample on one timeline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use super::ChaosArgs;
use crate::measure::{Clients, Mode, micros};
use crate::seed::{Seeded, SeededUser};
use crate::topology::Endpoints;
use crate::writer::{AfterWrite, PacedWriter, WriteTarget, lock};

/// What each timeline sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Series {
    Sync,
    /// purchases-bus: the owners asked on the bus.
    Bus,
    Async,
    Monolith,
    /// Orders placed into the microservices (orders service).
    Writes,
    /// Orders placed into the monolith.
    MonolithWrites,
    /// From an order's acknowledgement to its first appearance in purchases-async.
    Freshness,
}

impl Series {
    pub(super) const ALL: [Self; 7] = [
        Self::Sync,
        Self::Bus,
        Self::Async,
        Self::Monolith,
        Self::Writes,
        Self::MonolithWrites,
        Self::Freshness,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Bus => "bus",
            Self::Async => "async",
            Self::Monolith => "monolith",
            Self::Writes => "writes",
            Self::MonolithWrites => "monolith-writes",
            Self::Freshness => "freshness",
        }
    }

    pub(super) fn of(mode: Mode) -> Self {
        match mode {
            Mode::Async => Self::Async,
            Mode::Bus => Self::Bus,
            Mode::Monolith => Self::Monolith,
            Mode::Echo | Mode::Sync | Mode::SyncSequential => Self::Sync,
        }
    }
}

/// One call or one timed order.
#[derive(Debug, Clone)]
pub(super) struct Sample {
    pub(super) series: Series,
    /// Seconds from the scenario's start to when the call was due.
    pub(super) at: f64,
    pub(super) latency_us: u64,
    /// The gRPC code's name for a failure.
    pub(super) error: Option<String>,
}

/// Samples of one scenario, shared by the readers, the writer and the freshness probes.
#[derive(Debug, Clone)]
pub(super) struct Timeline {
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Timeline {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            samples: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub(super) fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    pub(super) fn record(
        &self,
        series: Series,
        due: Instant,
        latency: Duration,
        error: Option<String>,
    ) {
        let sample = Sample {
            series,
            at: self.seconds(due),
            latency_us: micros(latency),
            error,
        };
        lock(&self.samples).push(sample);
    }

    pub(super) fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut *lock(&self.samples))
    }
}

/// Calls in flight per mode before a due call is counted as the client's own backlog.
const MAX_READS_IN_FLIGHT: usize = 128;

/// Orders timed for freshness per second at most: each is asked for until it shows.
const FRESHNESS_PROBES_PER_SECOND: u32 = 4;

/// How long one order may take to show before it counts as never seen.
pub(super) const FRESHNESS_LIMIT: Duration = Duration::from_secs(120);

/// Page size of the reads under load.
const PAGE_SIZE: i32 = 10;

/// The steady load of a scenario: a reader per mode, the writer and its freshness probes.
pub(super) struct Load {
    stop: CancellationToken,
    readers: TaskTracker,
    writer: PacedWriter,
    /// Order ids the orders service acknowledged.
    acknowledged: Arc<Mutex<Vec<String>>>,
}

impl Load {
    pub(super) fn start(
        endpoints: &Endpoints,
        seeded: &Seeded,
        args: &ChaosArgs,
        timeline: &Timeline,
    ) -> Self {
        let clients = crate::demo::clients(endpoints);
        let users = Arc::new(seeded.users.clone());
        let stop = CancellationToken::new();
        let readers = TaskTracker::new();
        for mode in Mode::COMPARED {
            readers.spawn(read_steadily(
                clients.clone(),
                mode,
                Arc::clone(&users),
                args.read_rate,
                timeline.clone(),
                stop.clone(),
            ));
        }
        readers.close();
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let every = u64::from((args.write_rate / FRESHNESS_PROBES_PER_SECOND).max(1));
        let after: AfterWrite = {
            let (timeline, acknowledged, reader) = (
                timeline.clone(),
                Arc::clone(&acknowledged),
                clients.asynchronous.clone(),
            );
            Arc::new(move |write| {
                let (timeline, acknowledged, reader) =
                    (timeline.clone(), Arc::clone(&acknowledged), reader.clone());
                Box::pin(async move {
                    let answered = Instant::now();
                    let series = if write.target == 0 {
                        Series::Writes
                    } else {
                        Series::MonolithWrites
                    };
                    let error = write
                        .outcome
                        .as_ref()
                        .err()
                        .map(|error| format!("{:?}", error.code));
                    timeline.record(series, write.due, answered - write.due, error);
                    let Ok(order_id) = write.outcome else {
                        return;
                    };
                    if series != Series::Writes {
                        return;
                    }
                    lock(&acknowledged).push(order_id.clone());
                    if write.index.is_multiple_of(every) {
                        let seen = shows_up(&reader, &write.user, &order_id).await;
                        let lag = answered.elapsed();
                        let error = (!seen).then(|| "NeverSeen".to_owned());
                        // Placed on the timeline when the order was written.
                        timeline.record(Series::Freshness, write.due, lag, error);
                    }
                })
            })
        };
        let writer = PacedWriter::start(
            vec![
                WriteTarget::microservices(endpoints, seeded),
                WriteTarget::monolith(endpoints, seeded),
            ],
            args.write_rate,
            Some(after),
        );
        Self {
            stop,
            readers,
            writer,
            acknowledged,
        }
    }

    /// Stops reading and writing, waits for what is in flight (freshness probes included),
    /// and returns the acknowledged order ids.
    pub(super) async fn stop(self) -> Vec<String> {
        self.stop.cancel();
        self.readers.wait().await;
        let _ = self.writer.stop().await;
        std::mem::take(&mut *lock(&self.acknowledged))
    }
}

/// Reads one mode at `rate` per second until stopped, each call timed from when it was due.
async fn read_steadily(
    clients: Clients,
    mode: Mode,
    users: Arc<Vec<SeededUser>>,
    rate: u32,
    timeline: Timeline,
    stop: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_READS_IN_FLIGHT));
    let calls = TaskTracker::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut index = 0_usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let due = Instant::now();
        let user = users[index % users.len()].clone();
        index += 1;
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            timeline.record(
                Series::of(mode),
                due,
                Duration::ZERO,
                Some("ClientBacklog".to_owned()),
            );
            continue;
        };
        let (clients, timeline) = (clients.clone(), timeline.clone());
        calls.spawn(async move {
            let outcome = clients.call(mode, &user, PAGE_SIZE).await;
            drop(permit);
            let error = outcome.err().map(|(code, _)| format!("{code:?}"));
            timeline.record(Series::of(mode), due, due.elapsed(), error);
        });
    }
    calls.close();
    calls.wait().await;
}

/// Longest one read waits for an order before asking again (purchases-async holds a wait
/// for 10 s at most).
const FRESHNESS_WAIT: Duration = Duration::from_secs(10);

/// Asks purchases-async for `order_id` among `user`'s newest purchases with reads that wait
/// for it (`wait_for_order_id`), so the lag is measured to the update that brought the
/// order rather than to the next poll. A wait that runs its course asks again at once; a read
/// refused at once (purchases-async down, or full of waits) backs off from 5 ms to 200 ms,
/// so a long outage does not turn the probes into load.
async fn shows_up(reader: &PurchaseServiceClient<Channel>, user: &str, order_id: &str) -> bool {
    let deadline = Instant::now() + FRESHNESS_LIMIT;
    let mut pause = Duration::from_millis(5);
    loop {
        let asked = Instant::now();
        let wait = FRESHNESS_WAIT.min(deadline.saturating_duration_since(asked));
        if crate::measure::shows_order(reader, user, order_id, Some(wait), None).await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if asked.elapsed() < wait / 2 {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        } else {
            pause = Duration::from_millis(5);
        }
    }
}
