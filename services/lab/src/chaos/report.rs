//! How `lab chaos` shows its results: a section per scenario in the terminal, and chaos.json
//! and chaos.html (timeline charts with the fault shaded) in the data dir.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use super::consistency::Consistency;
use super::expectations::{Expectation, errors_line};
use super::load::Series;
use super::phases::{Bucket, PHASES, PhaseStats};

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

pub(super) fn terminal_section(result: &ScenarioResult) -> String {
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
            Series::Bus,
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
                Series::Bus,
                Series::Async,
                Series::Monolith,
                Series::Freshness,
            ],
        );
        body.push_str(&format!(
            "<h2>{name}: {what} — {verdict}</h2><p>On {nats}.</p>\
             <h3>Success rate per bucket (%)</h3>{success}\
             <h3>p99 latency per bucket (ms, log scale; freshness is commit to visible)</h3>{latency}\
             {table}<ul>{notes}</ul><h3>Expectations</h3><ul>{expectations}</ul>",
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
            table = crate::report::html_table(&PHASE_HEADERS, &phase_rows(scenario)),
            notes = scenario
                .notes
                .iter()
                .chain(&scenario.consistency.examples)
                .map(|note| format!("<li>{}</li>", escape(note)))
                .collect::<String>(),
            expectations = scenario
                .expectations
                .iter()
                .map(|expectation| format!(
                    "<li><strong>{}</strong> {} (measured: {})</li>",
                    if expectation.met { "ok" } else { "FAILED" },
                    escape(&expectation.what),
                    escape(&expectation.measured)
                ))
                .collect::<String>(),
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
