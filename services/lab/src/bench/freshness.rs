//! The projection's freshness under a steady write rate: a share of the orders timed from
//! PlaceOrder's answer to the first read of purchases-async that shows them, split into
//! stages by the bench's probe on the orders stream and, when the lab traces, by each order's
//! own spans.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use hdrhistogram::Histogram;
use tonic::transport::Channel;

use super::Settings;
use super::results::FreshnessResult;
use super::stages::{Sample, StageProbe};
use crate::measure::{micros, micros_histogram};
use crate::seed::Seeded;
use crate::topology::Endpoints;
use crate::writer::{AfterWrite, PacedWriter, WriteTarget, lock};

/// How long one order may take to appear before it counts as never seen.
const FRESHNESS_LIMIT: Duration = Duration::from_secs(10);
/// Orders timed per second at most: each holds a read open until its order arrives.
const FRESHNESS_SAMPLES_PER_SECOND: u32 = 25;

/// Places orders at `freshness_write_rate` in the microservices and times a share of them
/// from PlaceOrder's answer to their first appearance in purchases-async, each by one read
/// that waits for the order.
///
/// With `traces` (the data dir the lab's trace receiver keeps spans in), each timed order
/// starts a trace of its own, and its freshness is split again from its spans.
pub(super) async fn freshness(
    endpoints: &Endpoints,
    asynchronous: &PurchaseServiceClient<Channel>,
    seeded: &Seeded,
    settings: &Settings,
    traces: Option<&Path>,
) -> FreshnessResult {
    let rate = settings.freshness_write_rate;
    let every = u64::from((rate / FRESHNESS_SAMPLES_PER_SECOND).max(1));
    let spans_before = traces.map(crate::traces::spans_kept_so_far);
    // Without the probe the stages are left out; the lags are timed all the same.
    let probe = match StageProbe::start(endpoints).await {
        Ok(probe) => Some(probe),
        Err(error) => {
            eprintln!("Not splitting freshness into stages: {error:#}");
            None
        }
    };
    // Recorded lags, the samples behind them, and orders never seen.
    let timed = Arc::new(Mutex::new((micros_histogram(), Vec::new(), 0_u64)));
    let began = Instant::now();
    let after: AfterWrite = {
        let (reader, timed) = (asynchronous.clone(), Arc::clone(&timed));
        Arc::new(move |write| {
            let (reader, timed) = (reader.clone(), Arc::clone(&timed));
            Box::pin(async move {
                let Ok(order_id) = write.outcome else {
                    return;
                };
                if !write.index.is_multiple_of(every) {
                    return;
                }
                let user = write.user;
                let answered = Instant::now();
                let answered_unix_ns = unix_ns(std::time::SystemTime::now());
                // The read joins the write's trace: its server span says when
                // purchases-async let the answer go.
                let traceparent = write.trace_id.as_deref().map(crate::traces::traceparent_in);
                let seen = visible_after(&reader, &user, &order_id, answered, traceparent).await;
                let mut timed = lock(&timed);
                match seen {
                    Some(Visible { after, window }) => {
                        timed.0.saturating_record(micros(after));
                        timed.1.push(Sample {
                            order_id,
                            answered,
                            answered_unix_ns,
                            at: answered.duration_since(began),
                            visible: after,
                            window,
                            trace_id: write.trace_id,
                        });
                    }
                    None => timed.2 += 1,
                }
            })
        })
    };
    let mut target = WriteTarget::microservices(endpoints, seeded);
    if traces.is_some() {
        target = target.traced_every(every);
    }
    let writer = PacedWriter::start(vec![target], rate, Some(after));
    tokio::time::sleep(Duration::from_millis(settings.freshness_ms)).await;
    let (writes, writing) = writer.stop().await;
    // Every write has finished: what the hooks recorded is complete.
    let (histogram, samples, never_seen) = {
        let timed = lock(&timed);
        (timed.0.clone(), timed.1.clone(), timed.2)
    };
    let stages = probe.map(|probe| {
        let splits: Vec<_> = samples.iter().filter_map(|s| probe.split(s)).collect();
        super::stages::summarize(&splits, probe.jetstream_every_order())
    });
    let span_stages = match (traces, spans_before) {
        (Some(data_dir), Some(offset)) => {
            // A service sends its spans at most half a second after they end.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            crate::traces::read_spans_from(data_dir, offset)
                .inspect_err(|error| eprintln!("Not splitting freshness by spans: {error:#}"))
                .ok()
                .map(|spans| {
                    super::span_stages::summarize(&crate::traces::Spans::new(spans), &samples)
                })
        }
        _ => None,
    };
    FreshnessResult {
        p50_us: histogram.value_at_quantile(0.5),
        p90_us: histogram.value_at_quantile(0.9),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
        samples: histogram.len(),
        never_seen,
        write_rate_offered: rate,
        write_rate_achieved: writes.placed as f64 / writing.as_secs_f64().max(f64::EPSILON),
        write_errors: writes.failed,
        writes_skipped: writes.skipped,
        distribution: distribution(&histogram),
        stages,
        span_stages,
        jetstream_alone: None,
        wake_up: None,
        cpu_pct: BTreeMap::new(),
    }
}

/// When a timed order was first seen.
struct Visible {
    /// From the answer to the end of the read that showed it.
    after: Duration,
    /// From the start of that read to its end: the order became visible in there.
    window: Duration,
}

/// One read of `user`'s newest purchases that purchases-async holds until `order_id` is
/// among them (`wait_for_order_id`): its answer leaves with the update that brought the
/// order, so the measurement's resolution is that answer's trip back, not a poll's period.
/// Polling back to back, as this did before, could not see below one read (p50 2.2 ms at
/// 1,000 orders/s) and loaded the service it measured.
async fn visible_after(
    reader: &PurchaseServiceClient<Channel>,
    user: &str,
    order_id: &str,
    since: Instant,
    traceparent: Option<String>,
) -> Option<Visible> {
    let reading = Instant::now();
    let wait = FRESHNESS_LIMIT.saturating_sub(since.elapsed());
    let seen =
        crate::measure::shows_order(reader, user, order_id, Some(wait), traceparent.as_deref())
            .await;
    seen.then(|| Visible {
        after: since.elapsed(),
        window: reading.elapsed(),
    })
}

fn unix_ns(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

/// Counts per bucket, buckets doubling from 250 us, for the freshness chart.
fn distribution(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    let mut buckets = Vec::new();
    let mut lower = 0;
    let mut upper = 250;
    while lower <= histogram.max() && upper <= 60_000_000 {
        let count = histogram.count_between(lower, upper);
        buckets.push((upper, count));
        lower = upper + 1;
        upper *= 2;
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_buckets_double_and_cover_the_maximum() {
        let mut histogram = micros_histogram();
        for value in [100, 300, 700, 700, 5_000] {
            histogram.saturating_record(value);
        }
        let buckets = distribution(&histogram);
        assert_eq!(buckets[0], (250, 1));
        assert_eq!(buckets[1], (500, 1));
        assert_eq!(buckets[2], (1_000, 2));
        assert_eq!(buckets.iter().map(|(_, count)| count).sum::<u64>(), 5);
        assert!(buckets.last().is_some_and(|(upper, _)| *upper >= 5_000));
    }
}
