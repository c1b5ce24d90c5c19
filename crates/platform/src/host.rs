//! The part of a service's start-up that is the same for every service: open and migrate its
//! database, bind its port, run its background tasks (relay, consumers), and serve its gRPC
//! services until shutdown. Shutdown order: stop serving and let in-flight requests finish,
//! then cancel the background tasks and wait for them (bounded), then close the database.

use std::future::Future;
use std::net::SocketAddr;

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{CommonArgs, DatabaseArgs};
use crate::db::{Database, Migrations};
use crate::server::{GrpcServer, ServiceSet};

/// A service process with its database open and migrated and its port bound.
#[derive(Debug)]
pub struct ServiceHost {
    name: &'static str,
    server: GrpcServer,
    db: Database,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

/// How long background tasks get to finish what they are doing after the server stopped.
/// Whatever they leave undone is redone after the next start (outbox rows stay unpublished,
/// unacknowledged events are redelivered), so the bound costs work, never data.
const TASK_GRACE: Duration = Duration::from_secs(5);

impl ServiceHost {
    pub async fn build(
        name: &'static str,
        listen: SocketAddr,
        database_url: &str,
        database: &DatabaseArgs,
        common: &CommonArgs,
        migrations: impl IntoIterator<Item = Migrations>,
    ) -> anyhow::Result<Self> {
        let db = Database::connect(&database.database_config(database_url))
            .await
            .with_context(|| format!("open the {name} database"))?;
        db.migrate(migrations)
            .await
            .with_context(|| format!("migrate the {name} database"))?;
        let server = GrpcServer::bind(listen, common.server_settings())
            .with_context(|| format!("bind {listen}"))?;
        tracing::info!(service = name, addr = %server.local_addr(), admin = ?server.admin_addr(), backend = ?db.backend(), "listening");
        Ok(Self {
            name,
            server,
            db,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where the admin APIs listen, when the service was started with them.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.server.admin_addr()
    }

    /// Where its metrics are served, when it was started with them.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    /// Also answers the service's questions on the bus (`bus::ask`) while it serves, as the
    /// NATS user `client` is connected as.
    pub fn answer_on_bus(&mut self, client: async_nats::Client) {
        self.server.answer_on_bus(crate::answers::BusAnswers {
            client,
            owner: self.name,
        });
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs a background task for the life of the service. It must return soon after the
    /// token it is given is cancelled.
    pub fn spawn<F, Fut>(&self, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task(self.cancel.child_token()));
    }

    /// Serves until `shutdown` completes and in-flight requests finish, then stops the
    /// background tasks and closes the pool.
    pub async fn serve(
        self,
        services: ServiceSet,
        admin: ServiceSet,
        descriptor_set: &'static [u8],
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let served = self
            .server
            .serve(services, admin, descriptor_set, shutdown)
            .await;
        self.cancel.cancel();
        self.tasks.close();
        if tokio::time::timeout(TASK_GRACE, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(service = self.name, grace = ?TASK_GRACE, "background tasks did not stop in time");
        }
        self.db.close().await;
        served.with_context(|| format!("serve {} over gRPC", self.name))
    }
}
