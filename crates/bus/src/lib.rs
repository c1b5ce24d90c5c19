//! The event bus's vocabulary and its rules of access, defined once for every crate that
//! publishes, consumes, provisions or polices it.
//!
//! - [`Stream`]: each owning service publishes to one stream of its own, named after it in
//!   capitals (`USERS`), capturing every subject under its name (`users.>`); subjects are
//!   `<service>.<entity>.<Event>`. The rule is general ([`Stream::of_producer`]), and the
//!   system's three streams are constants ([`USERS`], [`PRODUCTS`], [`ORDERS`]).
//! - Durable consumer names ([`ORDERS_DURABLE`], [`PURCHASES_DURABLE`]) and the inbox prefix
//!   each service receives its replies on ([`inbox_prefix`]).
//! - [`ask`]: the questions Service D may ask the owners on the bus (request/reply), and
//!   the subjects they are asked on.
//! - [`access`]: the NATS permissions each service's user gets, derived from what it
//!   publishes and consumes, so a service can do its own work and nothing else.
//!
//! Everything here is data: `natsd` renders the permissions into a server configuration,
//! the services and the lab read the names. It deliberately holds no client code.

pub mod access;
pub mod ask;

/// A JetStream stream and the service that owns it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stream {
    /// `USERS`.
    pub name: String,
    /// The only service that publishes to it: `users`.
    pub producer: String,
}

/// The streams of the three owning services, in the order readers start them.
pub const SYSTEM_STREAMS: [&str; 3] = ["USERS", "PRODUCTS", "ORDERS"];
pub const USERS: &str = SYSTEM_STREAMS[0];
pub const PRODUCTS: &str = SYSTEM_STREAMS[1];
pub const ORDERS: &str = SYSTEM_STREAMS[2];

/// The durable consumers orders' replica reads USERS and PRODUCTS through.
pub const ORDERS_DURABLE: &str = "orders";
/// The durable consumers purchases-async's projection reads all three streams through, by
/// default (a second projection takes a name of its own).
pub const PURCHASES_DURABLE: &str = "purchases";

impl Stream {
    /// The stream `service` publishes to: its name in capitals.
    pub fn of_producer(service: &str) -> Self {
        Self {
            name: service.to_uppercase(),
            producer: service.to_owned(),
        }
    }

    /// The stream called `name`, owned by the service of the same name in lower case.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            producer: name.to_lowercase(),
        }
    }

    /// The subjects the stream captures: everything under its producer's name.
    pub fn subjects(&self) -> String {
        format!("{}.>", self.producer)
    }

    /// The subject of one event: `users.user.UserRegistered`.
    pub fn subject(&self, entity: &str, event: &str) -> String {
        format!("{}.{entity}.{event}", self.producer)
    }

    /// Whether `subject` is one this stream captures.
    pub fn captures(&self, subject: &str) -> bool {
        subject
            .strip_prefix(self.producer.as_str())
            .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1)
    }
}

/// What a subject says about the event it carries: `<producer>.<entity>.<Event>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubjectParts<'a> {
    pub producer: &'a str,
    pub entity: &'a str,
    pub event: &'a str,
}

impl<'a> SubjectParts<'a> {
    /// Splits an event subject into its three tokens; None for any other shape.
    pub fn parse(subject: &'a str) -> Option<Self> {
        let mut tokens = subject.split('.');
        let parts = Self {
            producer: tokens.next()?,
            entity: tokens.next()?,
            event: tokens.next()?,
        };
        let well_formed = tokens.next().is_none()
            && [parts.producer, parts.entity, parts.event]
                .iter()
                .all(|token| !token.is_empty());
        well_formed.then_some(parts)
    }
}

/// The prefix of the inboxes a service receives replies on (JetStream acknowledgements, API
/// answers, pulled messages). A prefix of its own lets its NATS user subscribe to its own
/// replies only, instead of to every client's `_INBOX.>`.
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX.{service}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_producer_owns_the_stream_named_after_it() {
        let users = Stream::of_producer("users");
        assert_eq!(users.name, USERS);
        assert_eq!(users, Stream::named("USERS"));
        assert_eq!(users.subjects(), "users.>");
        assert_eq!(
            users.subject("user", "UserRegistered"),
            "users.user.UserRegistered"
        );
        assert!(users.captures("users.user.UserRegistered"));
        assert!(!users.captures("usersx.user.UserRegistered"));
        assert!(!users.captures("orders.order.OrderPlaced"));
        assert!(!users.captures("users."));
    }

    #[test]
    fn event_subjects_have_three_tokens() {
        assert_eq!(
            SubjectParts::parse("orders.order.OrderPlaced"),
            Some(SubjectParts {
                producer: "orders",
                entity: "order",
                event: "OrderPlaced"
            })
        );
        for bad in [
            "orders.order",
            "orders.order.OrderPlaced.x",
            "orders..X",
            "",
        ] {
            assert_eq!(SubjectParts::parse(bad), None, "{bad:?}");
        }
    }
}
