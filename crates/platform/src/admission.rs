//! Admission control ahead of the concurrency limit: a server sheds new requests while its
//! runtime is overloaded, judged by what the limit cannot see.
//!
//! A concurrency limit counts a request from its first poll. hyper gives every HTTP/2 stream a
//! task of its own the moment it is accepted, and when the workers are saturated that task waits
//! in the run queue before anything of ours sees it. A handler that answers without yielding (a
//! synchronous SQLite read) holds its permit for microseconds, so the limit never fills while
//! thousands of requests queue in front of it, each charged the whole queue's wait. Two signals
//! see that queue:
//! - the runtime's live tasks, less the server's open connections (each is a task of its own,
//!   but no request: counting them let a few hundred idle sockets shed every call): a bound on
//!   requests accepted and not finished, waiting or not (memory and work in hand);
//! - when asked for, the runtime's scheduling delay, sampled by a task that sleeps and records
//!   how late it woke: a bound on how long an admitted request waits for a worker thread
//!   (latency). Only a delay that persists counts, as in CoDel, so a single stall (a worker
//!   blocked on a slow disk for 100 ms) lets the queue it built drain instead of failing it.
//!   It is off by default: on a machine whose cores are shared, the delay also rises when the
//!   machine rather than the server is busy, and it then sheds requests the server could serve.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::runtime::RuntimeMetrics;

use crate::connections::Connections;
use tokio_util::task::AbortOnDropHandle;

/// How often the scheduling delay is sampled: a wake-up costs a few microseconds.
const PROBE_PERIOD: Duration = Duration::from_millis(5);
/// How long the delay must stay above the target before shedding starts.
const INTERVAL: Duration = Duration::from_millis(100);
/// After shedding stops, a late sample within this long resumes it at once: the overload is
/// still there and has only been held off by the shedding.
const MEMORY: Duration = Duration::from_secs(1);

/// Decides from successive samples of the scheduling delay whether to shed.
#[derive(Debug)]
struct Detector {
    target: Duration,
    late_since: Option<Instant>,
    shedding: bool,
    stopped_at: Option<Instant>,
}

/// What one sample changed.
#[derive(Debug, PartialEq, Eq)]
enum Transition {
    None,
    /// Shedding starts after a quiet spell (worth telling an operator).
    Started,
}

impl Detector {
    fn new(target: Duration) -> Self {
        Self {
            target,
            late_since: None,
            shedding: false,
            stopped_at: None,
        }
    }

    fn observe(&mut self, now: Instant, late: Duration) -> Transition {
        if late <= self.target {
            if self.shedding {
                self.stopped_at = Some(now);
            }
            self.late_since = None;
            self.shedding = false;
            return Transition::None;
        }
        let since = *self.late_since.get_or_insert(now);
        let recently = self
            .stopped_at
            .is_some_and(|stopped| now.saturating_duration_since(stopped) < MEMORY);
        let was = self.shedding;
        self.shedding = recently || now.saturating_duration_since(since) >= INTERVAL;
        if self.shedding && !was && !recently {
            Transition::Started
        } else {
            Transition::None
        }
    }
}

/// The admission layer of one server, and the probe that keeps its delay signal current (it
/// stops when this is dropped).
#[derive(Debug)]
pub(crate) struct Admission {
    layer: AdmissionLayer,
    /// Held only to be dropped with the server: dropping it stops the probe.
    _probe: Option<AbortOnDropHandle<()>>,
}

impl Admission {
    /// Sheds past `max_requests` tasks beyond those alive now (the process's background work
    /// and this server's own tasks) and one per connection open, and, when a `max_delay` is
    /// given, while the scheduling delay stays above it (the probe then runs in the current
    /// runtime).
    pub(crate) fn start(
        max_requests: usize,
        max_delay: Option<Duration>,
        connections: Connections,
    ) -> Self {
        let metrics = tokio::runtime::Handle::current().metrics();
        let baseline = metrics.num_alive_tasks();
        let overloaded = Arc::new(AtomicBool::new(false));
        let probe = max_delay.map(|max_delay| {
            AbortOnDropHandle::new(tokio::spawn(probe(Arc::clone(&overloaded), max_delay)))
        });
        Self {
            layer: AdmissionLayer {
                metrics,
                baseline,
                max_requests,
                connections,
                overloaded,
            },
            _probe: probe,
        }
    }

    pub(crate) fn layer(&self) -> AdmissionLayer {
        self.layer.clone()
    }
}

async fn probe(overloaded: Arc<AtomicBool>, max_delay: Duration) {
    let mut detector = Detector::new(max_delay);
    loop {
        let due = Instant::now() + PROBE_PERIOD;
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        let late = now.saturating_duration_since(due);
        if detector.observe(now, late) == Transition::Started {
            tracing::warn!(
                delay_ms = late.as_millis(),
                "overloaded: requests have waited over {max_delay:?} for a worker thread for {INTERVAL:?}; shedding new ones with RESOURCE_EXHAUSTED"
            );
        }
        overloaded.store(detector.shedding, Ordering::Relaxed);
    }
}

/// Sheds (through the `LoadShed` outside it) every request that arrives while the runtime is
/// overloaded by either signal.
#[derive(Debug, Clone)]
pub(crate) struct AdmissionLayer {
    metrics: RuntimeMetrics,
    /// Tasks alive before the server took any request: the process's own.
    baseline: usize,
    max_requests: usize,
    connections: Connections,
    overloaded: Arc<AtomicBool>,
}

impl AdmissionLayer {
    /// Requests in hand: every task beyond the process's own and one per open connection.
    fn requests(&self) -> usize {
        self.metrics
            .num_alive_tasks()
            .saturating_sub(self.baseline + self.connections.open())
    }
}

impl<S> tower::Layer<S> for AdmissionLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            admission: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Admit<S> {
    inner: S,
    admission: AdmissionLayer,
}

impl<S, Request> tower::Service<Request> for Admit<S>
where
    S: tower::Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = &self.admission;
        let shed = if admission.overloaded.load(Ordering::Relaxed) {
            Some("queue_delay")
        } else if admission.requests() > admission.max_requests {
            Some("requests")
        } else {
            None
        };
        if let Some(reason) = shed {
            metrics::counter!(crate::telemetry::metrics::SERVER_SHED, "reason" => reason)
                .increment(1);
            // Not ready: LoadShed turns that into RESOURCE_EXHAUSTED at once. The wake keeps
            // the contract for a caller that would wait instead: it asks again, and is
            // admitted once the overload has passed.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: Duration = Duration::from_millis(5);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_single_stall_is_not_shed() {
        let start = Instant::now();
        let mut detector = Detector::new(TARGET);
        assert_eq!(detector.observe(start, ms(1)), Transition::None);
        // The probe was held up 500 ms with everything else; the next sample is on time.
        assert_eq!(detector.observe(start + ms(505), ms(500)), Transition::None);
        assert!(!detector.shedding);
        detector.observe(start + ms(510), ms(0));
        assert!(!detector.shedding);
    }

    #[test]
    fn a_delay_that_persists_for_the_interval_is_shed_until_a_sample_is_on_time() {
        let start = Instant::now();
        let mut detector = Detector::new(TARGET);
        let mut now = start;
        // Late from the first sample on, 25 ms apart: the fifth is 100 ms after the first.
        for _ in 0..4 {
            now += ms(25);
            assert_eq!(detector.observe(now, ms(20)), Transition::None);
            assert!(!detector.shedding, "shed after {:?}", now - start);
        }
        now += ms(25);
        assert_eq!(detector.observe(now, ms(20)), Transition::Started);
        assert!(detector.shedding);
        now += ms(25);
        assert_eq!(detector.observe(now, ms(20)), Transition::None);
        assert!(detector.shedding, "shedding goes on while the delay lasts");
        now += ms(5);
        detector.observe(now, ms(1));
        assert!(!detector.shedding, "an on-time sample stops it");
    }

    #[test]
    fn an_overload_that_returns_soon_after_is_shed_at_once() {
        let start = Instant::now();
        let mut detector = Detector::new(TARGET);
        let mut now = start;
        for _ in 0..5 {
            now += ms(25);
            detector.observe(now, ms(20));
        }
        assert!(detector.shedding);
        now += ms(5);
        detector.observe(now, ms(0));
        assert!(!detector.shedding);
        now += ms(10);
        assert_eq!(detector.observe(now, ms(8)), Transition::None);
        assert!(detector.shedding, "the first late sample resumes it");
        // Long after: a new episode must persist for the interval again.
        now += ms(5);
        detector.observe(now, ms(0));
        now += MEMORY + ms(1);
        detector.observe(now, ms(8));
        assert!(!detector.shedding);
    }
}
