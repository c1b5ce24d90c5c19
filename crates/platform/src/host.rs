//! The part of a service's start-up that is the same for every service: open and migrate its
//! database, bind its port, and later serve its gRPC services until shutdown, closing the
//! database after the last request.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;

use crate::config::CommonArgs;
use crate::db::{Database, Migrations};
use crate::server::{GrpcServer, ServiceSet};

/// A service process with its database open and migrated and its port bound.
#[derive(Debug)]
pub struct ServiceHost {
    name: &'static str,
    server: GrpcServer,
    db: Database,
}

impl ServiceHost {
    pub async fn build(
        name: &'static str,
        listen: SocketAddr,
        database_url: &str,
        common: &CommonArgs,
        migrations: impl IntoIterator<Item = Migrations>,
    ) -> anyhow::Result<Self> {
        let db = Database::connect(&common.database_config(database_url))
            .await
            .with_context(|| format!("open the {name} database"))?;
        db.migrate(migrations)
            .await
            .with_context(|| format!("migrate the {name} database"))?;
        let server = GrpcServer::bind(listen, common.server_settings())
            .with_context(|| format!("bind {listen}"))?;
        tracing::info!(service = name, addr = %server.local_addr(), backend = ?db.backend(), "listening");
        Ok(Self { name, server, db })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Serves until `shutdown` completes and in-flight requests finish, then closes the pool.
    pub async fn serve(
        self,
        services: ServiceSet,
        descriptor_set: &'static [u8],
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let served = self.server.serve(services, descriptor_set, shutdown).await;
        self.db.close().await;
        served.with_context(|| format!("serve {} over gRPC", self.name))
    }
}
