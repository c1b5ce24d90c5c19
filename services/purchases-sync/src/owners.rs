//! The owners' reads as gRPC calls: one long-lived channel per owner, bounded and
//! load-shedding, each call in a client span whose context it carries, with its budget as the
//! owner's deadline (`grpc-timeout`). What to ask and what the answers mean is
//! `purchases::fanout`, shared with purchases-bus.

use std::future::Future;
use std::time::Duration;

use contracts::orders::v1 as orders_pb;
use contracts::orders::v1::order_service_client::OrderServiceClient;
use contracts::products::v1 as products_pb;
use contracts::products::v1::product_service_client::ProductServiceClient;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use platform::telemetry::rpc::ClientCall;
use purchases::Dependency;
use purchases::fanout::{CallFailure, Hedged, Owners, hedged};
use tonic::transport::{Channel, Endpoint};
use tower::ServiceBuilder;
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tracing::Instrument as _;

/// A channel that refuses a call at once when `limit` calls are already in flight, so an
/// overloaded dependency produces fast failures instead of a growing queue.
type Bounded = LoadShed<ConcurrencyLimit<Channel>>;

/// The owners, called over gRPC.
#[derive(Debug, Clone)]
pub struct GrpcOwners {
    users: UserServiceClient<Bounded>,
    orders: OrderServiceClient<Bounded>,
    products: ProductServiceClient<Bounded>,
    limit: usize,
    hedge_after: Option<Duration>,
}

/// Where the owners are, and how many calls each may have in flight.
#[derive(Debug, Clone)]
pub struct Dependencies {
    pub users_url: String,
    pub orders_url: String,
    pub products_url: String,
    pub max_calls_per_dependency: usize,
    /// Sends a call again when it has not answered within this long, and takes whichever
    /// answer comes first (hedged requests).
    pub hedge_after: Option<Duration>,
}

impl GrpcOwners {
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
            limit: dependencies.max_calls_per_dependency,
            hedge_after: dependencies.hedge_after,
        })
    }
}

/// Makes one call under its budget, in a client span whose context the call carries, and
/// counts it by outcome; hedged after `hedge_after` when given (both attempts carry the same
/// context and deadline).
async fn call<Req, T, F, Fut>(
    dependency: Dependency,
    (service, method): (&'static str, &'static str),
    budget: Duration,
    hedge_after: Option<Duration>,
    message: Req,
    send: F,
) -> Result<T, CallFailure>
where
    Req: Clone,
    F: Fn(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut request = tonic::Request::new(message);
    request.set_timeout(budget);
    let call = ClientCall::start(dependency.name(), service, method, &mut request);
    let Some(after) = hedge_after else {
        // Unhedged, the request goes as it is: no copy kept for a second attempt.
        let answered = tokio::time::timeout(budget, send(request))
            .instrument(call.span().clone())
            .await;
        return finish(call, budget, answered);
    };
    let (metadata, message) = (request.metadata().clone(), request.into_inner());
    let attempt = || {
        let mut request = tonic::Request::new(message.clone());
        *request.metadata_mut() = metadata.clone();
        tokio::time::timeout(budget, send(request))
    };
    let (answered, how) = hedged(Some(after), attempt)
        .instrument(call.span().clone())
        .await;
    if how != Hedged::No {
        let won = if how == Hedged::FirstWon {
            "first"
        } else {
            "second"
        };
        metrics::counter!(
            platform::telemetry::metrics::CLIENT_HEDGES,
            "dependency" => dependency.name(),
            "won" => won
        )
        .increment(1);
    }
    finish(call, budget, answered)
}

/// What one call came to, recorded on its span and in the metrics.
fn finish<T>(
    call: ClientCall,
    budget: Duration,
    answered: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
) -> Result<T, CallFailure> {
    let result = match answered {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) if is_overloaded(&status) => Err(CallFailure::Overloaded),
        // The channel's own timer (Cancelled) is a slow dependency, not a lost one.
        Ok(Err(status)) if is_unreachable(&status) && !is_timeout(status.code()) => Err(
            CallFailure::Unreachable(format!("{:?}: {}", status.code(), status.message())),
        ),
        Ok(Err(status)) => Err(CallFailure::Answered(status)),
        Err(_) => Err(CallFailure::TimedOut(budget)),
    };
    CallFailure::finish(call, result.as_ref().map(drop));
    result
}

impl Owners for GrpcOwners {
    async fn get_user(
        &self,
        request: users_pb::GetUserRequest,
        budget: Duration,
    ) -> Result<users_pb::GetUserResponse, CallFailure> {
        let client = self.users.clone();
        call(
            Dependency::Users,
            ("users.v1.UserService", "GetUser"),
            budget,
            self.hedge_after,
            request,
            |request| {
                let mut client = client.clone();
                async move { client.get_user(request).await }
            },
        )
        .await
    }

    async fn list_orders_by_user(
        &self,
        request: orders_pb::ListOrdersByUserRequest,
        budget: Duration,
    ) -> Result<orders_pb::ListOrdersByUserResponse, CallFailure> {
        let client = self.orders.clone();
        call(
            Dependency::Orders,
            ("orders.v1.OrderService", "ListOrdersByUser"),
            budget,
            self.hedge_after,
            request,
            |request| {
                let mut client = client.clone();
                async move { client.list_orders_by_user(request).await }
            },
        )
        .await
    }

    async fn batch_get_products(
        &self,
        request: products_pb::BatchGetProductsRequest,
        budget: Duration,
    ) -> Result<products_pb::BatchGetProductsResponse, CallFailure> {
        let client = self.products.clone();
        call(
            Dependency::Products,
            ("products.v1.ProductService", "BatchGetProducts"),
            budget,
            self.hedge_after,
            request,
            |request| {
                let mut client = client.clone();
                async move { client.batch_get_products(request).await }
            },
        )
        .await
    }

    async fn get_product(
        &self,
        request: products_pb::GetProductRequest,
        budget: Duration,
    ) -> Result<products_pb::GetProductResponse, CallFailure> {
        let client = self.products.clone();
        call(
            Dependency::Products,
            ("products.v1.ProductService", "GetProduct"),
            budget,
            self.hedge_after,
            request,
            |request| {
                let mut client = client.clone();
                async move { client.get_product(request).await }
            },
        )
        .await
    }

    fn limit(&self) -> usize {
        self.limit
    }
}

/// Whether the call never reached the dependency (the connection failed).
fn is_unreachable(status: &tonic::Status) -> bool {
    caused_by::<tonic::transport::Error>(status)
}

fn is_timeout(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Cancelled | tonic::Code::DeadlineExceeded)
}

/// Whether the call was refused by our own concurrency bound rather than by the dependency.
fn is_overloaded(status: &tonic::Status) -> bool {
    caused_by::<tower::load_shed::error::Overloaded>(status)
}

fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}
