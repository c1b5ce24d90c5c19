//! forged-event: an outsider forges events. NATS refuses them (no anonymous client, no service
//! publishing another's events); then, with authorization switched off on purpose, forged
//! renames are published onto USERS, and every consumer must dead-letter them and apply none.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use contracts::events::v1 as events;
use contracts::ops::v1 as ops;
use contracts::ops::v1::dead_letter_admin_client::DeadLetterAdminClient;
use contracts::purchases::v1 as pb;
use contracts::users::v1 as users_pb;
use contracts::users::v1::user_service_client::UserServiceClient;
use prost::Message as _;

use super::{Checked, Injected, Left, Lifted, Window};
use crate::chaos::expectations::{Claim, Expectation, bus_fault};
use crate::chaos::load::Series;
use crate::topology::{Endpoints, Service};
use crate::up::RunningLab;

/// What the forger tried, and what came of it.
#[derive(Debug)]
pub(in crate::chaos) struct Forgery {
    /// How NATS answered a client without credentials.
    anonymous: Result<String, String>,
    /// How NATS answered purchases-async's own user publishing a users event.
    impostor: Result<String, String>,
    /// Forged messages stored while authorization was off.
    forged: u64,
    /// The user the forgeries were about.
    target: String,
}

/// How long a refused request is waited for: NATS never answers one, so this is how long
/// the refusal takes to show.
const REFUSED_WITHIN: Duration = Duration::from_secs(2);

pub(super) async fn inject(lab: &mut RunningLab, target_user: &str) -> anyhow::Result<Injected> {
    Ok(Injected::ForgedEvent(forge(lab, target_user).await?))
}

/// A real rename of the forgeries' target: it must land, which it could not had a forged
/// version been applied.
pub(super) async fn lift(lab: &mut RunningLab, forgery: Forgery) -> anyhow::Result<Lifted> {
    let renamed = rename_for_real(&lab.endpoints, &forgery.target).await?;
    Ok(Lifted {
        notes: vec![format!(
            "{} forged events stored while authorization was off; then {:?} renamed for real to {renamed:?}",
            forgery.forged, forgery.target
        )],
        left: Some(Left::Forged(forgery)),
    })
}

pub(super) fn during() -> Vec<Claim> {
    let mut claims = bus_fault("writes commit while NATS's authorization is switched");
    // Reloading the server's authorization re-checks every connection's subscriptions and
    // replies: a question in flight at that moment may fail (4 of 282 in one run).
    claims.push((
        Series::Bus,
        95.0,
        100.0,
        "the bus way loses at most the questions in flight while NATS reloads its authorization",
    ));
    claims
}

/// NATS refused the forgeries it could, and every consumer dead-lettered the rest.
pub(super) async fn check(forgery: Forgery, window: &Window<'_>) -> anyhow::Result<Checked> {
    let (endpoints, asynchronous, positions_before, probe_user) = (
        &window.lab.endpoints,
        window.asynchronous,
        window.positions_before,
        window.probe_user,
    );
    let outcome = |result: &Result<String, String>| match result {
        Ok(refused) => (refused.clone(), true),
        Err(let_through) => (let_through.clone(), false),
    };
    let mut expected = Vec::new();
    let (measured, met) = outcome(&forgery.anonymous);
    expected.push(Expectation {
        what: "NATS refuses a client without credentials".to_owned(),
        measured,
        met,
    });
    let (measured, met) = outcome(&forgery.impostor);
    expected.push(Expectation {
        what: "NATS refuses purchases-async's own user publishing a users event".to_owned(),
        measured,
        met,
    });
    let dead_lettered = |positions: Option<&BTreeMap<String, pb::StreamPosition>>| {
        positions
            .and_then(|positions| positions.get(bus::USERS))
            .map_or(0, |position| position.dead_lettered)
    };
    let before = dead_lettered(positions_before);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut now = before;
    while Instant::now() < deadline {
        now = dead_lettered(
            crate::measure::positions(asynchronous, probe_user)
                .await
                .as_ref(),
        );
        if now >= before + forgery.forged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    expected.push(Expectation {
        what: "with authorization off on purpose, purchases-async dead-letters every forgery and applies none".to_owned(),
        measured: format!("{} dead-lettered of {} forged", now - before, forgery.forged),
        met: forgery.forged > 0 && now - before >= forgery.forged,
    });
    let replica = dead_letters(endpoints, Service::Orders, bus::USERS)
        .await?
        .len() as u64;
    expected.push(Expectation {
        what: "and so does orders' replica (listed through its admin API)".to_owned(),
        measured: format!("{replica} dead letters on USERS"),
        met: replica >= forgery.forged,
    });
    Ok(Checked {
        notes: Vec::new(),
        expectations: expected,
    })
}

/// Plays the forger: first against the lab as it runs (an anonymous client, then a service's
/// own credentials publishing another service's events), then with authorization switched
/// off on purpose, publishing forged events about `target` onto USERS as anyone could before
/// per-service users existed. Authorization is back on when this returns.
async fn forge(lab: &mut RunningLab, target: &str) -> anyhow::Result<Forgery> {
    let endpoints = lab.endpoints.clone();
    let urls: Vec<&str> = endpoints.nats_url.split(',').collect();
    let anonymous = match async_nats::ConnectOptions::new()
        .connection_timeout(REFUSED_WITHIN)
        .connect(urls.clone())
        .await
    {
        Ok(_) => Err("an anonymous client was let in".to_owned()),
        Err(error) => Ok(format!("refused: {error}")),
    };
    let impostor = impostor_publishes(&endpoints).await?;

    lab.set_nats_authorization(false).await?;
    let forged = publish_forgeries(&urls, target).await;
    lab.set_nats_authorization(true).await?;
    Ok(Forgery {
        anonymous,
        impostor,
        forged: forged?,
        target: target.to_owned(),
    })
}

/// purchases-async's credentials publishing a users event: NATS must drop it and say so.
async fn impostor_publishes(endpoints: &Endpoints) -> anyhow::Result<Result<String, String>> {
    let seed_file = endpoints
        .nats_seed(Service::PurchasesAsync.binary())
        .context("the lab's NATS runs without credentials")?;
    let seed = std::fs::read_to_string(&seed_file)
        .with_context(|| format!("cannot read {}", seed_file.display()))?;
    let (violations_tx, mut violations) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
        .custom_inbox_prefix(bus::inbox_prefix(Service::PurchasesAsync.binary()))
        .event_callback(move |event| {
            let violations_tx = violations_tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = violations_tx.send(error.to_string());
                }
            }
        })
        .connect(endpoints.nats_url.split(',').collect::<Vec<_>>())
        .await
        .context("purchases-async's credentials no longer connect")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(REFUSED_WITHIN)
        .build(client);
    let subject = renamed_subject();
    let acknowledged = async {
        js.publish(subject.clone(), "forged by an impostor".into())
            .await?
            .await
            .map_err(async_nats::Error::from)
    }
    .await;
    if acknowledged.is_ok() {
        return Ok(Err(format!("{subject} was stored")));
    }
    let seen = tokio::time::timeout(REFUSED_WITHIN, async {
        while let Some(error) = violations.recv().await {
            if error.to_lowercase().contains("permissions violation") {
                return Some(error);
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    Ok(seen.ok_or_else(|| format!("{subject} was neither stored nor reported refused")))
}

/// Publishes, as anyone, the forgeries a consumer must refuse: a rename at a version no real
/// write reaches (applied, it would make every later event of the user look stale), a rename
/// claiming to come from orders, and bytes that are no event at all.
async fn publish_forgeries(urls: &[&str], target: &str) -> anyhow::Result<u64> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(urls.to_vec())
        .await
        .context("with authorization off, anyone connects")?;
    let js = jetstream::new(client);
    let envelope = |version: u64, producer: &str| events::EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: "events.v1.UserRenamed".to_owned(),
        aggregate_type: "user".to_owned(),
        aggregate_id: target.to_owned(),
        aggregate_version: version,
        occurred_at: Some(platform::time::to_timestamp(platform::time::now_micros())),
        producer: producer.to_owned(),
        schema_version: 1,
        payload: events::UserRenamed {
            user_id: target.to_owned(),
            name: "Mallory".to_owned(),
            ..Default::default()
        }
        .encode_to_vec(),
        metadata: Default::default(),
    };
    let forgeries: [Vec<u8>; 3] = [
        envelope(1 << 62, "users").encode_to_vec(),
        envelope(3, "orders").encode_to_vec(),
        b"\x00not an event at all".to_vec(),
    ];
    let mut stored = 0;
    for payload in forgeries {
        js.publish(renamed_subject(), payload.into())
            .await
            .context("publish a forgery")?
            .await
            .context("JetStream stores the forgery")?;
        stored += 1;
    }
    Ok(stored)
}

/// Dead letters of `stream` in `service`'s database, through its admin API.
async fn dead_letters(
    endpoints: &Endpoints,
    service: Service,
    stream: &str,
) -> anyhow::Result<Vec<ops::DeadLetter>> {
    let mut client = DeadLetterAdminClient::new(endpoints.fault_admin_channel(service));
    let mut letters = Vec::new();
    let mut after_id = 0;
    loop {
        let page = client
            .list_dead_letters(ops::ListDeadLettersRequest {
                stream: stream.to_owned(),
                page_size: 1_000,
                after_id,
            })
            .await
            .with_context(|| format!("{service}'s dead letters"))?
            .into_inner();
        letters.extend(page.dead_letters);
        if page.next_after_id == 0 {
            return Ok(letters);
        }
        after_id = page.next_after_id;
    }
}

/// Renames `user` through the users service, and returns the new name.
async fn rename_for_real(endpoints: &Endpoints, user: &str) -> anyhow::Result<String> {
    let name = format!("Renamed {}", uuid::Uuid::now_v7().simple());
    UserServiceClient::new(endpoints.channel(Service::Users))
        .update_user(users_pb::UpdateUserRequest {
            id: user.to_owned(),
            name: name.clone(),
            expected_version: None,
        })
        .await
        .with_context(|| format!("rename {user}"))?;
    Ok(name)
}

/// Where a forged rename goes: the subject users publishes its renames on.
fn renamed_subject() -> String {
    bus::Stream::named(bus::USERS).subject("user", "UserRenamed")
}
