//! What the lab runs: the services, their ports and databases, and how each is started.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Every service the lab starts, in start order: owners first, so the readers find them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Service {
    Users,
    Products,
    Orders,
    PurchasesSync,
    /// purchases-sync again, with `--fanout sequential`: the cost of not overlapping calls.
    PurchasesSyncSequential,
    /// Service D asking the owners on the bus (NATS request/reply).
    PurchasesBus,
    PurchasesAsync,
    Monolith,
}

impl Service {
    pub const ALL: [Self; 8] = [
        Self::Users,
        Self::Products,
        Self::Orders,
        Self::PurchasesSync,
        Self::PurchasesSyncSequential,
        Self::PurchasesBus,
        Self::PurchasesAsync,
        Self::Monolith,
    ];

    /// How the lab names the service (its log file, its entry in lab.json).
    pub fn name(self) -> &'static str {
        match self {
            Self::PurchasesSyncSequential => "purchases-sync-sequential",
            other => other.binary(),
        }
    }

    /// The binary (and cargo package) that runs it.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Products => "products",
            Self::Orders => "orders",
            Self::PurchasesSync | Self::PurchasesSyncSequential => "purchases-sync",
            Self::PurchasesBus => "purchases-bus",
            Self::PurchasesAsync => "purchases-async",
            Self::Monolith => "monolith",
        }
    }

    /// The service's own default address, so a lab on default ports matches the README and
    /// each service's `--help`.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Users => 50051,
            Self::Products => 50052,
            Self::Orders => 50053,
            Self::Monolith => 50060,
            Self::PurchasesSync => 50061,
            Self::PurchasesAsync => 50062,
            Self::PurchasesSyncSequential => 50063,
            Self::PurchasesBus => 50064,
        }
    }

    /// Where the lab asks the service to serve its fault admin API: beside its own port.
    pub fn default_fault_admin_port(self) -> u16 {
        self.default_port() + 100
    }

    /// Where the lab asks the service to serve its metrics: 200 above its own port.
    pub fn default_metrics_port(self) -> u16 {
        self.default_port() + 200
    }

    /// The database the service owns, if any (a file name on SQLite, a database name on
    /// PostgreSQL).
    pub fn database(self) -> Option<&'static str> {
        match self {
            Self::Users => Some("users"),
            Self::Products => Some("products"),
            Self::Orders => Some("orders"),
            Self::PurchasesSync | Self::PurchasesSyncSequential | Self::PurchasesBus => None,
            Self::PurchasesAsync => Some("purchases_async"),
            Self::Monolith => Some("monolith"),
        }
    }

    /// Whether it relays its outbox to a stream of its own (and so creates that stream).
    fn publishes(self) -> bool {
        matches!(self, Self::Users | Self::Products | Self::Orders)
    }

    fn uses_nats(self) -> bool {
        !matches!(
            self,
            Self::PurchasesSync | Self::PurchasesSyncSequential | Self::Monolith
        )
    }

    /// gRPC services it serves, for the grpcurl examples.
    pub fn example(self, addr: SocketAddr) -> String {
        let call =
            |method: &str, body: &str| format!("grpcurl -plaintext -d '{body}' {addr} {method}");
        match self {
            Self::Users => call(
                "users.v1.UserService/CreateUser",
                r#"{"email":"ada@example.com","name":"Ada"}"#,
            ),
            Self::Products => call(
                "products.v1.ProductService/ListProducts",
                r#"{"page_size":3}"#,
            ),
            Self::Orders => format!("grpcurl -plaintext {addr} describe orders.v1.OrderService"),
            Self::PurchasesSync
            | Self::PurchasesSyncSequential
            | Self::PurchasesBus
            | Self::PurchasesAsync
            | Self::Monolith => call(
                "purchases.v1.PurchaseService/ListUserPurchases",
                r#"{"user_id":"<a user id from the seed, see seed.json>","page_size":5}"#,
            ),
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where each service's data lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Storage {
    /// One SQLite file per service under this directory.
    Sqlite(PathBuf),
    /// One database per service on this server (a postgres:// URL without a database, or
    /// with one that is only used to connect).
    Postgres(String),
    /// A system the lab did not start (`--endpoints`): its databases are its own.
    Elsewhere,
}

impl Storage {
    pub fn database_url(&self, database: &str) -> Result<String, TopologyError> {
        match self {
            Self::Sqlite(dir) => Ok(format!(
                "sqlite://{}",
                dir.join(format!("{database}.db")).display()
            )),
            Self::Postgres(base) => {
                let mut url =
                    url::Url::parse(base).map_err(|error| TopologyError::PostgresUrl {
                        url: base.clone(),
                        reason: error.to_string(),
                    })?;
                url.set_path(&format!("lab_{database}"));
                Ok(url.to_string())
            }
            Self::Elsewhere => Err(TopologyError::NotTheLabs {
                database: database.to_owned(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "port {port} for {service} is in use ({source}): stop what holds it (another lab?), or run the lab with --ephemeral-ports"
    )]
    PortInUse {
        service: Service,
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loopback port for {service}")]
    NoFreePort {
        service: Service,
        #[source]
        source: std::io::Error,
    },
    #[error("--postgres {url:?} is not a URL: {reason}")]
    PostgresUrl { url: String, reason: String },
    #[error("the {database} database belongs to a system the lab did not start (--endpoints)")]
    NotTheLabs { database: String },
}

/// The addresses of one lab, written to `lab.json` in the data dir while it runs so that
/// `lab seed` and scripts can find it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoints {
    pub services: BTreeMap<Service, SocketAddr>,
    /// Each service's fault admin API (fault.v1.FaultAdmin), on loopback.
    #[serde(default)]
    pub fault_admin: BTreeMap<Service, SocketAddr>,
    /// One URL, or a cluster's, comma-separated.
    pub nats_url: String,
    /// Copies JetStream keeps of each event: 3 on the lab's cluster, else 1.
    #[serde(default = "one")]
    pub stream_replicas: u64,
    /// Where each NATS identity's nkey seed is (`<name>.nk`), when the lab's nats-server
    /// runs with authorization; none on an external server.
    #[serde(default)]
    pub nats_credentials: Option<PathBuf>,
    /// Each service's metrics endpoint (`http://<addr>/metrics`, Prometheus text format).
    #[serde(default)]
    pub metrics: BTreeMap<Service, SocketAddr>,
    /// The lab's trace collector (OTLP/gRPC), which every service exports its spans to;
    /// none when the lab runs with `--tracing off`.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces each service keeps.
    #[serde(default = "one_ratio")]
    pub trace_sample: f64,
    /// Threads each service runs its tasks on (`--worker-threads`); the services' own
    /// default (one per CPU) when none.
    #[serde(default)]
    pub worker_threads: Option<u64>,
}

fn one_ratio() -> f64 {
    1.0
}

fn one() -> u64 {
    1
}

impl Endpoints {
    pub fn addr(&self, service: Service) -> SocketAddr {
        self.services
            .get(&service)
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], service.default_port())))
    }

    pub fn url(&self, service: Service) -> String {
        format!("http://{}", self.addr(service))
    }

    /// A lazily connected channel to the service.
    pub fn channel(&self, service: Service) -> tonic::transport::Channel {
        channel_to(self.addr(service))
    }

    /// A lazily connected channel to the service's fault admin API.
    pub fn fault_admin_channel(&self, service: Service) -> tonic::transport::Channel {
        channel_to(self.fault_admin_addr(service))
    }

    pub fn fault_admin_addr(&self, service: Service) -> SocketAddr {
        self.fault_admin.get(&service).copied().unwrap_or_else(|| {
            SocketAddr::from(([127, 0, 0, 1], service.default_fault_admin_port()))
        })
    }

    /// The services' default addresses, each checked free; or free ephemeral ones.
    pub fn allocate(ephemeral: bool, nats_url: String) -> Result<Self, TopologyError> {
        let mut services = BTreeMap::new();
        let mut fault_admin = BTreeMap::new();
        let mut metrics = BTreeMap::new();
        // Chosen below the kernel's ephemeral range, so no outgoing connection takes one
        // between now and the service binding it.
        let mut free = if ephemeral {
            natsd::free_loopback_ports(3 * Service::ALL.len()).map_err(|source| {
                TopologyError::NoFreePort {
                    service: Service::Users,
                    source,
                }
            })?
        } else {
            Vec::new()
        }
        .into_iter();
        // Held until all are checked, so a clash is reported before anything starts.
        let mut held = Vec::new();
        let mut take = |service: Service, port: u16| {
            let port = if ephemeral {
                free.next().unwrap_or(0)
            } else {
                port
            };
            let listener = TcpListener::bind(("127.0.0.1", port)).map_err(|source| {
                if ephemeral {
                    TopologyError::NoFreePort { service, source }
                } else {
                    TopologyError::PortInUse {
                        service,
                        port,
                        source,
                    }
                }
            })?;
            let addr = listener
                .local_addr()
                .map_err(|source| TopologyError::NoFreePort { service, source })?;
            held.push(listener);
            Ok(addr)
        };
        for service in Service::ALL {
            services.insert(service, take(service, service.default_port())?);
            fault_admin.insert(service, take(service, service.default_fault_admin_port())?);
            metrics.insert(service, take(service, service.default_metrics_port())?);
        }
        Ok(Self {
            services,
            fault_admin,
            nats_url,
            stream_replicas: 1,
            worker_threads: None,
            nats_credentials: None,
            metrics,
            otlp_endpoint: None,
            trace_sample: 1.0,
        })
    }

    /// The nkey seed file of a NATS identity (a service's name, or `bus::access::ADMIN`).
    pub fn nats_seed(&self, identity: &str) -> Option<PathBuf> {
        self.nats_credentials
            .as_ref()
            .map(|dir| dir.join(format!("{identity}.nk")))
    }

    /// Command-line arguments for one service. Every setting the lab relies on is passed
    /// explicitly, so nothing in the caller's environment changes what runs.
    pub fn args(
        &self,
        service: Service,
        storage: &Storage,
    ) -> Result<Vec<OsString>, TopologyError> {
        let mut args = self.args_at(service, self.addr(service), service.database(), storage)?;
        args.push("--admin-listen".into());
        args.push(self.fault_admin_addr(service).to_string().into());
        if let Some(addr) = self.metrics.get(&service) {
            args.push("--metrics-listen".into());
            args.push(addr.to_string().into());
        }
        Ok(args)
    }

    /// The same for an instance of `service` on another address and database (a second
    /// copy beside the lab's own), without a fault admin API.
    pub fn args_at(
        &self,
        service: Service,
        listen: SocketAddr,
        database: Option<&str>,
        storage: &Storage,
    ) -> Result<Vec<OsString>, TopologyError> {
        let mut args: Vec<OsString> = vec![
            "--listen".into(),
            listen.to_string().into(),
            "--log-format".into(),
            "json".into(),
        ];
        if let Some(endpoint) = &self.otlp_endpoint {
            args.extend([
                "--otel-endpoint".into(),
                endpoint.into(),
                "--otel-service-name".into(),
                service.name().into(),
                "--otel-traces-sampler".into(),
                "parentbased_traceidratio".into(),
                "--otel-traces-sampler-arg".into(),
                self.trace_sample.to_string().into(),
            ]);
        }
        if let Some(database) = database {
            args.push("--database-url".into());
            args.push(storage.database_url(database)?.into());
        }
        if service.uses_nats() {
            args.push("--nats-url".into());
            args.push(self.nats_url.clone().into());
            if let Some(seed) = self.nats_seed(service.binary()) {
                args.push("--nats-nkey".into());
                args.push(seed.into());
            }
        }
        if service.publishes() && self.stream_replicas > 1 {
            args.push("--stream-replicas".into());
            args.push(self.stream_replicas.to_string().into());
        }
        if matches!(
            service,
            Service::PurchasesSync | Service::PurchasesSyncSequential
        ) {
            for (flag, dependency) in [
                ("--users-url", Service::Users),
                ("--orders-url", Service::Orders),
                ("--products-url", Service::Products),
            ] {
                args.push(flag.into());
                args.push(self.url(dependency).into());
            }
        }
        if let Some(threads) = self.worker_threads {
            args.push("--worker-threads".into());
            args.push(threads.to_string().into());
        }
        if service == Service::PurchasesSyncSequential {
            args.push("--fanout".into());
            args.push("sequential".into());
        }
        Ok(args)
    }
}

/// A lazily connected channel to a service on `addr`.
pub fn channel_to(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid endpoint")
        .tcp_nodelay(true)
        .connect_lazy()
}

/// A client of the lab's NATS (a comma-separated list of URLs for a cluster), as the lab's
/// administrative identity when the server runs with authorization.
pub async fn connect_nats(endpoints: &Endpoints) -> anyhow::Result<async_nats::Client> {
    use anyhow::Context as _;
    let nats_url = &endpoints.nats_url;
    let mut options =
        async_nats::ConnectOptions::new().connection_timeout(std::time::Duration::from_secs(5));
    if let Some(seed) = endpoints.nats_seed(bus::access::ADMIN) {
        let text = std::fs::read_to_string(&seed)
            .with_context(|| format!("cannot read the lab's NATS key {}", seed.display()))?;
        options = options.nkey(text.trim().to_owned());
    }
    options
        .connect(nats_url.split(',').collect::<Vec<_>>())
        .await
        .with_context(|| format!("cannot connect to NATS at {nats_url}"))
}

/// `lab.json` in a data dir.
pub fn state_file(data_dir: &Path) -> PathBuf {
    data_dir.join("lab.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_urls_get_a_database_per_service() {
        let storage = Storage::Postgres("postgres://postgres@127.0.0.1:5432/postgres".into());
        assert_eq!(
            storage.database_url("purchases_async").ok().as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/lab_purchases_async")
        );
        let storage = Storage::Sqlite(PathBuf::from("data/lab"));
        assert_eq!(
            storage.database_url("users").ok().as_deref(),
            Some("sqlite://data/lab/users.db")
        );
    }

    #[test]
    fn sync_is_pointed_at_the_owning_services() {
        let endpoints = Endpoints::allocate(true, "nats://127.0.0.1:1".into())
            .unwrap_or_else(|error| panic!("{error}"));
        let args = endpoints
            .args(Service::PurchasesSync, &Storage::Sqlite(PathBuf::from("d")))
            .unwrap_or_else(|error| panic!("{error}"));
        let args: Vec<String> = args
            .into_iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let users = endpoints.url(Service::Users);
        assert!(
            args.windows(2)
                .any(|pair| pair[0] == "--users-url" && pair[1] == users)
        );
        assert!(
            !args
                .iter()
                .any(|arg| arg == "--database-url" || arg == "--nats-url")
        );
        let ports: std::collections::HashSet<u16> = endpoints
            .services
            .values()
            .chain(endpoints.fault_admin.values())
            .chain(endpoints.metrics.values())
            .map(SocketAddr::port)
            .collect();
        assert_eq!(
            ports.len(),
            3 * Service::ALL.len(),
            "every service, admin API and metrics endpoint has a port of its own"
        );
        let admin = endpoints
            .fault_admin_addr(Service::PurchasesSync)
            .to_string();
        assert!(
            args.windows(2)
                .any(|pair| pair[0] == "--admin-listen" && pair[1] == admin)
        );
    }
}
