//! The demo's report: plain tables for the terminal, and the same figures as Markdown, JSON
//! and a self-contained HTML page with SVG charts in the data dir.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::measure::{Freshness, Latency, Mode};

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
            "\nFreshness: a new order appears in purchases-async {} us (p50) / {} us (p99) after PlaceOrder returns ({} samples, {} never seen); sync and monolith read live data.\n",
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
        let mut text = String::from("# Lab report: sync vs async vs monolith\n\n");
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
            "\n## Freshness\n\nFrom PlaceOrder's answer to the order's first appearance in purchases-async: p50 {} us, p99 {} us, max {} us over {} orders ({} never seen). purchases-sync and the monolith read live data.\n",
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
        let latency_bars: Vec<(String, Vec<(String, f64)>)> = self
            .latency
            .iter()
            .map(|(mode, latency)| {
                (
                    mode.name().to_owned(),
                    vec![
                        ("p50".to_owned(), latency.p50_us as f64),
                        ("p99".to_owned(), latency.p99_us as f64),
                    ],
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
        let markdown = escape(&self.markdown());
        page(
            "Lab report",
            &format!(
                r#"<h1>Sync vs async vs monolith</h1>
<p>Generated {generated} on {machine}. Storage: {storage}.</p>
<h2>Latency (us, one request in flight)</h2>
{latency}
<h2>Freshness of purchases-async (us from PlaceOrder's answer to visibility)</h2>
{freshness}
<h2>Success rate (%) with {what}</h2>
{fault}
<h2 id="traces">Traces</h2>
<p>Each request and each order is a trace: where a sync request spends its time across the
three services it calls, and how an order travels from PlaceOrder through the relay's publish
to purchases-async's apply (a batch linked to the publish). <code>lab trace &lt;trace-id&gt;</code>
prints any of them in the terminal.</p>
{traces}
<h2>All figures</h2>
<pre>{markdown}</pre>
"#,
                generated = escape(&self.generated_at),
                machine = escape(&self.machine),
                storage = escape(&self.storage),
                latency = bar_chart(&latency_bars, "us"),
                freshness = bar_chart(&freshness_bars, "us"),
                what = escape(&self.fault.what),
                fault = bar_chart(&fault_bars, "%"),
                traces = if self.traces.is_empty() {
                    "<p>None: the lab ran with <code>--tracing off</code>.</p>".to_owned()
                } else {
                    self.traces
                        .iter()
                        .map(|view| {
                            format!(
                                "<figure>{}<figcaption>trace {}</figcaption></figure>",
                                view.svg,
                                escape(&view.trace_id)
                            )
                        })
                        .collect::<String>()
                },
            ),
        )
    }
}

/// A self-contained HTML page around `body`.
pub(crate) fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; color: #222; }}
svg {{ max-width: 100%; height: auto; }}
svg text {{ font-size: 12px; fill: #222; }}
pre {{ background: #f6f6f6; padding: 1rem; overflow-x: auto; }}
</style></head><body>
{body}</body></html>
"#,
        title = escape(title),
    )
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

pub(crate) fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut line = String::from("  ");
        for (cell, width) in cells.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        line.trim_end().to_owned() + "\n"
    };
    let mut text = line(headers.to_vec());
    let rules: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    text.push_str(&line(rules.iter().map(String::as_str).collect()));
    for row in rows {
        text.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    text
}

pub(crate) fn markdown_table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let mut text = format!("| {} |\n|", headers.join(" | "));
    text.push_str(&"---|".repeat(N));
    text.push('\n');
    for row in rows {
        let _ = writeln!(text, "| {} |", row.join(" | "));
    }
    text
}

pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Horizontal grouped bars: one group per label, one bar per series value.
pub(crate) fn bar_chart(groups: &[(String, Vec<(String, f64)>)], unit: &str) -> String {
    const COLORS: [&str; 3] = ["#4e79a7", "#f28e2b", "#e15759"];
    const LABEL_WIDTH: f64 = 110.0;
    const CHART_WIDTH: f64 = 520.0;
    const BAR: f64 = 16.0;
    let max = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|(_, value)| *value))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let height = groups
        .iter()
        .map(|(_, bars)| bars.len() as f64 * BAR + 12.0)
        .sum::<f64>()
        + 10.0;
    let width = LABEL_WIDTH + CHART_WIDTH + 140.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">"#
    );
    let mut y = 5.0;
    for (label, bars) in groups {
        let _ = write!(
            svg,
            r#"<text x="0" y="{}">{}</text>"#,
            y + BAR * bars.len() as f64 / 2.0 + 4.0,
            escape(label)
        );
        for (index, (series, value)) in bars.iter().enumerate() {
            let width = (value / max * CHART_WIDTH).max(1.0);
            let _ = write!(
                svg,
                r#"<rect x="{LABEL_WIDTH}" y="{y}" width="{width:.1}" height="{}" fill="{}"><title>{} {}: {value:.0} {unit}</title></rect><text x="{:.1}" y="{}">{} {value:.0} {unit}</text>"#,
                BAR - 2.0,
                COLORS[index % COLORS.len()],
                escape(label),
                escape(series),
                LABEL_WIDTH + width + 4.0,
                y + BAR - 5.0,
                escape(series),
            );
            y += BAR;
        }
        y += 12.0;
    }
    svg.push_str("</svg>");
    svg
}

/// The current time as RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs())
            .unwrap_or_default(),
    )
}

/// The hardware line of a report: cores, OS, architecture, and the CPU model when known.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        });
    let mut line = format!(
        "{} cores, {} {}",
        std::thread::available_parallelism().map_or(0, usize::from),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    if let Some(model) = model {
        line.push_str(&format!(", {model}"));
    }
    line
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time, without a date library.
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let seconds = unix_seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3_600,
        seconds % 3_600 / 60,
        seconds % 60
    )
}

/// How a line chart draws its axes.
#[derive(Debug, Clone)]
pub(crate) struct Chart<'a> {
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub log_x: bool,
    pub log_y: bool,
    /// A shaded span of x (from, to) with its label: the fault window of a timeline.
    pub band: Option<(f64, f64, &'a str)>,
    /// Fixed y range instead of one fitted to the points (a success rate from 0 to 100).
    pub y_range: Option<(f64, f64)>,
}

impl<'a> Chart<'a> {
    /// Rates span orders of magnitude, and so do latencies.
    pub fn log_log(x_label: &'a str, y_label: &'a str) -> Self {
        Self {
            x_label,
            y_label,
            log_x: true,
            log_y: true,
            band: None,
            y_range: None,
        }
    }

    /// Seconds on a linear axis.
    pub fn timeline(y_label: &'a str, log_y: bool) -> Self {
        Self {
            x_label: "seconds",
            y_label,
            log_x: false,
            log_y,
            band: None,
            y_range: None,
        }
    }
}

/// Lines with a legend, as self-contained SVG. A point whose y is not finite (NaN) is a
/// gap: the line stops there and starts again at the next point, rather than drawing a
/// value that was never measured.
pub(crate) fn line_chart(series: &[(String, Vec<(f64, f64)>)], chart: &Chart<'_>) -> String {
    const COLORS: [&str; 5] = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"];
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 300.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 40.0;
    let floor = |value: f64, log: bool| if log { value.max(1.0) } else { value };
    let points = || {
        series
            .iter()
            .flat_map(|(_, points)| points.iter())
            .filter(|(_, y)| y.is_finite())
    };
    let (min_x, max_x) = points().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(floor(*x, chart.log_x)), hi.max(*x))
    });
    let (min_x, max_x) = if min_x > max_x {
        (0.0, 1.0)
    } else {
        (min_x, max_x)
    };
    let (min_y, max_y) = chart.y_range.unwrap_or_else(|| {
        let max_y = points().map(|(_, y)| *y).fold(1.0_f64, f64::max);
        let min_y = if chart.log_y {
            points()
                .map(|(_, y)| y.max(1.0))
                .fold(f64::MAX, f64::min)
                .min(max_y)
        } else {
            0.0
        };
        (min_y, max_y)
    });
    let scale = |value: f64, lo: f64, hi: f64, log: bool| {
        let (value, lo, hi) = if log {
            (value.max(1.0).ln(), lo.max(1.0).ln(), hi.max(1.0).ln())
        } else {
            (value, lo, hi)
        };
        if hi > lo {
            ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.5
        }
    };
    let x = |value: f64| LEFT + scale(value, min_x, max_x, chart.log_x) * (WIDTH - LEFT - 20.0);
    let y = |value: f64| {
        HEIGHT - BOTTOM - scale(value, min_y, max_y, chart.log_y) * (HEIGHT - BOTTOM - 20.0)
    };
    let width = WIDTH + 150.0;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {HEIGHT}" width="{width}" height="{HEIGHT}" role="img">"#
    );
    if let Some((from, to, label)) = chart.band {
        let _ = write!(
            svg,
            r##"<rect x="{left:.1}" y="20" width="{width:.1}" height="{height}" fill="#f4cccc" opacity="0.6"/><text x="{left:.1}" y="16">{label}</text>"##,
            left = x(from),
            width = (x(to) - x(from)).max(1.0),
            height = HEIGHT - BOTTOM - 20.0,
            label = escape(label),
        );
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#999"/><line x1="{LEFT}" y1="20" x2="{LEFT}" y2="{bottom}" stroke="#999"/><text x="{mid}" y="{label_y}">{x_label}</text><text x="5" y="14">{y_label}</text><text x="{LEFT}" y="{tick_y}">{min_x:.0}</text><text x="{right_tick}" y="{tick_y}">{max_x:.0}</text><text x="5" y="{bottom}">{min_y:.0}</text><text x="5" y="28">{max_y:.0}</text>"##,
        bottom = HEIGHT - BOTTOM,
        right = WIDTH - 20.0,
        mid = WIDTH / 2.0,
        label_y = HEIGHT - 5.0,
        tick_y = HEIGHT - BOTTOM + 15.0,
        right_tick = WIDTH - 60.0,
        x_label = escape(chart.x_label),
        y_label = escape(chart.y_label),
    );
    for (index, (name, points)) in series.iter().enumerate() {
        let color = COLORS[index % COLORS.len()];
        for run in points.split(|(_, py)| !py.is_finite()) {
            if run.is_empty() {
                continue;
            }
            let path: Vec<String> = run
                .iter()
                .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        for (px, py) in points.iter().filter(|(_, py)| py.is_finite()) {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"><title>{} at {px:.1}: {py:.0}</title></circle>"#,
                x(*px),
                y(*py),
                escape(name)
            );
        }
        let _ = write!(
            svg,
            r#"<rect x="{}" y="{}" width="10" height="10" fill="{color}"/><text x="{}" y="{}">{}</text>"#,
            WIDTH,
            25.0 + 18.0 * index as f64,
            WIDTH + 15.0,
            34.0 + 18.0 * index as f64,
            escape(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_charts_place_the_extremes_at_the_edges() {
        let svg = line_chart(
            &[(
                "a<b".to_owned(),
                vec![(100.0, 10.0), (1_000.0, 100.0), (10_000.0, 1_000.0)],
            )],
            &Chart::log_log("rate", "us"),
        );
        assert!(svg.contains("a&lt;b"));
        // Log-log: the middle point sits in the middle of both axes.
        assert!(
            svg.contains(r#"points="70.0,260.0 345.0,140.0 620.0,20.0""#),
            "{svg}"
        );
    }

    #[test]
    fn timelines_are_linear_and_shade_the_fault_window() {
        let svg = line_chart(
            &[(
                "sync".to_owned(),
                vec![(0.0, 100.0), (5.0, 0.0), (10.0, 100.0)],
            )],
            &Chart {
                band: Some((2.5, 7.5, "users killed")),
                y_range: Some((0.0, 100.0)),
                ..Chart::timeline("success %", false)
            },
        );
        assert!(
            svg.contains(r#"points="70.0,20.0 345.0,260.0 620.0,20.0""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"<rect x="207.5" y="20" width="275.0""#),
            "{svg}"
        );
        assert!(svg.contains("users killed"));

        let gapped = line_chart(
            &[(
                "sync".to_owned(),
                vec![(0.0, 10.0), (5.0, f64::NAN), (10.0, 10.0)],
            )],
            &Chart::timeline("p99 ms", false),
        );
        assert_eq!(
            gapped.matches("<polyline").count(),
            2,
            "no line is drawn across the gap: {gapped}"
        );
        assert_eq!(gapped.matches("<circle").count(), 2);
    }

    #[test]
    fn dates_are_rendered_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    #[test]
    fn charts_escape_labels_and_scale_to_the_largest_value() {
        let svg = bar_chart(
            &[(
                "a<b".to_owned(),
                vec![("p50".to_owned(), 50.0), ("p99".to_owned(), 100.0)],
            )],
            "us",
        );
        assert!(svg.contains("a&lt;b"));
        assert!(
            svg.contains(r#"width="520.0""#),
            "the largest bar spans the chart"
        );
        assert!(svg.contains(r#"width="260.0""#));
    }
}
