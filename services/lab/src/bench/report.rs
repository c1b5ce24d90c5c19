//! How `lab bench` shows its results: tables for the terminal and a Markdown section (the
//! README's Results are pasted from it), and a self-contained HTML page with SVG charts.

use std::fmt::Write as _;

use super::MODES;
use super::results::{BenchReport, Step};
use crate::report::{
    Chart, bar_chart, escape, html_table, line_chart, markdown_table, percentile_chart, table,
};

fn summary_rows(report: &BenchReport) -> Vec<[String; 9]> {
    let echo = report.summary.get("echo").map(|echo| echo.p50_us.max(1));
    let sync = report.summary.get("sync");
    let versus = |of: u64, base: Option<u64>| {
        base.map_or("-".to_owned(), |base| {
            format!("{:.2}x", of as f64 / base.max(1) as f64)
        })
    };
    MODES
        .iter()
        .filter_map(|mode| {
            let name = mode.name();
            let summary = report.summary.get(name)?;
            let reached = report
                .series
                .get(name)
                .is_some_and(|series| series.saturation_reached);
            Some([
                name.to_owned(),
                summary.p50_us.to_string(),
                summary.p99_us.to_string(),
                versus(summary.p50_us, echo),
                versus(summary.p50_us, sync.map(|sync| sync.p50_us)),
                versus(summary.p99_us, sync.map(|sync| sync.p99_us)),
                format!("{:.0}", summary.throughput_rps),
                format!("{:.2}%", summary.error_rate * 100.0),
                format!(
                    "{}{:.0}",
                    if reached { "" } else { ">=" },
                    summary.saturation_rps
                ),
            ])
        })
        .collect()
}

const SUMMARY_HEADERS: [&str; 9] = [
    "mode",
    "p50 us",
    "p99 us",
    "p50 vs echo",
    "p50 vs sync",
    "p99 vs sync",
    "answered/s",
    "errors",
    "saturation/s",
];

/// Each mode at the low rate, against echo in the same rounds.
fn low_rate_rows(report: &BenchReport) -> Vec<[String; 4]> {
    let Some(low) = &report.low_rate else {
        return Vec::new();
    };
    let echo = low.overall.get("echo").map(|echo| echo.p50_us.max(1));
    MODES
        .iter()
        .filter_map(|mode| {
            let figures = low.overall.get(mode.name())?;
            Some([
                mode.name().to_owned(),
                figures.p50_us.to_string(),
                figures.p99_us.to_string(),
                echo.map_or("-".to_owned(), |echo| {
                    format!("{:.2}x", figures.p50_us as f64 / echo as f64)
                }),
            ])
        })
        .collect()
}

const LOW_RATE_HEADERS: [&str; 4] = ["mode", "p50 us", "p99 us", "p50 vs echo"];

/// The heading of the low-rate table, when those rounds ran.
fn low_rate_heading(report: &BenchReport) -> Option<String> {
    let low = report.low_rate.as_ref()?;
    Some(format!(
        "At {} requests/s, one request or two in flight, over {} rounds of {:.1} s per mode: every hop pays a wake-up",
        low.rate,
        low.rounds,
        low.round_ms as f64 / 1_000.0
    ))
}

fn step_rows(report: &BenchReport) -> Vec<[String; 8]> {
    let mut rows = Vec::new();
    for mode in MODES {
        let Some(series) = report.series.get(mode.name()) else {
            continue;
        };
        for step in &series.steps {
            let busiest = step
                .cpu_pct
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or("-".to_owned(), |(name, pct)| format!("{name} {pct:.0}%"));
            let errors = if step.errors.is_empty() {
                "-".to_owned()
            } else {
                step.errors
                    .iter()
                    .map(|(code, count)| format!("{count} {code}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            rows.push([
                mode.name().to_owned(),
                step.offered_rps.to_string(),
                format!("{:.0}", step.throughput_rps),
                step.p50_us.to_string(),
                step.p99_us.to_string(),
                step.p999_us.to_string(),
                errors,
                busiest,
            ]);
        }
    }
    rows
}

const STEP_HEADERS: [&str; 8] = [
    "mode",
    "offered/s",
    "answered/s",
    "p50 us",
    "p99 us",
    "p99.9 us",
    "errors",
    "busiest process (CPU of one core)",
];

fn aim_rows(report: &BenchReport) -> Vec<[String; 4]> {
    report
        .aims
        .iter()
        .map(|aim| {
            [
                aim.name.clone(),
                format!(
                    "{:.2} (aim {} {})",
                    aim.measured, aim.comparison, aim.target
                ),
                if aim.met { "met" } else { "MISSED" }.to_owned(),
                round_spread(&aim.rounds),
            ]
        })
        .collect()
}

const AIM_HEADERS: [&str; 4] = ["aim", "measured", "", "one round alone (lowest-highest)"];

/// The range a ratio took round by round: what one round alone could have reported.
fn round_spread(rounds: &[f64]) -> String {
    let lowest = rounds.iter().copied().reduce(f64::min);
    let highest = rounds.iter().copied().reduce(f64::max);
    match (lowest, highest) {
        (Some(lowest), Some(highest)) => {
            format!("{lowest:.2}-{highest:.2} over {} rounds", rounds.len())
        }
        _ => "-".to_owned(),
    }
}

/// How the summary was measured.
fn reference_heading(report: &BenchReport) -> String {
    let reference = &report.reference;
    format!(
        "At {} requests/s offered to every mode, in {} rounds of {:.1} s per mode, the modes taking turns",
        reference.rate,
        reference.rounds,
        reference.round_ms as f64 / 1_000.0
    )
}

/// Each process's peak memory over the reference rounds.
fn memory_line(report: &BenchReport) -> String {
    let memory = &report.memory;
    if memory.peak_rss_kib.is_empty() {
        return "Memory: not read (the system was not started by the lab).".to_owned();
    }
    let peaks = memory
        .peak_rss_kib
        .iter()
        .map(|(name, kib)| format!("{name} {:.1}", *kib as f64 / 1_024.0))
        .collect::<Vec<_>>()
        .join(", ");
    let view = match (
        memory.projection_kib_per_1000_purchases,
        memory.purchases_held,
    ) {
        (Some(per_1000), Some(held)) => format!(
            "; purchases-async's view, less purchases-sync's footprint, {per_1000:.0} KiB per 1,000 of the {held} purchases it held"
        ),
        _ => String::new(),
    };
    // A peak has no split; the split just after the rounds says how much of a process's
    // memory is its binary's code rather than what it allocated.
    let split = if memory.resident_after_kib.is_empty() {
        String::new()
    } else {
        let parts = memory
            .resident_after_kib
            .iter()
            .map(|(name, resident)| {
                format!(
                    "{name} {:.1} + {:.1}",
                    resident.file_kib as f64 / 1_024.0,
                    resident.anon_kib as f64 / 1_024.0
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            " Resident just after them, file-backed (the binary's and libraries' code, shared) + anonymous (allocated), MiB: {parts}."
        )
    };
    format!("Memory, peak resident set over the reference rounds (MiB): {peaks}{view}.{split}")
}

/// A chart against the offered rate, after its `intro`. A run at one offered rate
/// (`--rates 500`) has one point per mode: drawn, it reads as a broken chart, so it is said
/// instead.
fn against_offered_rate(
    rates_offered: usize,
    intro: &str,
    points: &[(String, Vec<(f64, f64)>)],
    chart: &Chart<'_>,
) -> String {
    if rates_offered >= 2 {
        format!("{intro}{}", line_chart(points, chart))
    } else {
        "<p>This run offered one rate only, so there is no curve to draw; a run without \
         <code>--rates</code> steps up to saturation.</p>"
            .to_owned()
    }
}

fn storage_line(report: &BenchReport) -> String {
    let owners: u64 = ["users", "products", "orders"]
        .iter()
        .filter_map(|name| report.storage_bytes.get(*name))
        .sum();
    let projection = report
        .storage_bytes
        .get("purchases-async")
        .copied()
        .unwrap_or(0);
    let monolith = report.storage_bytes.get("monolith").copied().unwrap_or(0);
    let jetstream = report.storage_bytes.get("jetstream").copied().unwrap_or(0);
    format!(
        "Storage: owners {} KiB, purchases-async's projection {} KiB ({:.0}% of the owners, duplicated), JetStream {} KiB, monolith {} KiB.",
        owners / 1024,
        projection / 1024,
        if owners > 0 {
            projection as f64 / owners as f64 * 100.0
        } else {
            0.0
        },
        jetstream / 1024,
        monolith / 1024
    )
}

fn freshness_line(report: &BenchReport) -> String {
    let freshness = &report.freshness;
    format!(
        "Freshness at {:.0} orders/s (offered {}): p50 {} us, p99 {} us, max {} us over {} timed orders ({} never seen; {} writes failed, {} skipped because orders fell behind); JetStream fsync {}.",
        freshness.write_rate_achieved,
        freshness.write_rate_offered,
        freshness.p50_us,
        freshness.p99_us,
        freshness.max_us,
        freshness.samples,
        freshness.never_seen,
        freshness.write_errors,
        freshness.writes_skipped,
        report.nats_fsync
    )
}

/// Where the lag went, stage by stage, when the bench could follow the orders stream, and
/// the floors beside it: what JetStream alone takes at the same rate, and what a wake-up
/// takes meanwhile.
fn stages_line(report: &BenchReport) -> Option<String> {
    let stage = |s: &super::stages::StageSummary| {
        format!("p50 {} / p99 {} / max {} us", s.p50_us, s.p99_us, s.max_us)
    };
    let split = report.freshness.stages.as_ref().map(|stages| {
        format!(
            "Split over {} of them: relay (answer to publish) {}; JetStream (publish to delivery) {}; projection (delivery to visible) {}. JetStream over all {} orders of the phase: {}.",
            stages.samples,
            stage(&stages.relay),
            stage(&stages.jetstream),
            stage(&stages.projection),
            stages.every_order.orders,
            stage(&stages.every_order.jetstream)
        )
    });
    let alone = report.freshness.jetstream_alone.as_ref().map(|alone| {
        format!(
            "JetStream alone just before (the same broker, {} messages/s of {} bytes, nothing else writing): publish to delivery {}; publish to ack {}; {} of {} never delivered, {} failed.",
            alone.rate_offered,
            alone.payload_bytes,
            stage(&alone.publish_to_delivery),
            stage(&alone.publish_to_ack),
            alone.never_delivered,
            alone.messages,
            alone.errors
        )
    });
    let wake_up = report.freshness.wake_up.as_ref().map(|wake_up| {
        format!(
            "The machine's wake-up round trip meanwhile (two of the bench's threads passing a byte over loopback, {} times; the projection stage crosses processes at least twice): {}.",
            wake_up.pings,
            stage(&wake_up.round_trip)
        )
    });
    let lines: Vec<String> = split.into_iter().chain(alone).chain(wake_up).collect();
    (!lines.is_empty()).then(|| lines.join(" "))
}

/// The same orders split by their spans, and how well that agrees with the probe.
fn span_stages_line(report: &BenchReport) -> Option<String> {
    let stages = report.freshness.span_stages.as_ref()?;
    let stage = |s: &super::stages::StageSummary| {
        format!("p50 {} / p99 {} / max {} us", s.p50_us, s.p99_us, s.max_us)
    };
    Some(format!(
        "Split by the spans of {} traced orders: write to applied {}; relay (write to publish) {}; JetStream (publish to apply, the consumer's pull included) {}; projection (the apply) {}; the apply's end to the waiting read's answer at the bench {} (of which in purchases-async, to its span of the read ending {}; from there to the bench {}). For {} of them ({:.0}%) the apply ended inside the probe's window (the read that waited for the order, from its start to its answer: {}); the probe's projection stage also holds the consumer's pull.",
        stages.samples,
        stage(&stages.total),
        stage(&stages.relay),
        stage(&stages.jetstream),
        stage(&stages.projection),
        stage(&stages.answer),
        stage(&stages.served),
        stage(&stages.returned),
        stages.agreeing,
        if stages.samples > 0 {
            stages.agreeing as f64 / stages.samples as f64 * 100.0
        } else {
            0.0
        },
        stage(&stages.probe_resolution),
    ))
}

const TRACING_HEADERS: [&str; 7] = [
    "mode",
    "p50 us off",
    "p50 us on",
    "p50 on/off",
    "p99 us off",
    "p99 us on",
    "p99 on/off",
];

/// The reference rounds with tracing off and on, mode by mode.
fn tracing_rows(report: &BenchReport) -> Vec<[String; 7]> {
    let Some(cost) = &report.reference.tracing else {
        return Vec::new();
    };
    let ratio = |on: u64, off: u64| format!("{:.2}x", on as f64 / off.max(1) as f64);
    MODES
        .iter()
        .filter_map(|mode| {
            let (off, on) = (cost.off.get(mode.name())?, cost.on.get(mode.name())?);
            Some([
                mode.name().to_owned(),
                off.p50_us.to_string(),
                on.p50_us.to_string(),
                ratio(on.p50_us, off.p50_us),
                off.p99_us.to_string(),
                on.p99_us.to_string(),
                ratio(on.p99_us, off.p99_us),
            ])
        })
        .collect()
}

fn tracing_heading(report: &BenchReport) -> Option<String> {
    let cost = report.reference.tracing.as_ref()?;
    Some(format!(
        "What tracing costs at {} requests/s: the same rounds with the services keeping no new traces (off) and keeping {:.0}% of them (on), exported to the lab's receiver on this machine",
        report.reference.rate,
        cost.ratio * 100.0
    ))
}

const SLOWEST_HEADERS: [&str; 5] = [
    "at (ms into the phase)",
    "freshness us",
    "relay us",
    "JetStream us",
    "projection us",
];

fn slowest_rows(report: &BenchReport) -> Vec<[String; 5]> {
    let Some(stages) = &report.freshness.stages else {
        return Vec::new();
    };
    stages
        .slowest
        .iter()
        .map(|split| {
            [
                split.at_ms,
                split.total_us,
                split.relay_us,
                split.jetstream_us,
                split.projection_us,
            ]
            .map(|value| value.to_string())
        })
        .collect()
}

/// The bus way's price beside the direct calls.
fn bus_price_line(report: &BenchReport) -> String {
    let Some(price) = &report.bus_price else {
        return "The bus way: not measured beside sync in this run.".to_owned();
    };
    format!(
        "The bus way (purchases-bus) against the direct calls (purchases-sync), same rounds: p50 {:.2}x and p99 {:.2}x sync's, p50 {:.2}x echo's, saturation {:.2}x sync's; the broker adds about {:.0} us to each call on the critical path.",
        price.p50_vs_sync,
        price.p99_vs_sync,
        price.p50_vs_echo,
        price.saturation_vs_sync,
        price.broker_hop_us
    )
}

fn catch_up_line(report: &BenchReport) -> String {
    let Some(catch_up) = &report.catch_up else {
        return "Catch-up: not timed (the system was not started by the lab).".to_owned();
    };
    format!(
        "Catch-up: a new purchases-async rebuilt its projection from all {} events in {:.2} s from its start, {:.0} events/s once up.",
        catch_up.events, catch_up.seconds_from_start, catch_up.events_per_second
    )
}

pub fn terminal(report: &BenchReport) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\n{} (latency from when each request was due):",
        reference_heading(report)
    );
    text.push_str(&table(&SUMMARY_HEADERS, &summary_rows(report)));
    let _ = writeln!(text, "\n{}", bus_price_line(report));
    if let Some(heading) = low_rate_heading(report) {
        let _ = writeln!(text, "\n{heading}:");
        text.push_str(&table(&LOW_RATE_HEADERS, &low_rate_rows(report)));
    }
    let _ = writeln!(text, "{}", freshness_line(report));
    if let Some(line) = stages_line(report) {
        let _ = writeln!(text, "{line}");
    }
    if let Some(line) = span_stages_line(report) {
        let _ = writeln!(text, "{line}");
    }
    if let Some(heading) = tracing_heading(report) {
        let _ = writeln!(text, "\n{heading}:");
        text.push_str(&table(&TRACING_HEADERS, &tracing_rows(report)));
    }
    let _ = writeln!(text, "{}", catch_up_line(report));
    let _ = writeln!(text, "{}", storage_line(report));
    let _ = writeln!(text, "{}\n", memory_line(report));
    let _ = writeln!(text, "Aims (ratios measured in this run):");
    text.push_str(&table(&AIM_HEADERS, &aim_rows(report)));
    text
}

/// When, where and on what the run measured.
fn measured_line(report: &BenchReport) -> String {
    format!(
        "Measured {} on {}; storage {}; JetStream fsync {}; {}; {} users, {} products, {} orders seeded; pages of {} purchases; {} ms per step; {} background orders/s.",
        report.generated_at,
        report.machine,
        report.storage,
        report.nats_fsync,
        report.service_threads.map_or_else(
            || "services on their own threads (one per CPU)".to_owned(),
            |threads| {
                let plural = if threads == 1 { "" } else { "s" };
                format!("services on {threads} worker thread{plural} each")
            },
        ),
        report.data.users,
        report.data.products,
        report.data.orders,
        report.settings.page_size,
        report.settings.step_ms,
        report.settings.write_rate
    )
}

pub fn markdown(report: &BenchReport) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "{}\n", measured_line(report));
    let _ = writeln!(text, "{}:\n", reference_heading(report));
    text.push_str(&markdown_table(&SUMMARY_HEADERS, &summary_rows(report)));
    let _ = writeln!(text, "\n{}", bus_price_line(report));
    if let Some(heading) = low_rate_heading(report) {
        let _ = writeln!(text, "\n{heading}:\n");
        text.push_str(&markdown_table(&LOW_RATE_HEADERS, &low_rate_rows(report)));
    }
    let _ = writeln!(
        text,
        "\n{}\n\n{}\n\n{}\n\n{}\n",
        freshness_line(report),
        catch_up_line(report),
        storage_line(report),
        memory_line(report)
    );
    if let Some(line) = stages_line(report) {
        let _ = writeln!(text, "{line}\n");
    }
    if let Some(line) = span_stages_line(report) {
        let _ = writeln!(text, "{line}\n");
    }
    if let Some(heading) = tracing_heading(report) {
        let _ = writeln!(text, "{heading}:\n");
        text.push_str(&markdown_table(&TRACING_HEADERS, &tracing_rows(report)));
        text.push('\n');
    }
    if report.freshness.stages.is_some() {
        let _ = writeln!(text, "The slowest timed orders:\n");
        text.push_str(&markdown_table(&SLOWEST_HEADERS, &slowest_rows(report)));
        text.push('\n');
    }
    text.push_str(&markdown_table(&AIM_HEADERS, &aim_rows(report)));
    text.push_str("\nEvery step:\n\n");
    text.push_str(&markdown_table(&STEP_HEADERS, &step_rows(report)));
    text
}

pub fn html(report: &BenchReport) -> String {
    let reference_rate = report.reference.rate;
    // Each mode's distribution at the reference rate, from its step there.
    let distributions: Vec<(String, Vec<(f64, f64)>)> = MODES
        .iter()
        .filter_map(|mode| {
            let step = report
                .series
                .get(mode.name())?
                .steps
                .iter()
                .find(|step| step.offered_rps == reference_rate)?;
            Some((
                mode.name().to_owned(),
                vec![
                    (0.5, step.p50_us as f64),
                    (0.9, step.p90_us as f64),
                    (0.99, step.p99_us as f64),
                    (0.999, step.p999_us as f64),
                ],
            ))
        })
        .collect();
    let per_rate = |value: fn(&Step) -> f64| -> Vec<(String, Vec<(f64, f64)>)> {
        MODES
            .iter()
            .filter_map(|mode| {
                let series = report.series.get(mode.name())?;
                Some((
                    mode.name().to_owned(),
                    series
                        .steps
                        .iter()
                        .map(|step| (f64::from(step.offered_rps), value(step)))
                        .collect(),
                ))
            })
            .collect()
    };
    let p99 = per_rate(|step| step.p99_us as f64);
    let throughput = per_rate(|step| step.throughput_rps);
    let rates_offered = report
        .series
        .values()
        .map(|series| series.steps.len())
        .max()
        .unwrap_or(0);
    let freshness: Vec<(String, Vec<(String, f64)>)> = report
        .freshness
        .distribution
        .iter()
        .map(|(upper, count)| {
            (
                format!("<= {:.2} ms", *upper as f64 / 1_000.0),
                vec![("orders".to_owned(), *count as f64)],
            )
        })
        .collect();
    let tracing = match tracing_heading(report) {
        Some(heading) => format!(
            "<h2 id=\"tracing\">What tracing costs</h2><p>{}.</p>{}",
            escape(&heading),
            html_table(&TRACING_HEADERS, &tracing_rows(report))
        ),
        None => String::new(),
    };
    let low_rate = match low_rate_heading(report) {
        Some(heading) => format!(
            "<h2 id=\"low-rate\">{}</h2>{}",
            escape(&heading),
            html_table(&LOW_RATE_HEADERS, &low_rate_rows(report))
        ),
        None => String::new(),
    };
    let slowest = if report.freshness.stages.is_some() {
        format!(
            "<h3>The slowest timed orders</h3>{}",
            html_table(&SLOWEST_HEADERS, &slowest_rows(report))
        )
    } else {
        String::new()
    };
    let body = format!(
        r#"<h1>Load: sync vs bus vs async vs monolith</h1>
<p>{measured}</p>
<p>Open-loop load at a constant rate per step; latency is counted from when each request was
due, so a mode that falls behind is charged for the wait. Absolute figures vary by machine;
compare each mode with <code>echo</code> (one bare gRPC round trip) from the same run.</p>
<h2 id="summary">At {reference_rate} requests/s, over {rounds} rounds with the modes taking turns</h2>
{summary}
<p>{bus_price}</p>
<h3>The latency distribution of each mode at {reference_rate} requests/s</h3>
<p>The latency under which that share of the calls answered, from the median out to one call
in a thousand (both axes widen to the tail).</p>
{distributions}
{low_rate}
<h2 id="aims">Aims</h2>
{aims}
<h2 id="p99">p99 latency against offered rate</h2>
{p99}
<h2 id="throughput">Answered requests/s against offered rate</h2>
{throughput}
<h2 id="freshness">Freshness of purchases-async</h2>
<p>{freshness_line}</p>
{freshness}
<p>{stages_line}</p>
<p>{span_stages_line}</p>
{slowest}
{tracing}
<h2 id="steps">Every step</h2>
{steps}
<p>{catch_up}</p>
<p>{storage}</p>
<p>{memory}</p>
"#,
        measured = escape(&measured_line(report)),
        rounds = report.reference.rounds,
        summary = html_table(&SUMMARY_HEADERS, &summary_rows(report)),
        bus_price = escape(&bus_price_line(report)),
        distributions = percentile_chart(&distributions, "us"),
        aims = html_table(&AIM_HEADERS, &aim_rows(report)),
        p99 = against_offered_rate(
            rates_offered,
            "",
            &p99,
            &Chart::log_log("offered requests/s", "p99 us")
        ),
        throughput = against_offered_rate(
            rates_offered,
            "<p>Where a line leaves the diagonal, the mode is saturated: past it, it sheds load \
             with errors or falls behind.</p>",
            &throughput,
            &Chart {
                log_y: false,
                ..Chart::log_log("offered requests/s", "answered/s")
            }
        ),
        freshness_line = escape(&freshness_line(report)),
        freshness = bar_chart(&freshness, ""),
        stages_line = escape(&stages_line(report).unwrap_or_default()),
        span_stages_line = escape(&span_stages_line(report).unwrap_or_default()),
        steps = html_table(&STEP_HEADERS, &step_rows(report)),
        catch_up = escape(&catch_up_line(report)),
        storage = escape(&storage_line(report)),
        memory = escape(&memory_line(report)),
    );
    crate::report::page("Lab bench", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_offered_rate_is_said_not_drawn() {
        let points = vec![("echo".to_owned(), vec![(500.0, 300.0)])];
        let chart = Chart::log_log("offered requests/s", "p99 us");
        let one = against_offered_rate(1, "<p>intro</p>", &points, &chart);
        assert!(
            one.contains("one rate only") && !one.contains("<polyline") && !one.contains("intro")
        );
        let points = vec![("echo".to_owned(), vec![(100.0, 300.0), (500.0, 400.0)])];
        let two = against_offered_rate(2, "<p>intro</p>", &points, &chart);
        assert!(
            two.starts_with("<p>intro</p>") && two.contains("<polyline"),
            "{two}"
        );
    }
}
