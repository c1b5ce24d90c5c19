//! The lab: one command that starts the whole system (a nats-server, users, products, orders,
//! purchases-sync, purchases-bus, purchases-async and the monolith, as child processes),
//! seeds it through the public APIs, and shows the four ways side by side.
//!
//! It owns process supervision (children die with the lab, stop in order, and are reported by
//! name when they fail), the seed data set, the demo's measurements and its report. It owns
//! no business logic: everything it does goes through the services' gRPC APIs.

mod bench;
mod binaries;
mod chaos;
mod children;
mod cpu;
mod demo;
mod deploy;
mod footprint;
mod measure;
mod report;
mod seed;
mod topology;
mod traces;
mod up;
mod writer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::chaos::ChaosArgs;
use crate::demo::DemoArgs;
use crate::seed::SeedArgs;
use crate::up::{LabState, RunningLab, UpOptions};

/// The sync-vs-async lab.
#[derive(Debug, Parser)]
#[command(name = "lab", version, about)]
struct Cli {
    /// Where every service keeps its data, logs, and where reports are written.
    #[arg(long, global = true, env = "LAB_DATA_DIR", default_value = "data/lab")]
    data_dir: PathBuf,

    /// Work on a system the lab did not start (`seed`, `demo`, `bench`, `chaos`): the
    /// addresses in FILE, another lab's `lab.json` or an endpoints file such as
    /// `deploy/compose-endpoints.json`. What needs the lab's own processes (stopping a
    /// service, a catch-up, most chaos scenarios) is skipped or refused.
    #[arg(long, global = true, value_name = "FILE")]
    endpoints: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start everything, wait until every service is SERVING, and run until Ctrl-C.
    Up(UpArgs),
    /// Load a data set into a running lab (started with `lab up` on the same --data-dir).
    Seed(SeedArgs),
    /// On an empty data dir: up, seed, compare the modes, stop a service, write a report.
    Demo {
        #[command(flatten)]
        up: UpArgs,
        #[command(flatten)]
        seed: SeedArgs,
        #[command(flatten)]
        demo: DemoArgs,
    },
    /// On an empty data dir: up, seed, then load every mode at a series of rates up to
    /// saturation, time the projection's freshness, and write bench.json and bench.html.
    /// `lab bench fanout` measures instead the tail a wider fan-out pays (fanout.json).
    Bench {
        #[command(flatten)]
        up: UpArgs,
        #[command(flatten)]
        seed: SeedArgs,
        #[command(flatten)]
        bench: BenchArgs,
        #[command(subcommand)]
        experiment: Option<BenchExperiment>,
    },
    /// On an empty data dir: up, seed, then run fault scenarios under steady load (kill,
    /// slow, fail, partition) and check the projection against the owners after each;
    /// writes chaos.json and chaos.html, and exits 1 when any expectation fails.
    Chaos {
        #[command(flatten)]
        up: UpArgs,
        #[command(flatten)]
        seed: SeedArgs,
        #[command(flatten)]
        chaos: ChaosArgs,
    },
    /// Write a nats-server configuration with a NATS user per service (and the lab's own),
    /// JetStream fsync always, and each identity's nkey seed in a directory of its own, for a
    /// deployment that runs its own nats-server (compose.yaml runs this before NATS starts).
    NatsAuth(deploy::NatsAuthArgs),
    /// Print one trace as a waterfall: every span with its service, start and duration, and
    /// the batches that applied its events (spans linked to it). The trace id is in every
    /// request's log line (trace_id) and in the reports.
    Trace { trace_id: String },
    /// Find, or install into target/tools at their pinned versions, the external tools the
    /// lab and the tests drive (nats-server, grpcurl, promtool), and print where each is.
    Tools,
    /// Exit 0 if the gRPC service at ADDR (host:port) reports SERVING on grpc.health.v1,
    /// else 1: the health check of compose.yaml's containers.
    Probe {
        addr: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2_000)]
        timeout_ms: u64,
    },
}

#[derive(Debug, Subcommand)]
enum BenchExperiment {
    /// On a fresh lab, products slowed on a seeded fraction p of its calls: the share of
    /// slow requests against the fan-out's width k, beside 1-(1-p)^k, with hedging, the
    /// batch fan-out and purchases-async; writes fanout.json and fanout.html.
    Fanout(bench::fanout::FanoutArgs),
}

#[derive(Debug, Clone, clap::Args)]
struct UpArgs {
    /// Use free ports chosen at start instead of the services' default ports.
    #[arg(long)]
    ephemeral_ports: bool,
    /// Use this NATS server (JetStream enabled) instead of starting one.
    #[arg(long)]
    nats_url: Option<String>,
    /// Put every service on this PostgreSQL server, each in a database of its own
    /// (lab_users, lab_products, ...; created when absent), instead of SQLite files.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Run three nats-servers as one JetStream cluster, every stream replicated on all three,
    /// instead of a single server (`lab chaos cluster-failover` always does).
    #[arg(long, conflicts_with = "nats_url")]
    nats_cluster: bool,
    /// When the lab's own nats-server writes JetStream data to disk: `always` (an
    /// acknowledged event is on disk) or `lazy` (JetStream's default: flushed every two
    /// minutes, faster, lost with the machine).
    #[arg(long, value_enum, default_value_t = Fsync::Always)]
    nats_fsync: Fsync,
    /// Collect every service's spans with the lab's own OTLP receiver, into the data dir
    /// (`traces/spans.jsonl`), for the reports' waterfalls and `lab trace`.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    tracing: Switch,
    /// The share of new traces each service keeps (a caller's sampled trace is always
    /// continued).
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio)]
    trace_sample: f64,
    /// Threads each service runs its tasks on (their --worker-threads). One by default: the
    /// lab puts nine processes on one machine, where a request's hops inside a service then
    /// stay on one thread instead of waking another (docs/results.md, issue 25); 0 leaves
    /// each service its own default, a thread per CPU.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=1_024))]
    service_threads: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

fn parse_ratio(raw: &str) -> Result<f64, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|ratio| (0.0..=1.0).contains(ratio))
        .ok_or_else(|| format!("{raw:?} is not a ratio from 0 to 1"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Fsync {
    Always,
    Lazy,
}

impl UpArgs {
    fn options(&self, data_dir: PathBuf) -> UpOptions {
        UpOptions {
            data_dir,
            ephemeral_ports: self.ephemeral_ports,
            nats_url: self.nats_url.clone(),
            nats_cluster: self.nats_cluster,
            postgres: self.postgres.clone(),
            nats_sync: match self.nats_fsync {
                Fsync::Always => natsd::SyncPolicy::Always,
                Fsync::Lazy => natsd::SyncPolicy::Lazy,
            },
            trace_sample: (self.tracing == Switch::On).then_some(self.trace_sample),
            service_threads: (self.service_threads > 0).then_some(self.service_threads),
        }
    }

    fn nats_fsync_name(&self) -> &'static str {
        match (&self.nats_url, self.nats_fsync) {
            (Some(_), _) => "as configured on the external server",
            (None, Fsync::Always) => "always",
            (None, Fsync::Lazy) => "lazy",
        }
    }

    fn bus(&self) -> String {
        match (&self.nats_url, self.nats_cluster) {
            (Some(url), _) => format!("an external NATS server ({url})"),
            (None, true) => {
                "three nats-servers in a JetStream cluster, streams replicated 3 times".to_owned()
            }
            (None, false) => "one nats-server".to_owned(),
        }
    }

    fn storage(&self) -> String {
        match &self.postgres {
            Some(url) => format!("PostgreSQL ({url}), a database per service"),
            None => "SQLite, a file per service".to_owned(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // idle-connections holds thousands of sockets open from this process.
    platform::process::raise_open_files_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lab: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli));
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("lab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code after Ctrl-C, as shells expect (128 + SIGINT).
const INTERRUPTED: u8 = 130;

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up(args.options(cli.data_dir)).await,
        Command::Trace { trace_id } => {
            let spans = traces::Spans::load(&cli.data_dir)?;
            let trace = spans.trace(&trace_id.to_lowercase());
            anyhow::ensure!(
                !trace.is_empty(),
                "no span of trace {trace_id} among the {} spans in {}",
                spans.len(),
                traces::spans_file(&cli.data_dir).display()
            );
            let linked = spans.linked_to(&trace_id.to_lowercase());
            print!(
                "{}",
                traces::waterfall::text(&traces::waterfall::rows(&trace, &linked))
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tools => {
            let nats_server = natsd::find_nats_server().context("cannot provide nats-server")?;
            println!("nats-server: {}", nats_server.display());
            let grpcurl = natsd::grpcurl().context("cannot provide grpcurl")?;
            println!("grpcurl: {}", grpcurl.display());
            let promtool = natsd::promtool().context("cannot provide promtool")?;
            println!("promtool: {}", promtool.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::NatsAuth(args) => {
            let written = deploy::nats_auth(&args)?;
            if written.kept {
                println!(
                    "{} is there already: keeping it and its keys",
                    written.config.display()
                );
            } else {
                println!("Wrote {}", written.config.display());
                for seed in &written.seeds {
                    println!("Wrote {}", seed.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe { addr, timeout_ms } => {
            let serving = tokio::time::timeout(Duration::from_millis(timeout_ms), probe(&addr))
                .await
                .map_err(|_| anyhow::anyhow!("{addr} did not answer within {timeout_ms} ms"))??;
            if serving {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("lab: {addr} answers but is not SERVING");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Seed(args) => {
            let endpoints = match &cli.endpoints {
                Some(file) => RunningLab::attach(file, cli.data_dir.clone())?.endpoints,
                None => LabState::read(&cli.data_dir)?.endpoints,
            };
            let started = std::time::Instant::now();
            let (microservices, monolith) = demo::targets(&endpoints);
            let seeded = seed::seed(&args, microservices, monolith, &cli.data_dir).await?;
            println!(
                "Seeded {} users, {} products and {} orders ({} cancelled) into the microservices and the monolith in {:.1} s; ids in {}",
                seeded.users.len(),
                seeded.products,
                seeded.orders,
                seeded.cancelled,
                started.elapsed().as_secs_f64(),
                seed::Seeded::path(&cli.data_dir).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { up, seed, demo } => {
            let storage = storage(&up, cli.endpoints.as_deref());
            let outcome = on_lab(&cli.data_dir, &up, cli.endpoints.as_deref(), async |lab| {
                demo::run(lab, &seed, &demo, &storage).await
            })
            .await?;
            let Some((report, took)) = outcome else {
                return Ok(ExitCode::from(INTERRUPTED));
            };
            print!("{}", report.terminal());
            let written = report.write(&cli.data_dir)?;
            println!(
                "\nReport: {} (also {} and {}). Demo took {:.0} s.",
                written.html.display(),
                written.markdown.display(),
                written.json.display(),
                took.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            up,
            experiment: Some(BenchExperiment::Fanout(fanout)),
            ..
        } => {
            let storage = storage(&up, cli.endpoints.as_deref());
            let outcome = on_lab(&cli.data_dir, &up, cli.endpoints.as_deref(), async |lab| {
                bench::fanout::run(lab, &fanout, &storage).await
            })
            .await?;
            let Some((report, took)) = outcome else {
                return Ok(ExitCode::from(INTERRUPTED));
            };
            print!("{}", bench::fanout::terminal(&report));
            let (json, html) =
                bench::fanout::write(&report, &cli.data_dir, fanout.fanout_json.as_deref())?;
            println!(
                "\nResults: {} and {}. Took {:.0} s.",
                json.display(),
                html.display(),
                took.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            up, seed, bench, ..
        } => {
            let storage = storage(&up, cli.endpoints.as_deref());
            let fsync = up.nats_fsync_name();
            let settings = bench.settings();
            let outcome = on_lab(&cli.data_dir, &up, cli.endpoints.as_deref(), async |lab| {
                let (seeded, _) = demo::seed_and_wait(lab, &seed).await?;
                println!(
                    "Loading each mode at {:?} requests/s, {} ms per step, then at {} requests/s in {} rounds of {} ms per mode, with {} background orders/s...",
                    settings.rates,
                    settings.step_ms,
                    settings.reference_rate,
                    settings.reference_rounds,
                    settings.reference_round_ms,
                    settings.write_rate
                );
                bench::run(lab, &seeded, &settings, &storage, fsync).await
            })
            .await?;
            let Some((report, took)) = outcome else {
                return Ok(ExitCode::from(INTERRUPTED));
            };
            print!("{}", bench::terminal(&report));
            let (json, html) = bench::write(&report, &cli.data_dir, bench.json.as_deref())?;
            println!(
                "\nResults: {} and {}. Bench took {:.0} s.",
                json.display(),
                html.display(),
                took.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Chaos { up, seed, chaos } => {
            let started = std::time::Instant::now();
            let mut report: Option<chaos::ChaosReport> = None;
            let attached = cli.endpoints.as_deref();
            for (scenarios, up, data_dir) in chaos_labs(&chaos, &up, &cli.data_dir, attached)? {
                let storage = storage(&up, attached);
                let fsync = up.nats_fsync_name();
                let bus = match attached {
                    Some(file) => format!("the NATS of the system {} lists", file.display()),
                    None => up.bus(),
                };
                let outcome = on_lab(&data_dir, &up, attached, async |lab| {
                    let (seeded, _) = demo::seed_and_wait(lab, &seed).await?;
                    chaos::run(lab, &seeded, &chaos, &scenarios, &storage, fsync, &bus).await
                })
                .await?;
                let Some((part, _)) = outcome else {
                    return Ok(ExitCode::from(INTERRUPTED));
                };
                report = Some(match report {
                    None => part,
                    Some(whole) => whole.merge(part),
                });
            }
            let report = report.context("no scenario to run")?;
            let took = started.elapsed();
            print!("{}", chaos::terminal(&report));
            let (json, html) = chaos::write(&report, &cli.data_dir, chaos.json.as_deref())?;
            println!(
                "\nResults: {} and {}. Chaos took {:.0} s.",
                json.display(),
                html.display(),
                took.as_secs_f64()
            );
            if report.passed {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("lab: a scenario's expectation or consistency check failed (see above)");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// The labs `lab chaos` needs: one for the scenarios that run on a single nats-server, and
/// one with a NATS cluster for those that need it (in a `cluster` folder of the data dir when
/// both run).
fn chaos_labs(
    chaos: &ChaosArgs,
    up: &UpArgs,
    data_dir: &std::path::Path,
    attached: Option<&std::path::Path>,
) -> anyhow::Result<Vec<(Vec<chaos::Scenario>, UpArgs, PathBuf)>> {
    if let Some(file) = attached {
        let scenarios = chaos.scenarios();
        let refused: Vec<&str> = scenarios
            .iter()
            .filter(|scenario| scenario.needs_the_labs_processes())
            .map(|scenario| scenario.name())
            .collect();
        anyhow::ensure!(
            refused.is_empty(),
            "{} need a lab that started the services itself; on the system {} lists, these run: {}",
            refused.join(", "),
            file.display(),
            chaos::Scenario::ALL
                .iter()
                .filter(|scenario| !scenario.needs_the_labs_processes())
                .map(|scenario| scenario.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(vec![(scenarios, up.clone(), data_dir.to_path_buf())]);
    }
    let (on_cluster, on_one): (Vec<_>, Vec<_>) = chaos
        .scenarios()
        .into_iter()
        .partition(|scenario| up.nats_cluster || scenario.needs_cluster());
    if !on_cluster.is_empty() && up.nats_url.is_some() {
        anyhow::bail!(
            "cluster-failover runs on a NATS cluster of the lab's own; drop --nats-url to run it"
        );
    }
    let mut labs = Vec::new();
    if !on_one.is_empty() {
        labs.push((on_one, up.clone(), data_dir.to_path_buf()));
    }
    if !on_cluster.is_empty() {
        let dir = if labs.is_empty() {
            data_dir.to_path_buf()
        } else {
            data_dir.join("cluster")
        };
        let clustered = UpArgs {
            nats_cluster: true,
            ..up.clone()
        };
        labs.push((on_cluster, clustered, dir));
    }
    Ok(labs)
}

/// What the reports say the services stored their data on.
fn storage(up: &UpArgs, attached: Option<&std::path::Path>) -> String {
    match attached {
        Some(file) => format!("the databases of the system {} lists", file.display()),
        None => up.storage(),
    }
}

/// Empties the data dir (if the lab wrote it), starts a lab (or, with `attached`, works on
/// the system that file lists), runs `work` on it and stops what the lab started, whatever
/// `work` did. None when interrupted by Ctrl-C or SIGTERM.
async fn on_lab<T>(
    data_dir: &std::path::Path,
    up: &UpArgs,
    attached: Option<&std::path::Path>,
    work: impl AsyncFnOnce(&mut RunningLab) -> anyhow::Result<T>,
) -> anyhow::Result<Option<(T, Duration)>> {
    if let Some(file) = attached {
        demo::prepare_empty(data_dir)?;
        let started = std::time::Instant::now();
        let mut lab = RunningLab::attach(file, data_dir.to_path_buf())?;
        println!(
            "Working on the system {} lists.\n{}",
            file.display(),
            lab.describe()
        );
        let outcome = tokio::select! {
            outcome = work(&mut lab) => outcome?,
            () = platform::server::shutdown_signal() => return Ok(None),
        };
        lab.shutdown().await?;
        return Ok(Some((outcome, started.elapsed())));
    }
    demo::prepare_empty(data_dir)?;
    let options = up.options(data_dir.to_path_buf());
    // Built first (when run through cargo), so the timing below is the run's own.
    binaries::locate().await?;
    let started = std::time::Instant::now();
    println!("Starting nats-server and the services...");
    let mut lab = tokio::select! {
        lab = RunningLab::start(&options) => lab?,
        () = platform::server::shutdown_signal() => return Ok(None),
    };
    println!("{}", lab.describe());
    let outcome = tokio::select! {
        outcome = work(&mut lab) => Some(outcome),
        () = platform::server::shutdown_signal() => None,
    };
    let stopped = lab.shutdown().await;
    let Some(outcome) = outcome else {
        return Ok(None);
    };
    let outcome = outcome?;
    stopped?;
    Ok(Some((outcome, started.elapsed())))
}

async fn up(options: UpOptions) -> anyhow::Result<ExitCode> {
    println!("Starting nats-server and the services...");
    let mut lab = tokio::select! {
        lab = RunningLab::start(&options) => lab?,
        () = platform::server::shutdown_signal() => return Ok(ExitCode::from(INTERRUPTED)),
    };
    println!("Every service is SERVING.\n\n{}", lab.describe());
    println!(
        "Load data with `lab seed --data-dir {}`. Ctrl-C stops everything.",
        options.data_dir.display()
    );
    let crashed = tokio::select! {
        () = platform::server::shutdown_signal() => None,
        crashed = watch_for_crashes(&mut lab) => Some(crashed),
    };
    println!("Stopping...");
    lab.shutdown().await?;
    match crashed {
        None => Ok(ExitCode::SUCCESS),
        Some((service, status)) => {
            anyhow::bail!(
                "{service} exited on its own ({status}); see its log in the data dir's logs/"
            )
        }
    }
}

async fn probe(addr: &str) -> anyhow::Result<bool> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .map_err(|error| anyhow::anyhow!("cannot connect to {addr}: {error}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|status| anyhow::anyhow!("{addr}: {}", status.message()))?;
    Ok(answer.into_inner().status
        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
}

async fn watch_for_crashes(lab: &mut RunningLab) -> (topology::Service, String) {
    loop {
        if let Some(crashed) = lab.crashed() {
            return crashed;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
