//! `lab bench`: the load generator. Each mode is offered a constant arrival rate (open loop),
//! step by step up to saturation, while a background writer keeps placing orders so the
//! projection is under real update load. Then the projection's freshness is timed under a
//! steady write rate, and the bytes each design stores are counted.
//!
//! Latency is measured from when a request was due, not from when it was sent (the
//! coordinated-omission correction wrk2 makes): when a mode falls behind, the requests that
//! waited behind it count their wait. The uncorrected figure is kept beside it.
//!
//! One module per concern: `load` (the open-loop generator, the steps, the reference
//! rounds), `freshness` with its two splits (`stages`, the probe on the orders stream, with
//! `jetstream_alone` and `wake_up`, the floors beside it; `span_stages`, the spans),
//! `catch_up`, `aims`, `results` (the JSON) and `report` (terminal, Markdown, HTML).

mod aims;
mod catch_up;
pub mod fanout;
mod freshness;
mod jetstream_alone;
mod load;
mod report;
mod results;
mod span_stages;
mod stages;
mod wake_up;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::measure::Mode;
use crate::seed::Seeded;
use crate::up::RunningLab;
use crate::writer::{PacedWriter, WriteTarget};
pub use report::terminal;
pub use results::BenchReport;
use results::{BenchData, BusPrice, Memory, ModeResult, Step, Summary};

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
    /// A second, low rate the modes take turns at after the reference rounds, 0 to leave it
    /// out. With a request or two in flight every hop pays a thread's wake-up, so the ratios
    /// between modes differ from those under load; both are reported.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=200_000))]
    pub low_rate: u32,
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
    /// 0 when the low-rate rounds are left out.
    pub low_rate: u32,
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
            low_rate: if self.low_rate == self.reference_rate {
                0
            } else {
                self.low_rate
            },
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
pub const MODES: [Mode; 6] = [
    Mode::Echo,
    Mode::Sync,
    Mode::SyncSequential,
    Mode::Bus,
    Mode::Async,
    Mode::Monolith,
];

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
    let reference_turns = settings.reference_rounds as usize
        * (if tracing.is_some() { 2 } else { 1 } + usize::from(settings.low_rate > 0));
    let progress =
        ProgressBar::new((MODES.len() * (settings.rates.len() + reference_turns)) as u64);
    progress.set_style(
        ProgressStyle::with_template("{prefix:>16} {bar:30} {pos}/{len} steps {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let series = load::series(lab, &clients, &users, settings, &progress).await;
    // Memory is read over the reference rounds alone, not the steps up to saturation.
    let pids = lab.pids();
    crate::footprint::reset_peak_rss(&pids);
    let (reference, at_reference) = load::reference_rounds(
        &endpoints,
        &clients,
        &users,
        settings,
        settings.reference_rate,
        tracing,
        &progress,
    )
    .await?;
    let memory = Memory::new(
        crate::footprint::peak_rss_kib(&pids),
        crate::footprint::resident_kib(&pids),
        crate::footprint::orders_held(lab).await,
    );
    let low_rate = if settings.low_rate > 0 {
        let rate = settings.low_rate;
        let rounds = load::reference_rounds(
            &endpoints, &clients, &users, settings, rate, None, &progress,
        );
        Some(rounds.await?.0)
    } else {
        None
    };
    progress.finish_and_clear();
    let (background_writes, _) = writer.stop().await;

    let freshness = timed_freshness(lab, &clients, seeded, settings, tracing.is_some()).await;
    let catch_up = if lab.is_attached() {
        println!("Not timing a catch-up: it starts a purchases-async of the lab's own.");
        None
    } else {
        println!("Timing a new projection built from every event in the streams...");
        Some(catch_up::catch_up(lab, seeded).await?)
    };
    let storage_bytes = crate::footprint::measure(lab).await;

    let summary = summary(at_reference, &series);
    let bus_price = BusPrice::from_summary(&summary);
    let aims = aims::aims(&aims::Measured {
        reference: &reference,
        low_rate: low_rate.as_ref(),
        freshness: &freshness,
        catch_up: catch_up.as_ref(),
        on_postgres: storage.starts_with("PostgreSQL"),
        memory: &memory,
    });
    Ok(BenchReport {
        generated_at: crate::report::now_rfc3339(),
        machine: crate::report::machine(),
        storage: storage.to_owned(),
        nats_fsync: nats_fsync.to_owned(),
        service_threads: lab.endpoints.worker_threads,
        data: BenchData {
            users: seeded.users.len(),
            products: seeded.products,
            orders: seeded.orders,
        },
        settings: settings.clone(),
        summary,
        bus_price,
        reference,
        low_rate,
        freshness,
        catch_up,
        series,
        background_writes,
        storage_bytes,
        memory,
        aims,
    })
}

/// JetStream alone at the freshness phase's rate, just before it (the floor under its
/// JetStream stage), then the freshness phase itself, with the CPU each process used and the
/// machine's wake-up round trip meanwhile (the floor under its projection stage).
async fn timed_freshness(
    lab: &RunningLab,
    clients: &crate::measure::Clients,
    seeded: &Seeded,
    settings: &Settings,
    traced: bool,
) -> results::FreshnessResult {
    let endpoints = &lab.endpoints;
    println!(
        "Timing JetStream alone: {} messages/s for {:.1} s...",
        settings.freshness_write_rate,
        settings.freshness_ms as f64 / 1_000.0
    );
    let jetstream_alone = jetstream_alone::measure(
        endpoints,
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
    let traces = traced.then_some(lab.data_dir.as_path());
    let wake_up = wake_up::WakeUpProbe::start()
        .inspect_err(|error| eprintln!("Not timing the machine's wake-ups: {error:#}"))
        .ok();
    let mut freshness =
        freshness::freshness(endpoints, &clients.asynchronous, seeded, settings, traces).await;
    freshness.cpu_pct = crate::cpu::usage(&cpu_before, &crate::cpu::sample(&lab.pids()));
    freshness.jetstream_alone = jetstream_alone;
    freshness.wake_up = wake_up.and_then(|probe| {
        probe
            .finish()
            .inspect_err(|error| eprintln!("Not timing the machine's wake-ups: {error:#}"))
            .ok()
    });
    freshness
}

/// Each mode's figures at the reference rate, with the saturation its steps found.
fn summary(
    at_reference: BTreeMap<Mode, Step>,
    series: &BTreeMap<String, ModeResult>,
) -> BTreeMap<String, Summary> {
    at_reference
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
        .collect()
}

/// Writes the JSON, the HTML report and its Markdown; returns the JSON and HTML paths.
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
    std::fs::write(&html_path, report::html(report))
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    // The Markdown an entry of docs/results.md is made from.
    let markdown_path = data_dir.join("bench.md");
    std::fs::write(&markdown_path, report::markdown(report))
        .with_context(|| format!("cannot write {}", markdown_path.display()))?;
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
            low_rate: 50,
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
}
