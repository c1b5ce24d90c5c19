//! Building the monolith from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use contracts::orders::v1::order_service_server::OrderServiceServer;
use contracts::products::v1::product_service_server::ProductServiceServer;
use contracts::purchases::v1::purchase_service_server::PurchaseServiceServer;
use contracts::users::v1::user_service_server::UserServiceServer;
use outbox::Wakeup;
use platform::db::Database;
use platform::host::ServiceHost;
use platform::server::{MAX_REQUEST_BYTES, ServiceSet};
use purchases::{Mode, PurchaseApi};

use crate::config::Config;
use crate::join::JoinSource;

/// The monolith with its one database migrated and its port bound.
#[derive(Debug)]
pub struct Application {
    host: ServiceHost,
}

/// How often the outbox rows nobody will publish are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let migrations = [
            users::migrations(),
            products::migrations(),
            orders::migrations(),
            outbox::migrations(),
        ];
        let host = ServiceHost::build(
            "monolith",
            config.listen,
            &config.database_url,
            &config.db,
            &config.common,
            migrations,
        )
        .await?;
        let db = host.database().clone();
        host.spawn(|cancel| async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(SWEEP_EVERY) => {}
                    () = cancel.cancelled() => break,
                }
                if let Err(error) = sweep_outbox(&db).await {
                    tracing::warn!(error = %platform::status::error_chain(&error), "sweeping the outbox failed");
                }
            }
        });
        Ok(Self { host })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let db = self.host.database().clone();
        // No relay: a commit's wake-up reaches no one.
        let wakeup = Wakeup::new();
        let users =
            users::grpc::UserApi::new(users::store::UserStore::new(db.clone(), wakeup.clone()));
        let products = products::grpc::ProductApi::new(products::store::ProductStore::new(
            db.clone(),
            wakeup.clone(),
        ));
        let orders = orders::grpc::OrderApi::new(orders::store::OrderStore::new(
            db.clone(),
            wakeup,
            orders::store::References::SharedDatabase,
        ));
        let purchases = PurchaseApi::new(JoinSource::new(db), Mode::Monolith);
        let services = ServiceSet::new()
            .with(UserServiceServer::new(users).max_decoding_message_size(MAX_REQUEST_BYTES))
            .with(ProductServiceServer::new(products).max_decoding_message_size(MAX_REQUEST_BYTES))
            .with(OrderServiceServer::new(orders).max_decoding_message_size(MAX_REQUEST_BYTES))
            .with(
                PurchaseServiceServer::new(purchases).max_decoding_message_size(MAX_REQUEST_BYTES),
            );
        self.host
            .serve(
                services,
                ServiceSet::new(),
                contracts::FILE_DESCRIPTOR_SET,
                shutdown,
            )
            .await
    }
}

async fn sweep_outbox(db: &Database) -> Result<(), platform::db::StoreError> {
    let mut tx = db.begin_write().await?;
    tx.execute("DELETE FROM outbox", &[]).await?;
    tx.execute("DELETE FROM outbox_pending", &[]).await?;
    tx.commit().await?;
    Ok(())
}
