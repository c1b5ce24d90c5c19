//! The owners' reads as questions on the bus: a NATS request per read, with the read's budget
//! as both the owner's deadline (`grpc-timeout`) and how long to wait for the answer, and the
//! trace context in the message's headers.

use std::sync::Arc;
use std::time::Duration;

use bus::ask::Question;
use contracts::orders::v1 as orders_pb;
use contracts::products::v1 as products_pb;
use contracts::users::v1 as users_pb;
use platform::telemetry::rpc::ClientCall;
use purchases::Dependency;
use purchases::fanout::{CallFailure, Owners};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

/// The owners, asked on the bus through one NATS connection.
#[derive(Debug, Clone)]
pub struct BusOwners {
    client: async_nats::Client,
    /// Questions in flight to each owner, bounded so that a slow owner produces fast
    /// failures instead of a growing pile of waiting requests.
    in_flight: [Arc<Semaphore>; 3],
    limit: usize,
}

impl BusOwners {
    pub fn new(client: async_nats::Client, limit: usize) -> Self {
        Self {
            client,
            in_flight: std::array::from_fn(|_| Arc::new(Semaphore::new(limit))),
            limit,
        }
    }

    async fn ask<Req, Resp>(
        &self,
        dependency: Dependency,
        question: Question,
        request: Req,
        budget: Duration,
    ) -> Result<Resp, CallFailure>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let slot = match dependency {
            Dependency::Users => 0,
            Dependency::Orders => 1,
            Dependency::Products => 2,
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            bus::ask::DEADLINE_HEADER,
            platform::request::encode_grpc_timeout(budget).as_str(),
        );
        let subject = question.subject();
        let call = ClientCall::start_on_bus(dependency.name(), &question, &subject, &mut headers);
        let result = match self.in_flight[slot].try_acquire() {
            Err(_) => Err(CallFailure::Overloaded),
            Ok(_permit) => {
                self.send(question, subject, request.encode_to_vec(), headers, budget)
                    .instrument(call.span().clone())
                    .await
            }
        };
        CallFailure::finish(call, result.as_ref().map(drop));
        result
    }

    async fn send<Resp: prost::Message + Default>(
        &self,
        question: Question,
        subject: String,
        payload: Vec<u8>,
        headers: async_nats::HeaderMap,
        budget: Duration,
    ) -> Result<Resp, CallFailure> {
        // A question asked while the connection is down would wait in the client's buffer
        // until the budget ran out and read as a slow owner; say at once that the bus is gone.
        if self.client.connection_state() != async_nats::connection::State::Connected {
            return Err(CallFailure::BusUnreachable(
                "purchases-bus is not connected to NATS".into(),
            ));
        }
        let request = async_nats::Request::new()
            .payload(payload.into())
            .headers(headers)
            .timeout(Some(budget));
        let answer = match self.client.send_request(subject.clone(), request).await {
            Ok(answer) => answer,
            Err(error) => {
                return Err(match error.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        CallFailure::Unreachable(format!(
                            "no instance of {} answers {subject} on the bus",
                            question.owner
                        ))
                    }
                    async_nats::RequestErrorKind::TimedOut => CallFailure::TimedOut(budget),
                    _ => CallFailure::BusUnreachable(error.to_string()),
                });
            }
        };
        if let Some(status) = platform::answers::status_of_answer(&answer) {
            return Err(CallFailure::Answered(status));
        }
        Resp::decode(answer.payload).map_err(|_| {
            CallFailure::Answered(tonic::Status::internal(format!(
                "an answer to {subject} that is not a {} response",
                question.method
            )))
        })
    }
}

impl Owners for BusOwners {
    async fn get_user(
        &self,
        request: users_pb::GetUserRequest,
        budget: Duration,
    ) -> Result<users_pb::GetUserResponse, CallFailure> {
        self.ask(Dependency::Users, bus::ask::GET_USER, request, budget)
            .await
    }

    async fn list_orders_by_user(
        &self,
        request: orders_pb::ListOrdersByUserRequest,
        budget: Duration,
    ) -> Result<orders_pb::ListOrdersByUserResponse, CallFailure> {
        self.ask(
            Dependency::Orders,
            bus::ask::LIST_ORDERS_BY_USER,
            request,
            budget,
        )
        .await
    }

    async fn batch_get_products(
        &self,
        request: products_pb::BatchGetProductsRequest,
        budget: Duration,
    ) -> Result<products_pb::BatchGetProductsResponse, CallFailure> {
        self.ask(
            Dependency::Products,
            bus::ask::BATCH_GET_PRODUCTS,
            request,
            budget,
        )
        .await
    }

    async fn get_product(
        &self,
        request: products_pb::GetProductRequest,
        budget: Duration,
    ) -> Result<products_pb::GetProductResponse, CallFailure> {
        self.ask(Dependency::Products, bus::ask::GET_PRODUCT, request, budget)
            .await
    }

    fn limit(&self) -> usize {
        self.limit
    }
}
