//! A trace drawn as a waterfall: each span a row, indented under its parent, placed by its
//! start and length against the trace's first moment; batches linked to the trace (the
//! consumers' applies of its events) follow, on the same clock. In the terminal as text, in
//! the reports as SVG.

use std::collections::{BTreeMap, HashSet};

use super::SpanRecord;

/// One row of a waterfall.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub depth: usize,
    pub span: SpanRecord,
    /// From a trace linked to the one drawn (a batch that applied its event).
    pub linked: bool,
}

/// The rows of `trace` in tree order (a span's children after it, earliest first), then
/// those of each linked batch. Spans whose parent was not collected start a tree of their own.
pub fn rows(trace: &[SpanRecord], linked: &[Vec<SpanRecord>]) -> Vec<Row> {
    let mut rows = tree(trace, false);
    for batch in linked {
        rows.extend(tree(batch, true));
    }
    rows
}

fn tree(spans: &[SpanRecord], linked: bool) -> Vec<Row> {
    let ids: HashSet<&str> = spans.iter().map(|span| span.span_id.as_str()).collect();
    let mut children: BTreeMap<&str, Vec<&SpanRecord>> = BTreeMap::new();
    let mut roots = Vec::new();
    for span in spans {
        if span.parent_span_id.is_empty() || !ids.contains(span.parent_span_id.as_str()) {
            roots.push(span);
        } else {
            children
                .entry(span.parent_span_id.as_str())
                .or_default()
                .push(span);
        }
    }
    roots.sort_by_key(|span| span.start_ns);
    for list in children.values_mut() {
        list.sort_by_key(|span| span.start_ns);
    }
    let mut rows = Vec::new();
    let mut stack: Vec<(usize, &SpanRecord)> =
        roots.into_iter().rev().map(|span| (0, span)).collect();
    while let Some((depth, span)) = stack.pop() {
        rows.push(Row {
            depth,
            span: span.clone(),
            linked,
        });
        if let Some(list) = children.get(span.span_id.as_str()) {
            stack.extend(list.iter().rev().map(|child| (depth + 1, *child)));
        }
    }
    rows
}

/// The earliest start among `rows`.
fn origin(rows: &[Row]) -> u64 {
    rows.iter().map(|row| row.span.start_ns).min().unwrap_or(0)
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The waterfall as text: offset and duration in milliseconds, the service, the span.
pub fn text(rows: &[Row]) -> String {
    let start = origin(rows);
    let mut out = format!(
        "{:>10}  {:>10}  {:<26} span\n",
        "start ms", "took ms", "service"
    );
    let mut in_linked = false;
    for row in rows {
        if row.linked && !in_linked {
            out.push_str("  linked (a batch that applied an event of this trace):\n");
            in_linked = true;
        }
        let status = if row.span.status == "error" {
            "  [error]"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:>10.3}  {:>10.3}  {:<26} {}{}{}\n",
            ms(row.span.start_ns.saturating_sub(start)),
            ms(row.span.duration_ns()),
            row.span.service,
            "  ".repeat(row.depth),
            row.span.name,
            status
        ));
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Colours by service, so one service's spans read alike across waterfalls.
fn colour(service: &str) -> &'static str {
    const PALETTE: [&str; 8] = [
        "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
    ];
    let hash = service.bytes().fold(0usize, |hash, byte| {
        hash.wrapping_mul(31).wrapping_add(usize::from(byte))
    });
    PALETTE[hash % PALETTE.len()]
}

/// A row's label: linked mark, indentation, service and span.
fn label(row: &Row) -> String {
    format!(
        "{}{}{} · {}",
        if row.linked { "↪ " } else { "" },
        "  ".repeat(row.depth),
        row.span.service,
        row.span.name
    )
}

/// The waterfall as an SVG figure: a labelled row per span, a time axis with gridlines.
pub fn svg(title: &str, rows: &[Row]) -> String {
    // Wide enough for the longest label at the reports' 12 px sans-serif (about 6.8 px a
    // character).
    let label_w = rows
        .iter()
        .map(|row| label(row).chars().count() as f64 * 6.8 + 16.0)
        .fold(220.0, f64::max);
    const CHART_W: f64 = 560.0;
    const ROW_H: f64 = 20.0;
    const TOP: f64 = 38.0;
    // Room for a duration written right of its bar, the last one included.
    const DURATION_W: f64 = 70.0;
    let start = origin(rows);
    let end = rows
        .iter()
        .map(|row| row.span.end_ns)
        .max()
        .unwrap_or(start);
    let span_ns = end.saturating_sub(start).max(1);
    let height = TOP + ROW_H * rows.len() as f64 + 30.0;
    let x = |ns: u64| label_w + CHART_W * (ns.saturating_sub(start)) as f64 / span_ns as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {w:.0} {height}\" width=\"{w:.0}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\
         <text x=\"4\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{title}</text>",
        w = label_w + CHART_W + DURATION_W,
        title = escape(title),
    );
    // Gridlines and ticks: five divisions of the trace's length.
    for tick in 0..=5 {
        let ns = span_ns * tick / 5;
        let tx = label_w + CHART_W * tick as f64 / 5.0;
        out.push_str(&format!(
            "<line x1=\"{tx:.1}\" y1=\"{TOP}\" x2=\"{tx:.1}\" y2=\"{y2:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"middle\" fill=\"#555\">{label:.2} ms</text>",
            y2 = height - 24.0,
            ty = height - 10.0,
            label = ms(ns),
        ));
    }
    for (index, row) in rows.iter().enumerate() {
        let y = TOP + ROW_H * index as f64;
        let x1 = x(row.span.start_ns);
        let width = (x(row.span.end_ns) - x1).max(1.5);
        let stroke = if row.span.status == "error" {
            " stroke=\"#c00\" stroke-width=\"2\""
        } else {
            ""
        };
        out.push_str(&format!(
            "<text x=\"4\" y=\"{ly:.1}\" xml:space=\"preserve\">{label}</text>\
             <rect x=\"{x1:.1}\" y=\"{ry:.1}\" width=\"{width:.1}\" height=\"{h:.1}\" fill=\"{fill}\" rx=\"2\"{stroke}>\
             <title>{tip}</title></rect>\
             <text x=\"{tx:.1}\" y=\"{ly:.1}\" fill=\"#333\">{took:.3} ms</text>",
            ly = y + 14.0,
            ry = y + 3.0,
            h = ROW_H - 6.0,
            label = escape(&label(row)),
            fill = colour(&row.span.service),
            tip = escape(&format!(
                "{} {}: {:.3} ms from {:.3} ms",
                row.span.service,
                row.span.name,
                ms(row.span.duration_ns()),
                ms(row.span.start_ns.saturating_sub(start))
            )),
            tx = x1 + width + 4.0,
            took = ms(row.span.duration_ns()),
        ));
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: &str, start: u64, end: u64) -> SpanRecord {
        SpanRecord {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.into(),
            name: format!("span {id}"),
            service: "svc".into(),
            kind: "internal".into(),
            start_ns: start,
            end_ns: end,
            status: "unset".into(),
            attributes: BTreeMap::new(),
            links: Vec::new(),
        }
    }

    #[test]
    fn children_follow_their_parent_in_start_order() {
        let spans = [
            span("c2", "root", 30, 40),
            span("root", "", 0, 100),
            span("c1", "root", 10, 20),
            span("g1", "c1", 12, 18),
        ];
        let rows = rows(&spans, &[vec![span("batch", "", 150, 160)]]);
        let order: Vec<(&str, usize, bool)> = rows
            .iter()
            .map(|row| (row.span.span_id.as_str(), row.depth, row.linked))
            .collect();
        assert_eq!(
            order,
            [
                ("root", 0, false),
                ("c1", 1, false),
                ("g1", 2, false),
                ("c2", 1, false),
                ("batch", 0, true)
            ]
        );
        let drawn = text(&rows);
        assert!(drawn.contains("linked"), "{drawn}");
        assert!(svg("a trace", &rows).starts_with("<svg"));
    }
}
