//! Building the service from its configuration and running it until asked to stop.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use consumer::{Consumer, ConsumerSpec};
use contracts::purchases::v1::purchase_service_server::PurchaseServiceServer;
use platform::host::ServiceHost;
use platform::server::{MAX_REQUEST_BYTES, ServiceSet};
use purchases::{Mode, PurchaseApi};

use crate::config::{Config, ReadFrom};
use crate::projection::{Products, Purchases, STREAMS, Users};
use crate::store::ProjectionReader;
use crate::view::View;

/// purchases-async with its database migrated, its consumers running and its port bound.
#[derive(Debug)]
pub struct Application {
    host: ServiceHost,
    reader: ProjectionReader,
    /// Replay the consumers' dead letters, for the admin API.
    replayers: Vec<std::sync::Arc<dyn consumer::Replayer>>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let waiting_reads = config.waiting_reads().map_err(anyhow::Error::msg)?;
        let migrations = [crate::migrations(), consumer::migrations()];
        let host = ServiceHost::build(
            "purchases-async",
            config.listen,
            &config.database_url,
            &config.db,
            &config.common,
            migrations,
        )
        .await?;
        let nats = platform::nats::connect(&config.nats, "purchases-async").await?;
        let db = host.database().clone();
        if config.rebuild {
            rebuild(&db, &nats, &config.consumer_name).await?;
        }
        let view = View::load(db.clone())
            .await
            .context("load the projection into memory")?;
        let [users, products, orders] = STREAMS;
        let users = Consumer::new(
            db.clone(),
            nats.clone(),
            ConsumerSpec::new(config.consumer_name.clone(), users),
            Users {
                view: view.clone(),
                reader_schema: config.reader_schema,
            },
        );
        let products = Consumer::new(
            db.clone(),
            nats.clone(),
            ConsumerSpec::new(config.consumer_name.clone(), products),
            Products {
                view: view.clone(),
                reader_schema: config.reader_schema,
            },
        );
        let purchases = Purchases::prepare(db.clone(), view.clone())
            .await
            .context("look at the purchases-by-user index")?;
        let orders = Consumer::new(
            db.clone(),
            nats,
            ConsumerSpec::new(config.consumer_name.clone(), orders),
            purchases,
        );
        let (users, products, orders) =
            tokio::try_join!(users, products, orders).context("read the projection's positions")?;
        let reader = ProjectionReader::new(
            db,
            (config.read_from == ReadFrom::Memory).then_some(view),
            vec![
                (STREAMS[0], users.status()),
                (STREAMS[1], products.status()),
                (STREAMS[2], orders.status()),
            ],
            waiting_reads,
        );
        let replayers = vec![users.replayer(), products.replayer(), orders.replayer()];
        host.spawn(|cancel| users.run(cancel));
        host.spawn(|cancel| products.run(cancel));
        host.spawn(|cancel| orders.run(cancel));
        Ok(Self {
            host,
            reader,
            replayers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.host.local_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.host.admin_addr()
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.host.metrics_addr()
    }

    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let admin = ServiceSet::new().with(
            consumer::admin::DeadLetterApi::new(self.host.database().clone(), self.replayers)
                .into_server(),
        );
        let api = PurchaseApi::new(self.reader, Mode::Async);
        let services = ServiceSet::new()
            .with(PurchaseServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
        self.host
            .serve(services, admin, contracts::FILE_DESCRIPTOR_SET, shutdown)
            .await
    }
}

/// Empties the projection and deletes the durable consumers, so they are created afresh and
/// deliver every stream from its first event. Needs NATS: a rebuild that could not reset the
/// consumers would resume where they stood and leave the projection half empty.
async fn rebuild(
    db: &platform::db::Database,
    nats: &async_nats::Client,
    consumer_name: &str,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(nats.clone());
    for stream in STREAMS {
        match js.get_stream(stream).await {
            Ok(stream) => {
                // Absent already is fine.
                let _ = stream.delete_consumer(consumer_name).await;
            }
            Err(error) => {
                use async_nats::jetstream::context::GetStreamErrorKind;
                anyhow::ensure!(
                    matches!(error.kind(), GetStreamErrorKind::JetStream(_)),
                    "cannot reach NATS to reset the {stream} consumer for the rebuild: {error}"
                );
            }
        }
    }
    let mut tx = db.begin_write().await?;
    for table in ["p_purchases", "p_products", "p_users"] {
        tx.execute(&format!("DELETE FROM {table}"), &[]).await?;
    }
    consumer::reset(&mut tx, consumer_name).await?;
    tx.commit().await?;
    tracing::info!("projection emptied; replaying USERS, PRODUCTS and ORDERS from the start");
    Ok(())
}
