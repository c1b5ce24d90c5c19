//! A steady writer: places orders at a fixed rate into one or more systems (the
//! microservices, the monolith) while something else is measured, bounded in flight, and
//! hands every write's outcome to a hook (freshness timing, the chaos timeline).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contracts::orders::v1::order_service_client::OrderServiceClient;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::seed::Seeded;
use crate::topology::{Endpoints, Service};

#[derive(Debug, Clone, Serialize)]
pub struct BackgroundWrites {
    pub offered_rps: u32,
    pub placed: u64,
    pub failed: u64,
    /// Not sent because 64 writes per system were already waiting.
    pub skipped: u64,
}

/// Where a paced writer places orders: one system, the product ordered and the users who
/// order it, taken in turn.
pub struct WriteTarget {
    client: OrderServiceClient<Channel>,
    product: String,
    users: Vec<String>,
    /// Every this many writes starts a sampled trace of its own, followed through the
    /// system by its id.
    traced_every: Option<u64>,
}

impl WriteTarget {
    pub fn microservices(endpoints: &Endpoints, seeded: &Seeded) -> Self {
        Self {
            client: OrderServiceClient::new(endpoints.channel(Service::Orders)),
            product: seeded.sample_product.clone(),
            users: seeded
                .users
                .iter()
                .map(|user| user.microservices.clone())
                .collect(),
            traced_every: None,
        }
    }

    /// Traces every `every`th write (the traceparent is sent whatever the services'
    /// sampling ratio, and a sampled caller is always followed).
    pub fn traced_every(self, every: u64) -> Self {
        Self {
            traced_every: Some(every.max(1)),
            ..self
        }
    }

    pub fn monolith(endpoints: &Endpoints, seeded: &Seeded) -> Self {
        Self {
            client: OrderServiceClient::new(endpoints.channel(Service::Monolith)),
            product: seeded.sample_monolith_product.clone(),
            users: seeded
                .users
                .iter()
                .map(|user| user.monolith.clone())
                .collect(),
            traced_every: None,
        }
    }
}

/// One write the writer made, as its hook sees it.
#[derive(Debug, Clone)]
pub struct Write {
    /// Counts ticks: the writes of one tick (one per target) share it.
    pub index: u64,
    /// Which target, in the order the writer was given them.
    pub target: usize,
    pub user: String,
    /// When the write was due.
    pub due: Instant,
    /// The order's id, or why placing it failed.
    pub outcome: Result<String, crate::seed::PlaceError>,
    /// The trace the write started, when it was traced.
    pub trace_id: Option<String>,
}

/// What happens after each write.
pub type AfterWrite = Arc<dyn Fn(Write) -> BoxFuture<'static, ()> + Send + Sync>;

/// Places one order per target at a steady rate until stopped. A due write is skipped (and
/// counted) when 64 per target are already waiting: the system has fallen behind.
pub struct PacedWriter {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(BackgroundWrites, Duration)>,
}

/// Writes in flight at most, per target.
const MAX_WRITES_IN_FLIGHT: usize = 64;

impl PacedWriter {
    pub fn start(targets: Vec<WriteTarget>, rate: u32, after: Option<AfterWrite>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let counts = Arc::new(Mutex::new(BackgroundWrites {
                offered_rps: rate,
                placed: 0,
                failed: 0,
                skipped: 0,
            }));
            if rate > 0 && targets.iter().all(|target| !target.users.is_empty()) {
                let in_flight = Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT * targets.len()));
                let tracker = TaskTracker::new();
                let mut ticks =
                    tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut index = 0_u64;
                loop {
                    tokio::select! {
                        _ = &mut stopped => break,
                        _ = ticks.tick() => {}
                    }
                    let due = Instant::now();
                    for (target_index, target) in targets.iter().enumerate() {
                        let turn = usize::try_from(index).unwrap_or(0) % target.users.len();
                        let user = target.users[turn].clone();
                        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                            lock(&counts).skipped += 1;
                            continue;
                        };
                        let (client, product, counts, after) = (
                            target.client.clone(),
                            target.product.clone(),
                            Arc::clone(&counts),
                            after.clone(),
                        );
                        let trace = target
                            .traced_every
                            .filter(|every| index.is_multiple_of(*every))
                            .map(|_| crate::traces::new_trace());
                        tracker.spawn(async move {
                            let (trace_id, traceparent) = trace.unzip();
                            let placed = crate::seed::place(
                                client,
                                user.clone(),
                                product,
                                1,
                                traceparent.as_deref(),
                            )
                            .await;
                            drop(permit);
                            {
                                let mut counts = lock(&counts);
                                match placed {
                                    Ok(_) => counts.placed += 1,
                                    Err(_) => counts.failed += 1,
                                }
                            }
                            if let Some(after) = after {
                                after(Write {
                                    index,
                                    target: target_index,
                                    user,
                                    due,
                                    outcome: placed,
                                    trace_id,
                                })
                                .await;
                            }
                        });
                    }
                    index += 1;
                }
                let writing = started.elapsed();
                tracker.close();
                tracker.wait().await;
                return (lock(&counts).clone(), writing);
            }
            let _ = stopped.await;
            (lock(&counts).clone(), started.elapsed())
        });
        Self { stop, task }
    }

    /// Stops writing, waits for the writes in flight, and returns the counts and how long
    /// the writer wrote.
    pub async fn stop(self) -> (BackgroundWrites, Duration) {
        let _ = self.stop.send(());
        self.task.await.unwrap_or((
            BackgroundWrites {
                offered_rps: 0,
                placed: 0,
                failed: 0,
                skipped: 0,
            },
            Duration::ZERO,
        ))
    }
}

// A poisoned lock means a panic while a count was bumped; the counts are still whole.
pub use platform::sync::lock;
