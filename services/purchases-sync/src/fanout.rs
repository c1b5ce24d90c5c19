//! The fan-out: three dependencies called at request time, each through a bounded,
//! load-shedding channel, each call under the tighter of its own timeout and what is left of
//! the caller's deadline.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use platform::paging::Cursor;
use platform::telemetry::rpc::ClientCall;
use purchases::{
    Dependency, Freshness, OrderStatus, Page, ProductView, PurchaseSource, PurchaseView,
    PurchasesError, Query, UserView,
};
use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::Fanout;

/// A channel that refuses a call at once when `limit` calls are already in flight, so an
/// overloaded dependency produces fast failures instead of a growing queue.
type Bounded = LoadShed<ConcurrencyLimit<Channel>>;

#[derive(Debug, Clone)]
pub struct FanoutSource {
    users: UserServiceClient<Bounded>,
    orders: OrderServiceClient<Bounded>,
    products: ProductServiceClient<Bounded>,
    fanout: Fanout,
    call_timeout: Duration,
    limit: usize,
}

/// Most of a caller's deadline kept back to answer with before it expires.
const ANSWER_MARGIN: Duration = Duration::from_millis(20);

/// How a call to a dependency failed.
#[derive(Debug)]
enum Failure {
    Status(tonic::Status),
    TimedOut(Duration),
    DeadlinePassed,
}

/// Settings for [`FanoutSource::new`].
#[derive(Debug, Clone)]
pub struct Dependencies {
    pub users_url: String,
    pub orders_url: String,
    pub products_url: String,
    pub fanout: Fanout,
    pub call_timeout: Duration,
    pub max_calls_per_dependency: usize,
}

impl FanoutSource {
    /// Channels connect lazily and reconnect by themselves: purchases-sync starts whether or
    /// not its dependencies are up, and its answers say when they are not.
    pub fn new(dependencies: &Dependencies) -> Result<Self, tonic::transport::Error> {
        let bounded = |url: &str| -> Result<Bounded, tonic::transport::Error> {
            let channel = Endpoint::from_shared(url.to_owned())?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .connect_lazy();
            Ok(ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(dependencies.max_calls_per_dependency)
                .service(channel))
        };
        Ok(Self {
            users: UserServiceClient::new(bounded(&dependencies.users_url)?),
            orders: OrderServiceClient::new(bounded(&dependencies.orders_url)?),
            products: ProductServiceClient::new(bounded(&dependencies.products_url)?),
            fanout: dependencies.fanout,
            call_timeout: dependencies.call_timeout,
            limit: dependencies.max_calls_per_dependency,
        })
    }

    /// The time a call may take: its own timeout, or what is left of the caller's deadline.
    fn budget(&self, deadline: Option<Instant>) -> Duration {
        match deadline {
            Some(deadline) => self
                .call_timeout
                .min(deadline.saturating_duration_since(Instant::now())),
            None => self.call_timeout,
        }
    }

    /// Makes one call under its budget, in a client span whose context the call carries, and
    /// counts it by outcome. The raw status is kept for the caller, which may give some codes
    /// a meaning of its own (NOT_FOUND from users).
    async fn call<Req, T, F, Fut>(
        &self,
        dependency: Dependency,
        (service, method): (&'static str, &'static str),
        deadline: Option<Instant>,
        message: Req,
        send: F,
    ) -> Result<T, Failure>
    where
        F: FnOnce(tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let budget = self.budget(deadline);
        if budget.is_zero() {
            return Err(Failure::DeadlinePassed);
        }
        let mut request = tonic::Request::new(message);
        request.set_timeout(budget);
        let call = ClientCall::start(dependency.name(), service, method, &mut request);
        let answered = tokio::time::timeout(budget, send(request))
            .instrument(call.span().clone())
            .await;
        let (outcome, result) = match answered {
            Ok(Ok(response)) => (Outcome::Code(tonic::Code::Ok), Ok(response.into_inner())),
            Ok(Err(status)) if is_overloaded(&status) => {
                (Outcome::Overloaded, Err(Failure::Status(status)))
            }
            Ok(Err(status)) if is_unreachable(&status) => {
                (Outcome::Unreachable, Err(Failure::Status(status)))
            }
            Ok(Err(status)) => (Outcome::Code(status.code()), Err(Failure::Status(status))),
            Err(_) => (Outcome::TimedOut, Err(Failure::TimedOut(budget))),
        };
        match outcome {
            Outcome::Code(code) => call.finish(Some(code), code_label(code)),
            Outcome::Overloaded => call.finish(None, "overloaded"),
            Outcome::Unreachable => call.finish(None, "unreachable"),
            Outcome::TimedOut => call.finish(None, "deadline_exceeded"),
        }
        result
    }

    fn error(&self, dependency: Dependency, failure: Failure) -> PurchasesError {
        match failure {
            Failure::DeadlinePassed => PurchasesError::DependencyTimedOut {
                dependency,
                detail: "the caller's deadline passed before the call".into(),
            },
            Failure::TimedOut(budget) => PurchasesError::DependencyTimedOut {
                dependency,
                detail: format!("no answer within {} ms", budget.as_millis()),
            },
            Failure::Status(status) if is_overloaded(&status) => {
                PurchasesError::DependencyOverloaded {
                    dependency,
                    limit: self.limit,
                }
            }
            Failure::Status(status) => {
                let detail = format!("{:?}: {}", status.code(), status.message());
                match status.code() {
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                        PurchasesError::DependencyTimedOut { dependency, detail }
                    }
                    _ => PurchasesError::DependencyUnavailable { dependency, detail },
                }
            }
        }
    }

    async fn user(&self, id: Uuid, deadline: Option<Instant>) -> Result<UserView, PurchasesError> {
        let mut client = self.users.clone();
        let answer = self
            .call(
                Dependency::Users,
                ("users.v1.UserService", "GetUser"),
                deadline,
                users_pb::GetUserRequest { id: id.to_string() },
                |request| async move { client.get_user(request).await },
            )
            .await;
        let user = match answer {
            Ok(response) => response.user,
            // Unknown and deleted users both read as NOT_FOUND from users.
            Err(Failure::Status(status)) if status.code() == tonic::Code::NotFound => {
                return Err(PurchasesError::UserNotFound(id));
            }
            Err(failure) => return Err(self.error(Dependency::Users, failure)),
        };
        let user = user.ok_or_else(|| invalid(Dependency::Users, "an answer without a user"))?;
        // users' API has the whole name only: the parts exist in its events (schema 2).
        Ok(UserView {
            id,
            name: user.name,
            given_name: String::new(),
            family_name: String::new(),
        })
    }

    /// The page of orders, following orders' own pages until the page is full.
    async fn orders(
        &self,
        query: &Query,
        deadline: Option<Instant>,
    ) -> Result<(Vec<orders_pb::Order>, Option<Cursor>), PurchasesError> {
        let mut orders = Vec::new();
        let mut token = query
            .after
            .map(|cursor| cursor.encode())
            .unwrap_or_default();
        loop {
            let want = query.page_size as usize - orders.len();
            let mut client = self.orders.clone();
            let page_token = std::mem::take(&mut token);
            let page = self
                .call(
                    Dependency::Orders,
                    ("orders.v1.OrderService", "ListOrdersByUser"),
                    deadline,
                    orders_pb::ListOrdersByUserRequest {
                        user_id: query.user_id.to_string(),
                        page_size: i32::try_from(want).unwrap_or(i32::MAX),
                        page_token,
                    },
                    |request| async move { client.list_orders_by_user(request).await },
                )
                .await
                .map_err(|failure| self.error(Dependency::Orders, failure))?;
            orders.extend(page.orders);
            token = page.next_page_token;
            if token.is_empty() || orders.len() >= query.page_size as usize {
                break;
            }
        }
        let next = Cursor::decode("next_page_token", &token)
            .map_err(|_| invalid(Dependency::Orders, "a page token that is not a cursor"))?;
        Ok((orders, next))
    }

    async fn products(
        &self,
        orders: &[orders_pb::Order],
        deadline: Option<Instant>,
    ) -> Result<HashMap<String, products_pb::Product>, PurchasesError> {
        let mut ids: Vec<String> = orders
            .iter()
            .map(|order| order.product_id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut client = self.products.clone();
        let found = self
            .call(
                Dependency::Products,
                ("products.v1.ProductService", "BatchGetProducts"),
                deadline,
                products_pb::BatchGetProductsRequest { ids },
                |request| async move { client.batch_get_products(request).await },
            )
            .await
            .map_err(|failure| self.error(Dependency::Products, failure))?;
        Ok(found
            .products
            .into_iter()
            .map(|product| (product.id.clone(), product))
            .collect())
    }
}

impl PurchaseSource for FanoutSource {
    async fn list(&self, query: Query, deadline: Option<Duration>) -> Result<Page, PurchasesError> {
        // Give up a little before the caller does, so the caller hears which dependency
        // was slow instead of only that its own timer ran out. A deadline too far away to
        // represent is no deadline at all (each call's own timeout still applies).
        let deadline = deadline
            .and_then(|left| Instant::now().checked_add(left - (left / 10).min(ANSWER_MARGIN)));
        let (user, (orders, next)) = match self.fanout {
            Fanout::Parallel => tokio::try_join!(
                self.user(query.user_id, deadline),
                self.orders(&query, deadline)
            )?,
            Fanout::Sequential => {
                let user = self.user(query.user_id, deadline).await?;
                (user, self.orders(&query, deadline).await?)
            }
        };
        let products = self.products(&orders, deadline).await?;
        let purchases = orders
            .into_iter()
            .map(|order| purchase(order, &products))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            user,
            purchases,
            next,
            freshness: Freshness::Live,
        })
    }
}

fn purchase(
    order: orders_pb::Order,
    products: &HashMap<String, products_pb::Product>,
) -> Result<PurchaseView, PurchasesError> {
    let id = |raw: &str, what: &str| {
        raw.parse::<Uuid>().map_err(|_| {
            invalid(
                Dependency::Orders,
                &format!("an order with an invalid {what}"),
            )
        })
    };
    let status = match orders_pb::OrderStatus::try_from(order.status) {
        Ok(orders_pb::OrderStatus::Placed) => OrderStatus::Placed,
        Ok(orders_pb::OrderStatus::Cancelled) => OrderStatus::Cancelled,
        _ => {
            return Err(invalid(
                Dependency::Orders,
                "an order with an unknown status",
            ));
        }
    };
    let product = match products.get(&order.product_id) {
        Some(product) => Some(ProductView {
            id: id(&product.id, "product id")?,
            title: product.title.clone(),
            image_url: product.image_url.clone(),
            price_cents: product.price_cents,
            currency: String::new(),
        }),
        None => None,
    };
    Ok(PurchaseView {
        order_id: id(&order.id, "id")?,
        status,
        quantity: order.quantity,
        placed_at_micros: order
            .placed_at
            .as_ref()
            .map_or(0, platform::time::from_timestamp),
        product_id: id(&order.product_id, "product id")?,
        product,
    })
}

fn invalid(dependency: Dependency, what: &str) -> PurchasesError {
    PurchasesError::DependencyUnavailable {
        dependency,
        detail: format!("it sent {what}"),
    }
}

/// How a call ended, for its span and its metrics.
enum Outcome {
    Code(tonic::Code),
    /// Refused by our own bound on calls in flight.
    Overloaded,
    /// The connection to the dependency failed.
    Unreachable,
    TimedOut,
}

/// A status code as the calls metric names it.
fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "ok",
        tonic::Code::Cancelled => "cancelled",
        tonic::Code::Unknown => "unknown",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline_exceeded",
        tonic::Code::NotFound => "not_found",
        tonic::Code::AlreadyExists => "already_exists",
        tonic::Code::PermissionDenied => "permission_denied",
        tonic::Code::ResourceExhausted => "resource_exhausted",
        tonic::Code::FailedPrecondition => "failed_precondition",
        tonic::Code::Aborted => "aborted",
        tonic::Code::OutOfRange => "out_of_range",
        tonic::Code::Unimplemented => "unimplemented",
        tonic::Code::Internal => "internal",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DataLoss => "data_loss",
        tonic::Code::Unauthenticated => "unauthenticated",
    }
}

/// Whether the call never reached the dependency (the connection failed).
fn is_unreachable(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Whether the call was refused by our own concurrency bound rather than by the dependency.
fn is_overloaded(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tower::load_shed::error::Overloaded>() {
            return true;
        }
        source = error.source();
    }
    false
}
