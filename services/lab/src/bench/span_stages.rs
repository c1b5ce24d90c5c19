//! An order's freshness read from its trace: the write's server span, the relay's publish,
//! purchases-async's apply (the batch span linked to the publish) and its span of the bench's
//! read that waited for the order (the read carries the write's trace). The bench times the
//! same orders with its probe; the spans say where the time went from inside the services,
//! and must agree with the probe: each apply ends inside the read that waited for its order.

use serde::Serialize;

use super::stages::{Sample, StageSummary};
use crate::measure::micros_histogram;
use crate::traces::{SpanRecord, Spans};

/// The orders service's server span of a write.
const PLACE_ORDER: &str = "orders.v1.OrderService/PlaceOrder";
/// purchases-async's apply of a batch from the orders stream.
const APPLY: &str = "process ORDERS";
/// The bench's read that waited for the order, which joins the write's trace.
const READ: &str = "purchases.v1.PurchaseService/ListUserPurchases";
/// Clocks of processes on one machine agree to well under this; a span's end and the
/// bench's reading of the same instant may differ by it.
const CLOCK_TOLERANCE_NS: u64 = 1_000_000;

/// One order's way to the projection, by its spans (ns since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hops {
    written: u64,
    published: u64,
    applying: u64,
    applied: u64,
    /// When purchases-async's span of the waiting read ended (its answer handed to HTTP/2),
    /// when that span was kept.
    read_answered: Option<u64>,
}

/// The hops of the write traced as `trace_id`, when every one was kept.
fn hops(spans: &Spans, trace_id: &str) -> Option<Hops> {
    let trace = spans.trace(trace_id);
    // The attempt that succeeded (seeding retries while orders' replica catches up).
    let written = trace
        .iter()
        .filter(|span| {
            span.service == "orders"
                && span.name == PLACE_ORDER
                && span.attribute("rpc.grpc.status_code") == Some("0")
        })
        .map(|span| span.end_ns)
        .max()?;
    let publishes: Vec<&SpanRecord> = trace
        .iter()
        .filter(|span| span.kind == "producer")
        .collect();
    // JetStream keeps the first message of an event id, so the apply links to whichever
    // publish got it there; that is the publish that counts.
    let (publish, apply) = spans
        .linked_to(trace_id)
        .into_iter()
        .flatten()
        .filter(|span| span.service == "purchases-async" && span.name == APPLY)
        .find_map(|apply| {
            let publish = publishes.iter().find(|publish| {
                apply
                    .links
                    .iter()
                    .any(|link| link.trace_id == trace_id && link.span_id == publish.span_id)
            })?;
            Some(((*publish).clone(), apply))
        })?;
    let read_answered = trace
        .iter()
        .filter(|span| {
            span.service == "purchases-async" && span.name == READ && span.kind == "server"
        })
        .map(|span| span.end_ns)
        .max();
    Some(Hops {
        written,
        published: publish.start_ns,
        applying: apply.start_ns,
        applied: apply.end_ns,
        read_answered,
    })
}

/// One timed order split by its spans, in us.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SpanSplit {
    total: u64,
    relay: u64,
    jetstream: u64,
    projection: u64,
    /// The apply's end to the bench holding the answer of the read that waited for the order:
    /// waking that read, and the answer's trip back.
    answer: u64,
    /// The part of `answer` inside purchases-async, to its span of the read ending: waking
    /// the read, the page, handing it to HTTP/2. The rest is the way back to the bench.
    served: Option<u64>,
    /// Whether the apply ended inside the probe's window for the same order.
    agrees: bool,
}

fn us(ns: u64) -> u64 {
    ns / 1_000
}

/// Charges each stage from the later of its two ends, as the probe does: a publish before
/// the answer costs the relay nothing.
fn split(hops: &Hops, sample: &Sample) -> SpanSplit {
    let Hops {
        written,
        published,
        applying,
        applied,
        read_answered,
    } = *hops;
    let visible = sample
        .answered_unix_ns
        .saturating_add(u64::try_from(sample.visible.as_nanos()).unwrap_or(u64::MAX));
    let window = u64::try_from(sample.window.as_nanos()).unwrap_or(u64::MAX);
    let opened = visible.saturating_sub(window);
    SpanSplit {
        total: us(applied.saturating_sub(written)),
        relay: us(published.saturating_sub(written)),
        jetstream: us(applying.saturating_sub(published.max(written))),
        projection: us(applied.saturating_sub(applying.max(written))),
        answer: us(visible.saturating_sub(applied)),
        served: read_answered.map(|end| us(end.saturating_sub(applied))),
        agrees: applied + CLOCK_TOLERANCE_NS >= opened && applied <= visible + CLOCK_TOLERANCE_NS,
    }
}

/// Freshness split by the spans of the timed orders, beside the probe's split.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpanStages {
    /// Timed orders whose write, publish and apply were all kept.
    pub samples: u64,
    /// The write's server span ending to the apply ending: freshness seen from inside.
    pub total: StageSummary,
    /// The write's end to the relay's publish starting (0 when it started first).
    pub relay: StageSummary,
    /// The publish starting to purchases-async's apply starting: JetStream storing and
    /// delivering, and the consumer's pull.
    pub jetstream: StageSummary,
    /// The apply: decoding, the transaction, the view's refresh.
    pub projection: StageSummary,
    /// The apply's end to the waiting read's answer reaching the bench.
    pub answer: StageSummary,
    /// Of that, the apply's end to purchases-async's span of the read ending (waking the
    /// read, the page, handing it to HTTP/2), over the orders whose read span was kept...
    pub served: StageSummary,
    /// ...and from there to the bench holding the answer: the trip back and the bench's own
    /// wake-up.
    pub returned: StageSummary,
    /// The probe's window: how long the read that returned each order was open (it waited
    /// for the order, so the order became visible within it).
    pub probe_resolution: StageSummary,
    /// Orders whose apply ended inside the probe's window (within 1 ms of clock skew).
    pub agreeing: u64,
}

/// Splits every traced sample by its spans.
pub fn summarize(spans: &Spans, samples: &[Sample]) -> SpanStages {
    let mut histograms: [_; 8] = std::array::from_fn(|_| micros_histogram());
    let mut agreeing = 0;
    for sample in samples {
        let Some(hops) = sample
            .trace_id
            .as_deref()
            .and_then(|trace_id| hops(spans, trace_id))
        else {
            continue;
        };
        let split = split(&hops, sample);
        agreeing += u64::from(split.agrees);
        let window = u64::try_from(sample.window.as_micros()).unwrap_or(u64::MAX);
        let returned = split
            .served
            .map(|served| split.answer.saturating_sub(served));
        for (histogram, value) in histograms.iter_mut().zip([
            Some(split.total),
            Some(split.relay),
            Some(split.jetstream),
            Some(split.projection),
            Some(split.answer),
            split.served,
            returned,
            Some(window),
        ]) {
            if let Some(value) = value {
                histogram.saturating_record(value);
            }
        }
    }
    let [
        total,
        relay,
        jetstream,
        projection,
        answer,
        served,
        returned,
        resolution,
    ] = histograms;
    SpanStages {
        samples: total.len(),
        total: StageSummary::of(&total),
        relay: StageSummary::of(&relay),
        jetstream: StageSummary::of(&jetstream),
        projection: StageSummary::of(&projection),
        answer: StageSummary::of(&answer),
        served: StageSummary::of(&served),
        returned: StageSummary::of(&returned),
        probe_resolution: StageSummary::of(&resolution),
        agreeing,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::traces::LinkRecord;

    fn span(
        trace: &str,
        id: &str,
        service: &str,
        name: &str,
        kind: &str,
        at: (u64, u64),
    ) -> SpanRecord {
        SpanRecord {
            trace_id: trace.into(),
            span_id: id.into(),
            parent_span_id: String::new(),
            name: name.into(),
            service: service.into(),
            kind: kind.into(),
            start_ns: at.0,
            end_ns: at.1,
            status: "unset".into(),
            attributes: BTreeMap::new(),
            links: Vec::new(),
        }
    }

    fn placed(trace: &str, id: &str, code: &str, at: (u64, u64)) -> SpanRecord {
        let mut span = span(trace, id, "orders", PLACE_ORDER, "server", at);
        span.attributes
            .insert("rpc.grpc.status_code".into(), code.into());
        span
    }

    fn apply(trace: &str, links: &[(&str, &str)], at: (u64, u64)) -> SpanRecord {
        let mut span = span(trace, "a1", "purchases-async", APPLY, "consumer", at);
        span.links = links
            .iter()
            .map(|(trace, id)| LinkRecord {
                trace_id: (*trace).into(),
                span_id: (*id).into(),
                attributes: BTreeMap::new(),
            })
            .collect();
        span
    }

    fn sample(answered_unix_ns: u64, visible_ms: u64, window_ms: u64) -> Sample {
        Sample {
            order_id: "o".into(),
            answered: Instant::now(),
            answered_unix_ns,
            at: Duration::ZERO,
            visible: Duration::from_millis(visible_ms),
            window: Duration::from_millis(window_ms),
            trace_id: Some("t".into()),
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn the_successful_write_and_the_publish_the_apply_links_to_are_the_hops() {
        let spans = Spans::new(vec![
            // A first attempt refused while the replica caught up, then the write.
            placed("t", "s0", "9", (0, MS)),
            placed("t", "s1", "0", (2 * MS, 3 * MS)),
            // A publish that failed and its retry; JetStream kept the retry's message.
            span(
                "t",
                "p1",
                "orders",
                "publish orders.order.OrderPlaced",
                "producer",
                (4 * MS, 5 * MS),
            ),
            span(
                "t",
                "p2",
                "orders",
                "publish orders.order.OrderPlaced",
                "producer",
                (6 * MS, 7 * MS),
            ),
            apply("b", &[("x", "y"), ("t", "p2")], (9 * MS, 12 * MS)),
            // The bench's read, waiting from before the apply, answered half a ms after it.
            span(
                "t",
                "r1",
                "purchases-async",
                READ,
                "server",
                (8 * MS, 12 * MS + MS / 2),
            ),
        ]);
        let hops = hops(&spans, "t").expect("every hop was kept");
        assert_eq!(
            hops,
            Hops {
                written: 3 * MS,
                published: 6 * MS,
                applying: 9 * MS,
                applied: 12 * MS,
                read_answered: Some(12 * MS + MS / 2),
            }
        );
        // The apply ended 9 ms after the write; the bench saw it answered at 3.2 ms and
        // visible 10 ms later, in a window of 2 ms: the spans agree with the probe.
        let split = split(&hops, &sample(3 * MS + MS / 5, 10, 2));
        assert_eq!(
            split,
            SpanSplit {
                total: 9_000,
                relay: 3_000,
                jetstream: 3_000,
                projection: 3_000,
                answer: 1_200,
                served: Some(500),
                agrees: true,
            }
        );
        // The answer's way splits at the read's span: 500 us inside, 700 on the way back.
        let stages = summarize(&spans, &[sample(3 * MS + MS / 5, 10, 2)]);
        assert_eq!(
            (
                stages.samples,
                stages.answer.p50_us,
                stages.served.p50_us,
                stages.returned.p50_us
            ),
            (1, 1_200, 500, 700)
        );
        // A probe that claims it saw the order 5 ms before the apply ended disagrees.
        assert!(!split_agrees(&hops, &sample(3 * MS, 4, 1)));
        // Nothing links to a trace whose apply was not kept.
        let unlinked = Spans::new(vec![placed("t", "s1", "0", (0, MS))]);
        assert_eq!(super::hops(&unlinked, "t"), None);
    }

    fn split_agrees(hops: &Hops, sample: &Sample) -> bool {
        split(hops, sample).agrees
    }

    #[test]
    fn a_publish_before_the_answer_costs_the_relay_nothing() {
        let hops = Hops {
            written: 10 * MS,
            published: 9 * MS,
            applying: 12 * MS,
            applied: 13 * MS,
            read_answered: None,
        };
        let split = split(&hops, &sample(10 * MS, 3, 1));
        assert_eq!(
            (
                split.total,
                split.relay,
                split.jetstream,
                split.projection,
                split.answer
            ),
            (3_000, 0, 2_000, 1_000, 0)
        );
        assert_eq!(split.served, None, "the read's span was not kept");
        assert!(split.agrees);
    }
}
