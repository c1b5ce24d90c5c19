//! What a bench run measured, as `bench.json` holds it. The names are stable for scripts:
//! `summary.<mode>` for `echo`, `sync`, `sync-sequential`, `bus`, `async` and `monolith`,
//! each at one reference rate offered to every mode alike; `bus_price` (the bus way against
//! the direct calls); `reference` (how the summary was measured,
//! round by round, and what tracing costs); `freshness` (with its split into stages, by the
//! probe and by the spans); `series.<mode>.steps`; `catch_up`; `storage_bytes`; `memory`
//! (peak RSS per process over the reference rounds); `aims`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Settings;
use super::jetstream_alone::JetStreamAlone;
use super::span_stages::SpanStages;
use super::stages::Stages;
use super::wake_up::WakeUp;
use crate::footprint::Resident;
use crate::writer::BackgroundWrites;

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub generated_at: String,
    pub machine: String,
    pub storage: String,
    pub nats_fsync: String,
    /// Threads each service ran its tasks on (`--worker-threads`); none when they chose
    /// (a thread per CPU) or the lab did not start them.
    pub service_threads: Option<u64>,
    pub data: BenchData,
    pub settings: Settings,
    /// `summary.<mode>` at the reference rate, for `echo`, `sync`, `sync-sequential`, `bus`,
    /// `async`, `monolith`.
    pub summary: BTreeMap<String, Summary>,
    /// What asking the owners over the bus costs beside calling them, from the summary;
    /// none unless both ways ran.
    pub bus_price: Option<BusPrice>,
    /// How the summary was measured, round by round.
    pub reference: Reference,
    /// The same rounds at `settings.low_rate`, where one request or two are in flight and
    /// every hop pays a wake-up; none when left out.
    pub low_rate: Option<Reference>,
    pub freshness: FreshnessResult,
    /// A second projection built from every event; none on a system the lab did not start
    /// (`--endpoints`), where it cannot start one.
    pub catch_up: Option<CatchUp>,
    /// Every step of every mode.
    pub series: BTreeMap<String, ModeResult>,
    pub background_writes: BackgroundWrites,
    /// Bytes on disk per store at the end: what each design keeps, and what the projection
    /// duplicates.
    pub storage_bytes: BTreeMap<String, u64>,
    /// Each process's peak memory over the reference rounds.
    pub memory: Memory,
    /// The aims as measured ratios, each with whether this run met it.
    pub aims: Vec<Aim>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchData {
    pub users: usize,
    pub products: usize,
    pub orders: usize,
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

/// Each process's peak resident set (VmHWM, reset just before the reference rounds and read
/// just after them), and what purchases-async's in-memory view costs per 1,000 purchases.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// KiB, by process (`users`, ..., `nats-server`); empty on a system the lab did not start.
    pub peak_rss_kib: BTreeMap<String, u64>,
    /// KiB, by process: the resident set just after the rounds, split into file-backed pages
    /// (the binary's and libraries' code) and anonymous ones (what the process allocated).
    pub resident_after_kib: BTreeMap<String, Resident>,
    /// Orders in orders' database after the rounds: the purchases the projection holds.
    pub purchases_held: Option<u64>,
    /// purchases-async's peak less purchases-sync's (the same runtime, server and telemetry,
    /// holding nothing), per 1,000 purchases held: an upper bound on the view's cost, since
    /// the difference also holds purchases-async's database pool and consumers.
    pub projection_kib_per_1000_purchases: Option<f64>,
}

impl Memory {
    pub fn new(
        peak_rss_kib: BTreeMap<String, u64>,
        resident_after_kib: BTreeMap<String, Resident>,
        purchases_held: Option<u64>,
    ) -> Self {
        let per_1000 = match (
            peak_rss_kib.get("purchases-async"),
            peak_rss_kib.get("purchases-sync"),
            purchases_held,
        ) {
            (Some(projection), Some(stateless), Some(held)) if held > 0 => Some(hundredths(
                projection.saturating_sub(*stateless) as f64 * 1_000.0 / held as f64,
            )),
            _ => None,
        };
        Self {
            peak_rss_kib,
            resident_after_kib,
            purchases_held,
            projection_kib_per_1000_purchases: per_1000,
        }
    }
}

/// The bus way (purchases-bus) beside the direct calls (purchases-sync), both measured at
/// the reference rate in the same rounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BusPrice {
    pub p50_vs_sync: f64,
    pub p99_vs_sync: f64,
    pub p50_vs_echo: f64,
    pub p99_vs_echo: f64,
    pub saturation_vs_sync: f64,
    /// The bus way's extra median per call on the critical path (two in the parallel
    /// fan-out: users with orders, then products): what routing a call through the broker
    /// adds to calling the owner directly, in microseconds.
    pub broker_hop_us: f64,
}

/// Calls one after another on a request's critical path in the parallel fan-out.
const CALLS_ON_THE_CRITICAL_PATH: f64 = 2.0;

impl BusPrice {
    pub fn from_summary(summary: &BTreeMap<String, Summary>) -> Option<Self> {
        let (bus, sync, echo) = (
            summary.get("bus")?,
            summary.get("sync")?,
            summary.get("echo")?,
        );
        let ratio = |a: u64, b: u64| hundredths(a as f64 / b.max(1) as f64);
        Some(Self {
            p50_vs_sync: ratio(bus.p50_us, sync.p50_us),
            p99_vs_sync: ratio(bus.p99_us, sync.p99_us),
            p50_vs_echo: ratio(bus.p50_us, echo.p50_us),
            p99_vs_echo: ratio(bus.p99_us, echo.p99_us),
            saturation_vs_sync: hundredths(bus.saturation_rps / sync.saturation_rps.max(1.0)),
            broker_hop_us: ((bus.p50_us as f64 - sync.p50_us as f64) / CALLS_ON_THE_CRITICAL_PATH)
                .round(),
        })
    }
}

/// Rounded to two decimals, as every ratio in the JSON is.
pub(super) fn hundredths(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The reference rate, offered to every mode in turn, round after round.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    pub rate: u32,
    pub rounds: u32,
    pub round_ms: u64,
    /// Each mode's figures over all its turns, with tracing off.
    pub overall: BTreeMap<String, RoundFigures>,
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
    pub span_stages: Option<SpanStages>,
    /// JetStream's own publish-to-delivery at the same rate, measured alone just before:
    /// the floor under the JetStream stage. None when it could not be measured.
    pub jetstream_alone: Option<JetStreamAlone>,
    /// Two of the bench's threads passing a byte over loopback while the orders were timed:
    /// the floor under the projection stage, which crosses processes at least as often.
    pub wake_up: Option<WakeUp>,
    /// CPU used while writing and timing, by process, in percent of one core.
    pub cpu_pct: BTreeMap<String, f64>,
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
