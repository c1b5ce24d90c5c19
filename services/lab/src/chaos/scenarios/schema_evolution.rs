//! schema-evolution: users and products upgraded to event schema 2 (the name split into given
//! and family name, prices with a currency) beside a purchases-async still reading schema 1,
//! then rolled back. Each reader takes what it knows; the same split done to a shared
//! database breaks its readers at once.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use tokio_util::sync::CancellationToken;

use super::{Checked, Injected, Left, Lifted, Window};
use crate::chaos::consistency::converge;
use crate::chaos::expectations::{Claim, Expectation, consistency_line, unaffected};
use crate::chaos::load::Series;
use crate::children::ServiceProcess;
use crate::seed::Seeded;
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;

/// Producers upgraded to schema 2, a schema-1 reader beside the lab's own, and a task
/// writing users and orders whose events carry the new fields.
pub(in crate::chaos) struct Evolving {
    older: Box<ServiceProcess>,
    older_addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<Vec<String>>>,
}

/// What the schema-evolution scenario leaves to check after its window.
pub(in crate::chaos) struct Evolved {
    /// The purchases-async that reads schema 1 (stopped by the caller).
    older: Box<ServiceProcess>,
    older_addr: std::net::SocketAddr,
    /// Users registered while schema 2 was published.
    users: Vec<String>,
}

/// Starts a purchases-async that reads schema 1 beside the lab's (which reads schema 2),
/// restarts users and products publishing schema 2, and writes through them until stopped.
pub(super) async fn inject(lab: &mut RunningLab) -> anyhow::Result<Injected> {
    let (older, older_addr) = lab
        .start_fresh_projection("schema-1-reader", &["--reader-schema", "1"])
        .await?;
    lab.restart_with(Service::Users, &["--event-schema", "2"])
        .await?;
    lab.restart_with(Service::Products, &["--event-schema", "2"])
        .await?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(write_schema_2(lab.endpoints.clone(), stop.clone()));
    Ok(Injected::SchemaEvolution(Evolving {
        older: Box::new(older),
        older_addr,
        stop,
        task,
    }))
}

pub(super) async fn lift(lab: &mut RunningLab, evolving: Evolving) -> anyhow::Result<Lifted> {
    let Evolving {
        older,
        older_addr,
        stop,
        task,
    } = evolving;
    stop.cancel();
    let users = task.await.context("the schema-2 writer failed")??;
    // Rolled back, so the scenarios after this one meet the lab as it was.
    lab.restart_with(Service::Users, &[]).await?;
    lab.restart_with(Service::Products, &[]).await?;
    Ok(Lifted {
        notes: vec![format!(
            "{} users registered (and a product renamed) while users and products published schema 2",
            users.len()
        )],
        left: Some(Left::Evolved(Evolved {
            older,
            older_addr,
            users,
        })),
    })
}

pub(super) fn during() -> Vec<Claim> {
    vec![
        unaffected(Series::Async, "async calls no one"),
        unaffected(Series::Writes, "orders is not restarted"),
        unaffected(Series::Monolith, "the monolith is not touched"),
        (
            Series::Sync,
            80.0,
            100.0,
            "sync misses users and products only while each restarts",
        ),
        (
            Series::Bus,
            80.0,
            100.0,
            "the bus way misses users and products only while each restarts",
        ),
    ]
}

/// Both readers answer for what was written under schema 2, each with the fields it knows;
/// the older one is stopped afterwards. Then the shared-database contrast.
pub(super) async fn check(mut evolved: Evolved, window: &Window<'_>) -> anyhow::Result<Checked> {
    let endpoints = &window.lab.endpoints;
    let compared = compare_readers(endpoints, &evolved).await;
    let older = PurchaseServiceClient::new(crate::topology::channel_to(evolved.older_addr));
    let older_consistency = converge(endpoints, &older, window.seeded, &[], Instant::now()).await;
    evolved.older.stop().await?;
    let mut checked = Checked::default();
    checked.expectations.extend(compared?);
    checked.expectations.push(Expectation {
        what: "the older purchases-async matches the owners, as the newer one does".to_owned(),
        measured: consistency_line(&older_consistency),
        met: older_consistency.ok,
    });
    match split_the_shared_schema(window.lab, window.seeded).await {
        Ok(contrast) => checked.expectations.push(contrast),
        Err(error) => checked.notes.push(format!(
            "the shared-database contrast was not run: {error:#}"
        )),
    }
    Ok(checked)
}

/// Names whose split the newer reader should show.
const EVOLVED_NAMES: [&str; 4] = [
    "Ada King Lovelace",
    "Grace Brewster Hopper",
    "Edsger Wybe Dijkstra",
    "Barbara Liskov",
];

/// Registers a user with a multi-word name and places an order for them twice a second,
/// and renames one product once, so schema-2 events of every kind flow. Returns the users.
async fn write_schema_2(
    endpoints: Endpoints,
    stop: CancellationToken,
) -> anyhow::Result<Vec<String>> {
    let mut users_client = UserServiceClient::new(endpoints.channel(Service::Users));
    let mut products_client = ProductServiceClient::new(endpoints.channel(Service::Products));
    let orders_client = OrderServiceClient::new(endpoints.channel(Service::Orders));
    let product = products_client
        .create_product(products_pb::CreateProductRequest {
            title: "Difference Engine".to_owned(),
            image_url: "https://example.com/difference-engine.png".to_owned(),
            price_cents: 1_822,
        })
        .await
        .context("products: CreateProduct under schema 2")?
        .into_inner()
        .product
        .context("CreateProduct answered without a product")?;
    products_client
        .update_product(products_pb::UpdateProductRequest {
            id: product.id.clone(),
            title: Some("Difference Engine No. 2".to_owned()),
            ..Default::default()
        })
        .await
        .context("products: UpdateProduct under schema 2")?;
    let run = platform::time::now_micros();
    let mut users = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(500));
    for index in 0.. {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let user = users_client
            .create_user(users_pb::CreateUserRequest {
                email: format!("schema2-{run}-{index}@example.com"),
                name: EVOLVED_NAMES[index % EVOLVED_NAMES.len()].to_owned(),
            })
            .await
            .context("users: CreateUser under schema 2")?
            .into_inner()
            .user
            .context("CreateUser answered without a user")?;
        crate::seed::place(
            orders_client.clone(),
            user.id.clone(),
            product.id.clone(),
            1,
            None,
        )
        .await?;
        users.push(user.id);
    }
    Ok(users)
}

/// What the two readers answer for the users written under schema 2, as expectations.
async fn compare_readers(
    endpoints: &Endpoints,
    evolved: &Evolved,
) -> anyhow::Result<Vec<Expectation>> {
    let newer = PurchaseServiceClient::new(endpoints.channel(Service::PurchasesAsync));
    let older = PurchaseServiceClient::new(crate::topology::channel_to(evolved.older_addr));
    let (mut split, mut priced, mut older_same, mut older_plain) = (0, 0, 0, 0);
    let mut example = String::new();
    for user in &evolved.users {
        let (new_user, new_purchases) = crate::measure::all_purchases(&newer, user)
            .await
            .with_context(|| format!("the newer reader on {user}"))?;
        let (old_user, old_purchases) = crate::measure::all_purchases(&older, user)
            .await
            .with_context(|| format!("the older reader on {user}"))?;
        let (new_user, old_user) = (new_user.unwrap_or_default(), old_user.unwrap_or_default());
        if !new_user.family_name.is_empty()
            && format!("{} {}", new_user.given_name, new_user.family_name) == new_user.name
        {
            split += 1;
            if example.is_empty() {
                example = format!(
                    "{:?} as given {:?}, family {:?}",
                    new_user.name, new_user.given_name, new_user.family_name
                );
            }
        }
        if new_purchases
            .iter()
            .filter_map(|purchase| purchase.product.as_ref())
            .any(|product| product.currency == "USD")
        {
            priced += 1;
        }
        let ids = |purchases: &[pb::Purchase]| {
            purchases
                .iter()
                .map(|purchase| purchase.order_id.clone())
                .collect::<Vec<_>>()
        };
        if old_user.name == new_user.name && ids(&old_purchases) == ids(&new_purchases) {
            older_same += 1;
        }
        if old_user.given_name.is_empty()
            && old_purchases
                .iter()
                .filter_map(|purchase| purchase.product.as_ref())
                .all(|product| product.currency.is_empty())
        {
            older_plain += 1;
        }
    }
    let total = evolved.users.len();
    let all = |count: usize| total > 0 && count == total;
    Ok(vec![
        Expectation {
            what: "the newer purchases-async serves the split name of every user written under schema 2".to_owned(),
            measured: format!("{split} of {total} (e.g. {example})"),
            met: all(split),
        },
        Expectation {
            what: "and the currency of the product renamed under schema 2".to_owned(),
            measured: format!("{priced} of {total} users' purchases show USD"),
            met: all(priced),
        },
        Expectation {
            what: "the older purchases-async answers the same purchases and names".to_owned(),
            measured: format!("{older_same} of {total}"),
            met: all(older_same),
        },
        Expectation {
            what: "without the fields it was built before (it skips them)".to_owned(),
            measured: format!("{older_plain} of {total} without given name or currency"),
            met: all(older_plain),
        },
    ])
}

/// The same split done to a shared database: a copy of the monolith's, with `users.name`
/// split into columns as the events split it, and a monolith started on the copy. Every
/// reader of the old column breaks at once. SQLite only (a copy is one statement there).
async fn split_the_shared_schema(lab: &RunningLab, seeded: &Seeded) -> anyhow::Result<Expectation> {
    use sqlx::Connection as _;
    let crate::topology::Storage::Sqlite(dir) = &lab.storage else {
        anyhow::bail!("shown on SQLite only");
    };
    let copy = dir.join("monolith-split-schema.db");
    let _ = std::fs::remove_file(&copy);
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.join("monolith.db").display()
    ))
    .await
    .context("open the monolith's database")?;
    // The path is the lab's own, never user input; SQLite takes no parameter here.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "VACUUM INTO '{}'",
        copy.display().to_string().replace('\'', "''")
    )))
    .execute(&mut conn)
    .await
    .context("copy the monolith's database")?;
    conn.close().await?;
    let mut conn = sqlx::sqlite::SqliteConnection::connect(&format!("sqlite://{}", copy.display()))
        .await
        .context("open the copy")?;
    for statement in [
        "ALTER TABLE users RENAME COLUMN name TO given_name",
        "ALTER TABLE users ADD COLUMN family_name TEXT NOT NULL DEFAULT ''",
    ] {
        sqlx::query(statement).execute(&mut conn).await?;
    }
    conn.close().await?;
    let (mut monolith, addr) = lab
        .start_monolith_on(
            "monolith-split-schema",
            &format!("sqlite://{}", copy.display()),
        )
        .await?;
    let user = seeded.users.first().context("no seeded user")?;
    let answer = PurchaseServiceClient::new(crate::topology::channel_to(addr))
        .list_user_purchases(pb::ListUserPurchasesRequest {
            user_id: user.monolith.clone(),
            page_size: 10,
            page_token: String::new(),
            ..Default::default()
        })
        .await;
    monolith.stop().await?;
    let _ = std::fs::remove_file(&copy);
    Ok(Expectation {
        what: "the same split in a shared database breaks its readers: the monolith, unchanged, on a copy with users.name split into given_name and family_name".to_owned(),
        measured: match &answer {
            Ok(_) => "it still answered".to_owned(),
            Err(status) => format!("ListUserPurchases failed: {:?}: {}", status.code(), status.message()),
        },
        met: answer.is_err(),
    })
}
