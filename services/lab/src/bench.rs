//! `lab bench`: the load generator. Each mode is offered a constant arrival rate (open loop),
//! step by step up to saturation, while a background writer keeps placing orders so the
//! projection is under real update load. Then the projection's freshness is timed under a
//! steady write rate, and the bytes each design stores are counted.
//!
//! Latency is measured from when a request was due, not from when it was sent (the
//! coordinated-omission correction wrk2 makes): when a mode falls behind, the requests that
//! waited behind it count their wait. The uncorrected figure is kept beside it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::jetstream_alone::JetStreamAlone;
use crate::measure::{Clients, ErrorTally, Mode, micros, micros_histogram};
use crate::seed::{Seeded, SeededUser};
use crate::stages::{Sample, StageProbe, Stages};
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;
use crate::writer::{AfterWrite, BackgroundWrites, PacedWriter, WriteTarget, lock};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A smoke run in well under a minute: fewer, shorter steps and a short freshness phase.
    #[arg(long)]
    pub quick: bool,
    /// Offered request rates per second, stepped through in order until the mode saturates
    /// [default: 100,250,500,1000,2000,4000,8000,16000; with --quick 200,1000,4000].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub rates: Vec<u32>,
    /// How long each rate is held, in milliseconds [default: 5000; with --quick 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub step_ms: Option<u64>,
    /// Steps added per mode between the last rate it carried and the first it did not,
    /// each halving that gap (on a log scale), so its saturation is found more closely than
    /// the rates' spacing [default: 2; with --quick 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=6))]
    pub refine_steps: Option<u32>,
    /// The rate offered to every mode alike for the summary (added to the steps).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub reference_rate: u32,
    /// Rounds the summary is measured in at the reference rate, every mode taking a turn in
    /// each, so that a passing disturbance of the machine falls on every mode alike
    /// [default: 5; with --quick 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub reference_rounds: Option<u32>,
    /// How long each mode's turn in a round lasts, in milliseconds [default: 2000; with
    /// --quick 500].
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub reference_round_ms: Option<u64>,
    /// Orders per second placed in the background (in the microservices and the monolith
    /// alike) while the reads are measured [default: 100; with --quick 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=20_000))]
    pub write_rate: Option<u32>,
    /// Orders per second placed while freshness is timed.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    pub freshness_write_rate: u32,
    /// How long freshness is timed, in milliseconds [default: 10000; with --quick 2000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub freshness_ms: Option<u64>,
    /// Requests the load generator keeps in flight per mode at most; past it, due requests
    /// wait (and their wait counts in the corrected latency).
    #[arg(long, default_value_t = 2_048, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_in_flight: u32,
    /// Purchases asked for per request (the page size), the same in every mode.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i32).range(1..=1_000))]
    pub page_size: i32,
    /// Where to write the JSON results [default: DATA_DIR/bench.json].
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The settings one run uses, with the defaults and `--quick` applied.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rates: Vec<u32>,
    pub step_ms: u64,
    pub refine_steps: u32,
    pub reference_rate: u32,
    pub reference_rounds: u32,
    pub reference_round_ms: u64,
    pub write_rate: u32,
    pub freshness_write_rate: u32,
    pub freshness_ms: u64,
    pub max_in_flight: u32,
    pub page_size: i32,
    /// Every request's deadline.
    pub deadline_ms: u64,
}

/// A request that takes longer than this has failed (DEADLINE_EXCEEDED), whatever the mode.
const DEADLINE: Duration = Duration::from_secs(2);

/// A step saturates a mode when it answers less than this share of the offered rate...
const SATURATED_BELOW: f64 = 0.9;
/// ... or fails more than this share of requests.
const SATURATED_ERRORS: f64 = 0.01;

impl BenchArgs {
    pub fn settings(&self) -> Settings {
        let mut rates = if self.rates.is_empty() {
            if self.quick {
                vec![200, 1_000, 4_000]
            } else {
                vec![100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000]
            }
        } else {
            self.rates.clone()
        };
        rates.push(self.reference_rate);
        rates.sort_unstable();
        rates.dedup();
        Settings {
            rates,
            step_ms: self
                .step_ms
                .unwrap_or(if self.quick { 1_000 } else { 5_000 }),
            refine_steps: self.refine_steps.unwrap_or(if self.quick { 1 } else { 2 }),
            reference_rate: self.reference_rate,
            reference_rounds: self
                .reference_rounds
                .unwrap_or(if self.quick { 2 } else { 5 }),
            reference_round_ms: self.reference_round_ms.unwrap_or(if self.quick {
                500
            } else {
                2_000
            }),
            write_rate: self.write_rate.unwrap_or(if self.quick { 50 } else { 100 }),
            freshness_write_rate: self.freshness_write_rate,
            freshness_ms: self
                .freshness_ms
                .unwrap_or(if self.quick { 2_000 } else { 10_000 }),
            max_in_flight: self.max_in_flight,
            page_size: self.page_size,
            deadline_ms: u64::try_from(DEADLINE.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// The modes the bench compares, in the order they run.
pub const MODES: [Mode; 5] = [
    Mode::Echo,
    Mode::Sync,
    Mode::SyncSequential,
    Mode::Async,
    Mode::Monolith,
];

/// One rate held for one step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub offered_rps: u32,
    pub seconds: f64,
    /// Requests that fell due during the step.
    pub scheduled: u64,
    pub ok: u64,
    /// Answered requests per second.
    pub throughput_rps: f64,
    /// Latency of answered requests from when they were due (corrected for coordinated
    /// omission).
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The same requests timed from when they were sent.
    pub uncorrected_p50_us: u64,
    pub uncorrected_p99_us: u64,
    /// How late the load generator itself sent requests (its own timer), p99.
    pub send_lag_p99_us: u64,
    /// Failed or never-sent requests over scheduled ones.
    pub error_rate: f64,
    pub errors: BTreeMap<String, u64>,
    pub example_errors: BTreeMap<String, String>,
    /// CPU used during the step, by process, in percent of one core.
    pub cpu_pct: BTreeMap<String, f64>,
    pub saturated: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub steps: Vec<Step>,
    /// The most requests per second the mode answered in any step.
    pub saturation_rps: f64,
    /// False when even the highest offered rate did not saturate the mode: then
    /// `saturation_rps` is a lower bound.
    pub saturation_reached: bool,
}

/// The reference rate, offered to every mode in turn, round after round.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub rate: u32,
    pub rounds: u32,
    pub round_ms: u64,
    /// Each mode's figures in each round, in the order the rounds ran, with tracing off.
    pub per_round: BTreeMap<String, Vec<RoundFigures>>,
    /// What tracing costs: every round ran twice, with the services keeping no new traces
    /// and keeping `ratio` of them. None when the lab ran with `--tracing off`.
    pub tracing: Option<TracingCost>,
}

/// The reference rounds with tracing on beside the same rounds with it off.
#[derive(Debug, Clone, Serialize)]
pub struct TracingCost {
    /// The share of requests traced in the rounds with tracing on.
    pub ratio: f64,
    /// Each mode's figures with tracing on, over all its rounds.
    pub on: BTreeMap<String, RoundFigures>,
    /// Each mode's figures with tracing off (the summary's).
    pub off: BTreeMap<String, RoundFigures>,
    /// Each mode's turns with tracing on, round by round.
    pub per_round_on: BTreeMap<String, Vec<RoundFigures>>,
}

/// One mode's turn in one round.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RoundFigures {
    pub p50_us: u64,
    pub p99_us: u64,
    pub error_rate: f64,
}

/// The figures scripts read: one reference rate offered to every mode alike, over every
/// round of [`Reference`].
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub p50_us: u64,
    pub p99_us: u64,
    pub throughput_rps: f64,
    pub error_rate: f64,
    pub saturation_rps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FreshnessResult {
    /// From PlaceOrder's answer to the first read of purchases-async that shows the order
    /// (an upper bound: the read that first shows it is counted whole).
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub samples: u64,
    pub never_seen: u64,
    pub write_rate_offered: u32,
    pub write_rate_achieved: f64,
    /// PlaceOrder calls that failed.
    pub write_errors: u64,
    /// Writes not sent because 64 were already waiting for orders: orders fell behind.
    pub writes_skipped: u64,
    /// Bucketed distribution: (upper bound in us, count).
    pub distribution: Vec<(u64, u64)>,
    /// The same lags split into relay, JetStream and projection time, when the bench could
    /// follow the orders stream.
    pub stages: Option<Stages>,
    /// The same orders split by their spans, when the lab traced.
    pub span_stages: Option<crate::traces::freshness::SpanStages>,
    /// JetStream's own publish-to-delivery at the same rate, measured alone just before:
    /// the floor under the JetStream stage. None when it could not be measured.
    pub jetstream_alone: Option<JetStreamAlone>,
    /// CPU used while writing and timing, by process, in percent of one core.
    pub cpu_pct: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub generated_at: String,
    pub machine: String,
    pub storage: String,
    pub nats_fsync: String,
    pub data: BenchData,
    pub settings: Settings,
    /// `summary.<mode>` at the reference rate, for `echo`, `sync`, `sync-sequential`,
    /// `async`, `monolith`.
    pub summary: BTreeMap<String, Summary>,
    /// How the summary was measured, round by round.
    pub reference: Reference,
    pub freshness: FreshnessResult,
    pub catch_up: CatchUp,
    /// Every step of every mode.
    pub series: BTreeMap<String, ModeResult>,
    pub background_writes: BackgroundWrites,
    /// Bytes on disk per store at the end: what each design keeps, and what the projection
    /// duplicates.
    pub storage_bytes: BTreeMap<String, u64>,
    /// The aims as measured ratios, each with whether this run met it.
    pub aims: Vec<Aim>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchData {
    pub users: usize,
    pub products: usize,
    pub orders: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Aim {
    pub name: String,
    pub measured: f64,
    pub target: f64,
    /// `<=` or `>=`.
    pub comparison: String,
    pub met: bool,
    /// The same ratio in each round of the reference rate, when it is measured there: how
    /// far one round's figure can be trusted on this machine today.
    pub rounds: Vec<f64>,
}

/// Runs every phase on a running, seeded, caught-up lab.
pub async fn run(
    lab: &RunningLab,
    seeded: &Seeded,
    settings: &Settings,
    storage: &str,
    nats_fsync: &str,
) -> anyhow::Result<BenchReport> {
    let endpoints = lab.endpoints.clone();
    let clients = crate::demo::clients(&endpoints);
    let users = Arc::new(seeded.users.clone());
    // The steps and the summary are measured untraced; tracing's cost is measured apart, in
    // the reference rounds, and the timed orders of the freshness phase trace themselves.
    let tracing = endpoints
        .otlp_endpoint
        .is_some()
        .then_some(endpoints.trace_sample);
    if tracing.is_some() {
        crate::traces::set_sampling(&endpoints, 0.0).await?;
    }

    let writer = PacedWriter::start(
        vec![
            WriteTarget::microservices(&endpoints, seeded),
            WriteTarget::monolith(&endpoints, seeded),
        ],
        settings.write_rate,
        None,
    );
    // Rates on the outside, modes inside: the background writer grows the data as the run
    // goes on, and every mode meets each rate on the same data.
    let mut steps: BTreeMap<Mode, Vec<Step>> =
        MODES.iter().map(|mode| (*mode, Vec::new())).collect();
    let mut saturated: BTreeMap<Mode, bool> = BTreeMap::new();
    let reference_turns =
        settings.reference_rounds as usize * if tracing.is_some() { 2 } else { 1 };
    let total_steps = MODES.len() * (settings.rates.len() + reference_turns);
    let progress = ProgressBar::new(total_steps as u64);
    progress.set_style(
        ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for &rate in &settings.rates {
        for mode in MODES {
            progress.inc(1);
            // Past saturation a mode is not loaded harder, except to the reference rate, so
            // every mode's series has the step the summary is measured at.
            if saturated.get(&mode).copied().unwrap_or(false) && rate > settings.reference_rate {
                continue;
            }
            progress.set_prefix(mode.name());
            progress.set_message(format!("{rate} req/s"));
            let step = step_with_cpu(lab, &clients, mode, &users, rate, settings).await;
            if step.saturated {
                saturated.insert(mode, true);
            }
            steps.entry(mode).or_default().push(step);
        }
    }
    for _ in 0..settings.refine_steps {
        for mode in MODES {
            let Some(rate) = steps
                .get(&mode)
                .and_then(|steps| between_carried_and_not(steps))
            else {
                continue;
            };
            progress.inc_length(1);
            progress.inc(1);
            progress.set_prefix(mode.name());
            progress.set_message(format!("{rate} req/s, narrowing its saturation"));
            let step = step_with_cpu(lab, &clients, mode, &users, rate, settings).await;
            steps.entry(mode).or_default().push(step);
        }
    }
    for steps in steps.values_mut() {
        steps.sort_by_key(|step| step.offered_rps);
    }
    let series: BTreeMap<String, ModeResult> = steps
        .into_iter()
        .map(|(mode, steps)| {
            let saturation_rps = steps
                .iter()
                .map(|step| step.throughput_rps)
                .fold(0.0, f64::max);
            (
                mode.name().to_owned(),
                ModeResult {
                    steps,
                    saturation_rps,
                    saturation_reached: saturated.get(&mode).copied().unwrap_or(false),
                },
            )
        })
        .collect();
    let (reference, at_reference) =
        reference_rounds(&endpoints, &clients, &users, settings, tracing, &progress).await?;
    progress.finish_and_clear();
    let (background_writes, _) = writer.stop().await;

    println!(
        "Timing JetStream alone: {} messages/s for {:.1} s...",
        settings.freshness_write_rate,
        settings.freshness_ms as f64 / 1_000.0
    );
    let jetstream_alone = crate::jetstream_alone::measure(
        &endpoints,
        settings.freshness_write_rate,
        Duration::from_millis(settings.freshness_ms),
    )
    .await
    .inspect_err(|error| eprintln!("Not timing JetStream alone: {error:#}"))
    .ok();
    println!(
        "Timing freshness: {} orders/s for {:.1} s...",
        settings.freshness_write_rate,
        settings.freshness_ms as f64 / 1_000.0
    );
    let cpu_before = crate::cpu::sample(&lab.pids());
    let traces = tracing.is_some().then_some(lab.data_dir.as_path());
    let mut freshness =
        freshness(&endpoints, &clients.asynchronous, seeded, settings, traces).await;
    freshness.cpu_pct = crate::cpu::usage(&cpu_before, &crate::cpu::sample(&lab.pids()));
    freshness.jetstream_alone = jetstream_alone;
    println!("Timing a new projection built from every event in the streams...");
    let catch_up = catch_up(lab, seeded).await?;
    let storage_bytes = crate::footprint::measure(lab).await;

    let summary: BTreeMap<String, Summary> = at_reference
        .into_iter()
        .map(|(mode, step)| {
            let saturation_rps = series
                .get(mode.name())
                .map_or(0.0, |result| result.saturation_rps);
            (
                mode.name().to_owned(),
                Summary {
                    p50_us: step.p50_us,
                    p99_us: step.p99_us,
                    throughput_rps: step.throughput_rps,
                    error_rate: step.error_rate,
                    saturation_rps,
                },
            )
        })
        .collect();
    let aims = aims(&summary, &reference, &freshness, &catch_up);
    Ok(BenchReport {
        generated_at: crate::report::now_rfc3339(),
        machine: crate::report::machine(),
        storage: storage.to_owned(),
        nats_fsync: nats_fsync.to_owned(),
        data: BenchData {
            users: seeded.users.len(),
            products: seeded.products,
            orders: seeded.orders,
        },
        settings: settings.clone(),
        summary,
        reference,
        freshness,
        catch_up,
        series,
        background_writes,
        storage_bytes,
        aims,
    })
}

fn aims(
    summary: &BTreeMap<String, Summary>,
    reference: &Reference,
    freshness: &FreshnessResult,
    catch_up: &CatchUp,
) -> Vec<Aim> {
    let get = |mode: &str| summary.get(mode);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let hundredths = |value: f64| (value * 100.0).round() / 100.0;
    // `mode`'s figure over `floor` times echo's, round by round.
    let per_round = |mode: &str, figure: fn(&RoundFigures) -> u64, floor: f64| -> Vec<f64> {
        let (Some(rounds), Some(echo)) = (
            reference.per_round.get(mode),
            reference.per_round.get("echo"),
        ) else {
            return Vec::new();
        };
        rounds
            .iter()
            .zip(echo)
            .map(|(own, echo)| hundredths(ratio(figure(own) as f64, floor * figure(echo) as f64)))
            .collect()
    };
    let mut aims = Vec::new();
    let mut aim = |name: &str, measured: f64, comparison: &str, target: f64, rounds: Vec<f64>| {
        let met = if comparison == "<=" {
            measured <= target
        } else {
            measured >= target
        };
        aims.push(Aim {
            name: name.to_owned(),
            measured: hundredths(measured),
            target,
            comparison: comparison.to_owned(),
            met,
            rounds,
        });
    };
    let p50 = |figures: &RoundFigures| figures.p50_us;
    let p99 = |figures: &RoundFigures| figures.p99_us;
    if let (Some(echo), Some(asynchronous)) = (get("echo"), get("async")) {
        aim(
            "async p50 / echo p50",
            ratio(asynchronous.p50_us as f64, echo.p50_us as f64),
            "<=",
            1.3,
            per_round("async", p50, 1.0),
        );
        aim(
            "async p99 / echo p99",
            ratio(asynchronous.p99_us as f64, echo.p99_us as f64),
            "<=",
            2.0,
            per_round("async", p99, 1.0),
        );
    }
    if let (Some(sync), Some(asynchronous)) = (get("sync"), get("async")) {
        aim(
            "async saturation / sync saturation",
            ratio(asynchronous.saturation_rps, sync.saturation_rps),
            ">=",
            3.0,
            Vec::new(),
        );
    }
    if let (Some(echo), Some(sync)) = (get("echo"), get("sync")) {
        // Three round trips one after another: caller to D, users and orders together,
        // then products.
        aim(
            "sync p50 / (3 x echo p50)",
            ratio(sync.p50_us as f64, 3.0 * echo.p50_us as f64),
            "<=",
            1.2,
            per_round("sync", p50, 3.0),
        );
    }
    aim(
        "freshness p99 (ms)",
        freshness.p99_us as f64 / 1_000.0,
        "<=",
        5.0,
        Vec::new(),
    );
    aim(
        "catch-up (events/s)",
        catch_up.events_per_second,
        ">=",
        20_000.0,
        Vec::new(),
    );
    aims
}

/// One step of the series: `rate` held for the step's length, with the CPU every process
/// used meanwhile.
async fn step_with_cpu(
    lab: &RunningLab,
    clients: &Clients,
    mode: Mode,
    users: &Arc<Vec<SeededUser>>,
    rate: u32,
    settings: &Settings,
) -> Step {
    let pids = lab.pids();
    let cpu_before = crate::cpu::sample(&pids);
    let length = Duration::from_millis(settings.step_ms);
    let step = open_loop(clients, mode, users, rate, length, settings)
        .await
        .step(rate);
    Step {
        cpu_pct: crate::cpu::usage(&cpu_before, &crate::cpu::sample(&pids)),
        ..step
    }
}

/// The rate halfway (on a log scale) between the highest rate a mode carried and the lowest
/// it did not, or None when the mode never saturated, never carried a rate, or the two are
/// already within 10% of each other.
fn between_carried_and_not(steps: &[Step]) -> Option<u32> {
    let not_carried = steps
        .iter()
        .filter(|step| step.saturated)
        .map(|step| step.offered_rps)
        .min()?;
    let carried = steps
        .iter()
        .filter(|step| !step.saturated && step.offered_rps < not_carried)
        .map(|step| step.offered_rps)
        .max()?;
    if f64::from(not_carried) < 1.1 * f64::from(carried) {
        return None;
    }
    let between = (f64::from(carried) * f64::from(not_carried)).sqrt().round() as u32;
    (between > carried && between < not_carried).then_some(between)
}

/// Offers the reference rate to every mode in turn, `reference_rounds` times, each round
/// starting one mode further on so no mode always follows the same one. Each mode's summary
/// is taken over all its turns: a disturbance of the machine (a writeback, a neighbour on
/// the host) lands on one turn of each mode rather than on one mode's whole measurement.
///
/// With `tracing` (the share of traces kept when it is on), every round runs twice, once
/// with the services keeping no new traces and once keeping that share, which goes first
/// alternating round by round: the summary is the rounds off, and the cost of tracing is
/// read from the same rounds on.
async fn reference_rounds(
    endpoints: &Endpoints,
    clients: &Clients,
    users: &Arc<Vec<SeededUser>>,
    settings: &Settings,
    tracing: Option<f64>,
    progress: &ProgressBar,
) -> anyhow::Result<(Reference, BTreeMap<Mode, Step>)> {
    let rate = settings.reference_rate;
    let turn = Duration::from_millis(settings.reference_round_ms);
    let mut off = RoundsOf::default();
    let mut on = RoundsOf::default();
    for round in 0..settings.reference_rounds {
        let mut order = MODES;
        order.rotate_left(round as usize % MODES.len());
        let passes: Vec<Option<f64>> = match tracing {
            None => vec![None],
            Some(ratio) if round % 2 == 0 => vec![Some(0.0), Some(ratio)],
            Some(ratio) => vec![Some(ratio), Some(0.0)],
        };
        for pass in passes {
            if let Some(ratio) = pass {
                crate::traces::set_sampling(endpoints, ratio).await?;
            }
            let traced = pass.is_some_and(|ratio| ratio > 0.0);
            for mode in order {
                progress.inc(1);
                progress.set_prefix(mode.name());
                progress.set_message(format!(
                    "{rate} req/s, reference round {}/{}{}",
                    round + 1,
                    settings.reference_rounds,
                    if traced { ", traced" } else { "" }
                ));
                let measured = open_loop(clients, mode, users, rate, turn, settings).await;
                if traced { &mut on } else { &mut off }.add(mode, measured, rate);
            }
        }
    }
    if tracing.is_some() {
        crate::traces::set_sampling(endpoints, 0.0).await?;
    }
    let tracing = tracing.map(|ratio| TracingCost {
        ratio,
        on: on.overall(rate),
        off: off.overall(rate),
        per_round_on: on.per_round.clone(),
    });
    let steps = off
        .merged
        .into_iter()
        .map(|(mode, measured)| (mode, measured.step(rate)))
        .collect();
    let reference = Reference {
        rate,
        rounds: settings.reference_rounds,
        round_ms: settings.reference_round_ms,
        per_round: off.per_round,
        tracing,
    };
    Ok((reference, steps))
}

/// Every mode's turns of the reference rounds under one setting: each turn's figures, and
/// all turns merged.
#[derive(Debug, Default)]
struct RoundsOf {
    merged: BTreeMap<Mode, Measured>,
    per_round: BTreeMap<String, Vec<RoundFigures>>,
}

impl RoundsOf {
    fn add(&mut self, mode: Mode, measured: Measured, rate: u32) {
        self.per_round
            .entry(mode.name().to_owned())
            .or_default()
            .push(RoundFigures::of(&measured.step(rate)));
        match self.merged.get_mut(&mode) {
            Some(all) => all.absorb(&measured),
            None => {
                self.merged.insert(mode, measured);
            }
        }
    }

    fn overall(&self, rate: u32) -> BTreeMap<String, RoundFigures> {
        self.merged
            .iter()
            .map(|(mode, measured)| {
                (
                    mode.name().to_owned(),
                    RoundFigures::of(&measured.step(rate)),
                )
            })
            .collect()
    }
}

impl RoundFigures {
    fn of(step: &Step) -> Self {
        Self {
            p50_us: step.p50_us,
            p99_us: step.p99_us,
            error_rate: step.error_rate,
        }
    }
}

/// Shared by the requests of one step.
#[derive(Debug)]
struct StepRecorder {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    send_lag: Histogram<u64>,
    ok: u64,
    errors: ErrorTally,
}

/// What one stretch of open-loop load at one rate recorded.
#[derive(Debug)]
struct Measured {
    recorder: StepRecorder,
    scheduled: u64,
    seconds: f64,
}

impl Measured {
    fn step(&self, offered_rps: u32) -> Step {
        self.recorder
            .finish(offered_rps, self.scheduled, self.seconds)
    }

    /// Adds another stretch at the same rate, as if the two had run back to back.
    fn absorb(&mut self, other: &Measured) {
        self.recorder.absorb(&other.recorder);
        self.scheduled += other.scheduled;
        self.seconds += other.seconds;
    }
}

impl StepRecorder {
    fn absorb(&mut self, other: &StepRecorder) {
        // Every recorder's histograms share `micros_histogram`'s bounds and record saturated
        // values, so one always fits into another.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
        let _ = self.send_lag.add(&other.send_lag);
        self.ok += other.ok;
        self.errors.absorb(&other.errors);
    }

    fn new() -> Self {
        Self {
            corrected: micros_histogram(),
            uncorrected: micros_histogram(),
            send_lag: micros_histogram(),
            ok: 0,
            errors: ErrorTally::default(),
        }
    }

    fn finish(&self, offered_rps: u32, scheduled: u64, seconds: f64) -> Step {
        let failed = scheduled.saturating_sub(self.ok);
        let error_rate = if scheduled == 0 {
            0.0
        } else {
            failed as f64 / scheduled as f64
        };
        let throughput_rps = self.ok as f64 / seconds.max(f64::EPSILON);
        let quantile = Histogram::<u64>::value_at_quantile;
        Step {
            offered_rps,
            seconds,
            scheduled,
            ok: self.ok,
            throughput_rps,
            p50_us: quantile(&self.corrected, 0.5),
            p90_us: quantile(&self.corrected, 0.9),
            p99_us: quantile(&self.corrected, 0.99),
            p999_us: quantile(&self.corrected, 0.999),
            max_us: self.corrected.max(),
            uncorrected_p50_us: quantile(&self.uncorrected, 0.5),
            uncorrected_p99_us: quantile(&self.uncorrected, 0.99),
            send_lag_p99_us: quantile(&self.send_lag, 0.99),
            error_rate,
            errors: self.errors.counts.clone(),
            example_errors: self.errors.examples.clone(),
            cpu_pct: BTreeMap::new(),
            saturated: throughput_rps < SATURATED_BELOW * f64::from(offered_rps)
                || error_rate > SATURATED_ERRORS,
        }
    }
}

/// Requests due at `rate` per second for `duration`, each sent when due (by a timer thread,
/// whose lateness is recorded) unless `max_in_flight` are outstanding.
async fn open_loop(
    clients: &Clients,
    mode: Mode,
    users: &Arc<Vec<SeededUser>>,
    rate: u32,
    duration: Duration,
    settings: &Settings,
) -> Measured {
    let recorder = Arc::new(Mutex::new(StepRecorder::new()));
    let in_flight = Arc::new(Semaphore::new(settings.max_in_flight as usize));
    let tracker = TaskTracker::new();
    let handle = tokio::runtime::Handle::current();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let page_size = settings.page_size;
    let pacer = {
        let (clients, users, recorder, tracker) = (
            clients.clone(),
            Arc::clone(users),
            Arc::clone(&recorder),
            tracker.clone(),
        );
        // A thread of its own: tokio's timer ticks in milliseconds, far coarser than the
        // gap between requests at a few thousand per second.
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut scheduled = 0_u64;
            loop {
                let due = started + interval.mul_f64(scheduled as f64);
                if due >= started + duration {
                    break;
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let user = users[usize::try_from(scheduled).unwrap_or(0) % users.len()].clone();
                let (clients, recorder, in_flight) = (
                    clients.clone(),
                    Arc::clone(&recorder),
                    Arc::clone(&in_flight),
                );
                tracker.spawn_on(
                    async move {
                        let sent_at = Instant::now();
                        let permit =
                            tokio::time::timeout_at((due + DEADLINE).into(), in_flight.acquire())
                                .await;
                        let Ok(Ok(_permit)) = permit else {
                            let mut recorder = lock(&recorder);
                            recorder.errors.add(
                                "ClientBacklog",
                                &format!(
                                    "the load generator already had its limit of requests in flight for {DEADLINE:?}: the mode is saturated"
                                ),
                            );
                            return;
                        };
                        let sent = Instant::now();
                        let outcome = clients.call(mode, &user, page_size).await;
                        let done = Instant::now();
                        let mut recorder = lock(&recorder);
                        recorder.send_lag.saturating_record(micros(sent_at - due));
                        match outcome {
                            Ok(()) => {
                                recorder.ok += 1;
                                recorder.corrected.saturating_record(micros(done - due));
                                recorder.uncorrected.saturating_record(micros(done - sent));
                            }
                            Err((code, message)) => {
                                recorder.errors.add(&format!("{code:?}"), &message);
                            }
                        }
                    },
                    &handle,
                );
                scheduled += 1;
            }
            (scheduled, started)
        })
    };
    let fallback = Instant::now();
    let (scheduled, started) = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or((0, fallback));
    tracker.close();
    tracker.wait().await;
    // Until the last answer, not the last send: a mode that fell behind finishes its backlog
    // after the step, and that time is part of what it took.
    let seconds = started.elapsed().as_secs_f64();
    let recorder = std::mem::replace(&mut *lock(&recorder), StepRecorder::new());
    Measured {
        recorder,
        scheduled,
        seconds,
    }
}

/// How long one order may take to appear before it counts as never seen.
const FRESHNESS_LIMIT: Duration = Duration::from_secs(10);
/// Orders timed per second at most: each is polled for, and polling is load too.
const FRESHNESS_SAMPLES_PER_SECOND: u32 = 25;

/// Places orders at `freshness_write_rate` in the microservices and times a share of them
/// from PlaceOrder's answer to their first appearance in purchases-async, polling back to
/// back so the resolution is one read.
///
/// With `traces` (the data dir the lab's trace receiver keeps spans in), each timed order
/// starts a trace of its own, and its freshness is split again from its spans.
async fn freshness(
    endpoints: &Endpoints,
    asynchronous: &PurchaseServiceClient<Channel>,
    seeded: &Seeded,
    settings: &Settings,
    traces: Option<&Path>,
) -> FreshnessResult {
    let rate = settings.freshness_write_rate;
    let every = u64::from((rate / FRESHNESS_SAMPLES_PER_SECOND).max(1));
    let spans_before = traces.map(crate::traces::spans_kept_so_far);
    // Without the probe the stages are left out; the lags are timed all the same.
    let probe = match StageProbe::start(endpoints).await {
        Ok(probe) => Some(probe),
        Err(error) => {
            eprintln!("Not splitting freshness into stages: {error:#}");
            None
        }
    };
    // Recorded lags, the samples behind them, and orders never seen.
    let timed = Arc::new(Mutex::new((micros_histogram(), Vec::new(), 0_u64)));
    let began = Instant::now();
    let after: AfterWrite = {
        let (reader, timed) = (asynchronous.clone(), Arc::clone(&timed));
        Arc::new(move |write| {
            let (reader, timed) = (reader.clone(), Arc::clone(&timed));
            Box::pin(async move {
                let Ok(order_id) = write.outcome else {
                    return;
                };
                if !write.index.is_multiple_of(every) {
                    return;
                }
                let user = write.user;
                let answered = Instant::now();
                let answered_unix_ns = unix_ns(std::time::SystemTime::now());
                let seen = visible_after(&reader, &user, &order_id, answered).await;
                let mut timed = lock(&timed);
                match seen {
                    Some(Visible { after, window }) => {
                        timed.0.saturating_record(micros(after));
                        timed.1.push(Sample {
                            order_id,
                            answered,
                            answered_unix_ns,
                            at: answered.duration_since(began),
                            visible: after,
                            window,
                            trace_id: write.trace_id,
                        });
                    }
                    None => timed.2 += 1,
                }
            })
        })
    };
    let mut target = WriteTarget::microservices(endpoints, seeded);
    if traces.is_some() {
        target = target.traced_every(every);
    }
    let writer = PacedWriter::start(vec![target], rate, Some(after));
    tokio::time::sleep(Duration::from_millis(settings.freshness_ms)).await;
    let (writes, writing) = writer.stop().await;
    // Every write has finished: what the hooks recorded is complete.
    let (histogram, samples, never_seen) = {
        let timed = lock(&timed);
        (timed.0.clone(), timed.1.clone(), timed.2)
    };
    let stages = probe.map(|probe| {
        let splits: Vec<_> = samples.iter().filter_map(|s| probe.split(s)).collect();
        crate::stages::summarize(&splits, probe.jetstream_every_order())
    });
    let span_stages = match (traces, spans_before) {
        (Some(data_dir), Some(offset)) => {
            // A service sends its spans at most half a second after they end.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            crate::traces::read_spans_from(data_dir, offset)
                .inspect_err(|error| eprintln!("Not splitting freshness by spans: {error:#}"))
                .ok()
                .map(|spans| {
                    crate::traces::freshness::summarize(&crate::traces::Spans::new(spans), &samples)
                })
        }
        _ => None,
    };
    FreshnessResult {
        p50_us: histogram.value_at_quantile(0.5),
        p90_us: histogram.value_at_quantile(0.9),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
        samples: histogram.len(),
        never_seen,
        write_rate_offered: rate,
        write_rate_achieved: writes.placed as f64 / writing.as_secs_f64().max(f64::EPSILON),
        write_errors: writes.failed,
        writes_skipped: writes.skipped,
        distribution: distribution(&histogram),
        stages,
        span_stages,
        jetstream_alone: None,
        cpu_pct: BTreeMap::new(),
    }
}

/// When a timed order was first seen.
struct Visible {
    /// From the answer to the end of the first read that showed it.
    after: Duration,
    /// From the start of the last read that did not show it (or the answer) to then.
    window: Duration,
}

/// Reads `user`'s newest purchases back to back until `order_id` is among them.
async fn visible_after(
    reader: &PurchaseServiceClient<Channel>,
    user: &str,
    order_id: &str,
    since: Instant,
) -> Option<Visible> {
    let mut missed_at = since;
    loop {
        let reading = Instant::now();
        let seen = crate::measure::shows_order(reader, user, order_id).await;
        let elapsed = since.elapsed();
        if seen {
            return Some(Visible {
                after: elapsed,
                window: missed_at.elapsed(),
            });
        }
        if elapsed > FRESHNESS_LIMIT {
            return None;
        }
        missed_at = reading;
    }
}

fn unix_ns(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

/// A projection built from nothing while the streams hold every event of the run.
#[derive(Debug, Clone, Serialize)]
pub struct CatchUp {
    /// Events in the three streams.
    pub events: u64,
    /// From starting the process to holding every event.
    pub seconds_from_start: f64,
    /// Events applied per second once the service was up (its start-up excluded).
    pub events_per_second: f64,
}

/// How long a new projection may take to catch up before the bench gives up on it.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(300);

/// Where a projection stands, per stream, as its answers report it.
pub(crate) async fn positions(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
) -> Option<BTreeMap<String, pb::StreamPosition>> {
    let answer = client
        .clone()
        .list_user_purchases(pb::ListUserPurchasesRequest {
            user_id: user.to_owned(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .ok()?
        .into_inner();
    Some(
        answer
            .freshness?
            .streams
            .into_iter()
            .map(|stream| (stream.stream.clone(), stream))
            .collect(),
    )
}

/// Starts a second purchases-async that rebuilds its projection from the first event, and
/// times it until it stands where the lab's own projection stands.
async fn catch_up(lab: &RunningLab, seeded: &Seeded) -> anyhow::Result<CatchUp> {
    let user = seeded
        .users
        .first()
        .context("no seeded user to read with")?
        .microservices
        .clone();
    let own = PurchaseServiceClient::new(lab.endpoints.channel(Service::PurchasesAsync));
    // The writers have stopped: wait until the lab's projection has nothing pending.
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    let target = loop {
        if let Some(now) = positions(&own, &user).await
            && now.len() == 3
            && now.values().all(|stream| stream.pending == 0)
        {
            break now;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "purchases-async still had events pending after {CATCH_UP_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let events: u64 = target.values().map(|stream| stream.sequence).sum();
    let started = Instant::now();
    let (mut process, addr) = lab.start_fresh_projection("bench-catch-up", &[]).await?;
    let client = PurchaseServiceClient::new(crate::topology::channel_to(addr));
    let mut first: Option<(Instant, u64)> = None;
    let outcome = loop {
        let at = Instant::now();
        let applied: u64 = positions(&client, &user)
            .await
            .map(|now| now.values().map(|stream| stream.sequence).sum())
            .unwrap_or(0);
        let (since, applied_then) = *first.get_or_insert((at, applied));
        if applied >= events {
            let done = Instant::now();
            let window = done.duration_since(since).as_secs_f64();
            let after_start = events - applied_then;
            // When every event was in before the first look, only the whole run can be timed.
            let events_per_second = if after_start > 0 && window > 0.0 {
                after_start as f64 / window
            } else {
                events as f64 / started.elapsed().as_secs_f64()
            };
            break Ok(CatchUp {
                events,
                seconds_from_start: done.duration_since(started).as_secs_f64(),
                events_per_second: events_per_second.round(),
            });
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the new projection applied {applied} of {events} events in {CATCH_UP_WITHIN:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    process.stop().await?;
    outcome
}

/// Counts per bucket, buckets doubling from 250 us, for the freshness chart.
fn distribution(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    let mut buckets = Vec::new();
    let mut lower = 0;
    let mut upper = 250;
    while lower <= histogram.max() && upper <= 60_000_000 {
        let count = histogram.count_between(lower, upper);
        buckets.push((upper, count));
        lower = upper + 1;
        upper *= 2;
    }
    buckets
}

/// Writes the JSON and the HTML report; returns their paths.
pub fn write(
    report: &BenchReport,
    data_dir: &Path,
    json: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let json_path = json.map_or_else(|| data_dir.join("bench.json"), Path::to_path_buf);
    let html_path = data_dir.join("bench.html");
    if let Some(parent) = json_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&html_path, crate::bench_report::html(report))
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    Ok((json_path, html_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        BenchArgs {
            quick: false,
            rates: Vec::new(),
            step_ms: None,
            refine_steps: None,
            reference_rate: 500,
            reference_rounds: None,
            reference_round_ms: None,
            write_rate: None,
            freshness_write_rate: 1_000,
            freshness_ms: None,
            max_in_flight: 2_048,
            page_size: 10,
            json: None,
        }
    }

    #[test]
    fn the_reference_rate_is_always_a_step() {
        let settings = args().settings();
        assert_eq!(
            settings.rates,
            vec![100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000]
        );
        let quick = BenchArgs {
            quick: true,
            reference_rate: 1_000,
            ..args()
        }
        .settings();
        assert_eq!(quick.rates, vec![200, 1_000, 4_000]);
        let odd = BenchArgs {
            rates: vec![300, 100],
            reference_rate: 200,
            ..args()
        }
        .settings();
        assert_eq!(odd.rates, vec![100, 200, 300]);
        assert_eq!(quick.step_ms, 1_000);
    }

    #[test]
    fn a_step_that_falls_behind_or_fails_is_saturated() {
        let answered = |ok: u64, scheduled: u64| {
            let mut recorder = StepRecorder::new();
            for _ in 0..ok {
                recorder.ok += 1;
                recorder.corrected.saturating_record(500);
            }
            recorder.finish(100, scheduled, 1.0)
        };
        let kept_up = answered(100, 100);
        assert!(!kept_up.saturated);
        assert_eq!(kept_up.p50_us, 500);

        let failing = answered(95, 100);
        assert!((failing.error_rate - 0.05).abs() < 1e-9);
        assert!(failing.saturated, "5% failed, over the 1% bound");

        let behind = answered(80, 80);
        assert_eq!(behind.error_rate, 0.0);
        assert!(behind.saturated, "80 per second of 100 offered");
    }

    #[test]
    fn refinement_halves_the_gap_where_a_mode_saturated() {
        let step = |offered: u32, saturated: bool| {
            let mut step = StepRecorder::new().finish(offered, 0, 1.0);
            step.saturated = saturated;
            step
        };
        let series = [step(1_000, false), step(2_000, false), step(4_000, true)];
        assert_eq!(between_carried_and_not(&series), Some(2_828));
        // The next refinement narrows whichever half the first one left.
        let narrowed = [&series[..], &[step(2_828, true)]].concat();
        assert_eq!(between_carried_and_not(&narrowed), Some(2_378));
        let carried = [&series[..], &[step(2_828, false)]].concat();
        assert_eq!(between_carried_and_not(&carried), Some(3_363));
        // The reference rate may be run past saturation: it does not count as carried above.
        let past = [step(1_000, true), step(500, false), step(2_000, false)];
        assert_eq!(between_carried_and_not(&past), Some(707));
        assert_eq!(
            between_carried_and_not(&series[..2]),
            None,
            "never saturated"
        );
        assert_eq!(
            between_carried_and_not(&[step(100, true)]),
            None,
            "nothing carried"
        );
        let close = [step(1_000, false), step(1_050, true)];
        assert_eq!(between_carried_and_not(&close), None, "close enough");
    }

    #[test]
    fn rounds_merge_as_if_they_had_run_back_to_back() {
        let stretch = |latency_us: u64, ok: u64, failed: u64| {
            let mut recorder = StepRecorder::new();
            for _ in 0..ok {
                recorder.ok += 1;
                recorder.corrected.saturating_record(latency_us);
            }
            for _ in 0..failed {
                recorder.errors.add("Unavailable", "down");
            }
            Measured {
                recorder,
                scheduled: ok + failed,
                seconds: 1.0,
            }
        };
        let mut all = stretch(100, 100, 0);
        all.absorb(&stretch(10_000, 98, 2));
        let step = all.step(100);
        assert_eq!((step.scheduled, step.ok), (200, 198));
        assert!((step.throughput_rps - 99.0).abs() < 1e-9, "{step:?}");
        assert!((step.error_rate - 0.01).abs() < 1e-9);
        assert_eq!(step.errors.get("Unavailable"), Some(&2));
        assert_eq!(step.p50_us, 100, "half the answers took 100 us");
        assert!(
            step.p99_us >= 9_990,
            "the slow round's tail is kept: {step:?}"
        );
    }

    #[test]
    fn aims_compare_measured_ratios() {
        let summary = |p50, p99, saturation| Summary {
            p50_us: p50,
            p99_us: p99,
            throughput_rps: 200.0,
            error_rate: 0.0,
            saturation_rps: saturation,
        };
        let mut modes = BTreeMap::new();
        modes.insert("echo".to_owned(), summary(200, 300, 10_000.0));
        modes.insert("async".to_owned(), summary(240, 700, 6_000.0));
        modes.insert("sync".to_owned(), summary(700, 2_000, 1_000.0));
        let freshness = FreshnessResult {
            p50_us: 1_000,
            p90_us: 2_000,
            p99_us: 6_000,
            max_us: 9_000,
            samples: 10,
            never_seen: 0,
            write_rate_offered: 1_000,
            write_rate_achieved: 990.0,
            write_errors: 0,
            writes_skipped: 0,
            distribution: Vec::new(),
            stages: None,
            span_stages: None,
            jetstream_alone: None,
            cpu_pct: BTreeMap::new(),
        };
        let catch_up = CatchUp {
            events: 30_000,
            seconds_from_start: 2.0,
            events_per_second: 25_000.0,
        };
        let figures = |p50_us, p99_us| RoundFigures {
            p50_us,
            p99_us,
            error_rate: 0.0,
        };
        let reference = Reference {
            rate: 200,
            rounds: 2,
            round_ms: 500,
            per_round: BTreeMap::from([
                (
                    "echo".to_owned(),
                    vec![figures(200, 300), figures(400, 300)],
                ),
                (
                    "async".to_owned(),
                    vec![figures(240, 600), figures(240, 900)],
                ),
                (
                    "sync".to_owned(),
                    vec![figures(660, 2_000), figures(900, 2_000)],
                ),
            ]),
            tracing: None,
        };
        let aims = aims(&modes, &reference, &freshness, &catch_up);
        let find = |name: &str| {
            aims.iter()
                .find(|aim| aim.name.starts_with(name))
                .unwrap_or_else(|| panic!("an aim {name}"))
        };
        let met = |name: &str| Some(find(name).met);
        // Each round is its own ratio, against echo in the same round.
        assert_eq!(find("async p50").rounds, vec![1.2, 0.6]);
        assert_eq!(find("async p99").rounds, vec![2.0, 3.0]);
        assert_eq!(find("sync p50").rounds, vec![1.1, 0.75]);
        assert!(
            find("freshness").rounds.is_empty(),
            "not measured in rounds"
        );
        assert_eq!(met("async p50"), Some(true), "1.2x");
        assert_eq!(met("async p99"), Some(false), "2.33x");
        assert_eq!(met("async saturation"), Some(true), "6x");
        assert_eq!(
            met("sync p50"),
            Some(true),
            "700 us against three round trips of 200: 1.17x"
        );
        assert_eq!(met("freshness"), Some(false), "6 ms");
        assert_eq!(met("catch-up"), Some(true), "25k events/s");
    }

    #[test]
    fn freshness_buckets_double_and_cover_the_maximum() {
        let mut histogram = micros_histogram();
        for value in [100, 300, 700, 700, 5_000] {
            histogram.saturating_record(value);
        }
        let buckets = distribution(&histogram);
        assert_eq!(buckets[0], (250, 1));
        assert_eq!(buckets[1], (500, 1));
        assert_eq!(buckets[2], (1_000, 2));
        assert_eq!(buckets.iter().map(|(_, count)| count).sum::<u64>(), 5);
        assert!(buckets.last().is_some_and(|(upper, _)| *upper >= 5_000));
    }
}
