//! Who may do what on NATS: each service is a NATS user of its own, and its permissions are
//! derived from what it does, never written by hand per deployment.
//!
//! - A producer may publish on its own subjects (`users.>`) and look after its own stream
//!   (info, create, update), and nothing else: it cannot publish another service's events.
//! - A consumer may read the streams it follows, each through its own durable consumers only
//!   (create, look up, delete and pull from them, acknowledge what they deliver); it cannot
//!   publish events or touch another service's durables.
//! - Every service receives replies on inboxes of its own (`_INBOX.<service>.>`), so no
//!   service can listen to another's replies.
//! - An owner answers the questions asked of it on the bus (`ask.<owner>.>`, in its queue
//!   group) and the services API's discovery requests for its name, and replies only to
//!   what it was asked; only the service that asks (purchases-bus) and the lab may ask.
//! - Deleting or purging a stream, or a message in one, is denied to every service outright:
//!   only the lab's administrative identity, which has no restrictions, may do that.
//!
//! The subjects follow the JetStream API (nats.docs, "JetStream wire API reference"); each
//! grant and each refusal is proven against a real nats-server by the tests of the crates
//! that use them.

use crate::Stream;

/// Subjects one NATS user may publish and subscribe to, as nats-server's `permissions` map
/// has them. An empty allow list allows everything (subject to the deny list).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish_allow: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe_allow: Vec<String>,
    pub subscribe_deny: Vec<String>,
    /// Lets the user answer requests it received, and only those (reply subjects it was
    /// given); needed by a service that answers on the bus.
    pub allow_responses: bool,
}

/// What one service does on the bus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Role {
    /// Its NATS user's name, which is also its connection name and inbox prefix.
    pub service: String,
    /// The stream it publishes its events to, if it owns one.
    pub produces: Option<Stream>,
    /// The streams it reads, each through these durable consumers.
    pub consumes: Vec<(Stream, Vec<String>)>,
    /// Subjects it answers requests on, as a member of a queue group.
    pub answers: Vec<String>,
    /// Subjects it asks questions on.
    pub asks: Vec<String>,
}

/// The one service that asks the owners on the bus.
pub const ASKER: &str = "purchases-bus";

/// The lab's administrative identity: unrestricted, for the lab's own tooling (probes of
/// the streams, republishing duplicates on purpose, creating scratch streams).
pub const ADMIN: &str = "lab";

/// Subjects no service may publish to, whatever its allow list says: deleting or purging a
/// stream, or deleting a message in one, loses events for every reader.
const DESTRUCTIVE: [&str; 3] = [
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
];

impl Role {
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            ..Self::default()
        }
    }

    /// Publishes events to its own stream.
    #[must_use]
    pub fn producing(mut self) -> Self {
        self.produces = Some(Stream::of_producer(&self.service));
        self
    }

    /// Reads `stream` through the durable consumers named `durables`.
    #[must_use]
    pub fn consuming(mut self, stream: &str, durables: &[&str]) -> Self {
        self.consumes.push((
            Stream::named(stream),
            durables
                .iter()
                .map(|durable| (*durable).to_owned())
                .collect(),
        ));
        self
    }

    /// Answers the questions asked of it on the bus, and the discovery requests for its name.
    #[must_use]
    pub fn answering(mut self) -> Self {
        let questions = crate::ask::answered_by(&self.service);
        self.answers
            .extend(questions.iter().map(crate::ask::Question::subject));
        if !questions.is_empty() {
            self.answers
                .extend(crate::ask::discovery_subjects(&self.service));
        }
        self
    }

    /// Asks the owners every question on the bus.
    #[must_use]
    pub fn asking(mut self) -> Self {
        self.asks.extend(
            crate::ask::QUESTIONS
                .iter()
                .map(crate::ask::Question::subject),
        );
        self
    }

    /// The least permissions that let it do what it does.
    pub fn permissions(&self) -> Permissions {
        let mut publish: Vec<String> = Vec::new();
        if let Some(stream) = &self.produces {
            publish.push(stream.subjects());
            for action in ["INFO", "CREATE", "UPDATE"] {
                publish.push(format!("$JS.API.STREAM.{action}.{}", stream.name));
            }
        }
        for (stream, durables) in &self.consumes {
            let name = &stream.name;
            publish.push(format!("$JS.API.STREAM.INFO.{name}"));
            for durable in durables {
                publish.extend([
                    format!("$JS.API.CONSUMER.INFO.{name}.{durable}"),
                    // Without a filter, and with one (the filter is a trailing token).
                    format!("$JS.API.CONSUMER.CREATE.{name}.{durable}"),
                    format!("$JS.API.CONSUMER.CREATE.{name}.{durable}.>"),
                    format!("$JS.API.CONSUMER.DURABLE.CREATE.{name}.{durable}"),
                    format!("$JS.API.CONSUMER.DELETE.{name}.{durable}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{name}.{durable}"),
                    format!("$JS.ACK.{name}.{durable}.>"),
                ]);
            }
        }
        publish.extend(self.asks.iter().cloned());
        publish.sort();
        publish.dedup();
        let mut subscribe = vec![format!("{}.>", crate::inbox_prefix(&self.service))];
        subscribe.extend(self.answers.iter().cloned());
        Permissions {
            // An empty allow list would allow everything: a role that does nothing on the
            // bus gets one subject no one uses instead.
            publish_allow: if publish.is_empty() {
                vec![format!("{}.nothing", crate::inbox_prefix(&self.service))]
            } else {
                publish
            },
            publish_deny: DESTRUCTIVE.iter().map(|s| (*s).to_owned()).collect(),
            subscribe_allow: subscribe,
            subscribe_deny: Vec::new(),
            allow_responses: !self.answers.is_empty(),
        }
    }
}

/// The roles of the system's services. `purchases_durables` are the durable names the
/// purchases-async user may read through: its default one and any other projection the
/// deployment runs under the same identity (the lab's catch-up and schema-1 reader).
pub fn system_roles(purchases_durables: &[&str]) -> Vec<Role> {
    let mut purchases = Role::new("purchases-async");
    for stream in crate::SYSTEM_STREAMS {
        purchases = purchases.consuming(stream, purchases_durables);
    }
    vec![
        Role::new("users").producing().answering(),
        Role::new("products").producing().answering(),
        Role::new("orders")
            .producing()
            .answering()
            .consuming(crate::USERS, &[crate::ORDERS_DURABLE])
            .consuming(crate::PRODUCTS, &[crate::ORDERS_DURABLE]),
        purchases,
        Role::new(ASKER).asking(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(roles: &[Role], service: &str) -> Permissions {
        roles
            .iter()
            .find(|role| role.service == service)
            .map(Role::permissions)
            .unwrap_or_else(|| panic!("no role {service}"))
    }

    #[test]
    fn a_producer_publishes_its_own_events_and_keeps_its_own_stream() {
        let users = role(&system_roles(&["purchases"]), "users");
        assert!(users.publish_allow.contains(&"users.>".to_owned()));
        assert!(
            users
                .publish_allow
                .contains(&"$JS.API.STREAM.CREATE.USERS".to_owned())
        );
        assert!(!users.publish_allow.iter().any(|s| s.starts_with("orders")));
        assert!(
            !users
                .publish_allow
                .iter()
                .any(|s| s.contains("PRODUCTS") || s.contains("CONSUMER"))
        );
        assert_eq!(
            users
                .subscribe_allow
                .iter()
                .filter(|s| s.starts_with("_INBOX"))
                .collect::<Vec<_>>(),
            ["_INBOX.users.>"],
            "its own replies only"
        );
        assert!(
            users
                .publish_deny
                .contains(&"$JS.API.STREAM.DELETE.>".to_owned())
        );
    }

    #[test]
    fn only_the_asker_asks_and_only_the_owner_answers() {
        let roles = system_roles(&["purchases"]);
        let users = role(&roles, "users");
        assert!(
            users
                .subscribe_allow
                .contains(&"ask.users.GetUser".to_owned())
        );
        assert!(
            users
                .subscribe_allow
                .contains(&"$SRV.PING.users".to_owned())
        );
        assert!(users.allow_responses);
        assert!(
            !users
                .subscribe_allow
                .iter()
                .any(|s| s.starts_with("ask.orders")),
            "users may not hear orders' questions"
        );
        assert!(!users.publish_allow.iter().any(|s| s.starts_with("ask.")));
        let asker = role(&roles, ASKER);
        assert_eq!(
            asker.publish_allow,
            [
                "ask.orders.ListOrdersByUser",
                "ask.products.BatchGetProducts",
                "ask.products.GetProduct",
                "ask.users.GetUser"
            ]
        );
        assert_eq!(asker.subscribe_allow, ["_INBOX.purchases-bus.>"]);
        assert!(!asker.allow_responses);
        for reader in ["purchases-async", "orders"] {
            assert!(
                !role(&roles, reader)
                    .publish_allow
                    .iter()
                    .any(|s| s.starts_with("ask.")),
                "{reader} may not ask"
            );
        }
    }

    #[test]
    fn a_reader_may_only_use_its_own_durables() {
        let purchases = role(
            &system_roles(&["purchases", "bench-catch-up"]),
            "purchases-async",
        );
        assert!(
            purchases
                .publish_allow
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.ORDERS.bench-catch-up".to_owned())
        );
        assert!(
            !purchases
                .publish_allow
                .iter()
                .any(|s| s.ends_with(".orders") || s.contains(".orders."))
        );
        assert!(
            purchases
                .publish_allow
                .iter()
                .all(|s| s.starts_with("$JS.")),
            "no event subject: {:?}",
            purchases.publish_allow
        );
    }
}
