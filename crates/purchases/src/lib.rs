//! Service D's edge, shared by the four ways of answering it (purchases-sync,
//! purchases-bus, purchases-async, the monolith): parsing a `ListUserPurchases` request into a [`Query`],
//! the answer's shape ([`Page`]), the errors a mode may fail with and their one mapping to
//! gRPC statuses, and the tonic service that ties them to a [`PurchaseSource`]; and
//! [`fanout`], the asking of the owners at request time that the sync and bus ways share.
//!
//! What it deliberately does not own: where the data comes from. Each mode implements
//! [`PurchaseSource`]; this crate makes sure they are indistinguishable from outside except
//! where the difference is the point (mode, freshness, failures of dependencies).

pub mod fanout;
pub mod rows;

use std::future::Future;

use contracts::purchases::v1 as pb;
use contracts::purchases::v1::purchase_service_server::PurchaseService;
use platform::db::StoreError;
use platform::fields::{FieldViolation, parse_id};
use platform::paging::{Cursor, page_size};
use tonic::{Request, Response, Status};
use uuid::Uuid;

/// A validated request: whose purchases, how many, after which one.
#[derive(Debug, Clone)]
pub struct Query {
    pub user_id: Uuid,
    pub page_size: u32,
    /// Newest-first position after which the page starts: (placed_at, order id) of the last
    /// purchase already served. The same cursor orders' ListOrdersByUser pages with, so page
    /// tokens are interchangeable between modes.
    pub after: Option<Cursor>,
    /// An order the caller placed and wants to read back: a mode that answers from a
    /// projection waits until it holds the order.
    pub wait_for_order: Option<Uuid>,
}

impl Query {
    pub fn parse(request: &pb::ListUserPurchasesRequest) -> Result<Self, FieldViolation> {
        Ok(Self {
            user_id: parse_id("user_id", &request.user_id)?,
            page_size: page_size("page_size", request.page_size)?,
            after: Cursor::decode("page_token", &request.page_token)?,
            wait_for_order: match request.wait_for_order_id.as_str() {
                "" => None,
                id => Some(parse_id("wait_for_order_id", id)?),
            },
        })
    }
}

/// An order's state as far as a purchase is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    Placed,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserView {
    pub id: Uuid,
    pub name: String,
    /// From event schema 2 on, and only where a projection reads it; empty otherwise.
    pub given_name: String,
    pub family_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductView {
    pub id: Uuid,
    pub title: String,
    pub image_url: String,
    pub price_cents: i64,
    /// From event schema 2 on, and only where a projection reads it; empty otherwise.
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseView {
    pub order_id: Uuid,
    pub status: OrderStatus,
    pub quantity: i32,
    pub placed_at_micros: i64,
    pub product_id: Uuid,
    /// None only while a projection has the order but not yet its product.
    pub product: Option<ProductView>,
}

/// Where a projection stands on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    pub stream: String,
    pub sequence: u64,
    pub last_event_at_micros: i64,
    pub applied_at_micros: i64,
    pub pending: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    /// Events the stream no longer held when the projection got to them.
    pub missed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Read from the owning data at request time.
    Live,
    /// Read from a projection at these positions.
    Projection(Vec<StreamPosition>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Sync,
    Async,
    Monolith,
    Bus,
}

/// One page of the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub user: UserView,
    pub purchases: Vec<PurchaseView>,
    pub next: Option<Cursor>,
    pub freshness: Freshness,
}

impl Page {
    /// Cuts purchases read with one more than the page to the page, and returns where the
    /// next page starts when that extra one was there (else there is no next page).
    pub fn cut(purchases: &mut Vec<PurchaseView>, page_size: u32) -> Option<Cursor> {
        if purchases.len() <= page_size as usize {
            return None;
        }
        purchases.truncate(page_size as usize);
        purchases.last().map(|last| Cursor {
            sort_key: last.placed_at_micros,
            id: last.order_id,
        })
    }
}

/// A service that purchases-sync depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    Users,
    Orders,
    Products,
}

impl Dependency {
    /// Its service's name, as messages and metrics give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Users => "users",
            Self::Orders => "orders",
            Self::Products => "products",
        }
    }
}

impl std::fmt::Display for Dependency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything answering a purchases query can fail with.
#[derive(Debug, thiserror::Error)]
pub enum PurchasesError {
    #[error(transparent)]
    InvalidArgument(#[from] FieldViolation),
    #[error("user {0} not found")]
    UserNotFound(Uuid),
    #[error("the {dependency} service is unavailable: {detail}")]
    DependencyUnavailable {
        dependency: Dependency,
        detail: String,
    },
    #[error("the {dependency} service did not answer in time: {detail}")]
    DependencyTimedOut {
        dependency: Dependency,
        detail: String,
    },
    #[error(
        "this service already has {limit} calls in flight to the {dependency} service; retry later"
    )]
    DependencyOverloaded {
        dependency: Dependency,
        limit: usize,
    },
    #[error(
        "order {order_id} is not among user {user_id}'s purchases after waiting {waited_ms} ms ({applied}); check that the order is this user's, or allow a longer deadline"
    )]
    OrderNotYetVisible {
        order_id: Uuid,
        user_id: Uuid,
        waited_ms: u128,
        /// How far the projection had got, for the person reading the message.
        applied: String,
    },
    #[error(
        "{limit} reads are already waiting for orders here; retry later, or read without wait_for_order_id"
    )]
    TooManyWaiting { limit: usize },
    #[error("the NATS bus is unreachable, so no owner can be asked: {detail}")]
    BusUnavailable { detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PurchasesError> for Status {
    fn from(error: PurchasesError) -> Self {
        let message = error.to_string();
        match error {
            PurchasesError::InvalidArgument(violation) => {
                platform::status::invalid_argument(&violation)
            }
            PurchasesError::UserNotFound(_) => Status::not_found(message),
            PurchasesError::DependencyUnavailable { .. }
            | PurchasesError::DependencyOverloaded { .. }
            | PurchasesError::BusUnavailable { .. } => Status::unavailable(message),
            PurchasesError::DependencyTimedOut { .. }
            | PurchasesError::OrderNotYetVisible { .. } => Status::deadline_exceeded(message),
            PurchasesError::TooManyWaiting { .. } => Status::resource_exhausted(message),
            PurchasesError::Store(error) => platform::status::from_store_error(&error),
        }
    }
}

/// Where a mode gets its answer.
pub trait PurchaseSource: Send + Sync + 'static {
    /// `deadline` is what is left of the caller's deadline, if it set one.
    fn list(
        &self,
        query: Query,
        deadline: Option<std::time::Duration>,
    ) -> impl Future<Output = Result<Page, PurchasesError>> + Send;
}

/// The purchases.v1 service over a source.
#[derive(Debug)]
pub struct PurchaseApi<S> {
    source: S,
    mode: Mode,
}

impl<S> PurchaseApi<S> {
    pub fn new(source: S, mode: Mode) -> Self {
        Self { source, mode }
    }
}

#[tonic::async_trait]
impl<S: PurchaseSource> PurchaseService for PurchaseApi<S> {
    #[tracing::instrument(skip_all, fields(mode = ?self.mode))]
    async fn list_user_purchases(
        &self,
        request: Request<pb::ListUserPurchasesRequest>,
    ) -> Result<Response<pb::ListUserPurchasesResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        let query = Query::parse(request.get_ref()).map_err(PurchasesError::from)?;
        let page = self.source.list(query, deadline).await?;
        Ok(Response::new(to_pb(page, self.mode)))
    }
}

/// Serves the purchases API from `source` on `server` until `shutdown`, with no admin
/// services of its own: the ways that keep no state (sync, bus).
pub async fn serve_without_state<S: PurchaseSource>(
    server: platform::server::GrpcServer,
    source: S,
    mode: Mode,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), platform::server::ServeError> {
    use contracts::purchases::v1::purchase_service_server::PurchaseServiceServer;
    use platform::server::{MAX_REQUEST_BYTES, ServiceSet};
    let api = PurchaseApi::new(source, mode);
    let services = ServiceSet::new()
        .with(PurchaseServiceServer::new(api).max_decoding_message_size(MAX_REQUEST_BYTES));
    server
        .serve(
            services,
            ServiceSet::new(),
            contracts::FILE_DESCRIPTOR_SET,
            shutdown,
        )
        .await
}

/// The caller's deadline, from the `grpc-timeout` header, read as the gRPC spec says
/// (`platform::request`, which also holds the server to it): a malformed one is ignored.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let raw = metadata.get("grpc-timeout")?.to_str().ok()?;
    platform::request::parse_grpc_timeout(raw)
}

fn to_pb(page: Page, mode: Mode) -> pb::ListUserPurchasesResponse {
    pb::ListUserPurchasesResponse {
        user: Some(pb::User {
            id: page.user.id.to_string(),
            name: page.user.name,
            given_name: page.user.given_name,
            family_name: page.user.family_name,
        }),
        purchases: page
            .purchases
            .into_iter()
            .map(|purchase| pb::Purchase {
                order_id: purchase.order_id.to_string(),
                status: match purchase.status {
                    OrderStatus::Placed => pb::OrderStatus::Placed,
                    OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
                } as i32,
                quantity: purchase.quantity,
                placed_at: Some(platform::time::to_timestamp(purchase.placed_at_micros)),
                product: purchase.product.map(|product| pb::Product {
                    id: product.id.to_string(),
                    title: product.title,
                    image_url: product.image_url,
                    price_cents: product.price_cents,
                    currency: product.currency,
                }),
                product_id: purchase.product_id.to_string(),
            })
            .collect(),
        next_page_token: page.next.map(|cursor| cursor.encode()).unwrap_or_default(),
        mode: match mode {
            Mode::Sync => pb::Mode::Sync,
            Mode::Async => pb::Mode::Async,
            Mode::Monolith => pb::Mode::Monolith,
            Mode::Bus => pb::Mode::Bus,
        } as i32,
        freshness: Some(match page.freshness {
            Freshness::Live => pb::Freshness {
                live: true,
                streams: Vec::new(),
            },
            Freshness::Projection(streams) => pb::Freshness {
                live: false,
                streams: streams
                    .into_iter()
                    .map(|position| pb::StreamPosition {
                        stream: position.stream,
                        sequence: position.sequence,
                        last_event_at: (position.last_event_at_micros > 0)
                            .then(|| platform::time::to_timestamp(position.last_event_at_micros)),
                        applied_at: (position.applied_at_micros > 0)
                            .then(|| platform::time::to_timestamp(position.applied_at_micros)),
                        pending: position.pending,
                        skipped: position.skipped,
                        dead_lettered: position.dead_lettered,
                        missed: position.missed,
                    })
                    .collect(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_page_of_purchases_fits_what_a_client_decodes_by_default() {
        // As large as the owners let each field be: four-byte characters in every name and
        // title, the longest image URL, a thousand purchases.
        let wide = |chars: usize| "\u{1D538}".repeat(chars);
        let url = format!(
            "https://img.example.com/{}",
            "a".repeat(products::domain::MAX_IMAGE_URL_BYTES - 24)
        );
        let purchases = (0..platform::paging::MAX_PAGE_SIZE)
            .map(|_| PurchaseView {
                order_id: Uuid::now_v7(),
                status: OrderStatus::Cancelled,
                quantity: i32::MAX,
                placed_at_micros: i64::MAX / 2,
                product_id: Uuid::now_v7(),
                product: Some(ProductView {
                    id: Uuid::now_v7(),
                    title: wide(products::domain::MAX_TITLE_CHARS),
                    image_url: url.clone(),
                    price_cents: i64::MAX,
                    currency: "USD".into(),
                }),
            })
            .collect();
        let page = Page {
            user: UserView {
                id: Uuid::now_v7(),
                name: wide(users::domain::MAX_NAME_CHARS),
                given_name: wide(users::domain::MAX_NAME_CHARS),
                family_name: wide(users::domain::MAX_NAME_CHARS),
            },
            purchases,
            next: Some(Cursor {
                sort_key: i64::MAX,
                id: Uuid::max(),
            }),
            freshness: Freshness::Projection(
                bus::SYSTEM_STREAMS
                    .map(|stream| StreamPosition {
                        stream: stream.into(),
                        sequence: u64::MAX,
                        last_event_at_micros: i64::MAX / 2,
                        applied_at_micros: i64::MAX / 2,
                        pending: u64::MAX,
                        skipped: u64::MAX,
                        dead_lettered: u64::MAX,
                        missed: u64::MAX,
                    })
                    .to_vec(),
            ),
        };
        let bytes = prost::Message::encoded_len(&to_pb(page, Mode::Async));
        assert!(
            bytes < 4 * 1024 * 1024,
            "{bytes} bytes: a client with the default 4 MiB limit could not read it"
        );
    }

    #[test]
    fn the_callers_deadline_is_read_from_metadata() {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", "150m".parse().expect("ascii"));
        assert_eq!(
            grpc_timeout(&metadata),
            Some(std::time::Duration::from_millis(150))
        );
        metadata.insert("grpc-timeout", "123456789S".parse().expect("ascii"));
        assert_eq!(
            grpc_timeout(&metadata),
            None,
            "more digits than the spec allows"
        );
    }
}
