//! Fault injection: a tower layer that every service's server stack carries, and the handle
//! ([`Faults`]) that switches faults on and off while the service runs. A fault can delay
//! requests (fixed plus uniform jitter, all of them or a fraction: "1% of calls +20 ms"), fail
//! a fraction of them with a chosen gRPC status, or black-hole them (hold them until the
//! caller or the server's request timeout gives up), for the whole service or for one gRPC
//! service or method. A fault given a seed draws from a random source of its own, so the same
//! sequence of requests meets the same delays and failures in every run.
//!
//! Health and reflection are never touched, so the lab can still see and drive a service
//! that it is degrading. With no fault set a request pays one atomic load.
//!
//! This crate owns the mechanism and its admin API ([`admin`], `fault.v1.FaultAdmin`); where
//! that API is served (a loopback listener of its own, only when a service is started with
//! it) is the server's decision, and tests and benchmarks hold the handle directly.

pub mod admin;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, Either};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

/// Which requests a fault applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every application method of the service (not health, not reflection).
    All,
    /// Every method of one gRPC service, by full name: `users.v1.UserService`.
    Service(String),
    /// One method, as `package.Service/Method`: `users.v1.UserService/GetUser`.
    Method(String),
}

impl Target {
    /// Whether a request to `path` (`/package.Service/Method`) is in scope.
    fn covers(&self, path: &str) -> bool {
        let path = path.strip_prefix('/').unwrap_or(path);
        if is_control_plane(path) {
            return false;
        }
        match self {
            Self::All => true,
            Self::Service(service) => path
                .strip_prefix(service.as_str())
                .is_some_and(|rest| rest.starts_with('/')),
            Self::Method(method) => path == method,
        }
    }
}

/// Health and reflection stay honest whatever is injected: they are how the lab watches a
/// service it is degrading.
fn is_control_plane(path: &str) -> bool {
    path.starts_with("grpc.health.") || path.starts_with("grpc.reflection.")
}

/// Added latency: `fixed` plus a uniformly drawn part of up to `jitter`, to the share
/// `fraction` of the requests in scope (each drawn on its own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub fixed: Duration,
    pub jitter: Duration,
    /// Between 0 and 1; 1 delays every request.
    pub fraction: f64,
}

impl Latency {
    pub fn fixed(fixed: Duration) -> Self {
        Self {
            fixed,
            jitter: Duration::ZERO,
            fraction: 1.0,
        }
    }

    /// The same latency for only `fraction` of the requests.
    #[must_use]
    pub fn for_fraction(mut self, fraction: f64) -> Self {
        self.fraction = fraction;
        self
    }

    /// The delay for one request: none for a request outside the fraction.
    fn draw(&self, rng: &mut impl rand::Rng) -> Duration {
        if self.fraction < 1.0 && !rng.random_bool(self.fraction) {
            return Duration::ZERO;
        }
        if self.jitter.is_zero() {
            return self.fixed;
        }
        let jitter_nanos = u64::try_from(self.jitter.as_nanos()).unwrap_or(u64::MAX);
        self.fixed + Duration::from_nanos(rng.random_range(0..=jitter_nanos))
    }
}

/// Failing a fraction of requests with one status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failure {
    /// Between 0 and 1.
    pub fraction: f64,
    pub code: tonic::Code,
}

/// One fault: what it does, and to which requests. Effects combine: a request is delayed
/// first, then possibly failed or held.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub target: Target,
    pub latency: Option<Latency>,
    pub failure: Option<Failure>,
    pub blackhole: bool,
    /// Seeds this fault's draws (which requests are delayed or failed, and by how much);
    /// from the operating system's entropy when None.
    pub seed: Option<u64>,
}

/// Why a fault was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidFault(String);

impl fmt::Display for InvalidFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidFault {}

/// Upper bound on injected latency: a fault should degrade a service, not park its
/// connections for longer than any sane caller waits.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

impl Fault {
    pub fn new(target: Target) -> Self {
        Self {
            target,
            latency: None,
            failure: None,
            blackhole: false,
            seed: None,
        }
    }

    /// Draws from a random source seeded with `seed`, so a run can be repeated.
    #[must_use]
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    #[must_use]
    pub fn with_latency(mut self, latency: Latency) -> Self {
        self.latency = Some(latency);
        self
    }

    #[must_use]
    pub fn with_failure(mut self, fraction: f64, code: tonic::Code) -> Self {
        self.failure = Some(Failure { fraction, code });
        self
    }

    #[must_use]
    pub fn with_blackhole(mut self) -> Self {
        self.blackhole = true;
        self
    }

    pub fn validate(&self) -> Result<(), InvalidFault> {
        let invalid = |reason: String| Err(InvalidFault(reason));
        match &self.target {
            Target::All => {}
            Target::Service(service) if service.is_empty() || service.contains('/') => {
                return invalid(format!(
                    "target service {service:?} must be a full service name such as users.v1.UserService"
                ));
            }
            Target::Method(method)
                if method.split('/').count() != 2 || method.split('/').any(str::is_empty) =>
            {
                return invalid(format!(
                    "target method {method:?} must look like users.v1.UserService/GetUser"
                ));
            }
            Target::Service(_) | Target::Method(_) => {}
        }
        if let Some(latency) = self.latency {
            if latency.fixed + latency.jitter > MAX_LATENCY {
                return invalid(format!(
                    "latency {:?} plus jitter {:?} is over the {MAX_LATENCY:?} limit",
                    latency.fixed, latency.jitter
                ));
            }
            if !(0.0..=1.0).contains(&latency.fraction) {
                return invalid(format!(
                    "latency fraction {} must be between 0 and 1",
                    latency.fraction
                ));
            }
        }
        if let Some(failure) = self.failure {
            if !(0.0..=1.0).contains(&failure.fraction) {
                return invalid(format!(
                    "failure fraction {} must be between 0 and 1",
                    failure.fraction
                ));
            }
            if failure.code == tonic::Code::Ok {
                return invalid("a failure needs an error code, not OK".to_owned());
            }
        }
        if self.latency.is_none() && self.failure.is_none() && !self.blackhole {
            return invalid("a fault needs latency, a failure or a black hole".to_owned());
        }
        Ok(())
    }
}

/// The faults in force for one service. Cloning shares them: the server's layer holds one
/// clone, whoever drives the faults holds another.
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Mirrors `!faults.is_empty()`, so the common path never takes the lock.
    armed: AtomicBool,
    faults: RwLock<Vec<Armed>>,
}

/// A fault in force, with the random source its draws come from.
struct Armed {
    fault: Fault,
    rng: Mutex<StdRng>,
}

impl Armed {
    fn new(fault: Fault) -> Self {
        let rng = match fault.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            fault,
            rng: Mutex::new(rng),
        }
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faults")
            .field("faults", &self.list())
            .finish()
    }
}

impl Faults {
    /// Adds a fault, after the ones already set.
    pub fn add(&self, fault: Fault) -> Result<(), InvalidFault> {
        fault.validate()?;
        let mut faults = self.write();
        faults.push(Armed::new(fault));
        self.inner.armed.store(true, Ordering::Release);
        Ok(())
    }

    /// Replaces every fault with `faults` (all validated first; nothing changes on error).
    pub fn replace(&self, faults: Vec<Fault>) -> Result<(), InvalidFault> {
        for fault in &faults {
            fault.validate()?;
        }
        let mut current = self.write();
        let armed = !faults.is_empty();
        *current = faults.into_iter().map(Armed::new).collect();
        self.inner.armed.store(armed, Ordering::Release);
        Ok(())
    }

    pub fn clear(&self) {
        let mut faults = self.write();
        faults.clear();
        self.inner.armed.store(false, Ordering::Release);
    }

    pub fn list(&self) -> Vec<Fault> {
        self.read()
            .iter()
            .map(|armed| armed.fault.clone())
            .collect()
    }

    /// What to do to a request for `path`, or None to pass it straight through.
    fn plan(&self, path: &str) -> Option<Plan> {
        if !self.inner.armed.load(Ordering::Acquire) {
            return None;
        }
        let faults = self.read();
        let mut plan = Plan::default();
        let mut any = false;
        for armed in faults
            .iter()
            .filter(|armed| armed.fault.target.covers(path))
        {
            any = true;
            let fault = &armed.fault;
            let mut rng = armed
                .rng
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(latency) = fault.latency {
                plan.delay += latency.draw(&mut *rng);
            }
            if plan.fail.is_none()
                && let Some(failure) = fault.failure
                && rng.random_bool(failure.fraction)
            {
                plan.fail = Some(failure.code);
            }
            plan.blackhole |= fault.blackhole;
        }
        any.then_some(plan)
    }

    // A poisoned lock means a panic while a Vec was swapped: the Vec itself is whole.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Armed>> {
        self.inner
            .faults
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Armed>> {
        self.inner
            .faults
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Default, PartialEq)]
struct Plan {
    delay: Duration,
    fail: Option<tonic::Code>,
    blackhole: bool,
}

/// The tower layer for a server stack.
#[derive(Debug, Clone)]
pub struct FaultLayer {
    faults: Faults,
}

impl FaultLayer {
    pub fn new(faults: Faults) -> Self {
        Self { faults }
    }
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = FaultService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FaultService {
            inner,
            faults: self.faults.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: Faults,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for FaultService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(plan) = self.faults.plan(request.uri().path()) else {
            return Either::Left(self.inner.call(request));
        };
        // The ready service goes into the future; a fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            if !plan.delay.is_zero() {
                tokio::time::sleep(plan.delay).await;
            }
            if plan.blackhole {
                // Held until the caller goes away or the server's request timeout fires;
                // either way the future is dropped and nothing leaks.
                std::future::pending::<()>().await;
            }
            if let Some(code) = plan.fail {
                let status = tonic::Status::new(code, "injected fault");
                return Ok(status.into_http());
            }
            inner.call(request).await
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_USER: &str = "/users.v1.UserService/GetUser";

    #[test]
    fn targets_cover_their_methods_and_never_health_or_reflection() {
        let all = Target::All;
        let service = Target::Service("users.v1.UserService".into());
        let method = Target::Method("users.v1.UserService/GetUser".into());
        for target in [&all, &service, &method] {
            assert!(target.covers(GET_USER), "{target:?}");
            assert!(!target.covers("/grpc.health.v1.Health/Check"), "{target:?}");
            assert!(
                !target.covers("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
                "{target:?}"
            );
        }
        assert!(!method.covers("/users.v1.UserService/CreateUser"));
        assert!(service.covers("/users.v1.UserService/CreateUser"));
        assert!(!service.covers("/users.v1.UserServiceExtra/GetUser"));
        assert!(!service.covers("/products.v1.ProductService/GetProduct"));
    }

    #[test]
    fn invalid_faults_are_refused_with_the_reason() {
        let reason = |fault: Fault| fault.validate().expect_err("refused").to_string();
        assert!(reason(Fault::new(Target::All)).contains("needs latency"));
        assert!(
            reason(Fault::new(Target::All).with_failure(1.5, tonic::Code::Unavailable))
                .contains("between 0 and 1")
        );
        assert!(
            reason(Fault::new(Target::All).with_failure(0.5, tonic::Code::Ok)).contains("not OK")
        );
        assert!(
            reason(Fault::new(Target::Method("GetUser".into())).with_blackhole())
                .contains("users.v1.UserService/GetUser")
        );
        assert!(
            reason(Fault::new(Target::Service("a/b".into())).with_blackhole())
                .contains("full service name")
        );
        assert!(
            reason(Fault::new(Target::All).with_latency(Latency::fixed(Duration::from_secs(61))))
                .contains("limit")
        );
        let faults = Faults::default();
        assert!(
            faults
                .replace(vec![
                    Fault::new(Target::All).with_blackhole(),
                    Fault::new(Target::All)
                ])
                .is_err()
        );
        assert!(faults.list().is_empty(), "nothing changes on error");
    }

    #[test]
    fn plans_combine_the_faults_that_cover_a_request() {
        let faults = Faults::default();
        assert_eq!(faults.plan(GET_USER), None);
        faults
            .add(Fault::new(Target::All).with_latency(Latency::fixed(Duration::from_millis(2))))
            .expect("valid");
        faults
            .add(
                Fault::new(Target::Method("users.v1.UserService/GetUser".into()))
                    .with_latency(Latency {
                        fixed: Duration::from_millis(1),
                        jitter: Duration::from_millis(1),
                        fraction: 1.0,
                    })
                    .with_failure(1.0, tonic::Code::Unavailable),
            )
            .expect("valid");
        let plan = faults.plan(GET_USER).expect("in scope");
        assert!(plan.delay >= Duration::from_millis(3) && plan.delay <= Duration::from_millis(4));
        assert_eq!(plan.fail, Some(tonic::Code::Unavailable));
        let other = faults
            .plan("/users.v1.UserService/CreateUser")
            .expect("in scope");
        assert_eq!(other.delay, Duration::from_millis(2));
        assert_eq!(other.fail, None);
        assert_eq!(faults.plan("/grpc.health.v1.Health/Check"), None);
        faults.clear();
        assert_eq!(faults.plan(GET_USER), None);
    }

    #[test]
    fn a_failure_fraction_fails_about_that_share() {
        let faults = Faults::default();
        faults
            .add(Fault::new(Target::All).with_failure(0.2, tonic::Code::Unavailable))
            .expect("valid");
        let failed = (0..10_000)
            .filter(|_| {
                faults
                    .plan(GET_USER)
                    .is_some_and(|plan| plan.fail.is_some())
            })
            .count();
        // Binomial(10000, 0.2): mean 2000, sd 40; 10 sd either side never fails by chance.
        assert!((1_600..=2_400).contains(&failed), "{failed} of 10000");
    }

    #[test]
    fn a_seeded_latency_fraction_delays_the_same_requests_every_time() {
        let delayed = |seed: u64| -> Vec<bool> {
            let faults = Faults::default();
            faults
                .add(
                    Fault::new(Target::All)
                        .with_latency(Latency::fixed(Duration::from_millis(20)).for_fraction(0.01))
                        .with_seed(seed),
                )
                .expect("valid");
            (0..100_000)
                .map(|_| {
                    faults
                        .plan(GET_USER)
                        .is_some_and(|plan| plan.delay == Duration::from_millis(20))
                })
                .collect()
        };
        let first = delayed(7);
        assert_eq!(
            first,
            delayed(7),
            "the same seed, the same requests delayed"
        );
        assert_ne!(first, delayed(8), "another seed, other requests");
        let share = first.iter().filter(|delayed| **delayed).count();
        // Binomial(100000, 0.01): mean 1000, sd 31.5; 8 sd either side.
        assert!((750..=1_250).contains(&share), "{share} of 100000 delayed");
        assert!(
            Fault::new(Target::All)
                .with_latency(Latency::fixed(Duration::from_millis(1)).for_fraction(1.5))
                .validate()
                .is_err()
        );
    }

    async fn call(faults: &Faults, path: &str) -> http::Response<String> {
        use tower::{Service as _, ServiceExt as _};
        let inner = tower::service_fn(|_request: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new("answered".to_owned()))
        });
        let mut service = tower::Layer::layer(&FaultLayer::new(faults.clone()), inner);
        let request = http::Request::builder()
            .uri(path)
            .body(())
            .expect("a request");
        let ready = service.ready().await.expect("ready");
        ready.call(request).await.expect("infallible")
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_delays_fails_and_holds() {
        let faults = Faults::default();
        assert_eq!(call(&faults, GET_USER).await.body(), "answered");

        faults
            .add(Fault::new(Target::All).with_latency(Latency::fixed(Duration::from_millis(5))))
            .expect("valid");
        let started = tokio::time::Instant::now();
        assert_eq!(call(&faults, GET_USER).await.body(), "answered");
        assert_eq!(started.elapsed(), Duration::from_millis(5));

        faults
            .replace(vec![
                Fault::new(Target::All).with_failure(1.0, tonic::Code::ResourceExhausted),
            ])
            .expect("valid");
        let failed = call(&faults, GET_USER).await;
        assert_eq!(
            failed
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok()),
            Some("8")
        );
        assert_eq!(
            call(&faults, "/grpc.health.v1.Health/Check").await.body(),
            "answered"
        );

        faults
            .replace(vec![Fault::new(Target::All).with_blackhole()])
            .expect("valid");
        let held = tokio::time::timeout(Duration::from_secs(3600), call(&faults, GET_USER)).await;
        assert!(held.is_err(), "a black-holed request is never answered");
    }
}
