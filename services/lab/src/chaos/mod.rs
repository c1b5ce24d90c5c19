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
//!
//! One module per concern: `load` (the steady load and its timeline), `scenarios` (one file
//! per scenario, and the injection that dispatches to them), `phases` (the timeline cut into
//! phases and buckets), `consistency` (the projection against the owners), `expectations`
//! (each scenario's claims, checked) and `report` (terminal, JSON, HTML).

mod consistency;
mod expectations;
mod load;
mod phases;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;

use crate::seed::Seeded;
use crate::topology::Service;
use crate::up::RunningLab;
use consistency::converge;
use expectations::expectations;
use load::{Load, Timeline};
use phases::{buckets, drained_after, phases};
pub use report::{ChaosReport, ScenarioResult, terminal, write};
use scenarios::Lifted;
pub use scenarios::Scenario;

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
        println!("{}", report::terminal_section(&result));
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
    scenarios::can_run(lab, scenario)?;
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
    let positions_before = crate::measure::positions(&asynchronous, &probe_user).await;
    let injected = scenarios::inject(lab, scenario, during, args.quick, &probe_user).await?;
    tokio::time::sleep(during).await;
    let lifting = Instant::now();
    let Lifted {
        notes: lifted_notes,
        left,
    } = scenarios::lift(lab, scenario, injected).await?;
    notes.extend(lifted_notes);
    let fault_to = Instant::now();
    notes.push(format!(
        "lifting the fault took {:.2} s (a restart lasts until the service reports SERVING)",
        fault_to.duration_since(lifting).as_secs_f64()
    ));

    // Catching up is timed while the load goes on, as it would be in production.
    let catching_up = if scenario == Scenario::CatchUp {
        Some(scenarios::time_catching_up(&endpoints, &asynchronous, &probe_user, lifting).await?)
    } else {
        None
    };
    tokio::time::sleep(after).await;
    let ended = Instant::now();
    let acknowledged = load.stop().await;
    let load_stopped = Instant::now();

    if let Some(catching_up) = catching_up {
        notes.push(scenarios::caught_up_note(catching_up, positions_before.as_ref()).await?);
    }

    let consistency = converge(
        &endpoints,
        &asynchronous,
        seeded,
        &acknowledged,
        load_stopped,
    )
    .await;
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
    if let Some(left) = left {
        let window = scenarios::Window {
            lab,
            asynchronous: &asynchronous,
            seeded,
            positions_before: positions_before.as_ref(),
            probe_user: &probe_user,
        };
        let checked = scenarios::check(left, &window).await?;
        notes.extend(checked.notes);
        expectations.extend(checked.expectations);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
