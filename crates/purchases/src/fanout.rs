//! Answering by asking the owners at request time, whatever carries the questions: gRPC calls
//! (purchases-sync) or requests on the bus (purchases-bus). What the two share lives here:
//! the order of the reads, following orders' pages until the page is full, each read's
//! budget (its own timeout or what is left of the caller's deadline), assembling the answer,
//! and what a failed read means to the caller. A transport ([`Owners`]) only carries one read
//! and says how it failed ([`CallFailure`]).
//!
//! [`Order::PerItem`] is the naive fan-out a wide system grows into: one GetProduct per
//! product of the page, all at once. Its width is the page's number of distinct products, and
//! a request is as slow as the slowest of them ("The Tail at Scale": if each call is slow with
//! probability p, a request that waits for k of them is slow with probability 1-(1-p)^k).

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use contracts::orders::v1 as orders_pb;
use contracts::products::v1 as products_pb;
use contracts::users::v1 as users_pb;
use platform::paging::Cursor;
use platform::telemetry::rpc::ClientCall;
use uuid::Uuid;

use crate::{
    Dependency, Freshness, OrderStatus, Page, ProductView, PurchaseSource, PurchaseView,
    PurchasesError, Query, UserView,
};

/// In what order the reads go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// The user and their orders at once, then one batch for the products.
    Parallel,
    /// The three reads one after another.
    Sequential,
    /// The user and their orders at once, then one GetProduct per distinct product of the
    /// page, concurrently (at most [`MAX_ITEMS_IN_FLIGHT`] at a time).
    PerItem,
}

/// Most GetProduct calls one request of the per-item fan-out has in flight.
pub const MAX_ITEMS_IN_FLIGHT: usize = 64;

/// How one read failed, as the transport saw it.
#[derive(Debug)]
pub enum CallFailure {
    /// The owner answered with an error status.
    Answered(tonic::Status),
    /// Refused by this service's own bound on reads in flight to the owner.
    Overloaded,
    /// The owner could not be reached (the connection failed, or no instance of it listens
    /// on the bus).
    Unreachable(String),
    /// No answer within the read's budget.
    TimedOut(Duration),
    /// The bus itself is unreachable: no question can be asked of anyone.
    BusUnreachable(String),
}

impl CallFailure {
    /// How the read ended, as the client-calls metric and span record it.
    pub fn finish(call: ClientCall, result: Result<(), &Self>) {
        match result {
            Ok(()) => call.finish(Some(tonic::Code::Ok), "ok"),
            Err(Self::Answered(status)) => {
                call.finish(Some(status.code()), code_label(status.code()))
            }
            Err(Self::Overloaded) => call.finish(None, "overloaded"),
            Err(Self::Unreachable(_) | Self::BusUnreachable(_)) => call.finish(None, "unreachable"),
            Err(Self::TimedOut(_)) => call.finish(None, "deadline_exceeded"),
        }
    }
}

/// The owners' three reads, over some transport. `budget` is how long the read may take;
/// the transport passes it on as the owner's deadline and stops waiting when it runs out.
pub trait Owners: Send + Sync + 'static {
    fn get_user(
        &self,
        request: users_pb::GetUserRequest,
        budget: Duration,
    ) -> impl Future<Output = Result<users_pb::GetUserResponse, CallFailure>> + Send;

    fn list_orders_by_user(
        &self,
        request: orders_pb::ListOrdersByUserRequest,
        budget: Duration,
    ) -> impl Future<Output = Result<orders_pb::ListOrdersByUserResponse, CallFailure>> + Send;

    fn batch_get_products(
        &self,
        request: products_pb::BatchGetProductsRequest,
        budget: Duration,
    ) -> impl Future<Output = Result<products_pb::BatchGetProductsResponse, CallFailure>> + Send;

    fn get_product(
        &self,
        request: products_pb::GetProductRequest,
        budget: Duration,
    ) -> impl Future<Output = Result<products_pb::GetProductResponse, CallFailure>> + Send;

    /// Most reads in flight to each owner, for the message that says so when it is reached.
    fn limit(&self) -> usize;
}

/// Service D answered by asking the owners through `owners`.
#[derive(Debug, Clone)]
pub struct FanOut<O> {
    owners: O,
    order: Order,
    call_timeout: Duration,
}

/// Part of a caller's deadline kept back to answer with before it expires.
const ANSWER_MARGIN: Duration = Duration::from_millis(20);

/// How a read could not even start.
enum Failure {
    Call(CallFailure),
    DeadlinePassed,
}

impl<O: Owners> FanOut<O> {
    pub fn new(owners: O, order: Order, call_timeout: Duration) -> Self {
        Self {
            owners,
            order,
            call_timeout,
        }
    }

    /// The time a read may take: its own timeout, or what is left of the caller's deadline.
    fn budget(&self, deadline: Option<Instant>) -> Result<Duration, Failure> {
        let budget = match deadline {
            Some(deadline) => self
                .call_timeout
                .min(deadline.saturating_duration_since(Instant::now())),
            None => self.call_timeout,
        };
        if budget.is_zero() {
            return Err(Failure::DeadlinePassed);
        }
        Ok(budget)
    }

    fn error(&self, dependency: Dependency, failure: Failure) -> PurchasesError {
        let failure = match failure {
            Failure::DeadlinePassed => {
                return PurchasesError::DependencyTimedOut {
                    dependency,
                    detail: "the caller's deadline passed before the call".into(),
                };
            }
            Failure::Call(failure) => failure,
        };
        match failure {
            CallFailure::TimedOut(budget) => PurchasesError::DependencyTimedOut {
                dependency,
                detail: format!("no answer within {} ms", budget.as_millis()),
            },
            CallFailure::Overloaded => PurchasesError::DependencyOverloaded {
                dependency,
                limit: self.owners.limit(),
            },
            CallFailure::Unreachable(detail) => {
                PurchasesError::DependencyUnavailable { dependency, detail }
            }
            CallFailure::BusUnreachable(detail) => PurchasesError::BusUnavailable { detail },
            CallFailure::Answered(status) => {
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
        let answer = match self.budget(deadline) {
            Ok(budget) => self
                .owners
                .get_user(users_pb::GetUserRequest { id: id.to_string() }, budget)
                .await
                .map_err(Failure::Call),
            Err(failure) => Err(failure),
        };
        let user = match answer {
            Ok(response) => response.user,
            // Unknown and deleted users both read as NOT_FOUND from users.
            Err(Failure::Call(CallFailure::Answered(status)))
                if status.code() == tonic::Code::NotFound =>
            {
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
            let request = orders_pb::ListOrdersByUserRequest {
                user_id: query.user_id.to_string(),
                page_size: i32::try_from(want).unwrap_or(i32::MAX),
                page_token: std::mem::take(&mut token),
            };
            let budget = self
                .budget(deadline)
                .map_err(|failure| self.error(Dependency::Orders, failure))?;
            let page = self
                .owners
                .list_orders_by_user(request, budget)
                .await
                .map_err(|failure| self.error(Dependency::Orders, Failure::Call(failure)))?;
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
        let budget = self
            .budget(deadline)
            .map_err(|failure| self.error(Dependency::Products, failure))?;
        if self.order == Order::PerItem {
            return self.products_one_by_one(ids, budget).await;
        }
        let found = self
            .owners
            .batch_get_products(products_pb::BatchGetProductsRequest { ids }, budget)
            .await
            .map_err(|failure| self.error(Dependency::Products, Failure::Call(failure)))?;
        Ok(found
            .products
            .into_iter()
            .map(|product| (product.id.clone(), product))
            .collect())
    }
}

/// How a hedged call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hedged {
    /// The first attempt answered in time; no second was sent.
    No,
    /// A second attempt was sent, and the first still answered first.
    FirstWon,
    /// A second attempt was sent and answered first.
    SecondWon,
}

/// A hedged request ("The Tail at Scale"): `attempt` is made once, and once more if the first
/// has not answered within `after`; whichever answers first wins, and the other is dropped,
/// which cancels it (a gRPC call's stream is reset, so the server stops working on it).
/// Without `after`, one attempt.
pub async fn hedged<F, Fut>(after: Option<Duration>, attempt: F) -> (Fut::Output, Hedged)
where
    F: Fn() -> Fut,
    Fut: Future,
{
    let first = attempt();
    let Some(after) = after else {
        return (first.await, Hedged::No);
    };
    tokio::pin!(first);
    tokio::select! {
        answer = &mut first => return (answer, Hedged::No),
        () = tokio::time::sleep(after) => {}
    }
    let second = attempt();
    tokio::pin!(second);
    tokio::select! {
        biased;
        answer = &mut first => (answer, Hedged::FirstWon),
        answer = &mut second => (answer, Hedged::SecondWon),
    }
}

impl<O: Owners> FanOut<O> {
    /// Each product with a call of its own, concurrently; a product its owner no longer
    /// knows is left out, as the batch call leaves it out.
    async fn products_one_by_one(
        &self,
        ids: Vec<String>,
        budget: Duration,
    ) -> Result<HashMap<String, products_pb::Product>, PurchasesError> {
        use futures::StreamExt as _;
        let mut answers = futures::stream::iter(ids)
            .map(|id| {
                self.owners
                    .get_product(products_pb::GetProductRequest { id }, budget)
            })
            .buffer_unordered(MAX_ITEMS_IN_FLIGHT);
        let mut found = HashMap::new();
        while let Some(answer) = answers.next().await {
            match answer {
                Ok(response) => {
                    if let Some(product) = response.product {
                        found.insert(product.id.clone(), product);
                    }
                }
                Err(CallFailure::Answered(status)) if status.code() == tonic::Code::NotFound => {}
                // The first failure fails the request; dropping the stream cancels the rest.
                Err(failure) => {
                    return Err(self.error(Dependency::Products, Failure::Call(failure)));
                }
            }
        }
        Ok(found)
    }
}

impl<O: Owners> PurchaseSource for FanOut<O> {
    async fn list(&self, query: Query, deadline: Option<Duration>) -> Result<Page, PurchasesError> {
        // Give up a little before the caller does, so the caller hears which dependency
        // was slow instead of only that its own timer ran out. A deadline too far away to
        // represent is no deadline at all (each read's own timeout still applies).
        let deadline = deadline
            .and_then(|left| Instant::now().checked_add(left - (left / 10).min(ANSWER_MARGIN)));
        let (user, (orders, next)) = match self.order {
            Order::Parallel | Order::PerItem => tokio::try_join!(
                self.user(query.user_id, deadline),
                self.orders(&query, deadline)
            )?,
            Order::Sequential => {
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

/// A status code as the client-calls metric names it.
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// An attempt that answers after `delays[n]` for the n-th call, and counts the attempts
    /// dropped before answering.
    struct Attempts {
        delays: Vec<Duration>,
        made: AtomicUsize,
        cancelled: Arc<AtomicUsize>,
    }

    struct CountsDrop {
        cancelled: Arc<AtomicUsize>,
        finished: bool,
    }

    impl Drop for CountsDrop {
        fn drop(&mut self) {
            if !self.finished {
                self.cancelled.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl Attempts {
        fn new(delays: &[u64]) -> Self {
            Self {
                delays: delays.iter().map(|ms| Duration::from_millis(*ms)).collect(),
                made: AtomicUsize::new(0),
                cancelled: Arc::new(AtomicUsize::new(0)),
            }
        }

        fn attempt(&self) -> impl Future<Output = usize> + use<> {
            let n = self.made.fetch_add(1, Ordering::SeqCst);
            let delay = self.delays[n];
            let guard = CountsDrop {
                cancelled: Arc::clone(&self.cancelled),
                finished: false,
            };
            async move {
                // Moved in whole, so dropping the future drops it unfinished.
                let mut guard = guard;
                tokio::time::sleep(delay).await;
                guard.finished = true;
                n
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_attempt_is_hedged_and_the_first_answer_wins() {
        let attempts = Attempts::new(&[500, 5]);
        let (answer, how) = hedged(Some(Duration::from_millis(20)), || attempts.attempt()).await;
        assert_eq!((answer, how), (1, Hedged::SecondWon));
        assert_eq!(attempts.made.load(Ordering::SeqCst), 2);
        assert_eq!(
            attempts.cancelled.load(Ordering::SeqCst),
            1,
            "the slow first attempt is cancelled, not left running"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_prompt_answer_is_never_hedged_and_a_late_first_can_still_win() {
        let prompt = Attempts::new(&[5]);
        let (answer, how) = hedged(Some(Duration::from_millis(20)), || prompt.attempt()).await;
        assert_eq!((answer, how), (0, Hedged::No));
        assert_eq!(prompt.made.load(Ordering::SeqCst), 1);

        let late = Attempts::new(&[30, 500]);
        let (answer, how) = hedged(Some(Duration::from_millis(20)), || late.attempt()).await;
        assert_eq!((answer, how), (0, Hedged::FirstWon));
        assert_eq!(
            late.cancelled.load(Ordering::SeqCst),
            1,
            "the hedge is cancelled"
        );

        let unhedged = Attempts::new(&[500]);
        let (_, how) = hedged(None, || unhedged.attempt()).await;
        assert_eq!(how, Hedged::No);
    }
}
