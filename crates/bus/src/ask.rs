//! Questions asked over the bus (NATS request/reply): the fourth way for Service D, where it
//! asks each owner on the bus instead of calling it directly.
//!
//! Each owner registers a NATS service (the NATS services API: `$SRV.PING`, `INFO`, `STATS`)
//! named after itself, whose endpoints answer on `ask.<owner>.<Method>`, in the queue group
//! [`QUEUE_GROUP`] so that its instances share the questions. A question's body is the gRPC
//! request message, its answer the gRPC response message; a failed answer carries the
//! services API's error headers with the gRPC status code and message. The prefix `ask.` keeps
//! questions out of the owners' streams, which capture `<owner>.>`.

/// The subject prefix every question is asked under.
pub const PREFIX: &str = "ask";

/// The queue group the owners' endpoints join: one instance answers each question.
pub const QUEUE_GROUP: &str = "owners";

/// The version the owners advertise for their NATS services (semver, as the services API asks).
pub const SERVICE_VERSION: &str = "1.0.0";

/// Headers of a question: the caller's deadline, as gRPC's `grpc-timeout` carries it.
pub const DEADLINE_HEADER: &str = "grpc-timeout";

/// One read an owner answers on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// The owner that answers: `users`.
    pub owner: &'static str,
    /// The gRPC service: `users.v1.UserService`.
    pub service: &'static str,
    /// The gRPC method, also the endpoint's name: `GetUser`.
    pub method: &'static str,
}

impl Question {
    /// The subject it is asked on: `ask.users.GetUser`.
    pub fn subject(&self) -> String {
        format!("{PREFIX}.{}.{}", self.owner, self.method)
    }

    /// The gRPC path of the method that answers it: `/users.v1.UserService/GetUser`.
    pub fn grpc_path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }
}

/// A user by id.
pub const GET_USER: Question = Question {
    owner: "users",
    service: "users.v1.UserService",
    method: "GetUser",
};

/// A page of a user's orders, with the same cursor as gRPC.
pub const LIST_ORDERS_BY_USER: Question = Question {
    owner: "orders",
    service: "orders.v1.OrderService",
    method: "ListOrdersByUser",
};

/// Products by id, in one batch.
pub const BATCH_GET_PRODUCTS: Question = Question {
    owner: "products",
    service: "products.v1.ProductService",
    method: "BatchGetProducts",
};

/// One product by id (the per-item fan-out).
pub const GET_PRODUCT: Question = Question {
    owner: "products",
    service: "products.v1.ProductService",
    method: "GetProduct",
};

/// Every question the system asks on the bus.
pub const QUESTIONS: [Question; 4] = [
    GET_USER,
    LIST_ORDERS_BY_USER,
    BATCH_GET_PRODUCTS,
    GET_PRODUCT,
];

/// The questions `owner` answers.
pub fn answered_by(owner: &str) -> Vec<Question> {
    QUESTIONS
        .into_iter()
        .filter(|question| question.owner == owner)
        .collect()
}

/// The subjects of the services API's discovery requests a service named `name` answers:
/// `$SRV.PING`, `$SRV.PING.<name>`, `$SRV.PING.<name>.<id>`, and likewise INFO and STATS.
pub fn discovery_subjects(name: &str) -> Vec<String> {
    ["PING", "INFO", "STATS"]
        .iter()
        .flat_map(|verb| {
            [
                format!("$SRV.{verb}"),
                format!("$SRV.{verb}.{name}"),
                format!("$SRV.{verb}.{name}.*"),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_stay_out_of_every_stream() {
        for question in QUESTIONS {
            let subject = question.subject();
            assert!(subject.starts_with("ask."), "{subject}");
            for stream in crate::SYSTEM_STREAMS {
                assert!(
                    !crate::Stream::named(stream).captures(&subject),
                    "{stream} would store {subject}"
                );
            }
        }
        assert_eq!(GET_USER.subject(), "ask.users.GetUser");
        assert_eq!(GET_USER.grpc_path(), "/users.v1.UserService/GetUser");
        assert_eq!(answered_by("orders"), [LIST_ORDERS_BY_USER]);
        assert!(answered_by("purchases-async").is_empty());
    }
}
