//! The reports' charts, as self-contained SVG: lines over two axes with ticks, gridlines and a
//! legend (decades on a log scale), horizontal bars, and latency distributions (a percentile
//! plot: how slow the slowest 1%, 0.1%, ... of the calls were).

use std::fmt::Write as _;

use super::escape;

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1",
];

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

/// One axis: its domain, whether it is logarithmic, and where its ticks go.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    /// An axis covering `lo..=hi`: on a log scale widened to whole decades, each decade a
    /// tick; on a linear one widened to a round step (1, 2 or 5 times a power of ten) with
    /// about five ticks.
    fn fit(lo: f64, hi: f64, log: bool) -> Self {
        if log {
            let lo = lo.max(f64::MIN_POSITIVE);
            let hi = hi.max(lo);
            let first = lo.log10().floor() as i32;
            let last = (hi.log10().ceil() as i32).max(first + 1);
            let ticks = (first..=last).map(|power| 10_f64.powi(power)).collect();
            return Self {
                lo: 10_f64.powi(first),
                hi: 10_f64.powi(last),
                log,
                ticks,
            };
        }
        let span = (hi - lo).abs().max(f64::EPSILON);
        let raw = span / 5.0;
        let magnitude = 10_f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|factor| factor * magnitude)
            .find(|step| *step >= raw)
            .unwrap_or(10.0 * magnitude);
        let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        let count = ((hi - lo) / step).round() as usize;
        let ticks = (0..=count).map(|index| lo + step * index as f64).collect();
        Self {
            lo,
            hi: if hi > lo { hi } else { lo + step },
            log,
            ticks,
        }
    }

    /// Where `value` falls, from 0 (the low end) to 1.
    fn position(&self, value: f64) -> f64 {
        let (value, lo, hi) = if self.log {
            (
                value.max(f64::MIN_POSITIVE).log10(),
                self.lo.log10(),
                self.hi.log10(),
            )
        } else {
            (value, self.lo, self.hi)
        };
        if hi > lo {
            ((value - lo) / (hi - lo)).clamp(0.0, 1.0)
        } else {
            0.5
        }
    }
}

/// A tick's label, short: 500, 2.5, 10k, 1M.
fn tick_label(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1e6 {
        format!("{}M", trim(value / 1e6))
    } else if magnitude >= 1e4 {
        format!("{}k", trim(value / 1e3))
    } else {
        trim(value)
    }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// The plotting area and the SVG header, axes, ticks, gridlines and labels drawn.
struct Frame {
    x: Axis,
    y: Axis,
    svg: String,
}

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 40.0;
/// Room right of the plot for the legend.
const LEGEND: f64 = 170.0;

impl Frame {
    fn new(x: Axis, y: Axis, x_label: &str, y_label: &str) -> Self {
        Self::with_tick_labels(x, y, x_label, y_label, tick_label)
    }

    fn with_tick_labels(
        x: Axis,
        y: Axis,
        x_label: &str,
        y_label: &str,
        x_tick_label: impl Fn(f64) -> String,
    ) -> Self {
        let width = WIDTH + LEGEND;
        let mut frame = Self {
            x,
            y,
            svg: format!(
                r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {HEIGHT}" width="{width}" height="{HEIGHT}" role="img">"#
            ),
        };
        let bottom = HEIGHT - BOTTOM;
        for tick in frame.x.ticks.clone() {
            let px = frame.px(tick);
            let _ = write!(
                frame.svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{bottom}" stroke="#e4e4e4"/><text x="{px:.1}" y="{ty:.1}" text-anchor="middle">{label}</text>"##,
                ty = bottom + 15.0,
                label = escape(&x_tick_label(tick)),
            );
        }
        for tick in frame.y.ticks.clone() {
            let py = frame.py(tick);
            let _ = write!(
                frame.svg,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{right}" y2="{py:.1}" stroke="#e4e4e4"/><text x="{tx}" y="{ty:.1}" text-anchor="end">{label}</text>"##,
                right = WIDTH - RIGHT,
                tx = LEFT - 6.0,
                ty = py + 4.0,
                label = escape(&tick_label(tick)),
            );
        }
        let _ = write!(
            frame.svg,
            r##"<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#777"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#777"/><text x="{mid}" y="{label_y}" text-anchor="middle">{x_label}</text><text x="5" y="12">{y_label}</text>"##,
            right = WIDTH - RIGHT,
            mid = LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
            label_y = HEIGHT - 5.0,
            x_label = escape(x_label),
            y_label = escape(y_label),
        );
        frame
    }

    fn px(&self, value: f64) -> f64 {
        LEFT + self.x.position(value) * (WIDTH - LEFT - RIGHT)
    }

    fn py(&self, value: f64) -> f64 {
        HEIGHT - BOTTOM - self.y.position(value) * (HEIGHT - BOTTOM - TOP)
    }

    /// Draws `points` as a line (broken where y is not finite) with its dots, and its entry
    /// in the legend.
    fn series(
        &mut self,
        index: usize,
        name: &str,
        points: &[(f64, f64)],
        tip: &dyn Fn(f64, f64) -> String,
    ) {
        let color = COLORS[index % COLORS.len()];
        for run in points.split(|(_, py)| !py.is_finite()) {
            if run.is_empty() {
                continue;
            }
            let path: Vec<String> = run
                .iter()
                .map(|(px, py)| format!("{:.1},{:.1}", self.px(*px), self.py(*py)))
                .collect();
            let _ = write!(
                self.svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
        }
        for (px, py) in points.iter().filter(|(_, py)| py.is_finite()) {
            let _ = write!(
                self.svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"><title>{}: {}</title></circle>"#,
                self.px(*px),
                self.py(*py),
                escape(name),
                escape(&tip(*px, *py)),
            );
        }
        let y = TOP + 5.0 + 18.0 * index as f64;
        let _ = write!(
            self.svg,
            r#"<rect x="{x}" y="{y}" width="10" height="10" fill="{color}"/><text x="{tx}" y="{ty}">{name}</text>"#,
            x = WIDTH + 5.0,
            tx = WIDTH + 20.0,
            ty = y + 9.0,
            name = escape(name),
        );
    }

    fn finish(mut self) -> String {
        self.svg.push_str("</svg>");
        self.svg
    }
}

/// Lines with a legend. A point whose y is not finite (NaN) is a gap: the line stops there
/// and starts again at the next point, rather than drawing a value that was never measured.
pub(crate) fn line_chart(series: &[(String, Vec<(f64, f64)>)], chart: &Chart<'_>) -> String {
    let finite = || {
        series
            .iter()
            .flat_map(|(_, points)| points.iter())
            .filter(|(_, y)| y.is_finite())
    };
    let (min_x, max_x) = finite().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(*x), hi.max(*x))
    });
    let (min_x, max_x) = if min_x > max_x {
        (if chart.log_x { 1.0 } else { 0.0 }, 10.0)
    } else {
        (min_x, max_x)
    };
    let (min_y, max_y) = chart.y_range.unwrap_or_else(|| {
        let max_y = finite().map(|(_, y)| *y).fold(f64::MIN, f64::max);
        let min_y = finite().map(|(_, y)| *y).fold(f64::MAX, f64::min);
        if max_y < min_y {
            (if chart.log_y { 1.0 } else { 0.0 }, 10.0)
        } else if chart.log_y {
            (min_y.max(f64::MIN_POSITIVE), max_y)
        } else {
            (min_y.min(0.0), max_y)
        }
    });
    let mut y = Axis::fit(min_y, max_y, chart.log_y);
    if let Some((lo, hi)) = chart.y_range {
        (y.lo, y.hi) = (lo, hi);
        y.ticks.retain(|tick| (lo..=hi).contains(tick));
    }
    let mut frame = Frame::new(
        Axis::fit(min_x, max_x, chart.log_x),
        y,
        chart.x_label,
        chart.y_label,
    );
    if let Some((from, to, label)) = chart.band {
        let (left, right) = (frame.px(from), frame.px(to));
        let _ = write!(
            frame.svg,
            r##"<rect x="{left:.1}" y="{TOP}" width="{width:.1}" height="{height}" fill="#f4cccc" opacity="0.6"/><text x="{left:.1}" y="{label_y}">{label}</text>"##,
            width = (right - left).max(1.0),
            height = HEIGHT - BOTTOM - TOP,
            label_y = TOP - 6.0,
            label = escape(label),
        );
    }
    for (index, (name, points)) in series.iter().enumerate() {
        frame.series(index, name, points, &|x, y| {
            format!("{} at {}", tick_label(y), tick_label(x))
        });
    }
    frame.finish()
}

/// The quantiles a latency distribution is drawn at.
pub(crate) const QUANTILES: [f64; 8] = [0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999];

/// Where a quantile sits on a percentile plot: how many nines it has (0.9 is 1, 0.99 is 2),
/// so the tail gets as much room as the body.
fn nines(quantile: f64) -> f64 {
    -(1.0 - quantile.min(0.99999)).log10()
}

/// Latency distributions, one line per series: the latency (log scale) below which a share
/// of the calls answered, from the median out to the tail. `series` holds (quantile, us).
pub(crate) fn percentile_chart(series: &[(String, Vec<(f64, f64)>)], y_label: &str) -> String {
    let values = || {
        series
            .iter()
            .flat_map(|(_, points)| points.iter().map(|(_, us)| *us))
            .filter(|us| us.is_finite() && *us > 0.0)
    };
    let (lo, hi) = values().fold((f64::MAX, f64::MIN), |(lo, hi), us| {
        (lo.min(us), hi.max(us))
    });
    let (lo, hi) = if lo > hi { (1.0, 10.0) } else { (lo, hi) };
    let x = Axis {
        lo: nines(0.5),
        hi: nines(0.9999),
        log: false,
        ticks: [0.5, 0.9, 0.99, 0.999, 0.9999].map(nines).to_vec(),
    };
    let mut frame = Frame::with_tick_labels(
        x,
        Axis::fit(lo, hi, true),
        "percentile",
        y_label,
        |position| {
            let quantile = 1.0 - 10_f64.powf(-position);
            format!("{}%", trim(quantile * 100.0))
        },
    );
    for (index, (name, points)) in series.iter().enumerate() {
        let placed: Vec<(f64, f64)> = points
            .iter()
            .map(|(quantile, us)| (nines(*quantile), *us))
            .collect();
        frame.series(index, name, &placed, &|position, us| {
            let quantile = 1.0 - 10_f64.powf(-position);
            format!("p{} {}", trim(quantile * 100.0), tick_label(us))
        });
    }
    frame.finish()
}

/// Horizontal grouped bars: one group per label, one bar per series value, over an axis with
/// ticks and gridlines.
pub(crate) fn bar_chart(groups: &[(String, Vec<(String, f64)>)], unit: &str) -> String {
    const LABEL_WIDTH: f64 = 110.0;
    const CHART_WIDTH: f64 = 520.0;
    const BAR: f64 = 16.0;
    const AXIS: f64 = 24.0;
    let max = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|(_, value)| *value))
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let axis = Axis::fit(0.0, max, false);
    let bars_height = groups
        .iter()
        .map(|(_, bars)| bars.len() as f64 * BAR + 12.0)
        .sum::<f64>()
        + 5.0;
    let height = bars_height + AXIS;
    let width = LABEL_WIDTH + CHART_WIDTH + 140.0;
    let x = |value: f64| LABEL_WIDTH + axis.position(value) * CHART_WIDTH;
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">"#
    );
    for tick in &axis.ticks {
        let px = x(*tick);
        let _ = write!(
            svg,
            r##"<line x1="{px:.1}" y1="0" x2="{px:.1}" y2="{bars_height}" stroke="#e4e4e4"/><text x="{px:.1}" y="{ty}" text-anchor="middle">{label}</text>"##,
            ty = bars_height + 15.0,
            label = escape(format!("{} {unit}", tick_label(*tick)).trim_end()),
        );
    }
    let mut y = 5.0;
    for (label, bars) in groups {
        let _ = write!(
            svg,
            r#"<text x="0" y="{}">{}</text>"#,
            y + BAR * bars.len() as f64 / 2.0 + 4.0,
            escape(label)
        );
        for (index, (series, value)) in bars.iter().enumerate() {
            let bar = (x(*value) - LABEL_WIDTH).max(1.0);
            let _ = write!(
                svg,
                r#"<rect x="{LABEL_WIDTH}" y="{y}" width="{bar:.1}" height="{}" fill="{}"><title>{} {}: {value:.0} {unit}</title></rect><text x="{:.1}" y="{}">{} {value:.0} {unit}</text>"#,
                BAR - 2.0,
                COLORS[index % COLORS.len()],
                escape(label),
                escape(series),
                LABEL_WIDTH + bar + 4.0,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_axes_span_whole_decades_and_tick_each() {
        let axis = Axis::fit(130.0, 9_000.0, true);
        assert_eq!((axis.lo, axis.hi), (100.0, 10_000.0));
        assert_eq!(axis.ticks, vec![100.0, 1_000.0, 10_000.0]);
        assert!((axis.position(1_000.0) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn linear_axes_take_a_round_step() {
        let axis = Axis::fit(0.0, 23.0, false);
        assert_eq!((axis.lo, axis.hi), (0.0, 25.0));
        assert_eq!(axis.ticks, vec![0.0, 5.0, 10.0, 15.0, 20.0, 25.0]);
        let small = Axis::fit(0.0, 0.7, false);
        assert_eq!(small.ticks.len(), 5, "0 to 0.8 by 0.2: {small:?}");
        assert_eq!(tick_label(2_500.0), "2500");
        assert_eq!(tick_label(25_000.0), "25k");
        assert_eq!(tick_label(0.25), "0.25");
    }

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
        // Log-log over whole decades: the middle point sits in the middle of both axes.
        assert!(
            svg.contains(r#"points="70.0,260.0 345.0,140.0 620.0,20.0""#),
            "{svg}"
        );
        // Every decade is a tick with a gridline.
        for label in [">100<", ">1000<", ">10k<", ">10<"] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
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
    fn a_percentile_plot_gives_each_nine_the_same_room() {
        let svg = percentile_chart(
            &[(
                "async".to_owned(),
                vec![
                    (0.5, 100.0),
                    (0.9, 200.0),
                    (0.99, 1_000.0),
                    (0.999, 10_000.0),
                ],
            )],
            "us",
        );
        for label in [">50%<", ">90%<", ">99%<", ">99.9%<", ">99.99%<"] {
            assert!(svg.contains(label), "{label} in {svg}");
        }
        // 90% is one nine, 99% two: equally spaced.
        let step = (WIDTH - LEFT - RIGHT) / (nines(0.9999) - nines(0.5));
        let at = |quantile: f64| LEFT + (nines(quantile) - nines(0.5)) * step;
        assert!(((at(0.99) - at(0.9)) - (at(0.999) - at(0.99))).abs() < 1e-9);
        assert!(svg.contains(&format!("{:.1},", at(0.99))), "{svg}");
    }

    #[test]
    fn bars_scale_to_a_round_axis() {
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
            "the largest bar spans the axis"
        );
        assert!(svg.contains(r#"width="260.0""#));
        assert!(svg.contains(">100 us<"), "{svg}");
    }
}
