//! Binding and serving a gRPC server with the layers, health and reflection that every service
//! gets, and stopping it gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::util::MapResponseLayer;

use crate::admission::Admission;
use crate::connections::Connections;
use crate::request::RequestLayer;

/// Knobs of the server stack.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Longest a handler may run; the caller's own deadline (grpc-timeout) applies too.
    pub request_timeout: Duration,
    /// Requests in the server at once across all connections, running or still waiting for a
    /// worker thread, before new ones are shed.
    pub max_concurrent_requests: usize,
    /// Longest requests may go on waiting for a worker thread before new ones are shed (the
    /// runtime's scheduling delay, held above it for 100 ms); no such bound when `None`.
    pub max_queue_delay: Option<Duration>,
    /// How long in-flight requests get to finish after shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Faults injected into this server's application methods (none unless someone sets them).
    pub faults: fault::Faults,
    /// Where to serve the admin APIs (faults, dead letters, re-emit), if anywhere (a
    /// loopback address; see `config::parse_loopback_addr`).
    pub admin: Option<SocketAddr>,
    /// Connections open at once; past it a new one replaces the oldest idle one, or is
    /// refused when every one is busy.
    pub max_connections: usize,
    /// A connection that carries no request for this long is closed.
    pub idle_timeout: Duration,
    /// A connection older than this is asked to go away (HTTP/2 GOAWAY: the client opens a
    /// new one, in-flight requests finish), so none is held forever.
    pub max_connection_age: Duration,
    /// Pings on every connection this often; a peer that does not answer within
    /// `keepalive_timeout` is gone and its connection closed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Requests one connection may have open at once (HTTP/2 streams).
    pub max_concurrent_streams: u32,
    /// Where to serve metrics (`/metrics`, Prometheus text format), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The ratio of new traces kept, for the admin API to change.
    pub sampling: crate::telemetry::SamplingHandle,
}

impl Default for ServerSettings {
    fn default() -> Self {
        crate::config::CommonArgs::default().server_settings()
    }
}

/// Largest header block a request may carry: gRPC's own headers, a deadline and trace
/// context take a few hundred bytes; anything near this is not a gRPC client's.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// Largest request message a service accepts; larger ones fail with RESOURCE_EXHAUSTED
/// before any of it is decoded into memory. Batch and page caps keep legitimate requests
/// far below it.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The application services a server exposes, collected with their names so health and
/// reflection can advertise exactly these and no others.
#[derive(Debug, Default)]
pub struct ServiceSet {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
}

impl ServiceSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
    #[error("in-flight requests did not finish within the {0:?} shutdown grace period")]
    GraceExpired(Duration),
}

/// A bound listener, ready to serve. Binding happens before serving so that a test (or the
/// lab) can bind port 0, learn the port, and connect without waiting or retrying.
#[derive(Debug)]
pub struct GrpcServer {
    incoming: TcpIncoming,
    local_addr: SocketAddr,
    admin: Option<(TcpIncoming, SocketAddr)>,
    metrics: Option<crate::telemetry::metrics::MetricsEndpoint>,
    settings: ServerSettings,
    bus: Option<crate::answers::BusAnswers>,
}

/// How long to wait before accepting again after accept failed (out of file descriptors,
/// say): retrying at once would spin a core while nothing changes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bound listener's connections, each admitted through `connections` (and so counted,
/// bounded and closed when idle). Accept errors are logged and waited out, never returned.
fn admitted(
    incoming: TcpIncoming,
    connections: Connections,
) -> impl futures::Stream<Item = std::io::Result<crate::connections::TrackedIo>> {
    futures::stream::unfold(
        (incoming, connections),
        |(mut incoming, connections)| async move {
            use futures::StreamExt as _;
            loop {
                match incoming.next().await? {
                    Ok(stream) => {
                        if let Some(io) = connections.admit(stream) {
                            return Some((Ok(io), (incoming, connections)));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a connection; retrying shortly");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                }
            }
        },
    )
}

impl GrpcServer {
    pub fn bind(addr: SocketAddr, settings: ServerSettings) -> std::io::Result<Self> {
        // Server::tcp_nodelay is ignored for a caller-supplied listener, so Nagle is disabled
        // here; without it small responses wait for delayed ACKs (about 40 ms on Linux).
        let incoming = TcpIncoming::bind(addr)?.with_nodelay(Some(true));
        let local_addr = incoming.local_addr()?;
        let admin = match settings.admin {
            Some(admin_addr) => {
                let admin = TcpIncoming::bind(admin_addr)?.with_nodelay(Some(true));
                let bound = admin.local_addr()?;
                Some((admin, bound))
            }
            None => None,
        };
        let metrics = match settings.metrics {
            Some(addr) => crate::telemetry::metrics::MetricsEndpoint::bind(addr)?,
            None => None,
        };
        Ok(Self {
            incoming,
            local_addr,
            admin,
            metrics,
            settings,
            bus: None,
        })
    }

    /// Also answers the owner's questions on the bus (`bus::ask`), through the same layers
    /// and handlers as its gRPC requests, while it serves.
    pub fn answer_on_bus(&mut self, answers: crate::answers::BusAnswers) {
        self.bus = Some(answers);
    }

    /// Where metrics are served (`/metrics`), when they were asked for.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
            .as_ref()
            .and_then(|metrics| metrics.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin APIs listen, when they were asked for.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// Serves `services` plus grpc.health.v1 and server reflection (v1 and v1alpha, so grpcurl
    /// 1.8 and newer both work) until `shutdown` completes, then reports NOT_SERVING, stops
    /// accepting and lets in-flight requests finish within the grace period. `admin` services
    /// join the fault admin API on the admin listener, when there is one.
    pub async fn serve(
        self,
        services: ServiceSet,
        admin: ServiceSet,
        descriptor_set: &'static [u8],
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let ServiceSet { mut routes, names } = services;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        for name in names.iter().copied().chain([""]) {
            health_reporter
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }

        // Reflection advertises exactly what this server answers: the application services,
        // health and reflection itself (not every service in the shared descriptor set).
        let advertised: Vec<&'static str> = names
            .iter()
            .copied()
            .chain([
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ])
            .collect();
        let reflection = || {
            advertised.iter().fold(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(descriptor_set)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
                |builder, name| builder.with_service_name(*name),
            )
        };
        routes
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);

        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let stop_answering = tokio_util::sync::CancellationToken::new();
        let admin_stop = tokio_util::sync::CancellationToken::new();
        if let Some(metrics) = self.metrics {
            let stop = admin_stop.clone();
            tokio::spawn(metrics.serve(stop.cancelled_owned()));
        }
        if let Some((incoming, addr)) = self.admin {
            let admin = admin_server(
                &self.settings.faults,
                &self.settings.sampling,
                admin,
                descriptor_set,
            )?;
            let stop = admin_stop.clone();
            tracing::info!(%addr, "admin APIs listening");
            tokio::spawn(async move {
                let served = admin
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "the admin APIs failed");
                }
            });
        }
        // Stops the admin API with the service, however serving ends.
        let _admin_guard = admin_stop.drop_guard();
        let signal_stop_answering = stop_answering.clone();
        let signal = async move {
            shutdown.await;
            // The queue group hands new questions to the owner's other instances.
            signal_stop_answering.cancel();
            for name in names.iter().copied().chain([""]) {
                health_reporter
                    .set_service_status(name, ServingStatus::NotServing)
                    .await;
            }
            let _ = stopping_tx.send(());
        };

        let settings = self.settings;
        let connections = Connections::new(settings.max_connections, settings.idle_timeout);
        let admission = Admission::start(
            settings.max_concurrent_requests,
            settings.max_queue_delay,
            connections.clone(),
        );
        let stack = ServiceBuilder::new()
            // Outermost: every request gets its span (continuing the caller's trace),
            // its log line and its metrics, whatever happened inside.
            .layer(crate::telemetry::rpc::server_layer())
            // Counts the request on its connection (so a busy one is never closed as
            // idle), bounds it by the request timeout or the caller's deadline, and
            // turns what the layers inside fail with into the status the caller
            // reads, before the span outside records it.
            .layer(RequestLayer {
                timeout: settings.request_timeout,
            })
            .layer(MapResponseLayer::new(oversized_as_resource_exhausted))
            // Shedding sits outside both bounds: past either, a new request fails at
            // once with RESOURCE_EXHAUSTED instead of queueing without bound.
            .load_shed()
            // Requests accepted and waiting for a worker thread count too (see
            // `admission`); the limit inside counts only the ones running.
            .layer(admission.layer())
            // One limit for gRPC requests and questions on the bus together.
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(Arc::new(
                Semaphore::new(settings.max_concurrent_requests),
            )))
            // Innermost, so an injected delay holds a permit as a slow handler would,
            // and an injected failure is shed and timed out like a real one.
            .layer(fault::FaultLayer::new(settings.faults.clone()));
        let routes = routes.routes();
        let answering = match self.bus {
            Some(answers) => {
                let owner = answers.owner;
                let stack = stack.clone().service(routes.clone());
                let stop = stop_answering.clone();
                let (registered_tx, registered) = tokio::sync::oneshot::channel();
                let task = tokio::spawn(async move {
                    if let Err(error) =
                        crate::answers::answer(answers, stack, stop, registered_tx).await
                    {
                        tracing::error!(service = owner, %error, "not answering on the bus");
                    }
                });
                // Health says SERVING once questions on the bus find the owner too, unless
                // NATS is away: then the service serves gRPC and answers when it connects.
                let in_time =
                    tokio::time::timeout(crate::answers::REGISTERED_WITHIN, registered).await;
                if !matches!(in_time, Ok(Ok(()))) {
                    tracing::warn!(
                        service = owner,
                        "serving before NATS has the bus endpoints; they follow when it connects"
                    );
                }
                Some(task)
            }
            None => None,
        };
        let serving = Server::builder()
            // Dead peers are found by pings, and no connection lives forever: an old one is
            // asked to go away (GOAWAY) and given the request timeout and more to finish.
            .http2_keepalive_interval(Some(settings.keepalive_interval))
            .http2_keepalive_timeout(Some(settings.keepalive_timeout))
            .max_connection_age(settings.max_connection_age)
            .max_connection_age_grace(settings.request_timeout + Duration::from_secs(5))
            .max_concurrent_streams(settings.max_concurrent_streams)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
            // Over HTTP/2 only: the bus answers are read whole, not written by h2.
            .layer(
                ServiceBuilder::new()
                    .layer(MapResponseLayer::new(crate::one_write::one_write))
                    .layer(stack),
            )
            .add_routes(routes)
            .serve_with_incoming_shutdown(admitted(self.incoming, connections), signal);
        let served = Self::until_stopped(serving, stopping_rx, settings.shutdown_grace).await;
        // However serving ended, no more questions are taken.
        stop_answering.cancel();
        if let Some(answering) = answering {
            // Questions in hand finish within the same grace as requests in flight.
            let _ = tokio::time::timeout(settings.shutdown_grace, answering).await;
        }
        served
    }

    /// Waits for the server to stop: until it fails, or until shutdown is asked for and the
    /// requests in flight finish within the grace period.
    async fn until_stopped(
        serving: impl Future<Output = Result<(), tonic::transport::Error>>,
        stopping: tokio::sync::oneshot::Receiver<()>,
        grace: Duration,
    ) -> Result<(), ServeError> {
        tokio::pin!(serving);
        tokio::select! {
            result = &mut serving => return result.map_err(ServeError::from),
            Ok(()) = stopping => {}
        }
        match tokio::time::timeout(grace, serving).await {
            Ok(result) => result.map_err(ServeError::from),
            Err(_) => Err(ServeError::GraceExpired(grace)),
        }
    }
}

/// The admin APIs' own server: the fault admin API, the service's other admin services and
/// reflection (so grpcurl works), without the fault layer, so no fault can lock its own
/// switch. A re-emit of a large state takes a while, hence the longer timeout.
fn admin_server(
    faults: &fault::Faults,
    sampling: &crate::telemetry::SamplingHandle,
    admin: ServiceSet,
    descriptor_set: &'static [u8],
) -> Result<tonic::transport::server::Router, ServeError> {
    let ServiceSet { mut routes, names } =
        admin.with(crate::telemetry::admin::TelemetryApi::new(sampling.clone()).into_server());
    let advertised: Vec<&'static str> = names
        .iter()
        .copied()
        .chain([
            "fault.v1.FaultAdmin",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ])
        .collect();
    let reflection = || {
        advertised.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(descriptor_set),
            |builder, name| builder.with_service_name(*name),
        )
    };
    routes
        .add_service(fault::admin::AdminApi::new(faults.clone()).into_server())
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?);
    Ok(Server::builder()
        .timeout(Duration::from_secs(300))
        .concurrency_limit_per_connection(16)
        .add_routes(routes.routes()))
}

/// tonic answers a request larger than the decoding limit with OUT_OF_RANGE; the gRPC spec
/// (and every other implementation) says RESOURCE_EXHAUSTED, which is what clients retry on
/// and what this project documents. Only that one message is rewritten, so an OUT_OF_RANGE a
/// handler returns on purpose passes untouched.
fn oversized_as_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let is_oversize = headers
        .get("grpc-status")
        .is_some_and(|status| status == "11")
        && headers.get("grpc-message").is_some_and(|message| {
            message
                .as_bytes()
                .starts_with(b"Error,%20decoded%20message%20length%20too%20large")
        });
    if is_oversize {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM, whichever comes first.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}
