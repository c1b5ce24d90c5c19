//! `lab bench fanout`: the tail a wider fan-out pays, measured against the law of "The Tail
//! at Scale" (Dean and Barroso, 2013): if each call is slow with probability p, a request that
//! waits for k of them is slow with probability 1-(1-p)^k.
//!
//! On a fresh lab, products is slowed by `delay` on a seeded fraction p of its calls, and
//! four ways answer the same users at a fixed moderate rate for each width k (the page size;
//! every seeded user has bought as many distinct products as the widest page): purchases-sync
//! with the per-item fan-out (k GetProduct calls per request), the same hedged (a call not
//! answered within `hedge_after` is sent again, the first answer wins), the batch fan-out
//! (one BatchGetProducts, width 1 for products whatever k), and purchases-async (no call at
//! all). A request counts as slow when it took at least the injected delay. Hedging's cost is
//! counted on the owner's side: the GetProduct calls products served beyond one per product.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use contracts::fault::v1 as fault_pb;
use contracts::fault::v1::fault_admin_client::FaultAdminClient;
use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_client::PurchaseServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;

use crate::measure::micros;
use crate::report::{Chart, escape, html_table, line_chart, page, table};
use crate::topology::Service;
use crate::up::RunningLab;

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// The share p of products' calls that are slowed, between 0 and 1.
    #[arg(long, default_value_t = 0.02, value_parser = fraction)]
    pub slow_fraction: f64,
    /// How much a slowed call is slowed, in milliseconds: well above a request's own
    /// latency at the widest page, so that "slow" means "met a slowed call".
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=5_000))]
    pub delay_ms: u32,
    /// Requests per second offered to each way at each width.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=2_000))]
    pub rate: u32,
    /// Requests per way and width (more narrows the sampling error).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(10..=1_000_000))]
    pub requests: u32,
    /// The widths k (page sizes) to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 5, 10, 20, 50])]
    pub widths: Vec<u32>,
    /// The hedged fan-out sends a call again after this many milliseconds without an answer.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=5_000))]
    pub hedge_after_ms: u64,
    /// Users seeded, each with as many purchases of distinct products as the widest page.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub fanout_users: u32,
    /// Seeds which calls the fault slows, so a run can be repeated.
    #[arg(long, default_value_t = 42)]
    pub fault_seed: u64,
    /// Where to write the results (default: fanout.json in the data dir).
    #[arg(long)]
    pub fanout_json: Option<PathBuf>,
}

fn fraction(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{raw:?} is not a fraction between 0 and 1")),
    }
}

/// The ways compared, as `fanout.json` names them.
const PER_ITEM: &str = "per-item";
const HEDGED: &str = "per-item-hedged";
const BATCH: &str = "batch";
const ASYNC: &str = "async";

/// What `fanout.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub generated_at: String,
    pub machine: String,
    pub storage: String,
    /// p: the share of products' calls slowed.
    pub slow_fraction: f64,
    pub delay_ms: u32,
    pub hedge_after_ms: u64,
    pub rate: u32,
    pub requests: u32,
    pub fault_seed: u64,
    /// One entry per width k.
    pub widths: Vec<Width>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Width {
    pub k: u32,
    /// `per-item`, `per-item-hedged`, `batch`, `async`.
    pub ways: BTreeMap<String, WayFigures>,
    /// What hedging cost at this width, counted by products.
    pub hedging: HedgeCost,
}

#[derive(Debug, Clone, Serialize)]
pub struct WayFigures {
    pub requests: u64,
    pub errors: u64,
    /// Answered requests that took at least the injected delay.
    pub slow: u64,
    pub slow_fraction: f64,
    /// What the law predicts for this way: 1-(1-p)^k per item, 1-(1-p^2)^k hedged (a call is
    /// slow only when both attempts are), p for the batch (one products call), 0 for async.
    pub predicted: f64,
    /// The binomial standard error of a fraction `predicted` over these requests.
    pub standard_error: f64,
    /// Whether the measured fraction lies within three standard errors of the prediction.
    pub within_sampling_error: bool,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Failed requests by status code, each with an example message.
    pub errors_by_code: BTreeMap<String, (u64, String)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HedgeCost {
    /// GetProduct calls the hedged requests needed: one per distinct product.
    pub calls_needed: u64,
    /// GetProduct calls products served during them.
    pub calls_served: u64,
    /// Calls served beyond those needed, over those needed.
    pub extra_fraction: f64,
    /// About p: a call is sent again when its first attempt is slow.
    pub predicted_extra: f64,
}

/// The law's prediction for a way at width k.
pub fn predicted(way: &str, p: f64, k: u32) -> f64 {
    let k = i32::try_from(k).unwrap_or(i32::MAX);
    match way {
        PER_ITEM => 1.0 - (1.0 - p).powi(k),
        HEDGED => 1.0 - (1.0 - p * p).powi(k),
        BATCH => p,
        _ => 0.0,
    }
}

/// Runs the whole experiment on a fresh lab the caller brought up.
pub async fn run(
    lab: &RunningLab,
    args: &FanoutArgs,
    storage: &str,
) -> anyhow::Result<FanoutReport> {
    lab.require_processes("lab bench fanout (it starts two more purchases-sync)")?;
    let mut widths = args.widths.clone();
    widths.sort_unstable();
    widths.dedup();
    anyhow::ensure!(
        widths.first().is_some_and(|k| *k >= 1) && widths.last().is_some_and(|k| *k <= 1_000),
        "--widths must be page sizes from 1 to 1000"
    );
    let widest = *widths.last().unwrap_or(&1);
    let users = seed(lab, args.fanout_users, widest).await?;
    println!(
        "Seeded {} users with {widest} purchases of distinct products each.",
        users.len()
    );

    let hedge = args.hedge_after_ms.to_string();
    let (mut per_item_process, per_item_addr) = lab
        .start_sync_beside("purchases-sync-per-item", &["--fanout", "per-item"])
        .await?;
    let (mut hedged_process, hedged_addr) = lab
        .start_sync_beside(
            "purchases-sync-hedged",
            &["--fanout", "per-item", "--hedge-after-ms", &hedge],
        )
        .await?;
    let ways: Vec<(&str, PurchaseServiceClient<Channel>)> = vec![
        (PER_ITEM, client(per_item_addr)),
        (HEDGED, client(hedged_addr)),
        (
            BATCH,
            PurchaseServiceClient::new(lab.endpoints.channel(Service::PurchasesSync)),
        ),
        (
            ASYNC,
            PurchaseServiceClient::new(lab.endpoints.channel(Service::PurchasesAsync)),
        ),
    ];
    let metrics = lab
        .endpoints
        .metrics
        .get(&Service::Products)
        .copied()
        .context("products serves no metrics, so hedging's cost cannot be counted")?;

    slow_products(lab, args).await?;
    let measured = measure(&ways, &users, &widths, args, metrics).await;
    let cleared = clear_faults(lab).await;
    let stopped = (per_item_process.stop().await, hedged_process.stop().await);
    cleared?;
    stopped.0?;
    stopped.1?;
    Ok(FanoutReport {
        generated_at: crate::report::now_rfc3339(),
        machine: crate::report::machine(),
        storage: storage.to_owned(),
        slow_fraction: args.slow_fraction,
        delay_ms: args.delay_ms,
        hedge_after_ms: args.hedge_after_ms,
        rate: args.rate,
        requests: args.requests,
        fault_seed: args.fault_seed,
        widths: measured?,
    })
}

fn client(addr: std::net::SocketAddr) -> PurchaseServiceClient<Channel> {
    PurchaseServiceClient::new(crate::topology::channel_to(addr))
}

async fn measure(
    ways: &[(&str, PurchaseServiceClient<Channel>)],
    users: &[String],
    widths: &[u32],
    args: &FanoutArgs,
    metrics: std::net::SocketAddr,
) -> anyhow::Result<Vec<Width>> {
    let delay = Duration::from_millis(args.delay_ms.into());
    let mut results = Vec::new();
    for &k in widths {
        let mut figures = BTreeMap::new();
        let mut hedging = None;
        for (way, client) in ways {
            println!(
                "k = {k}: {} requests to {way} at {}/s...",
                args.requests, args.rate
            );
            let served_before = served_get_product_calls(metrics).await?;
            let run = load(client, users, k, args).await;
            let served = served_get_product_calls(metrics).await? - served_before;
            if *way == HEDGED {
                let needed = run.answered * u64::from(k);
                hedging = Some(HedgeCost {
                    calls_needed: needed,
                    calls_served: served,
                    extra_fraction: ratio(served.saturating_sub(needed), needed),
                    predicted_extra: args.slow_fraction,
                });
            }
            figures.insert(
                (*way).to_owned(),
                run.figures(predicted(way, args.slow_fraction, k), delay),
            );
        }
        results.push(Width {
            k,
            ways: figures,
            hedging: hedging.context("the hedged way ran")?,
        });
    }
    Ok(results)
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// What one way did at one width.
struct Run {
    latency: Histogram<u64>,
    answered: u64,
    errors: u64,
    /// Failed requests by status code, with the first message of each.
    error_codes: BTreeMap<String, (u64, String)>,
}

impl Run {
    fn figures(&self, predicted: f64, delay: Duration) -> WayFigures {
        let slow = self
            .latency
            .iter_recorded()
            .filter(|value| value.value_iterated_to() >= micros(delay))
            .map(|value| value.count_at_value())
            .sum::<u64>();
        let measured = ratio(slow, self.answered);
        let standard_error = if self.answered == 0 {
            0.0
        } else {
            (predicted * (1.0 - predicted) / self.answered as f64).sqrt()
        };
        WayFigures {
            requests: self.answered + self.errors,
            errors: self.errors,
            slow,
            slow_fraction: measured,
            predicted,
            standard_error,
            // A floor of one request's share, so a prediction of 0 or 1 is not held to
            // exactly nothing.
            within_sampling_error: (measured - predicted).abs()
                <= 3.0 * standard_error + 1.0 / self.answered.max(1) as f64,
            p50_us: self.latency.value_at_quantile(0.5),
            p99_us: self.latency.value_at_quantile(0.99),
            max_us: self.latency.max(),
            errors_by_code: self.error_codes.clone(),
        }
    }
}

/// `args.requests` requests at `args.rate` per second, open loop (each sent when due, so a
/// slow answer does not delay the next), latency counted from when each was due.
async fn load(
    client: &PurchaseServiceClient<Channel>,
    users: &[String],
    k: u32,
    args: &FanoutArgs,
) -> Run {
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..args.requests {
        let due = started + interval.mul_f64(f64::from(n));
        tokio::time::sleep_until(due.into()).await;
        let mut client = client.clone();
        let user = users[n as usize % users.len()].clone();
        calls.spawn(async move {
            let mut request = tonic::Request::new(pb::ListUserPurchasesRequest {
                user_id: user,
                page_size: i32::try_from(k).unwrap_or(i32::MAX),
                page_token: String::new(),
                ..Default::default()
            });
            request.set_timeout(Duration::from_secs(5));
            let answered = client.list_user_purchases(request).await;
            (answered.map(drop), due.elapsed())
        });
    }
    let mut run = Run {
        latency: crate::measure::micros_histogram(),
        answered: 0,
        errors: 0,
        error_codes: BTreeMap::new(),
    };
    while let Some(done) = calls.join_next().await {
        let (code, message) = match done {
            Ok((Ok(()), took)) => {
                run.answered += 1;
                run.latency.saturating_record(micros(took));
                continue;
            }
            Ok((Err(status), _)) => (format!("{:?}", status.code()), status.message().to_owned()),
            Err(error) => ("Panicked".to_owned(), error.to_string()),
        };
        run.errors += 1;
        let entry = run.error_codes.entry(code).or_insert((0, message));
        entry.0 += 1;
    }
    run
}

/// Slows a seeded share of products' calls.
async fn slow_products(lab: &RunningLab, args: &FanoutArgs) -> anyhow::Result<()> {
    FaultAdminClient::new(lab.endpoints.fault_admin_channel(Service::Products))
        .set_faults(fault_pb::SetFaultsRequest {
            faults: vec![fault_pb::Fault {
                latency_ms: args.delay_ms,
                latency_fraction: Some(args.slow_fraction),
                seed: Some(args.fault_seed),
                ..fault_pb::Fault::default()
            }],
        })
        .await
        .context("cannot slow products through its fault admin API")?;
    Ok(())
}

async fn clear_faults(lab: &RunningLab) -> anyhow::Result<()> {
    FaultAdminClient::new(lab.endpoints.fault_admin_channel(Service::Products))
        .clear_faults(fault_pb::ClearFaultsRequest {})
        .await
        .context("cannot clear products' faults")?;
    Ok(())
}

/// GetProduct calls products has received (answered, or cancelled by a hedging caller), by
/// its own metrics.
async fn served_get_product_calls(metrics: std::net::SocketAddr) -> anyhow::Result<u64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(metrics)
        .await
        .with_context(|| format!("cannot reach products' metrics on {metrics}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|line| {
            line.starts_with(platform::telemetry::metrics::SERVER_RECEIVED)
                && line.contains("rpc_method=\"products.v1.ProductService/GetProduct\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|count| count as u64)
        .sum())
}

/// Users who each bought `per_user` distinct products, placed through the public APIs, once
/// purchases-async holds them all.
async fn seed(lab: &RunningLab, users: u32, per_user: u32) -> anyhow::Result<Vec<String>> {
    let endpoints = &lab.endpoints;
    let mut products = ProductServiceClient::new(endpoints.channel(Service::Products));
    let mut product_ids = Vec::new();
    for n in 0..per_user {
        let product = products
            .create_product(products_pb::CreateProductRequest {
                title: format!("Fan-out item {n}"),
                image_url: format!("https://img.example.com/fanout/{n}.png"),
                price_cents: 100 + i64::from(n),
            })
            .await
            .context("create a product")?
            .into_inner()
            .product
            .context("an answer without its product")?;
        product_ids.push(product.id);
    }
    let mut accounts = UserServiceClient::new(endpoints.channel(Service::Users));
    let run = crate::report::now_rfc3339().replace([':', '-'], "");
    let mut user_ids = Vec::new();
    for n in 0..users {
        let user = accounts
            .create_user(users_pb::CreateUserRequest {
                email: format!("fanout-{run}-{n}@example.com"),
                name: format!("Fan-out user {n}"),
            })
            .await
            .context("register a user")?
            .into_inner()
            .user
            .context("an answer without its user")?;
        user_ids.push(user.id);
    }
    let product_ids = Arc::new(product_ids);
    let mut placing = tokio::task::JoinSet::new();
    for user in user_ids.clone() {
        let orders = OrderServiceClient::new(endpoints.channel(Service::Orders));
        let product_ids = Arc::clone(&product_ids);
        placing.spawn(async move {
            for product in product_ids.iter() {
                place(&orders, &user, product).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(placed) = placing.join_next().await {
        placed.context("a seeding task panicked")??;
    }
    wait_until_projected(lab, &user_ids, per_user as usize).await?;
    Ok(user_ids)
}

/// Places one order, waiting out orders' replica learning of a new user or product.
async fn place(
    orders: &OrderServiceClient<Channel>,
    user: &str,
    product: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let placed = orders
            .clone()
            .place_order(orders_pb::PlaceOrderRequest {
                user_id: user.to_owned(),
                product_id: product.to_owned(),
                quantity: 1,
            })
            .await;
        match placed {
            Ok(_) => return Ok(()),
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => anyhow::bail!("cannot place an order: {status:?}"),
        }
    }
}

async fn wait_until_projected(
    lab: &RunningLab,
    users: &[String],
    purchases: usize,
) -> anyhow::Result<()> {
    let asynchronous = PurchaseServiceClient::new(lab.endpoints.channel(Service::PurchasesAsync));
    let deadline = Instant::now() + Duration::from_secs(120);
    for user in users {
        loop {
            let held = crate::measure::all_purchases(&asynchronous, user)
                .await
                .map(|(_, all)| all.len());
            if held.as_ref().is_ok_and(|held| *held == purchases) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "purchases-async did not hold user {user}'s {purchases} purchases within 120 s ({held:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

const HEADERS: [&str; 9] = [
    "k",
    "way",
    "slow (measured)",
    "predicted",
    "within 3 SE",
    "p50 us",
    "p99 us",
    "errors",
    "hedged calls",
];

fn rows(report: &FanoutReport) -> Vec<[String; 9]> {
    let mut rows = Vec::new();
    for width in &report.widths {
        for (way, figures) in &width.ways {
            rows.push([
                width.k.to_string(),
                way.clone(),
                format!("{:.2}%", figures.slow_fraction * 100.0),
                format!(
                    "{:.2}% ± {:.2}",
                    figures.predicted * 100.0,
                    figures.standard_error * 300.0
                ),
                if figures.within_sampling_error {
                    "yes".to_owned()
                } else {
                    "NO".to_owned()
                },
                figures.p50_us.to_string(),
                figures.p99_us.to_string(),
                if figures.errors == 0 {
                    "0".to_owned()
                } else {
                    figures
                        .errors_by_code
                        .iter()
                        .map(|(code, (count, _))| format!("{count} {code}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                if way == HEDGED {
                    format!(
                        "+{:.2}% (p = {:.2}%)",
                        width.hedging.extra_fraction * 100.0,
                        width.hedging.predicted_extra * 100.0
                    )
                } else {
                    String::new()
                },
            ]);
        }
    }
    rows
}

fn heading(report: &FanoutReport) -> String {
    format!(
        "products slowed by {} ms on {:.1}% of its calls (seed {}); {} requests per way and width at {}/s; hedged after {} ms; measured {} on {}, {}",
        report.delay_ms,
        report.slow_fraction * 100.0,
        report.fault_seed,
        report.requests,
        report.rate,
        report.hedge_after_ms,
        report.generated_at,
        report.machine,
        report.storage
    )
}

pub fn terminal(report: &FanoutReport) -> String {
    format!(
        "\nFan-out at scale: {}.\nA request is slow when it took at least the injected delay; the law predicts 1-(1-p)^k per item.\n{}",
        heading(report),
        table(&HEADERS, &rows(report))
    )
}

fn html(report: &FanoutReport) -> String {
    let series = |way: &str, pick: &dyn Fn(&WayFigures) -> f64| -> Vec<(f64, f64)> {
        report
            .widths
            .iter()
            .filter_map(|width| Some((f64::from(width.k), pick(width.ways.get(way)?))))
            .collect()
    };
    let fractions: Vec<(String, Vec<(f64, f64)>)> = vec![
        (
            "per-item, measured".to_owned(),
            series(PER_ITEM, &|f| f.slow_fraction * 100.0),
        ),
        (
            "1-(1-p)^k".to_owned(),
            series(PER_ITEM, &|f| f.predicted * 100.0),
        ),
        (
            "hedged, measured".to_owned(),
            series(HEDGED, &|f| f.slow_fraction * 100.0),
        ),
        (
            "1-(1-p^2)^k".to_owned(),
            series(HEDGED, &|f| f.predicted * 100.0),
        ),
        (
            "batch".to_owned(),
            series(BATCH, &|f| f.slow_fraction * 100.0),
        ),
        (
            "async".to_owned(),
            series(ASYNC, &|f| f.slow_fraction * 100.0),
        ),
    ];
    let p99: Vec<(String, Vec<(f64, f64)>)> = [PER_ITEM, HEDGED, BATCH, ASYNC]
        .iter()
        .map(|way| {
            (
                (*way).to_owned(),
                series(way, &|f| f.p99_us as f64 / 1_000.0),
            )
        })
        .collect();
    let body = format!(
        r#"<h1>Fan-out at scale</h1>
<p>{heading}.</p>
<p>If each call is slow with probability p, a request that waits for k calls is slow with
probability 1-(1-p)^k ("The Tail at Scale"). The per-item fan-out makes k calls to products;
hedging sends a call again when it has not answered in time, so a call is slow only when both
attempts are; the batch fan-out makes one call whatever k; purchases-async makes none.</p>
<h2>Share of requests slower than the injected delay, against k</h2>
{fractions}
<h2>p99 latency against k</h2>
{p99}
<h2>Every width</h2>
{table}
"#,
        heading = escape(&heading(report)),
        fractions = line_chart(
            &fractions,
            &Chart {
                y_range: Some((0.0, 100.0)),
                log_y: false,
                ..Chart::log_log("k (calls to products per request)", "slow requests %")
            }
        ),
        p99 = line_chart(
            &p99,
            &Chart::log_log("k (calls to products per request)", "p99 ms")
        ),
        table = html_table(&HEADERS, &rows(report)),
    );
    page("Fan-out at scale", &body)
}

/// Writes `fanout.json` (or `--fanout-json`) and `fanout.html`; returns their paths.
pub fn write(
    report: &FanoutReport,
    data_dir: &Path,
    json: Option<&Path>,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let json_path = json.map_or_else(|| data_dir.join("fanout.json"), Path::to_path_buf);
    let html_path = data_dir.join("fanout.html");
    std::fs::write(&json_path, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&html_path, html(report))
        .with_context(|| format!("cannot write {}", html_path.display()))?;
    Ok((json_path, html_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_law_predicts_a_wider_fan_out_slower_and_hedging_and_batching_flat() {
        let p = 0.01;
        assert!((predicted(PER_ITEM, p, 1) - 0.01).abs() < 1e-12);
        assert!((predicted(PER_ITEM, p, 50) - 0.395).abs() < 0.001);
        assert!(predicted(HEDGED, p, 50) < 0.006);
        assert_eq!(predicted(BATCH, p, 50), p);
        assert_eq!(predicted(ASYNC, p, 50), 0.0);
    }

    #[test]
    fn a_measured_share_is_judged_against_its_sampling_error() {
        let mut latency = crate::measure::micros_histogram();
        for n in 0..1_000_u64 {
            // 40 of 1,000 at the delay or more.
            latency
                .record(if n < 40 { 25_000 } else { 900 })
                .expect("recorded");
        }
        let run = Run {
            latency,
            answered: 1_000,
            errors: 0,
            error_codes: BTreeMap::new(),
        };
        let delay = Duration::from_millis(20);
        let near = run.figures(0.05, delay);
        assert_eq!(near.slow, 40);
        assert!(near.within_sampling_error, "{near:?}");
        assert!(!run.figures(0.2, delay).within_sampling_error);
    }
}
