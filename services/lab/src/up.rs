//! Bringing the whole system up and down: a nats-server (or an external one), then every
//! service as a child process, each waited for until grpc.health.v1 says SERVING.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use natsd::{NatsCluster, NatsServer, NatsServerOptions, SyncPolicy};
use serde::{Deserialize, Serialize};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::children::ServiceProcess;
use crate::topology::{Endpoints, Service, Storage, state_file};

/// How long a service may take to report SERVING. Generous: on a cold machine the first
/// start runs migrations.
const HEALTHY_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    pub ephemeral_ports: bool,
    pub nats_url: Option<String>,
    /// Three nats-servers in a JetStream cluster instead of one.
    pub nats_cluster: bool,
    pub postgres: Option<String>,
    pub nats_sync: SyncPolicy,
    /// Collect every service's spans (in the data dir), keeping this share of new traces;
    /// no tracing when `None`.
    pub trace_sample: Option<f64>,
    /// Threads each service runs its tasks on; the services' default when none.
    pub service_threads: Option<u64>,
}

/// The event bus the lab runs on.
#[derive(Debug)]
enum Bus {
    /// Someone else's server (--nats-url): the lab never stops it.
    External,
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Bus {
    fn servers_mut(&mut self) -> Vec<&mut NatsServer> {
        match self {
            Self::External => Vec::new(),
            Self::Single(server) => vec![&mut **server],
            Self::Cluster(cluster) => cluster.servers_mut().iter_mut().collect(),
        }
    }
}

/// What `lab.json` holds while a lab runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub lab_pid: u32,
    pub endpoints: Endpoints,
    /// Every process the lab started (services and nats-server), by name.
    pub pids: BTreeMap<String, u32>,
}

impl LabState {
    /// The running lab's state for this data dir.
    pub fn read(data_dir: &Path) -> anyhow::Result<Self> {
        let path = state_file(data_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no lab is running on {}: start one with `lab up --data-dir {}`",
                data_dir.display(),
                data_dir.display()
            )
        })?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a lab state", path.display()))
    }
}

#[derive(Debug)]
pub struct RunningLab {
    pub endpoints: Endpoints,
    pub data_dir: PathBuf,
    pub storage: Storage,
    /// Receives every service's spans; stopped after them.
    traces: Option<crate::traces::TraceCollector>,
    nats: Bus,
    /// Who the lab's own nats-servers admit (none on an external server).
    nats_authorization: Option<natsd::Authorization>,
    processes: BTreeMap<Service, ServiceProcess>,
    /// The endpoints file of a system the lab was pointed at instead of starting one.
    attached: Option<PathBuf>,
}

impl RunningLab {
    /// A system the lab did not start, at the addresses `endpoints_file` lists (a `lab.json`
    /// of another lab, or its `endpoints` alone: see `deploy/compose-endpoints.json`). The
    /// lab reads, writes and measures it, and refuses what needs its processes (stopping,
    /// killing, restarting, starting one more).
    pub fn attach(endpoints_file: &Path, data_dir: PathBuf) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(endpoints_file)
            .with_context(|| format!("cannot read {}", endpoints_file.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", endpoints_file.display()))?;
        let value = value.get("endpoints").cloned().unwrap_or(value);
        let mut endpoints: Endpoints = serde_json::from_value(value).with_context(|| {
            format!(
                "{} lists no endpoints (services, nats_url, ...)",
                endpoints_file.display()
            )
        })?;
        // Its spans go wherever it sends them; the lab collects only its own.
        endpoints.otlp_endpoint = None;
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
        Ok(Self {
            endpoints,
            data_dir,
            storage: Storage::Elsewhere,
            traces: None,
            nats: Bus::External,
            nats_authorization: None,
            processes: BTreeMap::new(),
            attached: Some(endpoints_file.to_path_buf()),
        })
    }

    /// Whether the lab was pointed at a system rather than starting it.
    pub fn is_attached(&self) -> bool {
        self.attached.is_some()
    }

    /// Refuses `what` on a system the lab did not start.
    pub fn require_processes(&self, what: &str) -> anyhow::Result<()> {
        match &self.attached {
            Some(file) => anyhow::bail!(
                "{what} needs a lab that started the services itself; this one runs on the system {} lists",
                file.display()
            ),
            None => Ok(()),
        }
    }

    pub async fn start(options: &UpOptions) -> anyhow::Result<Self> {
        let data_dir = &options.data_dir;
        refuse_if_running(data_dir)?;
        let logs = data_dir.join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create the data dir {}", data_dir.display()))?;
        std::fs::write(
            data_dir.join(MARKER),
            "Written by the lab: `lab demo` may empty this directory.\n",
        )
        .with_context(|| format!("cannot write in the data dir {}", data_dir.display()))?;
        let binaries = crate::binaries::locate().await?;

        let storage = match &options.postgres {
            Some(url) => {
                create_databases(url).await?;
                Storage::Postgres(url.clone())
            }
            None => Storage::Sqlite(data_dir.clone()),
        };
        // Ports are checked before anything starts, so a clash is reported up front.
        let placeholder = String::new();
        let mut endpoints = Endpoints::allocate(options.ephemeral_ports, placeholder)?;
        endpoints.worker_threads = options.service_threads;
        let traces = match options.trace_sample {
            Some(ratio) => {
                let collector = crate::traces::TraceCollector::start(data_dir).await?;
                endpoints.otlp_endpoint = Some(collector.endpoint());
                endpoints.trace_sample = ratio;
                Some(collector)
            }
            None => None,
        };

        // The lab's own servers admit only the system's services, each as a NATS user with
        // the least permissions it needs, and the lab's own tooling as their administrator.
        let authorization = match &options.nats_url {
            Some(_) => None,
            None => {
                let dir = data_dir.join("nats-auth");
                let (authorization, _) =
                    natsd::auth::provision(&dir, &nats_roles(), bus::access::ADMIN)
                        .context("cannot make the NATS credentials")?;
                endpoints.nats_credentials = Some(dir);
                Some(authorization)
            }
        };
        let nats = match &options.nats_url {
            Some(url) => {
                endpoints.nats_url = url.clone();
                Bus::External
            }
            None if options.nats_cluster => {
                let cluster = NatsCluster::start(
                    3,
                    options.nats_sync,
                    &data_dir.join("nats"),
                    authorization.clone(),
                )
                .await
                .context("cannot start the nats-server cluster")?;
                endpoints.nats_url = cluster.url();
                endpoints.stream_replicas = 3;
                Bus::Cluster(cluster)
            }
            None => {
                let server = NatsServer::start(NatsServerOptions {
                    sync: options.nats_sync,
                    store_dir: Some(data_dir.join("nats")),
                    authorization: authorization.clone(),
                    ..NatsServerOptions::default()
                })
                .await
                .context("cannot start nats-server")?;
                endpoints.nats_url = server.url();
                Bus::Single(Box::new(server))
            }
        };

        let mut lab = Self {
            endpoints,
            data_dir: data_dir.clone(),
            storage: storage.clone(),
            traces,
            nats,
            nats_authorization: authorization,
            processes: BTreeMap::new(),
            attached: None,
        };
        for service in Service::ALL {
            let args = lab.endpoints.args(service, &storage)?;
            let binary = binaries[&service].clone();
            let log = logs.join(format!("{service}.log"));
            lab.processes.insert(
                service,
                ServiceProcess::new(service.name(), binary, args, log),
            );
        }
        // Started together, waited for together: they do not depend on each other to start.
        for process in lab.processes.values_mut() {
            process.start()?;
        }
        for service in Service::ALL {
            lab.wait_healthy(service).await?;
        }
        lab.write_state()?;
        Ok(lab)
    }

    /// Waits until the service answers SERVING, failing early with its log when it exits.
    pub async fn wait_healthy(&mut self, service: Service) -> anyhow::Result<()> {
        let channel = self.endpoints.channel(service);
        let process = self
            .processes
            .get_mut(&service)
            .context("the lab does not run this service")?;
        wait_serving(service.name(), process, channel).await
    }

    /// Starts one more purchases-async beside the lab's, with a projection of its own (its
    /// own database and durable consumers, both named after `name`), rebuilt from the first
    /// event in the streams, and waits until it serves. The caller stops it.
    pub async fn start_fresh_projection(
        &self,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<(ServiceProcess, std::net::SocketAddr)> {
        self.require_processes("starting another purchases-async")?;
        anyhow::ensure!(
            self.endpoints.nats_credentials.is_none() || PROJECTION_NAMES.contains(&name),
            "{name} is not among the projections purchases-async's NATS user may run ({PROJECTION_NAMES:?})"
        );
        let database = name.replace('-', "_");
        if let Storage::Postgres(url) = &self.storage {
            create_database(url, &format!("lab_{database}")).await?;
        }
        self.start_beside(Service::PurchasesAsync, name, |addr| {
            let mut args = self.endpoints.args_at(
                Service::PurchasesAsync,
                addr,
                Some(&database),
                &self.storage,
            )?;
            args.extend([
                "--consumer-name".into(),
                name.into(),
                // Empties what an earlier run left and resets the consumers to the first event.
                "--rebuild".into(),
            ]);
            args.extend(extra.iter().map(Into::into));
            Ok(args)
        })
        .await
    }

    /// Starts one more purchases-sync beside the lab's, on the same owners, with `extra`
    /// flags (another fan-out, hedging), and waits until it serves. The caller stops it.
    pub async fn start_sync_beside(
        &self,
        name: &str,
        extra: &[&str],
    ) -> anyhow::Result<(ServiceProcess, std::net::SocketAddr)> {
        self.require_processes("starting another purchases-sync")?;
        self.start_beside(Service::PurchasesSync, name, |addr| {
            let mut args =
                self.endpoints
                    .args_at(Service::PurchasesSync, addr, None, &self.storage)?;
            args.extend(extra.iter().map(Into::into));
            Ok(args)
        })
        .await
    }

    /// Starts a monolith of its own on the database at `database_url` (a copy), on a free
    /// port, and waits until it serves. The caller stops it.
    pub async fn start_monolith_on(
        &self,
        name: &str,
        database_url: &str,
    ) -> anyhow::Result<(ServiceProcess, std::net::SocketAddr)> {
        self.require_processes("starting another monolith")?;
        self.start_beside(Service::Monolith, name, |addr| {
            Ok(vec![
                "--listen".into(),
                addr.to_string().into(),
                "--log-format".into(),
                "json".into(),
                "--database-url".into(),
                database_url.into(),
            ])
        })
        .await
    }

    /// Starts another process of `service`'s binary beside the lab, on a free port, with
    /// the flags `args` gives for that address, and waits until it serves.
    async fn start_beside(
        &self,
        service: Service,
        name: &str,
        args: impl FnOnce(std::net::SocketAddr) -> anyhow::Result<Vec<std::ffi::OsString>>,
    ) -> anyhow::Result<(ServiceProcess, std::net::SocketAddr)> {
        let binaries = crate::binaries::locate().await?;
        let binary = binaries
            .get(&service)
            .with_context(|| format!("no {} binary", service.binary()))?
            .clone();
        let port = natsd::free_loopback_ports(1)
            .ok()
            .and_then(|ports| ports.first().copied())
            .context("no free loopback port")?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let log = self.data_dir.join("logs").join(format!("{name}.log"));
        let mut process = ServiceProcess::new(name, binary, args(addr)?, log);
        process.start()?;
        wait_serving(name, &mut process, crate::topology::channel_to(addr)).await?;
        Ok((process, addr))
    }

    /// Stops one service gracefully (a fault for the demo).
    pub async fn stop_service(&mut self, service: Service) -> anyhow::Result<()> {
        self.require_processes(&format!("stopping {service}"))?;
        if let Some(process) = self.processes.get_mut(&service) {
            process.stop().await?;
        }
        Ok(())
    }

    /// Kills one service with SIGKILL, as a crash would: no drain, no goodbye.
    pub async fn kill_service(&mut self, service: Service) -> anyhow::Result<()> {
        self.require_processes(&format!("killing {service}"))?;
        if let Some(process) = self.processes.get_mut(&service) {
            process.kill().await?;
        }
        Ok(())
    }

    /// Stops the lab's own nats-servers (their stores stay on disk). Refused when the lab
    /// runs on an external server, which is not the lab's to stop.
    pub async fn stop_nats(&mut self) -> anyhow::Result<()> {
        self.require_processes("stopping NATS")?;
        anyhow::ensure!(
            self.owns_nats(),
            "the lab runs on an external NATS server (--nats-url), which it will not stop; run without --nats-url"
        );
        for server in self.nats.servers_mut() {
            server.stop().await.context("cannot stop nats-server")?;
        }
        Ok(())
    }

    /// Starts the lab's nats-servers again, on the same ports with the same stores.
    pub async fn restart_nats(&mut self) -> anyhow::Result<()> {
        for server in self.nats.servers_mut() {
            server
                .restart()
                .await
                .context("cannot restart nats-server")?;
        }
        self.write_state()
    }

    /// Switches the lab's nats-servers' authorization off (anyone may connect and publish,
    /// as before per-service users existed) or back on, without restarting them: what the
    /// forged-event scenario needs to show the consumers' own checks.
    pub async fn set_nats_authorization(&mut self, enabled: bool) -> anyhow::Result<()> {
        self.require_processes("switching NATS's authorization")?;
        let authorization = self
            .nats_authorization
            .clone()
            .context("the lab's NATS runs without authorization (an external server?)")?;
        let wanted = enabled.then_some(authorization);
        for server in self.nats.servers_mut() {
            server
                .reload_authorization(wanted.clone())
                .await
                .context("cannot reload nats-server's configuration")?;
        }
        Ok(())
    }

    /// Whether the lab started its nats-servers itself (and so may stop them).
    pub fn owns_nats(&self) -> bool {
        !matches!(self.nats, Bus::External)
    }

    /// The lab's NATS cluster, when it runs one.
    pub fn nats_cluster_mut(&mut self) -> Option<&mut NatsCluster> {
        match &mut self.nats {
            Bus::Cluster(cluster) => Some(cluster),
            Bus::External | Bus::Single(_) => None,
        }
    }

    /// Writes lab.json again (after a process changed).
    pub fn refresh_state(&self) -> anyhow::Result<()> {
        self.write_state()
    }

    /// Restarts a service gracefully with `extra` flags added (an upgrade, or its rollback
    /// with none), and waits until it serves.
    pub async fn restart_with(&mut self, service: Service, extra: &[&str]) -> anyhow::Result<()> {
        self.require_processes(&format!("restarting {service}"))?;
        let process = self
            .processes
            .get_mut(&service)
            .context("the lab does not run this service")?;
        process.stop().await?;
        process.set_extra_args(extra.iter().map(Into::into).collect());
        process.start()?;
        self.wait_healthy(service).await?;
        self.write_state()
    }

    /// Starts a stopped service again and waits for it.
    pub async fn restart_service(&mut self, service: Service) -> anyhow::Result<()> {
        self.require_processes(&format!("restarting {service}"))?;
        if let Some(process) = self.processes.get_mut(&service) {
            process.start()?;
        }
        self.wait_healthy(service).await?;
        self.write_state()
    }

    /// The first service that has exited on its own, if any.
    pub fn crashed(&mut self) -> Option<(Service, String)> {
        self.processes
            .iter_mut()
            .find_map(|(service, process)| process.exited().map(|status| (*service, status)))
    }

    /// Readers first, owners next, NATS last: nothing is left waiting on what is gone.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        for process in self.processes.values_mut().rev() {
            if let Err(error) = process.stop().await {
                first_error.get_or_insert(anyhow::Error::from(error));
            }
        }
        for server in self.nats.servers_mut() {
            if let Err(error) = server.stop().await {
                first_error.get_or_insert(anyhow::Error::from(error));
            }
        }
        // Last: the services sent their last spans as they stopped.
        drop(self.traces.take());
        if self.attached.is_none() {
            let _ = std::fs::remove_file(state_file(&self.data_dir));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Every running process the lab started (services and nats-server), by name.
    pub fn pids(&self) -> BTreeMap<String, u32> {
        let mut pids: BTreeMap<String, u32> = self
            .processes
            .iter()
            .filter_map(|(service, process)| Some((service.name().to_owned(), process.pid()?)))
            .collect();
        match &self.nats {
            Bus::External => {}
            Bus::Single(server) => {
                if let Some(pid) = server.pid() {
                    pids.insert("nats-server".to_owned(), pid);
                }
            }
            Bus::Cluster(cluster) => {
                for (index, server) in cluster.servers().iter().enumerate() {
                    if let Some(pid) = server.pid() {
                        pids.insert(
                            format!("nats-server-{}", NatsCluster::server_name(index)),
                            pid,
                        );
                    }
                }
            }
        }
        pids
    }

    fn write_state(&self) -> anyhow::Result<()> {
        let state = LabState {
            lab_pid: std::process::id(),
            endpoints: self.endpoints.clone(),
            pids: self.pids(),
        };
        let path = state_file(&self.data_dir);
        let text = serde_json::to_string_pretty(&state)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }

    /// Where each service listens, and something to try.
    pub fn describe(&self) -> String {
        let mut text = String::from("service                    address            try\n");
        for service in Service::ALL {
            let addr = self.endpoints.addr(service);
            text.push_str(&format!(
                "{:<26} {:<18} {}\n",
                service.name(),
                addr,
                service.example(addr)
            ));
        }
        text.push_str(&format!("{:<26} {}\n", "nats", self.endpoints.nats_url));
        text.push_str(&format!(
            "{:<26} {} (users; every service has one: see lab.json)\n",
            "fault admin API",
            self.endpoints.fault_admin_addr(Service::Users)
        ));
        text.push_str(&format!(
            "{:<26} http://{}/metrics (users; every service has one: see lab.json)\n",
            "metrics",
            self.endpoints
                .metrics
                .get(&Service::Users)
                .map_or_else(String::new, ToString::to_string)
        ));
        if let Some(endpoint) = &self.endpoints.otlp_endpoint {
            text.push_str(&format!(
                "{:<26} {endpoint} (spans kept in {}; read one with `lab trace <trace-id>`)\n",
                "traces",
                crate::traces::spans_file(&self.data_dir).display()
            ));
        }
        text.push_str(&format!(
            "{:<26} {}\n",
            "logs",
            self.data_dir.join("logs").display()
        ));
        text
    }
}

/// Waits until `process` answers SERVING on `channel`, failing early with its log when it
/// exits.
async fn wait_serving(
    name: &str,
    process: &mut ServiceProcess,
    channel: tonic::transport::Channel,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + HEALTHY_WITHIN;
    let mut health = HealthClient::new(channel);
    loop {
        if let Some(status) = process.exited() {
            anyhow::bail!(
                "{name} exited while starting ({status}); the end of its log ({}):\n{}",
                process.log().display(),
                process.log_tail(20)
            );
        }
        let check = tokio::time::timeout(
            Duration::from_secs(1),
            health.check(HealthCheckRequest::default()),
        )
        .await;
        if let Ok(Ok(answer)) = check
            && answer.into_inner().status == ServingStatus::Serving as i32
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "{name} did not report SERVING within {HEALTHY_WITHIN:?}; the end of its log ({}):\n{}",
                process.log().display(),
                process.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The durable names purchases-async's NATS user may read through: its own, and the lab's
/// other projections (each started as purchases-async, under a name of its own).
pub const PROJECTION_NAMES: [&str; 3] = ["bench-catch-up", "schema-1-reader", "retention-rebuild"];

/// Every NATS identity the lab's services run as.
pub fn nats_roles() -> Vec<bus::access::Role> {
    let mut durables = vec![bus::PURCHASES_DURABLE];
    durables.extend(PROJECTION_NAMES);
    bus::access::system_roles(&durables)
}

/// Marks a data dir as the lab's, so the demo may empty it.
const MARKER: &str = ".lab-data-dir";

pub fn is_lab_data_dir(data_dir: &Path) -> bool {
    data_dir.join(MARKER).is_file()
}

pub fn refuse_if_running(data_dir: &Path) -> anyhow::Result<()> {
    let Ok(state) = LabState::read(data_dir) else {
        return Ok(());
    };
    let alive = rustix::process::Pid::from_raw(state.lab_pid.cast_signed())
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok());
    if alive && state.lab_pid != std::process::id() {
        anyhow::bail!(
            "a lab (pid {}) is already running on {}: stop it first, or use another --data-dir",
            state.lab_pid,
            data_dir.display()
        );
    }
    Ok(())
}

/// One database per service on the server, created when absent.
async fn create_databases(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::postgres::PgConnection::connect(url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    for service in Service::ALL {
        let Some(database) = service.database() else {
            continue;
        };
        create_database_on(&mut conn, &format!("lab_{database}")).await?;
    }
    Ok(())
}

async fn create_database(url: &str, name: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::postgres::PgConnection::connect(url)
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {url}"))?;
    create_database_on(&mut conn, name).await
}

async fn create_database_on(
    conn: &mut sqlx::postgres::PgConnection,
    name: &str,
) -> anyhow::Result<()> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        // The name is ours (lab_ + a fixed name), never user input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut *conn)
            .await
            .with_context(|| format!("cannot create the database {name}"))?;
    }
    Ok(())
}
