//! Metrics in the Prometheus text format: one recorder per process (the `metrics` crate's
//! global one), installed the first time a server asks for an endpoint, and served at
//! `/metrics` on `--metrics-listen`. The names follow Prometheus's conventions (base units,
//! `_total` counters) and are listed here, so a dashboard and the code agree.
//!
//! Only the metrics a process records appear in its exposition: purchases-sync's calls only
//! in purchases-sync, the consumers' only where consumers run.

use std::net::SocketAddr;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests a server answered, by `rpc_method` and `grpc_code` (counter).
pub const SERVER_REQUESTS: &str = "rpc_server_requests_total";
/// Requests a server received, by `rpc_method`, answered or not: a call its caller cancelled
/// (a hedge's loser) counts here and never in the answered ones (counter).
pub const SERVER_RECEIVED: &str = "rpc_server_received_total";
/// Time from a request's arrival to its answer, by `rpc_method` (histogram, seconds).
pub const SERVER_DURATION: &str = "rpc_server_duration_seconds";
/// Requests shed before they ran, by `reason` (`requests`, `queue_delay`) (counter).
pub const SERVER_SHED: &str = "rpc_server_shed_total";
/// Calls purchases-sync made, by `dependency` and `outcome` (counter).
pub const CLIENT_CALLS: &str = "rpc_client_calls_total";
/// How long those calls took, by `dependency` (histogram, seconds).
pub const CLIENT_DURATION: &str = "rpc_client_duration_seconds";
/// Calls sent a second time because the first had not answered in time, by `dependency` and
/// which attempt answered first (`won`: `first`, `second`) (counter).
pub const CLIENT_HEDGES: &str = "rpc_client_hedges_total";
/// Outbox rows not yet acknowledged by JetStream (gauge).
pub const OUTBOX_PENDING: &str = "outbox_pending_rows";
/// Age of the oldest of them (gauge, seconds; 0 when none).
pub const OUTBOX_OLDEST_PENDING_AGE: &str = "outbox_oldest_pending_age_seconds";
/// Events the relay published and JetStream acknowledged (counter).
pub const RELAY_PUBLISHED: &str = "relay_published_total";
/// Publishes that failed (counter).
pub const RELAY_FAILURES: &str = "relay_publish_failures_total";
/// Publishes awaiting their acknowledgement (gauge).
pub const RELAY_IN_FLIGHT: &str = "relay_in_flight";
/// The last sequence of a consumer's stream, as of its last batch, by `consumer` and
/// `stream` (gauge); likewise the rest of the consumer's.
pub const CONSUMER_STREAM_SEQUENCE: &str = "consumer_stream_last_sequence";
/// The last stream sequence the consumer committed (gauge).
pub const CONSUMER_COMMITTED_SEQUENCE: &str = "consumer_committed_sequence";
/// Events in the stream past the committed one (gauge): the lag in events.
pub const CONSUMER_LAG_EVENTS: &str = "consumer_lag_events";
/// How old the newest applied event was when applied, while events wait (0 when none wait)
/// (gauge, seconds): the lag in time.
pub const CONSUMER_LAG_SECONDS: &str = "consumer_lag_seconds";
/// Events applied, skipped as stale, dead-lettered, and missed (left the stream unread)
/// (counters).
pub const CONSUMER_APPLIED: &str = "consumer_events_applied_total";
pub const CONSUMER_SKIPPED: &str = "consumer_events_skipped_total";
pub const CONSUMER_DEAD_LETTERED: &str = "consumer_events_dead_lettered_total";
pub const CONSUMER_MISSED: &str = "consumer_events_missed_total";
/// From an event's commit at its producer to its apply here, by `stream` (histogram,
/// seconds): the projection's freshness.
pub const PROJECTION_FRESHNESS: &str = "projection_freshness_seconds";

/// Latency buckets, in seconds: they resolve 100 µs at the bottom, where this system's
/// answers are, and reach 10 s, the longest a request may run.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
    5.0, 10.0,
];

/// Freshness buckets, in seconds: from a millisecond (an event applied at once) to minutes
/// (a projection catching up after an outage).
const FRESHNESS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 60.0, 300.0,
];

/// The process's recorder, installed on first use. None when another recorder was
/// installed first (only in tests that install their own).
pub fn handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full(PROJECTION_FRESHNESS.into()),
                        &FRESHNESS_BUCKETS,
                    )
                });
            match builder.map(PrometheusBuilder::install_recorder) {
                Ok(Ok(handle)) => {
                    describe();
                    Some(handle)
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, "no metrics: another recorder is installed");
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, "no metrics: bad histogram buckets");
                    None
                }
            }
        })
        .clone()
}

/// The help text of every metric, as the exposition shows it (promtool wants one for each).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SERVER_REQUESTS,
        "Requests the server answered, by method and gRPC status code."
    );
    describe_counter!(
        SERVER_RECEIVED,
        "Requests the server received, by method, whether answered or cancelled by their caller."
    );
    describe_histogram!(
        SERVER_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its answer, by method."
    );
    describe_counter!(
        SERVER_SHED,
        "Requests shed before they ran, by reason (requests in hand, queue delay)."
    );
    describe_counter!(
        CLIENT_CALLS,
        "Calls to a dependency, by dependency and outcome."
    );
    describe_histogram!(
        CLIENT_DURATION,
        Unit::Seconds,
        "How long calls to a dependency took, by dependency."
    );
    describe_counter!(
        CLIENT_HEDGES,
        "Calls sent again because the first attempt had not answered in time, by dependency and the attempt that answered first."
    );
    describe_gauge!(
        OUTBOX_PENDING,
        "Outbox rows not yet acknowledged by JetStream."
    );
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest outbox row not yet acknowledged (0 when none)."
    );
    describe_counter!(
        RELAY_PUBLISHED,
        "Events the relay published and JetStream acknowledged."
    );
    describe_counter!(RELAY_FAILURES, "Publishes that failed.");
    describe_gauge!(
        RELAY_IN_FLIGHT,
        "Publishes awaiting JetStream's acknowledgement."
    );
    describe_gauge!(
        CONSUMER_STREAM_SEQUENCE,
        "The last sequence of the consumer's stream, as of its last batch."
    );
    describe_gauge!(
        CONSUMER_COMMITTED_SEQUENCE,
        "The last stream sequence the consumer committed."
    );
    describe_gauge!(
        CONSUMER_LAG_EVENTS,
        "Events in the stream past the committed one."
    );
    describe_gauge!(
        CONSUMER_LAG_SECONDS,
        Unit::Seconds,
        "While events wait, how old the newest applied one was when applied (0 when none wait)."
    );
    describe_counter!(CONSUMER_APPLIED, "Events applied.");
    describe_counter!(
        CONSUMER_SKIPPED,
        "Events skipped as already applied or older than what was."
    );
    describe_counter!(CONSUMER_DEAD_LETTERED, "Events set aside as dead letters.");
    describe_counter!(
        CONSUMER_MISSED,
        "Events that left the stream before the consumer read them."
    );
    describe_histogram!(
        PROJECTION_FRESHNESS,
        Unit::Seconds,
        "From an event's commit at its producer to its apply here, by stream."
    );
}

/// A bound `/metrics` endpoint, ready to serve.
#[derive(Debug)]
pub struct MetricsEndpoint {
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
}

impl MetricsEndpoint {
    /// Binds `addr` (port 0 allowed), installing the recorder if none is yet. None when no
    /// recorder could be installed.
    pub fn bind(addr: SocketAddr) -> std::io::Result<Option<Self>> {
        let Some(handle) = handle() else {
            return Ok(None);
        };
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(Some(Self {
            listener: tokio::net::TcpListener::from_std(listener)?,
            handle,
        }))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `/metrics` until `stop` completes.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = self.handle;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let handle = handle.clone();
                async move {
                    // Upkeep drains histograms' buckets that grow between scrapes.
                    handle.run_upkeep();
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        handle.render(),
                    )
                }
            }),
        );
        if let Err(error) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%error, "the metrics endpoint failed");
        }
    }
}
