//! The demo's report: plain tables for the terminal, and the same figures as Markdown, JSON
//! and a self-contained HTML page with SVG charts in the data dir.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::measure::{Freshness, Latency, Mode};

mod charts;
mod format;

pub(crate) use charts::{Chart, QUANTILES, bar_chart, line_chart, percentile_chart};

const LATENCY_HEADERS: [&str; 6] = ["mode", "p50 us", "p99 us", "p50 vs echo", "ok", "errors"];
const FAULT_HEADERS: [&str; 5] = [
    "mode",
    "ok during",
    "p50 us during",
    "errors during",
    "ok after",
];
pub(crate) use format::{escape, html_table, markdown_table, page, table};
pub use format::{machine, now_rfc3339};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// UTC, RFC 3339.
    pub generated_at: String,
    pub machine: String,
    pub storage: String,
    pub data: DataSet,
    /// One call in flight, per mode; `echo` is the floor.
    pub latency: BTreeMap<Mode, Latency>,
    pub freshness: Freshness,
    pub fault: Fault,
    /// Traces to look at: a typical and the slowest request per way of answering, a typical
    /// and the slowest order on its way to the projection (none with `--tracing off`).
    pub traces: Vec<crate::traces::views::TraceView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataSet {
    pub users: usize,
    pub products: usize,
    pub orders: usize,
    pub cancelled: usize,
    pub seconds_to_seed: f64,
    pub seconds_for_projection_to_catch_up: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// What was broken.
    pub what: String,
    pub during: BTreeMap<Mode, Latency>,
    /// The same calls once the service was back.
    pub after: BTreeMap<Mode, Latency>,
}

/// The files a report was written to.
#[derive(Debug)]
pub struct Written {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub json: PathBuf,
}

impl Report {
    pub fn write(&self, dir: &Path) -> anyhow::Result<Written> {
        let written = Written {
            markdown: dir.join("report.md"),
            html: dir.join("report.html"),
            json: dir.join("report.json"),
        };
        for (path, text) in [
            (&written.markdown, self.markdown()),
            (&written.html, self.html()),
            (&written.json, serde_json::to_string_pretty(self)?),
        ] {
            std::fs::write(path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(written)
    }

    fn floor(&self) -> Option<u64> {
        self.latency.get(&Mode::Echo).map(|echo| echo.p50_us.max(1))
    }

    fn latency_rows(&self) -> Vec<[String; 6]> {
        let floor = self.floor();
        self.latency
            .iter()
            .map(|(mode, latency)| {
                [
                    mode.name().to_owned(),
                    latency.p50_us.to_string(),
                    latency.p99_us.to_string(),
                    floor.map_or("-".to_owned(), |floor| {
                        format!("{:.2}x", latency.p50_us as f64 / floor as f64)
                    }),
                    format!("{}/{}", latency.ok, latency.requests),
                    errors(latency),
                ]
            })
            .collect()
    }

    fn fault_rows(&self) -> Vec<[String; 5]> {
        Mode::COMPARED
            .iter()
            .map(|mode| {
                let during = self.fault.during.get(mode);
                let after = self.fault.after.get(mode);
                [
                    mode.name().to_owned(),
                    during.map_or("-".into(), |l| format!("{}/{}", l.ok, l.requests)),
                    during.map_or("-".into(), |l| l.p50_us.to_string()),
                    during.map_or("-".into(), errors),
                    after.map_or("-".into(), |l| format!("{}/{}", l.ok, l.requests)),
                ]
            })
            .collect()
    }

    /// What the terminal shows.
    pub fn terminal(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "\nData: {} users, {} products, {} orders ({} cancelled); seeded in {:.1} s, projection caught up {:.2} s later. Storage: {}.\n",
            self.data.users,
            self.data.products,
            self.data.orders,
            self.data.cancelled,
            self.data.seconds_to_seed,
            self.data.seconds_for_projection_to_catch_up,
            self.storage
        );
        let _ = writeln!(text, "Latency, one request in flight (us):");
        text.push_str(&table(
            &["mode", "p50", "p99", "p50 vs echo", "ok", "errors"],
            &self.latency_rows(),
        ));
        let _ = writeln!(
            text,
            "\nFreshness: a new order appears in purchases-async {} us (p50) / {} us (p99) after PlaceOrder returns ({} samples, {} never seen); sync, bus and monolith read live data.\n",
            self.freshness.p50_us,
            self.freshness.p99_us,
            self.freshness.samples,
            self.freshness.never_seen
        );
        let _ = writeln!(text, "Fault: {}", self.fault.what);
        text.push_str(&table(
            &[
                "mode",
                "ok during",
                "p50 us during",
                "errors during",
                "ok after",
            ],
            &self.fault_rows(),
        ));
        if !self.traces.is_empty() {
            let _ = writeln!(text, "\nTraces (read one with `lab trace <trace-id>`):");
            text.push_str(&table(
                &["trace", "took ms", "trace id"],
                &self.trace_rows(),
            ));
        }
        text
    }

    fn trace_rows(&self) -> Vec<[String; 3]> {
        self.traces
            .iter()
            .map(|view| {
                [
                    view.what.clone(),
                    format!("{:.2}", view.took_ms),
                    view.trace_id.clone(),
                ]
            })
            .collect()
    }

    pub fn markdown(&self) -> String {
        let mut text = String::from("# Lab report: sync vs bus vs async vs monolith\n\n");
        let _ = writeln!(
            text,
            "Generated {} on {}. Storage: {}.\n\nData: {} users, {} products, {} orders ({} cancelled), seeded in {:.1} s; the projection caught up {:.2} s later.\n",
            self.generated_at,
            self.machine,
            self.storage,
            self.data.users,
            self.data.products,
            self.data.orders,
            self.data.cancelled,
            self.data.seconds_to_seed,
            self.data.seconds_for_projection_to_catch_up
        );
        text.push_str("## Latency\n\nOne request in flight; `echo` is a bare gRPC round trip (the floor). Ratios carry across machines, absolute figures do not.\n\n");
        text.push_str(&markdown_table(
            &["mode", "p50 us", "p99 us", "p50 vs echo", "ok", "errors"],
            &self.latency_rows(),
        ));
        let _ = writeln!(
            text,
            "\n## Freshness\n\nFrom PlaceOrder's answer to the order's first appearance in purchases-async: p50 {} us, p99 {} us, max {} us over {} orders ({} never seen). purchases-sync, purchases-bus and the monolith read live data.\n",
            self.freshness.p50_us,
            self.freshness.p99_us,
            self.freshness.max_us,
            self.freshness.samples,
            self.freshness.never_seen
        );
        let _ = writeln!(text, "## Fault: {}\n", self.fault.what);
        text.push_str(&markdown_table(
            &[
                "mode",
                "ok during",
                "p50 us during",
                "errors during",
                "ok after",
            ],
            &self.fault_rows(),
        ));
        for (mode, latency) in &self.fault.during {
            for (code, message) in &latency.example_errors {
                let _ = writeln!(text, "\n{} failed with {code}: \"{message}\"", mode.name());
            }
        }
        if !self.traces.is_empty() {
            text.push_str("\n## Traces\n\nRead one with `lab trace <trace-id>` (the waterfalls are in report.html).\n\n");
            text.push_str(&markdown_table(
                &["trace", "took ms", "trace id"],
                &self.trace_rows(),
            ));
        }
        text
    }

    pub fn html(&self) -> String {
        let distributions: Vec<(String, Vec<(f64, f64)>)> = self
            .latency
            .iter()
            .map(|(mode, latency)| {
                (
                    mode.name().to_owned(),
                    latency
                        .percentiles
                        .iter()
                        .map(|(quantile, us)| (*quantile, *us as f64))
                        .collect(),
                )
            })
            .collect();
        let fault_bars: Vec<(String, Vec<(String, f64)>)> = Mode::COMPARED
            .iter()
            .map(|mode| {
                let rate = |latency: Option<&Latency>| {
                    latency.map_or(0.0, |l| 100.0 * l.ok as f64 / l.requests.max(1) as f64)
                };
                (
                    mode.name().to_owned(),
                    vec![
                        ("during".to_owned(), rate(self.fault.during.get(mode))),
                        ("after".to_owned(), rate(self.fault.after.get(mode))),
                    ],
                )
            })
            .collect();
        let freshness_bars = vec![(
            "async".to_owned(),
            vec![
                ("p50".to_owned(), self.freshness.p50_us as f64),
                ("p99".to_owned(), self.freshness.p99_us as f64),
                ("max".to_owned(), self.freshness.max_us as f64),
            ],
        )];
        let fault_errors: String = self
            .fault
            .during
            .iter()
            .flat_map(|(mode, latency)| {
                latency.example_errors.iter().map(move |(code, message)| {
                    format!(
                        "<li>{} failed with {}: “{}”</li>",
                        escape(mode.name()),
                        escape(code),
                        escape(message)
                    )
                })
            })
            .collect();
        let traces = if self.traces.is_empty() {
            "<p>None: the lab ran with <code>--tracing off</code>.</p>".to_owned()
        } else {
            let figures: String = self
                .traces
                .iter()
                .map(|view| {
                    format!(
                        "<figure>{}<figcaption>trace {}</figcaption></figure>",
                        view.svg,
                        escape(&view.trace_id)
                    )
                })
                .collect();
            html_table(&["trace", "took ms", "trace id"], &self.trace_rows()) + &figures
        };
        page(
            "Lab report",
            &format!(
                r#"<h1>Sync vs bus vs async vs monolith</h1>
<p>Generated {generated} on {machine}. Storage: {storage}. Data: {users} users, {products} products, {orders} orders ({cancelled} cancelled), seeded in {seed_s:.1} s; the projection caught up {caught_s:.2} s later.</p>
<h2 id="latency">Latency, one request in flight</h2>
<p>Each line is one mode's distribution: the latency under which that share of the calls
answered, from the median out to the slowest. <code>echo</code> is a bare gRPC round trip on
the same machine, the floor: read each mode as a multiple of it.</p>
{distributions}
{latency_table}
<h2 id="freshness">Freshness of purchases-async</h2>
<p>From PlaceOrder's answer to the order's first appearance in purchases-async, over
{samples} orders ({never_seen} never seen). purchases-sync, purchases-bus and the monolith read live data.</p>
{freshness}
<h2 id="fault">{what}</h2>
<p>Share of calls answered during the fault and after it.</p>
{fault}
{fault_table}
<ul>{fault_errors}</ul>
<h2 id="traces">Traces</h2>
<p>Each request and each order is a trace: where a sync request spends its time across the
three services it calls, and how an order travels from PlaceOrder through the relay's publish
to purchases-async's apply (a batch linked to the publish). <code>lab trace &lt;trace-id&gt;</code>
prints any of them in the terminal.</p>
{traces}
"#,
                generated = escape(&self.generated_at),
                machine = escape(&self.machine),
                storage = escape(&self.storage),
                users = self.data.users,
                products = self.data.products,
                orders = self.data.orders,
                cancelled = self.data.cancelled,
                seed_s = self.data.seconds_to_seed,
                caught_s = self.data.seconds_for_projection_to_catch_up,
                distributions = percentile_chart(&distributions, "us"),
                latency_table = html_table(&LATENCY_HEADERS, &self.latency_rows()),
                samples = self.freshness.samples,
                never_seen = self.freshness.never_seen,
                freshness = bar_chart(&freshness_bars, "us"),
                what = escape(&format!("Fault: {}", self.fault.what)),
                fault = bar_chart(&fault_bars, "%"),
                fault_table = html_table(&FAULT_HEADERS, &self.fault_rows()),
            ),
        )
    }
}

fn errors(latency: &Latency) -> String {
    if latency.errors.is_empty() {
        return "-".to_owned();
    }
    latency
        .errors
        .iter()
        .map(|(code, count)| format!("{count} {code}"))
        .collect::<Vec<_>>()
        .join(", ")
}
