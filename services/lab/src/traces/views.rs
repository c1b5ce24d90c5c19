//! The traces a report shows: for each way of answering, a typical request (the median by
//! duration) and the slowest, and for the event path, a typical order and the slowest on
//! their way from PlaceOrder to the projection, each as a waterfall.

use serde::Serialize;

use super::waterfall::{self, Row};
use super::{SpanRecord, Spans};

const PLACE_ORDER: &str = "orders.v1.OrderService/PlaceOrder";

/// One trace as a report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TraceView {
    /// What it is: "sync, typical".
    pub what: String,
    pub trace_id: String,
    /// The request's time, or for an order the time from PlaceOrder's arrival to the end of
    /// its apply in purchases-async.
    pub took_ms: f64,
    /// The waterfall, drawn (not in the JSON).
    #[serde(skip)]
    pub svg: String,
}

/// Traces whose root is `name` served by `service`, each with its duration.
fn requests(spans: &Spans, service: &str, name: &str) -> Vec<(SpanRecord, u64)> {
    let mut roots: Vec<(SpanRecord, u64)> = spans
        .roots(service, name)
        .into_iter()
        .map(|root| {
            let took = root.duration_ns();
            (root, took)
        })
        .collect();
    roots.sort_by_key(|(_, took)| *took);
    roots
}

/// The median and the last (slowest) of a list sorted by duration.
fn typical_and_slowest<T: Clone>(sorted: &[T]) -> Vec<(&'static str, T)> {
    match (sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(typical), Some(slowest)) => {
            vec![("typical", typical.clone()), ("slowest", slowest.clone())]
        }
        _ => Vec::new(),
    }
}

fn view(what: String, trace_id: &str, took_ns: u64, rows: &[Row]) -> TraceView {
    TraceView {
        svg: waterfall::svg(&format!("{what} ({:.2} ms)", took_ns as f64 / 1e6), rows),
        what,
        trace_id: trace_id.to_owned(),
        took_ms: took_ns as f64 / 1e6,
    }
}

/// An order's path: its PlaceOrder trace and the purchases-async batch that applied it, and
/// how long from the PlaceOrder's arrival to the end of that apply. Only the orders of
/// `timed` when there are any: the seeding's bulk writes queue behind each other and would
/// not be typical of an order placed alone.
fn order_paths(spans: &Spans, timed: &[String]) -> Vec<(String, u64, Vec<Row>)> {
    // A timed order's PlaceOrder continues the lab's own trace, so it is not a root.
    let writes: Vec<SpanRecord> = if timed.is_empty() {
        spans.roots("orders", PLACE_ORDER)
    } else {
        timed
            .iter()
            .filter_map(|trace_id| {
                spans
                    .trace(trace_id)
                    .into_iter()
                    .find(|span| span.service == "orders" && span.name == PLACE_ORDER)
            })
            .collect()
    };
    let mut paths: Vec<(String, u64, Vec<Row>)> = writes
        .into_iter()
        .filter_map(|root| {
            let trace = spans.trace(&root.trace_id);
            let linked: Vec<Vec<SpanRecord>> = spans
                .linked_to(&root.trace_id)
                .into_iter()
                .filter(|batch| {
                    batch.iter().any(|span| {
                        span.service == "purchases-async" && span.name == "process ORDERS"
                    })
                })
                .collect();
            let applied_end = linked
                .iter()
                .flatten()
                .filter(|span| span.service == "purchases-async")
                .map(|span| span.end_ns)
                .max()?;
            let took = applied_end.saturating_sub(root.start_ns);
            Some((
                root.trace_id.clone(),
                took,
                waterfall::rows(&trace, &linked),
            ))
        })
        .collect();
    paths.sort_by_key(|(_, took, _)| *took);
    paths
}

/// The demo's traces: sync, bus, async and monolith requests, and orders to the projection
/// (the `timed` ones, when given).
pub fn demo_views(spans: &Spans, timed: &[String]) -> Vec<TraceView> {
    let mut views = Vec::new();
    for (mode, service) in [
        ("sync", "purchases-sync"),
        ("bus", "purchases-bus"),
        ("async", "purchases-async"),
        ("monolith", "monolith"),
    ] {
        let sorted = requests(
            spans,
            service,
            "purchases.v1.PurchaseService/ListUserPurchases",
        );
        for (which, (root, took)) in typical_and_slowest(&sorted) {
            // The async and monolith answers are a single span each: their slowest says
            // little more than their typical, so only the fan-outs show both.
            if !matches!(mode, "sync" | "bus") && which == "slowest" {
                continue;
            }
            let rows = waterfall::rows(&spans.trace(&root.trace_id), &[]);
            views.push(view(
                format!("{mode} ListUserPurchases, {which}"),
                &root.trace_id,
                took,
                &rows,
            ));
        }
    }
    for (which, (trace_id, took, rows)) in typical_and_slowest(&order_paths(spans, timed)) {
        views.push(view(
            format!("an order from PlaceOrder to purchases-async, {which}"),
            &trace_id,
            took,
            &rows,
        ));
    }
    views
}
