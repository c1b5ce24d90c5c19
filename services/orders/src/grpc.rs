//! The gRPC edge: the only module that touches prost types. Requests are parsed into domain
//! values here (invalid ones never reach the store) and results converted back.

use contracts::orders::v1 as pb;
use contracts::orders::v1::order_service_server::OrderService;
use platform::fields::parse_id;
use platform::paging::{Cursor, page_size};
use tonic::{Request, Response, Status};

use crate::domain::{Cancellation, NewOrder, Order, OrderStatus, Quantity};
use crate::error::OrdersError;
use crate::store::OrderStore;

#[derive(Debug, Clone)]
pub struct OrderApi {
    store: OrderStore,
}

impl OrderApi {
    pub fn new(store: OrderStore) -> Self {
        Self { store }
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    #[tracing::instrument(skip_all)]
    async fn place_order(
        &self,
        request: Request<pb::PlaceOrderRequest>,
    ) -> Result<Response<pb::PlaceOrderResponse>, Status> {
        let new = NewOrder::try_from(request.into_inner())?;
        let order = self.store.place(&new).await?;
        tracing::info!(order_id = %order.id, "order placed");
        Ok(Response::new(pb::PlaceOrderResponse {
            order: Some(order.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::GetOrderResponse>, Status> {
        let id = parse_id("id", &request.get_ref().id).map_err(OrdersError::from)?;
        let order = self.store.get(id).await?;
        Ok(Response::new(pb::GetOrderResponse {
            order: Some(order.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_orders_by_user(
        &self,
        request: Request<pb::ListOrdersByUserRequest>,
    ) -> Result<Response<pb::ListOrdersByUserResponse>, Status> {
        let request = request.into_inner();
        let user_id = parse_id("user_id", &request.user_id).map_err(OrdersError::from)?;
        let size = page_size("page_size", request.page_size).map_err(OrdersError::from)?;
        let after = Cursor::decode("page_token", &request.page_token).map_err(OrdersError::from)?;
        let page = self.store.list_by_user(user_id, after, size).await?;
        Ok(Response::new(pb::ListOrdersByUserResponse {
            orders: page.orders.into_iter().map(Into::into).collect(),
            next_page_token: page.next.map(|cursor| cursor.encode()).unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cancel_order(
        &self,
        request: Request<pb::CancelOrderRequest>,
    ) -> Result<Response<pb::CancelOrderResponse>, Status> {
        let request = request.into_inner();
        let cancellation = Cancellation {
            id: parse_id("id", &request.id).map_err(OrdersError::from)?,
            expected_version: request.expected_version,
        };
        let order = self.store.cancel(&cancellation).await?;
        tracing::info!(order_id = %order.id, "order cancelled");
        Ok(Response::new(pb::CancelOrderResponse {
            order: Some(order.into()),
        }))
    }
}

impl TryFrom<pb::PlaceOrderRequest> for NewOrder {
    type Error = OrdersError;

    fn try_from(request: pb::PlaceOrderRequest) -> Result<Self, Self::Error> {
        Ok(Self {
            user_id: parse_id("user_id", &request.user_id)?,
            product_id: parse_id("product_id", &request.product_id)?,
            quantity: Quantity::parse("quantity", request.quantity)?,
        })
    }
}

impl From<Order> for pb::Order {
    fn from(order: Order) -> Self {
        let status = match order.status {
            OrderStatus::Placed => pb::OrderStatus::Placed,
            OrderStatus::Cancelled => pb::OrderStatus::Cancelled,
        };
        Self {
            id: order.id.to_string(),
            user_id: order.user_id.to_string(),
            product_id: order.product_id.to_string(),
            quantity: order.quantity,
            status: status.into(),
            version: order.version,
            placed_at: Some(platform::time::to_timestamp(order.placed_at)),
            updated_at: Some(platform::time::to_timestamp(order.updated_at)),
        }
    }
}
