//! `lab chaos`: scripted failures run against a loaded lab, shown side by side for sync, async
//! and the monolith, each followed by a check of the projection against the owning services.
//!
//! Every scenario has three phases: before (the system healthy), during (the fault in force)
//! and after (the fault lifted). Throughout, each mode is read at a steady rate and a writer
//! places orders into the microservices and the monolith; a share of the microservices' orders
//! is timed until purchases-async shows it (freshness). Each call is a sample on one timeline,
//! from which the phase figures, the charts and the scenario's expectations are computed.
//! Finally the projection is compared, user by user and order by order, with what orders,
//! products and users hold: every acknowledged write must be there, once, with the right facts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::fault::v1 as fault_pb;
use contracts::fault::v1::fault_admin_client::FaultAdminClient;
use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::children::ServiceProcess;
use crate::measure::{Clients, Mode, micros};
use crate::seed::{Seeded, SeededUser};
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;
use crate::writer::{AfterWrite, PacedWriter, WriteTarget, lock};

/// One scripted failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    KillUsers,
    SlowProducts,
    FailOrders,
    NatsOutage,
    CatchUp,
    Duplicates,
    ClusterFailover,
    SchemaEvolution,
    ForgedEvent,
    IdleConnections,
    StreamLost,
    Retention,
}

impl Scenario {
    /// In the order `all` runs them: retention last, since it leaves the streams without
    /// their history for whatever would come after.
    pub const ALL: [Self; 12] = [
        Self::KillUsers,
        Self::SlowProducts,
        Self::FailOrders,
        Self::NatsOutage,
        Self::CatchUp,
        Self::Duplicates,
        Self::ClusterFailover,
        Self::SchemaEvolution,
        Self::ForgedEvent,
        Self::IdleConnections,
        Self::StreamLost,
        Self::Retention,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::KillUsers => "kill-users",
            Self::SlowProducts => "slow-products",
            Self::FailOrders => "fail-orders",
            Self::NatsOutage => "nats-outage",
            Self::CatchUp => "catch-up",
            Self::Duplicates => "duplicates",
            Self::ClusterFailover => "cluster-failover",
            Self::SchemaEvolution => "schema-evolution",
            Self::ForgedEvent => "forged-event",
            Self::IdleConnections => "idle-connections",
            Self::StreamLost => "stream-lost",
            Self::Retention => "retention",
        }
    }

    /// What the scenario does, as the report says it.
    pub fn what(self) -> &'static str {
        match self {
            Self::KillUsers => "the users service killed (SIGKILL), then started again",
            Self::SlowProducts => "products slowed by 50 ms per call (fault admin API)",
            Self::FailOrders => "orders failing 20% of calls with UNAVAILABLE (fault admin API)",
            Self::NatsOutage => "nats-server stopped while writes go on, then started again",
            Self::CatchUp => "purchases-async killed while writes go on, then started again",
            Self::SchemaEvolution => {
                "users and products upgraded to event schema 2 (the name split into given and family name, prices with a currency) beside a purchases-async still reading schema 1, then rolled back"
            }
            Self::ClusterFailover => {
                "in a three-node JetStream cluster (streams replicated 3 times), the server leading ORDERS killed, then restarted"
            }
            Self::Duplicates => {
                "the newest events of every stream published again, newest first, as new messages: duplicates delivered out of order"
            }
            Self::ForgedEvent => {
                "an outsider forges events: refused by NATS (no anonymous client, no service publishing another's events); then, with authorization switched off on purpose, forged renames published onto USERS"
            }
            Self::IdleConnections => {
                "thousands of idle TCP connections held open against every service while the load goes on"
            }
            Self::StreamLost => {
                "the ORDERS stream deleted under load; orders' relay makes it again and republishes its outbox"
            }
            Self::Retention => {
                "every stream purged, as retention would; a projection built from nothing, then from the owners' re-emitted state"
            }
        }
    }

    /// Whether it needs the lab to run a NATS cluster rather than one server.
    pub fn needs_cluster(self) -> bool {
        self == Self::ClusterFailover
    }

    /// Seconds before, during and after the fault.
    fn phases(self, quick: bool) -> [u64; 3] {
        match (self, quick) {
            (Self::KillUsers, false) => [10, 15, 15],
            (Self::SlowProducts | Self::FailOrders | Self::Duplicates, false) => [10, 15, 10],
            (Self::NatsOutage, false) => [10, 10, 15],
            (Self::CatchUp, false) => [10, 30, 20],
            (Self::ClusterFailover, false) => [10, 20, 15],
            (Self::ClusterFailover, true) => [4, 8, 6],
            (Self::SchemaEvolution, false) => [10, 20, 10],
            (Self::SchemaEvolution, true) => [3, 6, 3],
            // Failing a fraction needs enough calls for the share to show.
            (Self::FailOrders, true) => [3, 8, 3],
            (Self::SlowProducts | Self::Duplicates, true) => [3, 4, 3],
            (Self::KillUsers | Self::NatsOutage | Self::CatchUp, true) => [3, 5, 6],
            (Self::ForgedEvent | Self::IdleConnections | Self::StreamLost, false) => [10, 15, 10],
            (Self::Retention, false) => [10, 20, 10],
            (Self::ForgedEvent | Self::IdleConnections | Self::StreamLost, true) => [3, 5, 4],
            (Self::Retention, true) => [3, 6, 4],
        }
    }

    /// Idle sockets held against each service during idle-connections.
    fn idle_sockets(quick: bool) -> usize {
        if quick { 300 } else { 1_500 }
    }
}

/// A scenario on the command line, or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    All,
    One(Scenario),
}

impl clap::ValueEnum for Choice {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            Self::All,
            Self::One(Scenario::KillUsers),
            Self::One(Scenario::SlowProducts),
            Self::One(Scenario::FailOrders),
            Self::One(Scenario::NatsOutage),
            Self::One(Scenario::CatchUp),
            Self::One(Scenario::Duplicates),
            Self::One(Scenario::ClusterFailover),
            Self::One(Scenario::SchemaEvolution),
            Self::One(Scenario::ForgedEvent),
            Self::One(Scenario::IdleConnections),
            Self::One(Scenario::StreamLost),
            Self::One(Scenario::Retention),
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(match self {
            Self::All => clap::builder::PossibleValue::new("all")
                .help("every scenario, one after another, on one lab"),
            Self::One(scenario) => {
                clap::builder::PossibleValue::new(scenario.name()).help(scenario.what())
            }
        })
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ChaosArgs {
    /// The scenarios to run, in order (`all` for every one).
    #[arg(value_enum, required = true, num_args = 1..)]
    pub scenarios: Vec<Choice>,
    /// Short phases (a few seconds each), for smoke runs and CI.
    #[arg(long)]
    pub quick: bool,
    /// Reads per second offered to each of sync, async and the monolith.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=2_000))]
    pub read_rate: u32,
    /// Orders per second placed into the microservices, and as many into the monolith.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub write_rate: u32,
    /// Also write the results here (they always go to chaos.json in the data dir).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl ChaosArgs {
    /// The scenarios to run, each once, in the order given.
    pub fn scenarios(&self) -> Vec<Scenario> {
        let mut chosen = Vec::new();
        for choice in &self.scenarios {
            let add: &[Scenario] = match choice {
                Choice::All => &Scenario::ALL,
                Choice::One(scenario) => std::slice::from_ref(scenario),
            };
            for scenario in add {
                if !chosen.contains(scenario) {
                    chosen.push(*scenario);
                }
            }
        }
        chosen
    }
}

/// What each timeline sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Series {
    Sync,
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
    const ALL: [Self; 6] = [
        Self::Sync,
        Self::Async,
        Self::Monolith,
        Self::Writes,
        Self::MonolithWrites,
        Self::Freshness,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Sync => "sync",
            Self::Async => "async",
            Self::Monolith => "monolith",
            Self::Writes => "writes",
            Self::MonolithWrites => "monolith-writes",
            Self::Freshness => "freshness",
        }
    }

    fn of(mode: Mode) -> Self {
        match mode {
            Mode::Async => Self::Async,
            Mode::Monolith => Self::Monolith,
            Mode::Echo | Mode::Sync | Mode::SyncSequential => Self::Sync,
        }
    }
}

/// One call or one timed order.
#[derive(Debug, Clone)]
struct Sample {
    series: Series,
    /// Seconds from the scenario's start to when the call was due.
    at: f64,
    latency_us: u64,
    /// The gRPC code's name for a failure.
    error: Option<String>,
}

/// Samples of one scenario, shared by the readers, the writer and the freshness probes.
#[derive(Debug, Clone)]
struct Timeline {
    started: Instant,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Timeline {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            samples: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn seconds(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    fn record(&self, series: Series, due: Instant, latency: Duration, error: Option<String>) {
        let sample = Sample {
            series,
            at: self.seconds(due),
            latency_us: micros(latency),
            error,
        };
        lock(&self.samples).push(sample);
    }

    fn take(&self) -> Vec<Sample> {
        std::mem::take(&mut *lock(&self.samples))
    }
}

/// Calls in flight per mode before a due call is counted as the client's own backlog.
const MAX_READS_IN_FLIGHT: usize = 128;
/// Orders timed for freshness per second at most: each is polled for until it shows.
const FRESHNESS_PROBES_PER_SECOND: u32 = 4;
/// How long one order may take to show before it counts as never seen.
const FRESHNESS_LIMIT: Duration = Duration::from_secs(120);
/// How long the projection may take to agree with the owners once the load stops.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
/// Page size of the reads under load.
const PAGE_SIZE: i32 = 10;

/// The steady load of a scenario: a reader per mode, the writer and its freshness probes.
struct Load {
    stop: CancellationToken,
    readers: TaskTracker,
    writer: PacedWriter,
    /// Order ids the orders service acknowledged.
    acknowledged: Arc<Mutex<Vec<String>>>,
}

impl Load {
    fn start(
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
    async fn stop(self) -> Vec<String> {
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

/// Polls purchases-async for `order_id` among `user`'s newest purchases, backing off from
/// 5 ms to 200 ms between reads so a long outage does not turn the probes into load.
async fn shows_up(reader: &PurchaseServiceClient<Channel>, user: &str, order_id: &str) -> bool {
    let deadline = Instant::now() + FRESHNESS_LIMIT;
    let mut pause = Duration::from_millis(5);
    loop {
        if crate::measure::shows_order(reader, user, order_id).await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Figures for one series in one phase.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseStats {
    pub requests: u64,
    pub ok: u64,
    /// Share answered without error, in percent (100 when there were no requests).
    pub success_pct: f64,
    /// Percentiles over the successful calls only (0 when none succeeded).
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: BTreeMap<String, u64>,
}

fn phase_stats<'a>(samples: impl Iterator<Item = &'a Sample>) -> PhaseStats {
    let mut histogram = crate::measure::micros_histogram();
    let mut requests = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for sample in samples {
        requests += 1;
        match &sample.error {
            None => histogram.saturating_record(sample.latency_us),
            Some(code) => *errors.entry(code.clone()).or_default() += 1,
        }
    }
    let ok = histogram.len();
    PhaseStats {
        requests,
        ok,
        success_pct: if requests == 0 {
            100.0
        } else {
            100.0 * ok as f64 / requests as f64
        },
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        errors,
    }
}

/// The three phases, by name, in order.
pub const PHASES: [&str; 3] = ["before", "during", "after"];

/// One bucket of the timeline chart.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Seconds from the scenario's start to the bucket's start.
    pub at: f64,
    pub series: BTreeMap<String, PhaseStats>,
}

/// How the projection compares with the owning services once the load has stopped.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Consistency {
    pub users_checked: usize,
    /// Orders the orders service holds for those users: the ground truth.
    pub orders_in_owners: usize,
    pub purchases_in_projection: usize,
    /// In the owners, not in the projection.
    pub missing: usize,
    /// In the projection more than once.
    pub duplicated: usize,
    /// In the projection, unknown to the owners.
    pub unexpected: usize,
    /// Present in both with different facts (status, quantity, product, user name).
    pub mismatched: usize,
    /// Orders the orders service acknowledged during the scenario.
    pub writes_acknowledged: usize,
    /// Acknowledged, yet absent from the orders service's own data.
    pub writes_lost: usize,
    /// From the end of the load to the first check that found nothing wrong.
    pub converged_after_s: f64,
    pub ok: bool,
    /// The first few discrepancies of the last check, for a person to follow up.
    pub examples: Vec<String>,
}

/// One expectation of a scenario and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub what: String,
    /// What the lab's event bus was.
    pub nats: String,
    /// Seconds from the scenario's start at which the fault began and ended.
    pub fault_from_s: f64,
    pub fault_to_s: f64,
    pub ended_s: f64,
    /// `phases.<phase>.<series>`.
    pub phases: BTreeMap<String, BTreeMap<String, PhaseStats>>,
    /// Observations particular to the scenario (time to catch up, events applied).
    pub notes: Vec<String>,
    pub consistency: Consistency,
    pub expectations: Vec<Expectation>,
    pub passed: bool,
    pub timeline: Vec<Bucket>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub generated_at: String,
    pub machine: String,
    pub storage: String,
    pub nats_fsync: String,
    pub quick: bool,
    pub read_rate: u32,
    pub write_rate: u32,
    pub scenarios: Vec<ScenarioResult>,
    pub passed: bool,
}

impl ChaosReport {
    /// One report of two runs (on a single server, and on a cluster).
    pub fn merge(mut self, other: Self) -> Self {
        self.scenarios.extend(other.scenarios);
        self.passed &= other.passed;
        self
    }
}

/// Runs `chosen` one after another on a running, seeded, caught-up lab.
pub async fn run(
    lab: &mut RunningLab,
    seeded: &Seeded,
    args: &ChaosArgs,
    chosen: &[Scenario],
    storage: &str,
    nats_fsync: &str,
    bus: &str,
) -> anyhow::Result<ChaosReport> {
    let mut scenarios = Vec::new();
    for &scenario in chosen {
        let [before, during, after] = scenario.phases(args.quick);
        println!(
            "\n{}: {} ({before} s before, {during} s during, {after} s after)...",
            scenario.name(),
            scenario.what()
        );
        let mut result = run_scenario(lab, seeded, args, scenario).await?;
        result.nats = bus.to_owned();
        println!("{}", terminal_section(&result));
        scenarios.push(result);
    }
    let passed = scenarios.iter().all(|scenario| scenario.passed);
    Ok(ChaosReport {
        generated_at: crate::report::now_rfc3339(),
        machine: crate::report::machine(),
        storage: storage.to_owned(),
        nats_fsync: nats_fsync.to_owned(),
        quick: args.quick,
        read_rate: args.read_rate,
        write_rate: args.write_rate,
        scenarios,
        passed,
    })
}

async fn run_scenario(
    lab: &mut RunningLab,
    seeded: &Seeded,
    args: &ChaosArgs,
    scenario: Scenario,
) -> anyhow::Result<ScenarioResult> {
    if scenario == Scenario::NatsOutage && !lab.owns_nats() {
        anyhow::bail!(
            "nats-outage stops the lab's own nats-server; this lab runs on an external one (--nats-url)"
        );
    }
    let [before, during, after] = scenario.phases(args.quick).map(Duration::from_secs);
    let endpoints = lab.endpoints.clone();
    let timeline = Timeline::new();
    let load = Load::start(&endpoints, seeded, args, &timeline);
    let probe_user = seeded
        .users
        .first()
        .context("the seed holds no user")?
        .microservices
        .clone();
    let asynchronous = PurchaseServiceClient::new(endpoints.channel(Service::PurchasesAsync));
    let mut notes = Vec::new();

    tokio::time::sleep(before).await;
    let fault_from = Instant::now();
    let positions_before = crate::bench::positions(&asynchronous, &probe_user).await;
    let injected = inject(lab, scenario, during, args.quick, &probe_user).await?;
    tokio::time::sleep(during).await;
    let lifting = Instant::now();
    let Lifted {
        copies,
        notes: lifted_notes,
        evolved,
        attack,
    } = lift(lab, scenario, injected).await?;
    notes.extend(lifted_notes);
    if let Some(copies) = copies {
        notes.push(format!(
            "{copies} events published a second time, newest first, across {} streams",
            STREAMS.len()
        ));
    }
    let fault_to = Instant::now();
    notes.push(format!(
        "lifting the fault took {:.2} s (a restart lasts until the service reports SERVING)",
        fault_to.duration_since(lifting).as_secs_f64()
    ));

    // Catching up is timed while the load goes on, as it would be in production: from the
    // restart until the projection stands where the streams stood when it was back.
    let catching_up = if scenario == Scenario::CatchUp {
        let heads = stream_heads(&endpoints).await?;
        let (client, user) = (asynchronous.clone(), probe_user.clone());
        Some(tokio::spawn(async move {
            let caught_up = time_to_reach(&client, &user, &heads, lifting).await;
            (heads, caught_up)
        }))
    } else {
        None
    };
    tokio::time::sleep(after).await;
    let ended = Instant::now();
    let acknowledged = load.stop().await;
    let load_stopped = Instant::now();

    if let Some(task) = catching_up {
        let (heads, caught_up) = task.await.context("the catch-up timer failed")?;
        let target: u64 = heads.values().sum();
        let from: u64 = positions_before.as_ref().map_or(0, |positions| {
            positions.values().map(|stream| stream.sequence).sum()
        });
        notes.push(match caught_up {
            Some(seconds) => format!(
                "purchases-async caught up {seconds:.2} s after its restart began (start-up included): it had {} events to apply, {:.0} events/s",
                target.saturating_sub(from),
                target.saturating_sub(from) as f64 / seconds.max(0.001)
            ),
            None => format!(
                "purchases-async had not reached the streams' positions of its restart within {FRESHNESS_LIMIT:?}"
            ),
        });
    }

    let consistency = converge(
        &endpoints,
        &asynchronous,
        seeded,
        &acknowledged,
        load_stopped,
    )
    .await;
    let duplicates = match copies {
        Some(copies) => {
            let before = skipped(positions_before.as_ref());
            let more = skipped_since(&asynchronous, &probe_user, before, copies).await;
            notes.push(format!(
                "purchases-async skipped {more} events as already applied or older than what it held"
            ));
            Some((copies, more))
        }
        None => None,
    };
    let samples = timeline.take();
    let window = (
        timeline.seconds(fault_from),
        timeline.seconds(fault_to),
        timeline.seconds(ended),
    );
    let phases = phases(&samples, window);
    if matches!(scenario, Scenario::NatsOutage | Scenario::CatchUp)
        && let Some(drained) = drained_after(&samples, window)
    {
        notes.push(format!(
            "the last timed order written during the fault showed in purchases-async {drained:.2} s after the fault ended"
        ));
    }
    let mut expectations = expectations(scenario, &phases, &consistency);
    if let Some(mut evolved) = evolved {
        let compared = compare_readers(&endpoints, &evolved).await;
        let older = PurchaseServiceClient::new(crate::topology::channel_to(evolved.older_addr));
        let older_consistency = converge(&endpoints, &older, seeded, &[], Instant::now()).await;
        evolved.older.stop().await?;
        expectations.extend(compared?);
        expectations.push(Expectation {
            what: "the older purchases-async matches the owners, as the newer one does".to_owned(),
            measured: consistency_line(&older_consistency),
            met: older_consistency.ok,
        });
        match split_the_shared_schema(lab, seeded).await {
            Ok(contrast) => expectations.push(contrast),
            Err(error) => notes.push(format!(
                "the shared-database contrast was not run: {error:#}"
            )),
        }
    }
    if let Some(attack) = attack {
        expectations.extend(
            attack_expectations(
                attack,
                &endpoints,
                &asynchronous,
                seeded,
                positions_before.as_ref(),
                &probe_user,
            )
            .await?,
        );
    }
    if let Some((copies, more)) = duplicates {
        expectations.push(Expectation {
            what: "every copy reached the projection and was skipped, not applied".to_owned(),
            measured: format!("{more} skipped of {copies} copies"),
            met: copies > 0 && more >= copies,
        });
    }
    let passed = expectations.iter().all(|expectation| expectation.met);
    Ok(ScenarioResult {
        name: scenario.name().to_owned(),
        what: scenario.what().to_owned(),
        nats: String::new(),
        fault_from_s: round2(window.0),
        fault_to_s: round2(window.1),
        ended_s: round2(window.2),
        phases,
        notes,
        consistency,
        expectations,
        passed,
        timeline: buckets(&samples, window.2, if args.quick { 0.5 } else { 1.0 }),
    })
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// What an injected fault left to undo.
enum Injected {
    Done,
    /// A misbehaving publisher running through the fault window, counting its copies.
    Republishing {
        stop: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<u64>>,
    },
    /// Producers upgraded to schema 2, a schema-1 reader beside the lab's own, and a task
    /// writing users and orders whose events carry the new fields.
    Evolving {
        older: Box<ServiceProcess>,
        older_addr: std::net::SocketAddr,
        stop: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<Vec<String>>>,
    },
    /// A cluster member killed, and a watch for the leader elected in its place.
    KilledLeader {
        name: String,
        election: tokio::task::JoinHandle<Option<(String, f64)>>,
    },
    /// Forgeries published (and refused where they should be).
    Forged(crate::attacks::Forgery),
    /// Sockets held open, sending nothing.
    Idle(Vec<tokio::net::TcpStream>),
    /// ORDERS deleted, and a watch for it to be made again.
    StreamDeleted(tokio::task::JoinHandle<Option<f64>>),
    /// The streams purged and a projection built from the owners' re-emitted state.
    Rebuilt(Box<crate::attacks::Rebuilt>),
}

/// What lifting a fault found.
struct Lifted {
    copies: Option<u64>,
    notes: Vec<String>,
    evolved: Option<Evolved>,
    /// What an attack left to check after the window.
    attack: Option<AttackLeft>,
}

/// What an attack scenario checks once its load has stopped.
enum AttackLeft {
    Forged(crate::attacks::Forgery),
    StreamBack(Option<f64>),
    Rebuilt(Box<crate::attacks::Rebuilt>),
}

/// What the schema-evolution scenario leaves to check after its window.
struct Evolved {
    /// The purchases-async that reads schema 1 (stopped by the caller).
    older: Box<ServiceProcess>,
    older_addr: std::net::SocketAddr,
    /// Users registered while schema 2 was published.
    users: Vec<String>,
}

/// The fault each scenario injects.
async fn inject(
    lab: &mut RunningLab,
    scenario: Scenario,
    during: Duration,
    quick: bool,
    target_user: &str,
) -> anyhow::Result<Injected> {
    match scenario {
        Scenario::Duplicates => {
            let stop = CancellationToken::new();
            let per_stream = if quick { 200 } else { 1_000 };
            let task = tokio::spawn(republish_backwards(
                lab.endpoints.clone(),
                per_stream,
                during,
                stop.clone(),
            ));
            return Ok(Injected::Republishing { stop, task });
        }
        Scenario::ClusterFailover => return kill_the_leader(lab).await,
        Scenario::SchemaEvolution => return upgrade_the_schema(lab).await,
        Scenario::ForgedEvent => {
            return Ok(Injected::Forged(
                crate::attacks::forge(lab, target_user).await?,
            ));
        }
        Scenario::IdleConnections => {
            return Ok(Injected::Idle(
                crate::attacks::idle_sockets(&lab.endpoints, Scenario::idle_sockets(quick)).await?,
            ));
        }
        Scenario::StreamLost => {
            return Ok(Injected::StreamDeleted(
                crate::attacks::delete_stream(&lab.endpoints, bus::ORDERS).await?,
            ));
        }
        Scenario::Retention => {
            return Ok(Injected::Rebuilt(Box::new(
                crate::attacks::lose_history_and_rebuild(lab).await?,
            )));
        }
        _ => {}
    }
    match scenario {
        Scenario::KillUsers => lab.kill_service(Service::Users).await,
        Scenario::SlowProducts => {
            set_fault(
                &lab.endpoints,
                Service::Products,
                fault_pb::Fault {
                    latency_ms: 50,
                    ..fault_pb::Fault::default()
                },
            )
            .await
        }
        Scenario::FailOrders => {
            set_fault(
                &lab.endpoints,
                Service::Orders,
                fault_pb::Fault {
                    failure_fraction: 0.2,
                    failure_code: "UNAVAILABLE".to_owned(),
                    ..fault_pb::Fault::default()
                },
            )
            .await
        }
        Scenario::NatsOutage => lab.stop_nats().await,
        Scenario::CatchUp => lab.kill_service(Service::PurchasesAsync).await,
        Scenario::Duplicates
        | Scenario::ClusterFailover
        | Scenario::SchemaEvolution
        | Scenario::ForgedEvent
        | Scenario::IdleConnections
        | Scenario::StreamLost
        | Scenario::Retention => Ok(()),
    }?;
    Ok(Injected::Done)
}

/// Starts a purchases-async that reads schema 1 beside the lab's (which reads schema 2),
/// restarts users and products publishing schema 2, and writes through them until stopped.
async fn upgrade_the_schema(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    let (older, older_addr) = lab
        .start_fresh_projection("schema-1-reader", &["--reader-schema", "1"])
        .await?;
    lab.restart_with(Service::Users, &["--event-schema", "2"])
        .await?;
    lab.restart_with(Service::Products, &["--event-schema", "2"])
        .await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(write_schema_2(lab.endpoints.clone(), stop.clone()));
    Ok(Injected::Evolving {
        older: Box::new(older),
        older_addr,
        stop,
        task,
    })
}

/// Names whose split the newer reader should show.
const EVOLVED_NAMES: [&str; 4] = [
    "Ada King Lovelace",
    "Grace Brewster Hopper",
    "Edsger Wybe Dijkstra",
    "Barbara Liskov",
];

/// Registers a user with a multi-word name and places an order for them twice a second,
/// and renames one product once, so schema-2 events of every kind flow. Returns the users.
async fn write_schema_2(
    endpoints: Endpoints,
    stop: CancellationToken,
) -> anyhow::Result<Vec<String>> {
    let mut users_client = UserServiceClient::new(endpoints.channel(Service::Users));
    let mut products_client = ProductServiceClient::new(endpoints.channel(Service::Products));
    let orders_client = OrderServiceClient::new(endpoints.channel(Service::Orders));
    let product = products_client
        .create_product(products_pb::CreateProductRequest {
            title: "Difference Engine".to_owned(),
            image_url: "https://example.com/difference-engine.png".to_owned(),
            price_cents: 1_822,
        })
        .await
        .context("products: CreateProduct under schema 2")?
        .into_inner()
        .product
        .context("CreateProduct answered without a product")?;
    products_client
        .update_product(products_pb::UpdateProductRequest {
            id: product.id.clone(),
            title: Some("Difference Engine No. 2".to_owned()),
            ..Default::default()
        })
        .await
        .context("products: UpdateProduct under schema 2")?;
    let run = platform::time::now_micros();
    let mut users = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    for index in 0.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let user = users_client
            .create_user(users_pb::CreateUserRequest {
                email: format!("schema2-{run}-{index}@example.com"),
                name: EVOLVED_NAMES[index % EVOLVED_NAMES.len()].to_owned(),
            })
            .await
            .context("users: CreateUser under schema 2")?
            .into_inner()
            .user
            .context("CreateUser answered without a user")?;
        crate::seed::place(
            orders_client.clone(),
            user.id.clone(),
            product.id.clone(),
            1,
            None,
        )
        .await?;
        users.push(user.id);
    }
    Ok(users)
}

/// What the two readers answer for the users written under schema 2, as expectations.
async fn compare_readers(
    endpoints: &Endpoints,
    evolved: &Evolved,
) -> anyhow::Result<Vec<Expectation>> {
    let newer = PurchaseServiceClient::new(endpoints.channel(Service::PurchasesAsync));
    let older = PurchaseServiceClient::new(crate::topology::channel_to(evolved.older_addr));
    let (mut split, mut priced, mut older_same, mut older_plain) = (0, 0, 0, 0);
    let mut example = String::new();
    for user in &evolved.users {
        let (new_user, new_purchases) = crate::measure::all_purchases(&newer, user)
            .await
            .with_context(|| format!("the newer reader on {user}"))?;
        let (old_user, old_purchases) = crate::measure::all_purchases(&older, user)
            .await
            .with_context(|| format!("the older reader on {user}"))?;
        let (new_user, old_user) = (new_user.unwrap_or_default(), old_user.unwrap_or_default());
        if !new_user.family_name.is_empty()
            && format!("{} {}", new_user.given_name, new_user.family_name) == new_user.name
        {
            split += 1;
            if example.is_empty() {
                example = format!(
                    "{:?} as given {:?}, family {:?}",
                    new_user.name, new_user.given_name, new_user.family_name
                );
            }
        }
        if new_purchases
            .iter()
            .filter_map(|purchase| purchase.product.as_ref())
            .any(|product| product.currency == "USD")
        {
            priced += 1;
        }
        let ids = |purchases: &[pb::Purchase]| {
            purchases
                .iter()
                .map(|purchase| purchase.order_id.clone())
                .collect::<Vec<_>>()
        };
        if old_user.name == new_user.name && ids(&old_purchases) == ids(&new_purchases) {
            older_same += 1;
        }
        if old_user.given_name.is_empty()
            && old_purchases
                .iter()
                .filter_map(|purchase| purchase.product.as_ref())
                .all(|product| product.currency.is_empty())
        {
            older_plain += 1;
        }
    }
    let total = evolved.users.len();
    let all = |count: usize| total > 0 && count == total;
    Ok(vec![
        Expectation {
            what: "the newer purchases-async serves the split name of every user written under schema 2".to_owned(),
            measured: format!("{split} of {total} (e.g. {example})"),
            met: all(split),
        },
        Expectation {
            what: "and the currency of the product renamed under schema 2".to_owned(),
            measured: format!("{priced} of {total} users' purchases show USD"),
            met: all(priced),
        },
        Expectation {
            what: "the older purchases-async answers the same purchases and names".to_owned(),
            measured: format!("{older_same} of {total}"),
            met: all(older_same),
        },
        Expectation {
            what: "without the fields it was built before (it skips them)".to_owned(),
            measured: format!("{older_plain} of {total} without given name or currency"),
            met: all(older_plain),
        },
    ])
}

/// The same split done to a shared database: a copy of the monolith's, with `users.name`
/// split into columns as the events split it, and a monolith started on the copy. Every
/// reader of the old column breaks at once. SQLite only (a copy is one statement there).
async fn split_the_shared_schema(lab: &RunningLab, seeded: &Seeded) -> anyhow::Result<Expectation> {
    use sqlx::Connection as _;
    let crate::topology::Storage::Sqlite(dir) = &lab.storage else {
        anyhow::bail!("shown on SQLite only");
    };
    let copy = dir.join("monolith-split-schema.db");
    let _ = std::fs::remove_file(&copy);
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.join("monolith.db").display()
    ))
    .await
    .context("open the monolith's database")?;
    // The path is the lab's own, never user input; SQLite takes no parameter here.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        copy.display().to_string().replace('\'', "''")
    )))
    .execute(&mut conn)
    .await
    .context("copy the monolith's database")?;
    conn.close().await?;
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", copy.display()))
        .await
        .context("open the copy")?;
    for statement in [
        "ALTER TABLE users RENAME COLUMN name TO given_name",
        "ALTER TABLE users ADD COLUMN family_name TEXT NOT NULL DEFAULT ''",
    ] {
        sqlx::query(statement).execute(&mut conn).await?;
    }
    conn.close().await?;
    let (mut monolith, addr) = lab
        .start_monolith_on(
            "monolith-split-schema",
            &format!("sqlite://{}", copy.display()),
        )
        .await?;
    let user = seeded.users.first().context("no seeded user")?;
    let answer = PurchaseServiceClient::new(crate::topology::channel_to(addr))
        .list_user_purchases(pb::ListUserPurchasesRequest {
            user_id: user.monolith.clone(),
            page_size: 10,
            page_token: String::new(),
        })
        .await;
    monolith.stop().await?;
    let _ = std::fs::remove_file(&copy);
    Ok(Expectation {
        what: "the same split in a shared database breaks its readers: the monolith, unchanged, on a copy with users.name split into given_name and family_name".to_owned(),
        measured: match &answer {
            Ok(_) => "it still answered".to_owned(),
            Err(status) => format!("ListUserPurchases failed: {:?}: {}", status.code(), status.message()),
        },
        met: answer.is_err(),
    })
}

/// The stream whose leader the failover scenario kills: the one every write goes to.
const FAILOVER_STREAM: &str = bus::ORDERS;

/// Kills the cluster member leading ORDERS and watches for its successor.
async fn kill_the_leader(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    let endpoints = lab.endpoints.clone();
    let leader = stream_leader(&endpoints, FAILOVER_STREAM)
        .await?
        .context("ORDERS reports no leader: is the lab running a cluster?")?;
    let cluster = lab
        .nats_cluster_mut()
        .context("cluster-failover needs the lab's NATS cluster (lab --nats-cluster)")?;
    let server = cluster
        .server_mut(&leader)
        .with_context(|| format!("the leader {leader:?} is not a member the lab started"))?;
    server.kill().await.context("cannot kill the leader")?;
    let killed_at = Instant::now();
    let (url, dead) = (endpoints, leader.clone());
    let election = tokio::spawn(async move {
        while killed_at.elapsed() < Duration::from_secs(60) {
            if let Ok(Some(leader)) = stream_leader(&url, FAILOVER_STREAM).await
                && leader != dead
            {
                return Some((leader, killed_at.elapsed().as_secs_f64()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    });
    Ok(Injected::KilledLeader {
        name: leader,
        election,
    })
}

/// The server JetStream names as the leader of `stream`, if it has one.
async fn stream_leader(endpoints: &Endpoints, stream: &str) -> anyhow::Result<Option<String>> {
    let js = jetstream(endpoints).await?;
    let info = tokio::time::timeout(Duration::from_secs(2), async {
        js.get_stream(stream)
            .await?
            .get_info()
            .await
            .map_err(anyhow::Error::from)
    })
    .await
    .context("JetStream did not answer within 2 s")??;
    Ok(info.cluster.and_then(|cluster| cluster.leader))
}

/// Undoes what [`inject`] did; an ongoing fault is stopped and says how much it did.
async fn lift(
    lab: &mut RunningLab,
    scenario: Scenario,
    injected: Injected,
) -> anyhow::Result<Lifted> {
    match injected {
        Injected::Republishing { stop, task } => {
            stop.cancel();
            let copies = task.await.context("the fault's task failed")??;
            return Ok(Lifted {
                copies: Some(copies),
                notes: Vec::new(),
                evolved: None,
                attack: None,
            });
        }
        Injected::KilledLeader { name, election } => {
            let elected = match election.await.ok().flatten() {
                Some((leader, seconds)) => format!(
                    "{FAILOVER_STREAM} elected {leader} its leader {seconds:.2} s after {name} was killed"
                ),
                None => format!("{FAILOVER_STREAM} elected no new leader while {name} was down"),
            };
            let cluster = lab
                .nats_cluster_mut()
                .context("the lab's NATS cluster is gone")?;
            cluster
                .server_mut(&name)
                .with_context(|| format!("no member {name}"))?
                .restart()
                .await
                .with_context(|| format!("cannot restart {name}"))?;
            lab.refresh_state()?;
            return Ok(Lifted {
                copies: None,
                notes: vec![elected],
                evolved: None,
                attack: None,
            });
        }
        Injected::Evolving {
            older,
            older_addr,
            stop,
            task,
        } => {
            stop.cancel();
            let users = task.await.context("the schema-2 writer failed")??;
            // Rolled back, so the scenarios after this one meet the lab as it was.
            lab.restart_with(Service::Users, &[]).await?;
            lab.restart_with(Service::Products, &[]).await?;
            return Ok(Lifted {
                copies: None,
                notes: vec![format!(
                    "{} users registered (and a product renamed) while users and products published schema 2",
                    users.len()
                )],
                evolved: Some(Evolved {
                    older,
                    older_addr,
                    users,
                }),
                attack: None,
            });
        }
        Injected::Forged(forgery) => {
            // A real rename of the forgeries' target: it must land, which it could not had a
            // forged version been applied.
            let renamed = rename_for_real(&lab.endpoints, &forgery.target).await?;
            return Ok(Lifted {
                copies: None,
                notes: vec![format!(
                    "{} forged events stored while authorization was off; then {:?} renamed for real to {renamed:?}",
                    forgery.forged, forgery.target
                )],
                evolved: None,
                attack: Some(AttackLeft::Forged(forgery)),
            });
        }
        Injected::Idle(sockets) => {
            let held = sockets.len();
            drop(sockets);
            return Ok(Lifted {
                copies: None,
                notes: vec![format!(
                    "{held} idle connections held through the window ({} per service), then closed",
                    held / Service::ALL.len()
                )],
                evolved: None,
                attack: None,
            });
        }
        Injected::StreamDeleted(watch) => {
            let back = watch.await.ok().flatten();
            return Ok(Lifted {
                copies: None,
                notes: vec![match back {
                    Some(seconds) => format!(
                        "ORDERS was made again by orders' relay {seconds:.2} s after it was deleted"
                    ),
                    None => "ORDERS was not made again within a minute".to_owned(),
                }],
                evolved: None,
                attack: Some(AttackLeft::StreamBack(back)),
            });
        }
        Injected::Rebuilt(rebuilt) => {
            return Ok(Lifted {
                copies: None,
                notes: vec![format!(
                    "the owners re-emitted {} entities as {} events in {:.2} s",
                    rebuilt.entities, rebuilt.events, rebuilt.re_emit_s
                )],
                evolved: None,
                attack: Some(AttackLeft::Rebuilt(rebuilt)),
            });
        }
        Injected::Done => {}
    }
    match scenario {
        Scenario::KillUsers => lab.restart_service(Service::Users).await,
        Scenario::SlowProducts => clear_faults(&lab.endpoints, Service::Products).await,
        Scenario::FailOrders => clear_faults(&lab.endpoints, Service::Orders).await,
        Scenario::NatsOutage => lab.restart_nats().await,
        Scenario::CatchUp => lab.restart_service(Service::PurchasesAsync).await,
        Scenario::Duplicates
        | Scenario::ClusterFailover
        | Scenario::SchemaEvolution
        | Scenario::ForgedEvent
        | Scenario::IdleConnections
        | Scenario::StreamLost
        | Scenario::Retention => Ok(()),
    }?;
    Ok(Lifted {
        copies: None,
        notes: Vec::new(),
        evolved: None,
        attack: None,
    })
}

/// Renames `user` through the users service, and returns the new name.
async fn rename_for_real(endpoints: &Endpoints, user: &str) -> anyhow::Result<String> {
    let name = format!("Renamed {}", uuid::Uuid::now_v7().simple());
    UserServiceClient::new(endpoints.channel(Service::Users))
        .update_user(users_pb::UpdateUserRequest {
            id: user.to_owned(),
            name: name.clone(),
            expected_version: None,
        })
        .await
        .with_context(|| format!("rename {user}"))?;
    Ok(name)
}

/// Publishes the newest `per_stream` events of every stream again, newest first and the
/// streams interleaved, spread over `over`. Without their message ids JetStream cannot tell
/// them from new events and stores them again, as it would after a producer re-sent them
/// past the duplicate window: the consumers get every event twice, the copies in reverse.
async fn republish_backwards(
    endpoints: Endpoints,
    per_stream: u64,
    over: Duration,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let js = jetstream(&endpoints).await?;
    let mut queues = Vec::new();
    for name in STREAMS {
        let stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("no stream {name}"))?;
        let state = stream.get_info().await?.state;
        let first = state
            .first_sequence
            .max(state.last_sequence.saturating_sub(per_stream) + 1);
        let newest_first: Vec<u64> = (first..=state.last_sequence).rev().collect();
        queues.push((stream, newest_first.into_iter()));
    }
    let total: usize = queues.iter().map(|(_, queue)| queue.len()).sum();
    let mut ticks = tokio::time::interval(over.div_f64(total.max(1) as f64 * 1.2));
    let mut published = 0_u64;
    'publishing: loop {
        let mut any = false;
        for (stream, queue) in &mut queues {
            let Some(sequence) = queue.next() else {
                continue;
            };
            any = true;
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => break 'publishing,
            }
            let message = stream
                .get_raw_message(sequence)
                .await
                .with_context(|| format!("cannot read event {sequence}"))?;
            js.publish(message.subject.to_string(), message.payload.clone())
                .await?
                .await
                .context("JetStream did not store the copy")?;
            published += 1;
        }
        if !any {
            break;
        }
    }
    Ok(published)
}

/// Events the projection reports having skipped (duplicates, late versions), all streams.
fn skipped(positions: Option<&BTreeMap<String, pb::StreamPosition>>) -> u64 {
    positions.map_or(0, |positions| {
        positions.values().map(|stream| stream.skipped).sum()
    })
}

/// Waits (bounded) until the projection has skipped `copies` more events than `before`, and
/// returns how many more it skipped.
async fn skipped_since(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
    before: u64,
    copies: u64,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = skipped(crate::bench::positions(client, user).await.as_ref());
        let more = now.saturating_sub(before);
        if more >= copies || Instant::now() > deadline {
            return more;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn set_fault(
    endpoints: &Endpoints,
    service: Service,
    fault: fault_pb::Fault,
) -> anyhow::Result<()> {
    FaultAdminClient::new(endpoints.fault_admin_channel(service))
        .set_faults(fault_pb::SetFaultsRequest {
            faults: vec![fault],
        })
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{service}'s fault admin API refused the fault: {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    Ok(())
}

async fn clear_faults(endpoints: &Endpoints, service: Service) -> anyhow::Result<()> {
    FaultAdminClient::new(endpoints.fault_admin_channel(service))
        .clear_faults(fault_pb::ClearFaultsRequest {})
        .await
        .map_err(|status| {
            anyhow::anyhow!(
                "{service}'s fault admin API did not clear its faults: {:?}: {}",
                status.code(),
                status.message()
            )
        })?;
    Ok(())
}

/// The streams the projection follows.
const STREAMS: [&str; 3] = bus::SYSTEM_STREAMS;

async fn jetstream(endpoints: &Endpoints) -> anyhow::Result<async_nats::jetstream::Context> {
    Ok(async_nats::jetstream::new(
        crate::topology::connect_nats(endpoints).await?,
    ))
}

/// The last sequence of each stream the projection follows, read from JetStream itself.
async fn stream_heads(endpoints: &Endpoints) -> anyhow::Result<BTreeMap<String, u64>> {
    let js = jetstream(endpoints).await?;
    let mut heads = BTreeMap::new();
    for name in STREAMS {
        let stream = js
            .get_stream(name)
            .await
            .with_context(|| format!("no stream {name}"))?;
        let info = stream
            .get_info()
            .await
            .with_context(|| format!("no information on the stream {name}"))?;
        heads.insert(name.to_owned(), info.state.last_sequence);
    }
    Ok(heads)
}

/// Seconds from `since` until purchases-async reports, for every stream, a position at or
/// past `heads`.
async fn time_to_reach(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
    heads: &BTreeMap<String, u64>,
    since: Instant,
) -> Option<f64> {
    let deadline = since + FRESHNESS_LIMIT;
    while Instant::now() < deadline {
        if let Some(now) = crate::bench::positions(client, user).await
            && heads.iter().all(|(stream, head)| {
                now.get(stream)
                    .is_some_and(|stream| stream.sequence >= *head)
            })
        {
            return Some(since.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Which phase a moment belongs to.
fn phase_of(at: f64, (from, to, _): (f64, f64, f64)) -> &'static str {
    if at < from {
        "before"
    } else if at < to {
        "during"
    } else {
        "after"
    }
}

fn phases(
    samples: &[Sample],
    window: (f64, f64, f64),
) -> BTreeMap<String, BTreeMap<String, PhaseStats>> {
    PHASES
        .iter()
        .map(|phase| {
            let per_series = Series::ALL
                .iter()
                .map(|series| {
                    let stats = phase_stats(samples.iter().filter(|sample| {
                        sample.series == *series && phase_of(sample.at, window) == *phase
                    }));
                    (series.name().to_owned(), stats)
                })
                .collect();
            ((*phase).to_owned(), per_series)
        })
        .collect()
}

/// Seconds after the fault ended at which the last order written during it showed up.
fn drained_after(samples: &[Sample], (from, to, _): (f64, f64, f64)) -> Option<f64> {
    samples
        .iter()
        .filter(|sample| {
            sample.series == Series::Freshness
                && sample.error.is_none()
                && sample.at >= from
                && sample.at < to
        })
        .map(|sample| sample.at + sample.latency_us as f64 / 1e6 - to)
        .fold(None, |latest: Option<f64>, seen| {
            Some(latest.map_or(seen, |latest| latest.max(seen)))
        })
        .map(|seconds| round2(seconds.max(0.0)))
}

fn buckets(samples: &[Sample], end: f64, width: f64) -> Vec<Bucket> {
    let count = (end / width).ceil() as usize;
    let mut grouped: Vec<HashMap<Series, Vec<&Sample>>> = vec![HashMap::new(); count.max(1)];
    for sample in samples {
        let index = ((sample.at / width) as usize).min(grouped.len() - 1);
        grouped[index]
            .entry(sample.series)
            .or_default()
            .push(sample);
    }
    grouped
        .into_iter()
        .enumerate()
        .map(|(index, series)| Bucket {
            at: round2(index as f64 * width),
            series: series
                .into_iter()
                .map(|(series, samples)| {
                    (series.name().to_owned(), phase_stats(samples.into_iter()))
                })
                .collect(),
        })
        .collect()
}

/// The scenario's claims about the modes, checked against what was measured.
fn expectations(
    scenario: Scenario,
    phases: &BTreeMap<String, BTreeMap<String, PhaseStats>>,
    consistency: &Consistency,
) -> Vec<Expectation> {
    let stat = |phase: &str, series: Series| {
        phases
            .get(phase)
            .and_then(|per_series| per_series.get(series.name()))
            .cloned()
            .unwrap_or_else(|| phase_stats(std::iter::empty()))
    };
    let mut expected = Vec::new();
    let mut success = |phase: &str, series: Series, at_least: f64, at_most: f64, why: &str| {
        let measured = stat(phase, series);
        expected.push(Expectation {
            what: format!(
                "{why}: {} {phase} answers {}",
                series.name(),
                bounds(at_least, at_most)
            ),
            measured: format!(
                "{:.1}% of {} ({})",
                measured.success_pct,
                measured.requests,
                errors_line(&measured.errors)
            ),
            met: measured.requests > 0
                && measured.success_pct >= at_least
                && measured.success_pct <= at_most,
        });
    };
    for series in [
        Series::Sync,
        Series::Async,
        Series::Monolith,
        Series::Writes,
    ] {
        success("before", series, 99.0, 100.0, "healthy at first");
    }
    let unaffected = |series: Series| (series, 99.0, 100.0);
    let during: Vec<(Series, f64, f64, &str)> = match scenario {
        Scenario::KillUsers => vec![
            (Series::Sync, 0.0, 10.0, "sync needs users"),
            with(unaffected(Series::Async), "async calls no one"),
            with(unaffected(Series::Monolith), "the monolith calls no one"),
            with(
                unaffected(Series::Writes),
                "orders checks users in its own replica",
            ),
        ],
        Scenario::SlowProducts => vec![
            with(unaffected(Series::Sync), "slow is not down"),
            with(unaffected(Series::Async), "async calls no one"),
        ],
        Scenario::Duplicates => vec![
            with(
                unaffected(Series::Async),
                "duplicates are skipped, not failed on",
            ),
            with(
                unaffected(Series::Writes),
                "orders' replica skips the copies too",
            ),
        ],
        Scenario::FailOrders => vec![
            (Series::Sync, 50.0, 95.0, "sync fails with orders"),
            (Series::Writes, 50.0, 95.0, "writes fail with orders"),
            with(unaffected(Series::Async), "async calls no one"),
            with(unaffected(Series::Monolith), "the monolith calls no one"),
        ],
        Scenario::NatsOutage => bus_fault("writes commit with their events in the outbox"),
        Scenario::SchemaEvolution => vec![
            with(unaffected(Series::Async), "async calls no one"),
            with(unaffected(Series::Writes), "orders is not restarted"),
            with(unaffected(Series::Monolith), "the monolith is not touched"),
            (
                Series::Sync,
                80.0,
                100.0,
                "sync misses users and products only while each restarts",
            ),
        ],
        Scenario::ClusterFailover => vec![
            with(
                unaffected(Series::Writes),
                "writes commit with their events in the outbox",
            ),
            with(
                unaffected(Series::Async),
                "async answers from its projection",
            ),
            with(unaffected(Series::Sync), "sync does not use NATS"),
            with(
                unaffected(Series::Freshness),
                "every timed order reaches the projection",
            ),
        ],
        Scenario::ForgedEvent => bus_fault("writes commit while NATS's authorization is switched"),
        Scenario::IdleConnections => [
            Series::Sync,
            Series::Async,
            Series::Monolith,
            Series::Writes,
        ]
        .into_iter()
        .map(|series| {
            (
                series,
                100.0,
                100.0,
                "idle sockets take no request's place: not one call fails",
            )
        })
        .collect(),
        Scenario::StreamLost | Scenario::Retention => {
            bus_fault("writes commit with their events in the outbox")
        }
        Scenario::CatchUp => vec![
            (Series::Async, 0.0, 10.0, "async is down"),
            with(unaffected(Series::Sync), "sync does not need async"),
            with(unaffected(Series::Writes), "the owners do not need async"),
            with(
                unaffected(Series::Monolith),
                "the monolith does not need async",
            ),
        ],
    };
    for (series, at_least, at_most, why) in during {
        success("during", series, at_least, at_most, why);
    }
    let recovered = match scenario {
        Scenario::KillUsers => Some(Series::Sync),
        Scenario::FailOrders => Some(Series::Writes),
        Scenario::CatchUp => Some(Series::Async),
        Scenario::SlowProducts
        | Scenario::NatsOutage
        | Scenario::Duplicates
        | Scenario::ClusterFailover
        | Scenario::SchemaEvolution
        | Scenario::ForgedEvent
        | Scenario::IdleConnections
        | Scenario::StreamLost
        | Scenario::Retention => None,
    };
    if let Some(series) = recovered {
        success("after", series, 90.0, 100.0, "recovered");
    }
    if scenario == Scenario::SlowProducts {
        let (sync, asynchronous) = (stat("during", Series::Sync), stat("during", Series::Async));
        expected.push(Expectation {
            what: "sync pays the 50 ms: its median during is at least 50 ms".to_owned(),
            measured: format!("p50 {} us", sync.p50_us),
            met: sync.p50_us >= 50_000,
        });
        expected.push(Expectation {
            what: "async does not: its p99 during stays under 50 ms".to_owned(),
            measured: format!("p99 {} us", asynchronous.p99_us),
            met: asynchronous.ok > 0 && asynchronous.p99_us < 50_000,
        });
    }
    expected.push(Expectation {
        what: "the projection matches the owners: nothing missing, duplicated, unexpected or different, no acknowledged write lost".to_owned(),
        measured: consistency_line(consistency),
        met: consistency.ok,
    });
    expected
}

/// What an attack scenario claims beyond its phases, checked once the load has stopped and
/// the projection has converged.
async fn attack_expectations(
    attack: AttackLeft,
    endpoints: &Endpoints,
    asynchronous: &PurchaseServiceClient<Channel>,
    seeded: &Seeded,
    positions_before: Option<&BTreeMap<String, pb::StreamPosition>>,
    probe_user: &str,
) -> anyhow::Result<Vec<Expectation>> {
    let outcome = |result: &Result<String, String>| match result {
        Ok(refused) => (refused.clone(), true),
        Err(let_through) => (let_through.clone(), false),
    };
    let mut expected = Vec::new();
    match attack {
        AttackLeft::Forged(forgery) => {
            let (measured, met) = outcome(&forgery.anonymous);
            expected.push(Expectation {
                what: "NATS refuses a client without credentials".to_owned(),
                measured,
                met,
            });
            let (measured, met) = outcome(&forgery.impostor);
            expected.push(Expectation {
                what: "NATS refuses purchases-async's own user publishing a users event".to_owned(),
                measured,
                met,
            });
            let dead_lettered = |positions: Option<&BTreeMap<String, pb::StreamPosition>>| {
                positions
                    .and_then(|positions| positions.get(bus::USERS))
                    .map_or(0, |position| position.dead_lettered)
            };
            let before = dead_lettered(positions_before);
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut now = before;
            while Instant::now() < deadline {
                now = dead_lettered(
                    crate::bench::positions(asynchronous, probe_user)
                        .await
                        .as_ref(),
                );
                if now >= before + forgery.forged {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            expected.push(Expectation {
                what: "with authorization off on purpose, purchases-async dead-letters every forgery and applies none".to_owned(),
                measured: format!("{} dead-lettered of {} forged", now - before, forgery.forged),
                met: forgery.forged > 0 && now - before >= forgery.forged,
            });
            let replica = crate::attacks::dead_letters(endpoints, Service::Orders, bus::USERS)
                .await?
                .len() as u64;
            expected.push(Expectation {
                what: "and so does orders' replica (listed through its admin API)".to_owned(),
                measured: format!("{replica} dead letters on USERS"),
                met: replica >= forgery.forged,
            });
        }
        AttackLeft::StreamBack(back) => expected.push(Expectation {
            what: "orders' relay makes ORDERS again on its next publish, with its outbox"
                .to_owned(),
            measured: back.map_or("not within a minute".to_owned(), |seconds| {
                format!("{seconds:.2} s after the deletion")
            }),
            met: back.is_some(),
        }),
        AttackLeft::Rebuilt(mut rebuilt) => {
            let rebuilt_client =
                PurchaseServiceClient::new(crate::topology::channel_to(rebuilt.addr));
            let deadline = Instant::now() + CONVERGE_WITHIN;
            let (mut same, mut different) = (0, Vec::new());
            for user in &seeded.users {
                let user = &user.microservices;
                loop {
                    let original = crate::measure::all_purchases(asynchronous, user).await;
                    let from_state = crate::measure::all_purchases(&rebuilt_client, user).await;
                    let agree = match (&original, &from_state) {
                        (Ok(original), Ok(from_state)) => original == from_state,
                        (Err(original), Err(from_state)) => original.code() == from_state.code(),
                        _ => false,
                    };
                    if agree {
                        same += 1;
                        break;
                    }
                    if Instant::now() > deadline {
                        different.push(user.clone());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            expected.push(Expectation {
                what: "a projection built from the owners' re-emitted state answers every seeded user as the original does".to_owned(),
                measured: if different.is_empty() {
                    format!("{same} of {} users identical", seeded.users.len())
                } else {
                    format!("{} users differ, e.g. {}", different.len(), different[0])
                },
                met: different.is_empty(),
            });
            let missed: Vec<(String, u64)> = crate::bench::positions(&rebuilt_client, probe_user)
                .await
                .unwrap_or_default()
                .into_values()
                .map(|position| (position.stream, position.missed))
                .collect();
            expected.push(Expectation {
                what: "and it says, in its answers' freshness, what it never read".to_owned(),
                measured: format!("missed per stream: {missed:?}"),
                met: missed.len() == STREAMS.len() && missed.iter().all(|(_, n)| *n > 0),
            });
            rebuilt.process.stop().await?;
        }
    }
    Ok(expected)
}

/// What a fault of the bus alone leaves standing: writes (their events wait in the outbox),
/// async (it answers from its projection), and sync and the monolith, which use no NATS.
fn bus_fault(writes_why: &str) -> Vec<(Series, f64, f64, &str)> {
    [
        (Series::Writes, writes_why),
        (Series::Async, "async answers from its projection"),
        (Series::Sync, "sync does not use NATS"),
        (Series::Monolith, "the monolith does not use NATS"),
    ]
    .into_iter()
    .map(|(series, why)| (series, 99.0, 100.0, why))
    .collect()
}

fn with((series, at_least, at_most): (Series, f64, f64), why: &str) -> (Series, f64, f64, &str) {
    (series, at_least, at_most, why)
}

fn bounds(at_least: f64, at_most: f64) -> String {
    match (at_least > 0.0, at_most < 100.0) {
        (true, true) => format!("between {at_least}% and {at_most}%"),
        (true, false) => format!("at least {at_least}%"),
        (false, true) => format!("at most {at_most}%"),
        (false, false) => "anything".to_owned(),
    }
}

fn errors_line(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "no errors".to_owned();
    }
    errors
        .iter()
        .map(|(code, count)| format!("{count} {code}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn consistency_line(consistency: &Consistency) -> String {
    format!(
        "{} users: {} orders in the owners, {} purchases in the projection; {} missing, {} duplicated, {} unexpected, {} different; {} writes acknowledged, {} lost; {} after the load stopped",
        consistency.users_checked,
        consistency.orders_in_owners,
        consistency.purchases_in_projection,
        consistency.missing,
        consistency.duplicated,
        consistency.unexpected,
        consistency.mismatched,
        consistency.writes_acknowledged,
        consistency.writes_lost,
        if consistency.ok {
            format!("agreed {:.2} s", consistency.converged_after_s)
        } else {
            format!("still disagreeing {:.0} s", consistency.converged_after_s)
        }
    )
}

/// Checks the projection against the owners until they agree or [`CONVERGE_WITHIN`] passes.
async fn converge(
    endpoints: &Endpoints,
    projection: &PurchaseServiceClient<Channel>,
    seeded: &Seeded,
    acknowledged: &[String],
    since: Instant,
) -> Consistency {
    let owners = Owners::new(endpoints);
    loop {
        let mut checked = match check(&owners, projection, seeded, acknowledged).await {
            Ok(checked) => checked,
            Err(error) => Consistency {
                examples: vec![format!("{error:#}")],
                ..Consistency::default()
            },
        };
        checked.converged_after_s = round2(since.elapsed().as_secs_f64());
        if checked.ok || since.elapsed() > CONVERGE_WITHIN {
            return checked;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Clients of the owning services: the ground truth.
struct Owners {
    users: UserServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
    products: ProductServiceClient<Channel>,
}

impl Owners {
    fn new(endpoints: &Endpoints) -> Self {
        Self {
            users: UserServiceClient::new(endpoints.channel(Service::Users)),
            orders: OrderServiceClient::new(endpoints.channel(Service::Orders)),
            products: ProductServiceClient::new(endpoints.channel(Service::Products)),
        }
    }

    async fn orders_of(&self, user: &str) -> anyhow::Result<Vec<orders_pb::Order>> {
        let mut orders = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .orders
                .clone()
                .list_orders_by_user(orders_pb::ListOrdersByUserRequest {
                    user_id: user.to_owned(),
                    page_size: 1_000,
                    page_token,
                })
                .await
                .with_context(|| format!("orders: ListOrdersByUser({user})"))?
                .into_inner();
            orders.extend(page.orders);
            if page.next_page_token.is_empty() {
                return Ok(orders);
            }
            page_token = page.next_page_token;
        }
    }

    async fn name_of(&self, user: &str) -> anyhow::Result<String> {
        Ok(self
            .users
            .clone()
            .get_user(users_pb::GetUserRequest {
                id: user.to_owned(),
            })
            .await
            .with_context(|| format!("users: GetUser({user})"))?
            .into_inner()
            .user
            .context("GetUser answered without a user")?
            .name)
    }

    async fn products(
        &self,
        ids: &BTreeSet<String>,
    ) -> anyhow::Result<HashMap<String, products_pb::Product>> {
        let ids: Vec<String> = ids.iter().cloned().collect();
        let mut found = HashMap::new();
        for chunk in ids.chunks(1_000) {
            let answer = self
                .products
                .clone()
                .batch_get_products(products_pb::BatchGetProductsRequest {
                    ids: chunk.to_vec(),
                })
                .await
                .context("products: BatchGetProducts")?
                .into_inner();
            found.extend(
                answer
                    .products
                    .into_iter()
                    .map(|product| (product.id.clone(), product)),
            );
        }
        Ok(found)
    }
}

/// Every purchase purchases-async holds for a user, with the name it knows them by.
async fn projected(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
) -> anyhow::Result<(String, Vec<pb::Purchase>)> {
    let (known_as, purchases) = crate::measure::all_purchases(client, user)
        .await
        .with_context(|| format!("purchases-async: ListUserPurchases({user})"))?;
    Ok((
        known_as.map(|user| user.name).unwrap_or_default(),
        purchases,
    ))
}

/// The facts of one purchase that both sides must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    status: i32,
    quantity: i32,
    product_id: String,
    title: String,
    price_cents: i64,
}

/// How many discrepancies a check keeps as examples.
const EXAMPLES: usize = 5;

async fn check(
    owners: &Owners,
    projection: &PurchaseServiceClient<Channel>,
    seeded: &Seeded,
    acknowledged: &[String],
) -> anyhow::Result<Consistency> {
    let mut truth: Vec<(String, String, Vec<orders_pb::Order>)> = Vec::new();
    let mut product_ids = BTreeSet::new();
    for user in &seeded.users {
        let orders = owners.orders_of(&user.microservices).await?;
        product_ids.extend(orders.iter().map(|order| order.product_id.clone()));
        let name = owners.name_of(&user.microservices).await?;
        truth.push((user.microservices.clone(), name, orders));
    }
    let products = owners.products(&product_ids).await?;

    let mut result = Consistency {
        users_checked: truth.len(),
        writes_acknowledged: acknowledged.len(),
        ..Consistency::default()
    };
    let mut known_orders = BTreeSet::new();
    for (user, name, orders) in &truth {
        let (projected_name, purchases) = projected(projection, user).await?;
        result.orders_in_owners += orders.len();
        result.purchases_in_projection += purchases.len();
        if !orders.is_empty() && projected_name != *name {
            result.mismatched += 1;
            note(
                &mut result,
                format!(
                    "user {user}: named {projected_name:?} in the projection, {name:?} by users"
                ),
            );
        }
        let expected: HashMap<&str, Facts> = orders
            .iter()
            .map(|order| {
                let product = products.get(&order.product_id);
                (
                    order.id.as_str(),
                    Facts {
                        status: order.status,
                        quantity: order.quantity,
                        product_id: order.product_id.clone(),
                        title: product.map(|p| p.title.clone()).unwrap_or_default(),
                        price_cents: product.map_or(0, |p| p.price_cents),
                    },
                )
            })
            .collect();
        known_orders.extend(orders.iter().map(|order| order.id.clone()));
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for purchase in &purchases {
            *seen.entry(purchase.order_id.as_str()).or_default() += 1;
            let Some(facts) = expected.get(purchase.order_id.as_str()) else {
                result.unexpected += 1;
                note(
                    &mut result,
                    format!(
                        "order {} is in the projection, not in orders",
                        purchase.order_id
                    ),
                );
                continue;
            };
            let got = Facts {
                status: purchase.status,
                quantity: purchase.quantity,
                product_id: purchase.product_id.clone(),
                title: purchase
                    .product
                    .as_ref()
                    .map(|p| p.title.clone())
                    .unwrap_or_default(),
                price_cents: purchase.product.as_ref().map_or(0, |p| p.price_cents),
            };
            if got != *facts {
                result.mismatched += 1;
                note(
                    &mut result,
                    format!(
                        "order {}: {got:?} in the projection, {facts:?} in the owners",
                        purchase.order_id
                    ),
                );
            }
        }
        for (order, count) in &seen {
            if *count > 1 {
                result.duplicated += count - 1;
                note(
                    &mut result,
                    format!("order {order} is in the projection {count} times"),
                );
            }
        }
        for order in expected.keys() {
            if !seen.contains_key(order) {
                result.missing += 1;
                note(
                    &mut result,
                    format!("order {order} is in orders, not in the projection"),
                );
            }
        }
    }
    for order in acknowledged {
        if !known_orders.contains(order) {
            result.writes_lost += 1;
            note(
                &mut result,
                format!("order {order} was acknowledged, and orders does not hold it"),
            );
        }
    }
    result.ok = result.missing == 0
        && result.duplicated == 0
        && result.unexpected == 0
        && result.mismatched == 0
        && result.writes_lost == 0;
    Ok(result)
}

fn note(result: &mut Consistency, example: String) {
    if result.examples.len() < EXAMPLES {
        result.examples.push(example);
    }
}

fn micros_cell(us: u64) -> String {
    if us == 0 {
        "-".to_owned()
    } else if us >= 10_000 {
        format!("{:.0} ms", us as f64 / 1_000.0)
    } else {
        format!("{:.2} ms", us as f64 / 1_000.0)
    }
}

fn phase_rows(result: &ScenarioResult) -> Vec<[String; 7]> {
    let mut rows = Vec::new();
    for phase in PHASES {
        let Some(per_series) = result.phases.get(phase) else {
            continue;
        };
        for series in Series::ALL {
            let Some(stats) = per_series.get(series.name()) else {
                continue;
            };
            rows.push([
                phase.to_owned(),
                series.name().to_owned(),
                stats.requests.to_string(),
                format!("{:.1}%", stats.success_pct),
                micros_cell(stats.p50_us),
                micros_cell(stats.p99_us),
                errors_line(&stats.errors),
            ]);
        }
    }
    rows
}

const PHASE_HEADERS: [&str; 7] = ["phase", "series", "calls", "ok", "p50", "p99", "errors"];

fn expectation_lines(result: &ScenarioResult) -> String {
    result
        .expectations
        .iter()
        .map(|expectation| {
            format!(
                "  [{}] {} (measured: {})\n",
                if expectation.met { "ok" } else { "FAILED" },
                expectation.what,
                expectation.measured
            )
        })
        .collect()
}

fn terminal_section(result: &ScenarioResult) -> String {
    let mut text = format!(
        "== {}: {} ==\nfault from {:.1} s to {:.1} s of {:.1} s, on {}\n{}",
        result.name,
        result.what,
        result.fault_from_s,
        result.fault_to_s,
        result.ended_s,
        result.nats,
        crate::report::table(&PHASE_HEADERS, &phase_rows(result))
    );
    for note in &result.notes {
        text.push_str(&format!("note: {note}\n"));
    }
    for example in &result.consistency.examples {
        text.push_str(&format!("discrepancy: {example}\n"));
    }
    text.push_str(&expectation_lines(result));
    text.push_str(if result.passed {
        "PASSED\n"
    } else {
        "FAILED\n"
    });
    text
}

pub fn terminal(report: &ChaosReport) -> String {
    let mut text = String::from("\nscenario          result\n");
    for scenario in &report.scenarios {
        text.push_str(&format!(
            "{:<17} {}\n",
            scenario.name,
            if scenario.passed { "passed" } else { "FAILED" }
        ));
    }
    text
}

fn html(report: &ChaosReport) -> String {
    use crate::report::{Chart, escape, line_chart};
    let mut body = format!(
        "<h1>Lab chaos</h1><p>{} on {}; {}; JetStream fsync {}; {} reads/s per mode, {} orders/s per system{}.</p>\
         <p>Each scenario loads every mode before, during and after a fault (the shaded band), then \
         checks purchases-async against the owning services. Success rates and latencies are per \
         bucket of the timeline; latency is over the calls that succeeded.</p>",
        escape(&report.generated_at),
        escape(&report.machine),
        escape(&report.storage),
        escape(&report.nats_fsync),
        report.read_rate,
        report.write_rate,
        if report.quick { ", quick phases" } else { "" }
    );
    for scenario in &report.scenarios {
        let band = Some((
            scenario.fault_from_s,
            scenario.fault_to_s,
            scenario.name.as_str(),
        ));
        let series_of = |pick: &dyn Fn(&PhaseStats) -> Option<f64>, names: &[Series]| {
            names
                .iter()
                .map(|series| {
                    let points = scenario
                        .timeline
                        .iter()
                        .filter_map(|bucket| {
                            let stats = bucket.series.get(series.name())?;
                            Some((bucket.at, pick(stats)?))
                        })
                        .collect();
                    (series.name().to_owned(), points)
                })
                .collect::<Vec<_>>()
        };
        let reads_and_writes = [
            Series::Sync,
            Series::Async,
            Series::Monolith,
            Series::Writes,
        ];
        let success = series_of(
            &|stats| (stats.requests > 0).then_some(stats.success_pct),
            &reads_and_writes,
        );
        // A bucket with calls and no success is a gap in the latency line, not a zero.
        let latency = series_of(
            &|stats| {
                (stats.requests > 0).then(|| {
                    if stats.ok > 0 {
                        stats.p99_us as f64 / 1_000.0
                    } else {
                        f64::NAN
                    }
                })
            },
            &[
                Series::Sync,
                Series::Async,
                Series::Monolith,
                Series::Freshness,
            ],
        );
        body.push_str(&format!(
            "<h2>{name}: {what} — {verdict}</h2><p>On {nats}.</p>\
             <h3>Success rate per bucket (%)</h3>{success}\
             <h3>p99 latency per bucket (ms, log scale; freshness is commit to visible)</h3>{latency}\
             <pre>{table}</pre><ul>{notes}</ul><h3>Expectations</h3><pre>{expectations}</pre>",
            name = escape(&scenario.name),
            what = escape(&scenario.what),
            verdict = if scenario.passed { "passed" } else { "FAILED" },
            nats = escape(&scenario.nats),
            success = line_chart(
                &success,
                &Chart {
                    band,
                    y_range: Some((0.0, 100.0)),
                    ..Chart::timeline("success %", false)
                }
            ),
            latency = line_chart(
                &latency,
                &Chart {
                    band,
                    ..Chart::timeline("p99 ms", true)
                }
            ),
            table = escape(&crate::report::table(&PHASE_HEADERS, &phase_rows(scenario))),
            notes = scenario
                .notes
                .iter()
                .chain(&scenario.consistency.examples)
                .map(|note| format!("<li>{}</li>", escape(note)))
                .collect::<String>(),
            expectations = escape(&expectation_lines(scenario)),
        ));
    }
    crate::report::page("Lab chaos", &body)
}

/// Writes chaos.json and chaos.html into the data dir (and the JSON to `--json` too).
pub fn write(
    report: &ChaosReport,
    data_dir: &Path,
    json: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let text = serde_json::to_string_pretty(report)?;
    let json_path = data_dir.join("chaos.json");
    std::fs::write(&json_path, &text)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    if let Some(extra) = json {
        std::fs::write(extra, &text)
            .with_context(|| format!("cannot write {}", extra.display()))?;
    }
    let html_path = data_dir.join("chaos.html");
    std::fs::write(&html_path, html(report))
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    Ok((json_path, html_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(series: Series, at: f64, latency_us: u64, error: Option<&str>) -> Sample {
        Sample {
            series,
            at,
            latency_us,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn samples_fall_into_the_phase_of_their_due_time() {
        let window = (10.0, 20.0, 30.0);
        let samples = vec![
            sample(Series::Sync, 1.0, 1_000, None),
            sample(Series::Sync, 9.99, 1_000, None),
            sample(Series::Sync, 10.0, 500, Some("Unavailable")),
            sample(Series::Sync, 15.0, 700, Some("Unavailable")),
            sample(Series::Sync, 20.0, 2_000, None),
        ];
        let phases = phases(&samples, window);
        let sync = |phase: &str| phases[phase]["sync"].clone();
        assert_eq!((sync("before").requests, sync("before").ok), (2, 2));
        assert_eq!(sync("during").success_pct, 0.0);
        assert_eq!(sync("during").errors.get("Unavailable"), Some(&2));
        assert_eq!(sync("during").p50_us, 0, "no success, no latency");
        assert_eq!(sync("after").ok, 1);
        assert_eq!(
            phases["during"]["async"].success_pct, 100.0,
            "no calls is not a failure of the figure"
        );
        assert_eq!(phases["during"]["async"].requests, 0);
    }

    #[test]
    fn the_drain_time_is_when_the_last_order_of_the_outage_showed() {
        let window = (10.0, 20.0, 30.0);
        let samples = vec![
            // Written before the outage: not counted.
            sample(Series::Freshness, 9.0, 30_000_000, None),
            sample(Series::Freshness, 12.0, 9_500_000, None),
            sample(Series::Freshness, 18.0, 3_000_000, None),
            sample(Series::Freshness, 19.0, 100_000_000, Some("NeverSeen")),
        ];
        assert_eq!(drained_after(&samples, window), Some(1.5));
        assert_eq!(drained_after(&samples[..1], window), None);
    }

    #[test]
    fn expectations_fail_when_a_mode_misbehaves() {
        let window = (10.0, 20.0, 30.0);
        let mut samples = Vec::new();
        for at in 0..30 {
            let at = f64::from(at);
            let during = (10.0..20.0).contains(&at);
            for series in [Series::Async, Series::Monolith, Series::Writes] {
                samples.push(sample(series, at, 500, None));
            }
            samples.push(sample(
                Series::Sync,
                at,
                900,
                during.then_some("Unavailable"),
            ));
        }
        let consistent = Consistency {
            ok: true,
            ..Consistency::default()
        };
        let met = |samples: &[Sample], consistency: &Consistency| {
            expectations(Scenario::KillUsers, &phases(samples, window), consistency)
                .iter()
                .all(|expectation| expectation.met)
        };
        assert!(met(&samples, &consistent));
        assert!(
            !met(&samples, &Consistency::default()),
            "an inconsistent projection fails"
        );
        // Async failing during the fault breaks the scenario's central claim.
        let mut broken = samples.clone();
        for sample in broken
            .iter_mut()
            .filter(|s| s.series == Series::Async && s.at >= 10.0)
        {
            sample.error = Some("Unavailable".to_owned());
        }
        assert!(!met(&broken, &consistent));
        // So does sync answering while its dependency is dead.
        let mut answering = samples;
        for sample in answering.iter_mut() {
            sample.error = None;
        }
        assert!(!met(&answering, &consistent));
    }

    #[test]
    fn choosing_all_runs_each_scenario_once_in_order() {
        let args = ChaosArgs {
            scenarios: vec![Choice::One(Scenario::CatchUp), Choice::All],
            quick: true,
            read_rate: 1,
            write_rate: 1,
            json: None,
        };
        let chosen = args.scenarios();
        assert_eq!(chosen.first(), Some(&Scenario::CatchUp));
        assert_eq!(chosen.len(), Scenario::ALL.len());
    }

    #[test]
    fn buckets_cover_the_run_and_keep_each_series_apart() {
        let samples = vec![
            sample(Series::Sync, 0.2, 100, None),
            sample(Series::Sync, 0.7, 300, Some("Unavailable")),
            sample(Series::Async, 1.2, 50, None),
        ];
        let buckets = buckets(&samples, 1.5, 0.5);
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets[1].at, 0.5);
        assert_eq!(buckets[1].series["sync"].success_pct, 0.0);
        assert_eq!(buckets[2].series["async"].ok, 1);
        assert!(!buckets[0].series.contains_key("async"));
    }
}
