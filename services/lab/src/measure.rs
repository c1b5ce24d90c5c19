//! What the demo measures: latency per mode, freshness of the projection, and what each mode
//! does while a service it may depend on is down.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::seed::SeededUser;

/// The ways of answering that the demo compares, plus the floor they are read against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// grpc.health.v1 Check: one round trip, no data. The floor.
    Echo,
    Sync,
    /// purchases-sync calling its dependencies one after another.
    SyncSequential,
    /// purchases-bus: the owners asked on the bus (NATS request/reply).
    Bus,
    Async,
    Monolith,
}

impl Mode {
    pub const COMPARED: [Self; 4] = [Self::Sync, Self::Bus, Self::Async, Self::Monolith];

    pub fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Sync => "sync",
            Self::SyncSequential => "sync-sequential",
            Self::Bus => "bus",
            Self::Async => "async",
            Self::Monolith => "monolith",
        }
    }
}

/// A client per mode, with the user id each system knows a seeded user by.
#[derive(Debug, Clone)]
pub struct Clients {
    pub echo: HealthClient<Channel>,
    pub sync: PurchaseServiceClient<Channel>,
    pub sync_sequential: PurchaseServiceClient<Channel>,
    pub bus: PurchaseServiceClient<Channel>,
    pub asynchronous: PurchaseServiceClient<Channel>,
    pub monolith: PurchaseServiceClient<Channel>,
}

/// How one call ended: Ok, or the gRPC code's name.
pub type Outcome = Result<(), (tonic::Code, String)>;

impl Clients {
    /// One call in `mode` for `user`, with a deadline so a hung dependency shows as
    /// DEADLINE_EXCEEDED instead of stalling the demo.
    pub async fn call(&self, mode: Mode, user: &SeededUser, page_size: i32) -> Outcome {
        let purchases = |client: &PurchaseServiceClient<Channel>, user_id: &str| {
            let mut client = client.clone();
            let mut request = tonic::Request::new(pb::ListUserPurchasesRequest {
                user_id: user_id.to_owned(),
                page_size,
                page_token: String::new(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(2));
            async move { client.list_user_purchases(request).await.map(drop) }
        };
        let result = match mode {
            Mode::Echo => self
                .echo
                .clone()
                .check(HealthCheckRequest::default())
                .await
                .map(drop),
            Mode::Sync => purchases(&self.sync, &user.microservices).await,
            Mode::SyncSequential => purchases(&self.sync_sequential, &user.microservices).await,
            Mode::Bus => purchases(&self.bus, &user.microservices).await,
            Mode::Async => purchases(&self.asynchronous, &user.microservices).await,
            Mode::Monolith => purchases(&self.monolith, &user.monolith).await,
        };
        result.map_err(|status| (status.code(), status.message().to_owned()))
    }
}

/// Whether `order_id` is among `user`'s newest purchases in this answerer's view (a failed
/// read counts as not yet). With `wait`, the read asks the answerer to hold its answer until
/// it has the order (`wait_for_order_id`), for up to that long. With `traceparent`, the read
/// is part of that trace.
pub async fn shows_order(
    reader: &PurchaseServiceClient<Channel>,
    user: &str,
    order_id: &str,
    wait: Option<Duration>,
    traceparent: Option<&str>,
) -> bool {
    let mut request = tonic::Request::new(pb::ListUserPurchasesRequest {
        user_id: user.to_owned(),
        page_size: 20,
        page_token: String::new(),
        wait_for_order_id: if wait.is_some() {
            order_id.to_owned()
        } else {
            String::new()
        },
    });
    request.set_timeout(wait.unwrap_or(Duration::from_secs(2)));
    if let Some(value) = traceparent.and_then(|value| value.parse().ok()) {
        request.metadata_mut().insert("traceparent", value);
    }
    reader
        .clone()
        .list_user_purchases(request)
        .await
        .is_ok_and(|answer| {
            answer
                .into_inner()
                .purchases
                .iter()
                .any(|purchase| purchase.order_id == order_id)
        })
}

/// Every purchase of a user, following pages, with the user as the answer names them.
pub async fn all_purchases(
    client: &PurchaseServiceClient<Channel>,
    user_id: &str,
) -> Result<(Option<pb::User>, Vec<pb::Purchase>), tonic::Status> {
    let mut purchases = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .clone()
            .list_user_purchases(pb::ListUserPurchasesRequest {
                user_id: user_id.to_owned(),
                page_size: 1_000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        purchases.extend(page.purchases);
        if page.next_page_token.is_empty() {
            return Ok((page.user, purchases));
        }
        page_token = page.next_page_token;
    }
}

/// Latency percentiles and outcomes of a series of calls.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub requests: u64,
    pub ok: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// The distribution: (quantile, latency in us) at each of the report's quantiles.
    pub percentiles: Vec<(f64, u64)>,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// One error message per code, as the caller saw it.
    pub example_errors: BTreeMap<String, String>,
}

/// Microseconds from 1 us to 60 s at 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

/// A duration in whole microseconds, at least 1 (the histograms' lowest value).
pub fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Failed calls counted by gRPC code (or the load generator's own reason), with the first
/// message seen for each.
#[derive(Debug, Default)]
pub struct ErrorTally {
    pub counts: BTreeMap<String, u64>,
    pub examples: BTreeMap<String, String>,
}

impl ErrorTally {
    pub fn add(&mut self, code: &str, message: &str) {
        *self.counts.entry(code.to_owned()).or_default() += 1;
        self.examples
            .entry(code.to_owned())
            .or_insert_with(|| message.to_owned());
    }

    pub fn absorb(&mut self, other: &ErrorTally) {
        for (code, count) in &other.counts {
            *self.counts.entry(code.clone()).or_default() += count;
        }
        for (code, message) in &other.examples {
            self.examples
                .entry(code.clone())
                .or_insert_with(|| message.clone());
        }
    }
}

/// Records outcomes and latencies.
#[derive(Debug)]
pub struct Recorder {
    // Every outcome's latency: the demo calls one at a time, so a failure's time is as telling
    // as a success's.
    histogram: Histogram<u64>,
    requests: u64,
    errors: ErrorTally,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            histogram: micros_histogram(),
            requests: 0,
            errors: ErrorTally::default(),
        }
    }
}

impl Recorder {
    pub fn record(&mut self, elapsed: Duration, outcome: &Outcome) {
        self.requests += 1;
        self.histogram.saturating_record(micros(elapsed));
        if let Err((code, message)) = outcome {
            self.errors.add(&format!("{code:?}"), message);
        }
    }

    pub fn finish(&self) -> Latency {
        let failed: u64 = self.errors.counts.values().sum();
        Latency {
            requests: self.requests,
            ok: self.requests - failed,
            p50_us: self.histogram.value_at_quantile(0.5),
            p90_us: self.histogram.value_at_quantile(0.9),
            p99_us: self.histogram.value_at_quantile(0.99),
            max_us: self.histogram.max(),
            percentiles: crate::report::QUANTILES
                .iter()
                .map(|quantile| (*quantile, self.histogram.value_at_quantile(*quantile)))
                .collect(),
            errors: self.errors.counts.clone(),
            example_errors: self.errors.examples.clone(),
        }
    }
}

/// `requests` calls one after another (one in flight: latency, not throughput), cycling
/// through the users, after a short warm-up.
pub async fn latency(
    clients: &Clients,
    mode: Mode,
    users: &[SeededUser],
    requests: u32,
) -> Latency {
    let warm_up = (requests / 20).max(10);
    for index in 0..warm_up {
        let _ = clients
            .call(mode, &users[index as usize % users.len()], 50)
            .await;
    }
    let mut recorder = Recorder::default();
    for index in 0..requests {
        let user = &users[index as usize % users.len()];
        let started = Instant::now();
        let outcome = clients.call(mode, user, 50).await;
        recorder.record(started.elapsed(), &outcome);
    }
    recorder.finish()
}

/// Time from an order's PlaceOrder acknowledgement to its first appearance in
/// purchases-async's answer.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    pub samples: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Orders that had not appeared when the wait ran out.
    pub never_seen: u64,
    /// The traces the timed orders started, one each (the report draws them).
    #[serde(skip)]
    pub trace_ids: Vec<String>,
}

/// How long the demo waits for one order to reach the projection before counting it lost.
const FRESHNESS_LIMIT: Duration = Duration::from_secs(10);

pub async fn freshness(
    orders: OrderServiceClient<Channel>,
    asynchronous: &PurchaseServiceClient<Channel>,
    users: &[SeededUser],
    product_id: &str,
    samples: u32,
) -> anyhow::Result<Freshness> {
    let mut histogram = micros_histogram();
    let mut never_seen = 0;
    let mut trace_ids = Vec::new();
    for index in 0..samples {
        let user = &users[index as usize % users.len()];
        // Each timed order is a trace of its own, whatever the services' sampling ratio.
        let (trace_id, traceparent) = crate::traces::new_trace();
        let order_id = crate::seed::place(
            orders.clone(),
            user.microservices.clone(),
            product_id.to_owned(),
            1,
            Some(&traceparent),
        )
        .await?;
        trace_ids.push(trace_id);
        let placed = Instant::now();
        loop {
            // The newest purchase comes first, so a page of one shows it once it is there.
            let newest = asynchronous
                .clone()
                .list_user_purchases(pb::ListUserPurchasesRequest {
                    user_id: user.microservices.clone(),
                    page_size: 1,
                    page_token: String::new(),
                    ..Default::default()
                })
                .await
                .ok()
                .and_then(|answer| answer.into_inner().purchases.into_iter().next());
            if newest.is_some_and(|purchase| purchase.order_id == order_id) {
                histogram.saturating_record(micros(placed.elapsed()));
                break;
            }
            if placed.elapsed() > FRESHNESS_LIMIT {
                never_seen += 1;
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    Ok(Freshness {
        samples: histogram.len(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
        never_seen,
        trace_ids,
    })
}

/// `calls` per mode while something is broken.
pub async fn during_fault(
    clients: &Clients,
    users: &[SeededUser],
    calls: u32,
) -> BTreeMap<Mode, Latency> {
    let mut outcomes = BTreeMap::new();
    for mode in Mode::COMPARED {
        let mut recorder = Recorder::default();
        for index in 0..calls {
            let started = Instant::now();
            let outcome = clients
                .call(mode, &users[index as usize % users.len()], 50)
                .await;
            recorder.record(started.elapsed(), &outcome);
        }
        outcomes.insert(mode, recorder.finish());
    }
    outcomes
}

/// Where a projection stands, per stream, as its answers report it.
pub async fn positions(
    client: &PurchaseServiceClient<Channel>,
    user: &str,
) -> Option<BTreeMap<String, pb::StreamPosition>> {
    let answer = client
        .clone()
        .list_user_purchases(pb::ListUserPurchasesRequest {
            user_id: user.to_owned(),
            page_size: 1,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .ok()?
        .into_inner();
    Some(
        answer
            .freshness?
            .streams
            .into_iter()
            .map(|stream| (stream.stream.clone(), stream))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorder_counts_errors_by_code_and_keeps_one_message() {
        let mut recorder = Recorder::default();
        recorder.record(Duration::from_micros(100), &Ok(()));
        for message in ["users down", "users still down"] {
            recorder.record(
                Duration::from_micros(300),
                &Err((tonic::Code::Unavailable, message.to_owned())),
            );
        }
        let latency = recorder.finish();
        assert_eq!((latency.requests, latency.ok), (3, 1));
        assert_eq!(latency.errors.get("Unavailable"), Some(&2));
        assert_eq!(
            latency
                .example_errors
                .get("Unavailable")
                .map(String::as_str),
            Some("users down")
        );
        assert!(
            latency.p50_us >= 299 && latency.p50_us <= 301,
            "{}",
            latency.p50_us
        );
    }
}
