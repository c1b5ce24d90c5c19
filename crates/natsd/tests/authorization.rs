//! Each service is a NATS user of its own with the permissions `bus::access` derives for it:
//! every test here plays one thing an outsider or a misbehaving service could try, against a
//! real nats-server, and shows the server refusing it, beside what the same user may do.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt as _;
use natsd::{Credentials, NatsServer, NatsServerOptions};
use tokio::sync::mpsc;

/// A server with the system's users, the admin, and its stores made by the admin.
struct Secure {
    server: NatsServer,
    credentials: Credentials,
    _dir: tempfile::TempDir,
}

/// JetStream requests time out quickly: a refused request is never answered, and a test
/// should not wait the default 5 s to see it.
const REFUSED_WITHIN: Duration = Duration::from_secs(1);

impl Secure {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let roles = bus::access::system_roles(&[bus::PURCHASES_DURABLE]);
        let (authorization, credentials) =
            natsd::auth::provision(dir.path(), &roles, bus::access::ADMIN).expect("credentials");
        let server = NatsServer::start(NatsServerOptions {
            authorization: Some(authorization),
            ..NatsServerOptions::default()
        })
        .await
        .expect("nats-server starts");
        let secure = Self {
            server,
            credentials,
            _dir: dir,
        };
        let admin = secure.js(bus::access::ADMIN).await.0;
        for name in bus::SYSTEM_STREAMS {
            let owner = bus::Stream::named(name);
            admin
                .create_stream(stream::Config {
                    name: owner.name.clone(),
                    subjects: vec![owner.subjects()],
                    ..Default::default()
                })
                .await
                .expect("the admin creates the stream");
            admin
                .publish(owner.subject("x", "Seeded"), "seed".into())
                .await
                .expect("publish")
                .await
                .expect("acknowledged");
        }
        secure
    }

    /// A client connected as `identity`, with the server's refusals collected.
    async fn connect(
        &self,
        identity: &str,
    ) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
        let seed = self.credentials.seed(identity).expect("a seed");
        let (errors_tx, errors) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_nkey(seed)
            .custom_inbox_prefix(bus::inbox_prefix(identity))
            .event_callback(move |event| {
                let errors_tx = errors_tx.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = event {
                        let _ = errors_tx.send(error.to_string());
                    }
                }
            })
            .connect(self.server.url())
            .await
            .unwrap_or_else(|error| panic!("{identity} connects: {error}"));
        (client, errors)
    }

    async fn js(&self, identity: &str) -> (jetstream::Context, mpsc::UnboundedReceiver<String>) {
        let (client, errors) = self.connect(identity).await;
        let js = jetstream::ContextBuilder::new()
            .timeout(REFUSED_WITHIN)
            .build(client);
        (js, errors)
    }

    async fn messages(&self, stream: &str) -> u64 {
        let admin = self.js(bus::access::ADMIN).await.0;
        let mut stream = admin.get_stream(stream).await.expect("the stream exists");
        stream.info().await.expect("stream info").state.messages
    }
}

/// Waits for the server to report a permission violation naming `subject`.
async fn refused(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(error) = errors.recv().await {
            if error.to_lowercase().contains("permissions violation") && error.contains(subject) {
                return error;
            }
        }
        String::new()
    })
    .await
    .unwrap_or_default();
    assert!(
        !seen.is_empty(),
        "the server never reported a permissions violation for {subject}"
    );
}

#[tokio::test]
async fn an_anonymous_client_or_an_unknown_key_is_refused() {
    let secure = Secure::start().await;
    let anonymous = async_nats::ConnectOptions::new()
        .connect(secure.server.url())
        .await;
    assert!(
        anonymous.is_err(),
        "a client without credentials must be refused"
    );
    let stranger = nkeys::KeyPair::new_user().seed().expect("a seed");
    let unknown = async_nats::ConnectOptions::with_nkey(stranger)
        .connect(secure.server.url())
        .await;
    assert!(
        unknown.is_err(),
        "a key the server does not know is refused"
    );
    assert!(
        secure.connect("users").await.0.flush().await.is_ok(),
        "a known service connects"
    );
}

#[tokio::test]
async fn a_producer_publishes_its_own_events_and_keeps_its_own_stream() {
    let secure = Secure::start().await;
    let (js, _) = secure.js("users").await;
    let config = stream::Config {
        name: bus::USERS.into(),
        subjects: vec!["users.>".into()],
        ..Default::default()
    };
    js.create_or_update_stream(config)
        .await
        .expect("users may create and update USERS");
    js.publish("users.user.UserRegistered", "event".into())
        .await
        .expect("publish")
        .await
        .expect("users' own event is stored");
    assert_eq!(secure.messages(bus::USERS).await, 2);
}

#[tokio::test]
async fn a_producer_cannot_publish_another_services_events() {
    let secure = Secure::start().await;
    let (js, mut errors) = secure.js("users").await;
    let published = async {
        js.publish("orders.order.OrderPlaced", "forged".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    }
    .await;
    assert!(
        published.is_err(),
        "no acknowledgement for a refused publish"
    );
    refused(&mut errors, "orders.order.OrderPlaced").await;
    assert_eq!(
        secure.messages(bus::ORDERS).await,
        1,
        "ORDERS holds only what its owner published"
    );
}

#[tokio::test]
async fn a_producer_cannot_delete_or_purge_another_stream_nor_its_own() {
    let secure = Secure::start().await;
    let (js, mut errors) = secure.js("users").await;
    assert!(
        js.delete_stream(bus::PRODUCTS).await.is_err(),
        "deleting PRODUCTS is refused"
    );
    refused(&mut errors, "$JS.API.STREAM.DELETE.PRODUCTS").await;
    let mut products = secure
        .js(bus::access::ADMIN)
        .await
        .0
        .get_stream(bus::PRODUCTS)
        .await
        .expect(bus::PRODUCTS);
    let users_view = js.get_stream(bus::PRODUCTS).await;
    assert!(users_view.is_err(), "users may not even look at PRODUCTS");
    let purged = async {
        let (own, _) = secure.js("users").await;
        own.get_stream(bus::USERS).await?.purge().await?;
        Ok::<_, async_nats::Error>(())
    }
    .await;
    assert!(purged.is_err(), "purging even its own stream is refused");
    assert_eq!(
        products.info().await.expect("info").state.messages,
        1,
        "PRODUCTS is untouched"
    );
    assert_eq!(secure.messages(bus::USERS).await, 1, "USERS is untouched");
}

#[tokio::test]
async fn a_reader_may_pull_through_its_own_durable_and_publish_nothing() {
    let secure = Secure::start().await;
    let (js, mut errors) = secure.js("purchases-async").await;
    let orders = js
        .get_stream(bus::ORDERS)
        .await
        .expect("a reader looks at ORDERS");
    let durable = orders
        .create_consumer(pull::Config {
            durable_name: Some(bus::PURCHASES_DURABLE.into()),
            ack_policy: jetstream::consumer::AckPolicy::All,
            ..Default::default()
        })
        .await
        .expect("its own durable");
    let mut messages = durable
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("pull");
    let message = messages
        .next()
        .await
        .expect("a message")
        .expect("delivered");
    message.double_ack().await.expect("acknowledged");

    for forged in [
        "users.user.UserRenamed",
        "orders.order.OrderPlaced",
        "purchases.anything",
    ] {
        let published = async {
            js.publish(forged, "forged".into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        }
        .await;
        assert!(published.is_err(), "{forged} is refused");
        refused(&mut errors, forged).await;
    }
    assert!(
        orders
            .create_consumer(pull::Config {
                durable_name: Some(bus::ORDERS_DURABLE.into()),
                ..Default::default()
            })
            .await
            .is_err(),
        "orders' durable is not purchases-async's to create or take over"
    );
    assert!(
        js.create_stream(stream::Config {
            name: "PURCHASES".into(),
            subjects: vec!["purchases.>".into()],
            ..Default::default()
        })
        .await
        .is_err(),
        "a reader creates no stream"
    );
    assert_eq!(secure.messages(bus::USERS).await, 1);
    assert_eq!(secure.messages(bus::ORDERS).await, 1);
}

#[tokio::test]
async fn no_service_can_listen_to_another_services_replies() {
    let secure = Secure::start().await;
    let (client, mut errors) = secure.connect("users").await;
    let mut snooping = client
        .subscribe("_INBOX.>")
        .await
        .expect("the subscription is sent");
    refused(&mut errors, "_INBOX.>").await;
    let (victim, _) = secure.connect("orders").await;
    let mut own = victim
        .subscribe("_INBOX.orders.reply")
        .await
        .expect("orders listens on its own inbox");
    victim.flush().await.expect("flush");
    let (admin, _) = secure.connect(bus::access::ADMIN).await;
    admin
        .publish("_INBOX.orders.reply", "for orders only".into())
        .await
        .expect("publish");
    admin.flush().await.expect("flush");
    let delivered = tokio::time::timeout(Duration::from_secs(5), own.next())
        .await
        .expect("orders gets its reply");
    assert!(delivered.is_some());
    let snooped = tokio::time::timeout(Duration::from_millis(300), snooping.next()).await;
    assert!(
        !matches!(snooped, Ok(Some(_))),
        "users saw a message on another service's inbox"
    );
}

#[tokio::test]
async fn only_the_asker_asks_and_only_the_owner_answers() {
    let secure = Secure::start().await;
    let question = bus::ask::GET_USER.subject();
    let (users, _) = secure.connect("users").await;
    let mut asked = users
        .queue_subscribe(question.clone(), bus::ask::QUEUE_GROUP.into())
        .await
        .expect("users listens for its own questions");
    let answering = tokio::spawn({
        let users = users.clone();
        async move {
            while let Some(message) = asked.next().await {
                let reply = message.reply.expect("a question has a reply subject");
                users
                    .publish(reply, "an answer".into())
                    .await
                    .expect("users answers what it was asked");
            }
        }
    });
    users.flush().await.expect("subscribed");

    let (asker, _) = secure.connect(bus::access::ASKER).await;
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        asker.request(question.clone(), "who?".into()),
    )
    .await
    .expect("answered in time")
    .expect("purchases-bus may ask users");
    assert_eq!(answer.payload, "an answer");

    // A reader that does not ask may not: the question never reaches users.
    let (reader, mut reader_errors) = secure.connect("purchases-async").await;
    let not_asked =
        tokio::time::timeout(REFUSED_WITHIN, reader.request(question.clone(), "x".into())).await;
    assert!(
        !matches!(not_asked, Ok(Ok(_))),
        "purchases-async got an answer it may not ask for"
    );
    refused(&mut reader_errors, &question).await;

    // Another owner may not listen in on users' questions, nor answer them.
    let (products, mut products_errors) = secure.connect("products").await;
    let mut eavesdropper = products
        .queue_subscribe(question.clone(), bus::ask::QUEUE_GROUP.into())
        .await
        .expect("the subscription is sent");
    refused(&mut products_errors, &question).await;
    for _ in 0..5 {
        asker
            .request(question.clone(), "who?".into())
            .await
            .expect("users still answers every question");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), eavesdropper.next())
            .await
            .is_err(),
        "products heard a question meant for users"
    );

    // And an owner answers only what it was asked: it cannot publish into the asker's inbox.
    let (users_again, mut users_errors) = secure.connect("users").await;
    let forged_reply = format!("{}.forged", bus::inbox_prefix(bus::access::ASKER));
    users_again
        .publish(forged_reply.clone(), "unasked".into())
        .await
        .expect("the publish is sent");
    refused(&mut users_errors, &forged_reply).await;
    answering.abort();
}
