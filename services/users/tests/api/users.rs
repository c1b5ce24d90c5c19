use contracts::events::v1 as events;
use contracts::users::v1 as pb;
use testkit::{Backend, assert_status, backend_tests, payload};
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::helpers::spawn_app;

backend_tests!(
    a_registered_user_can_be_read_back_and_leaves_one_event,
    schema_2_events_add_the_split_name_and_keep_the_whole_one,
    invalid_input_is_rejected_naming_the_field,
    a_duplicate_email_is_rejected_whatever_its_case,
    an_unknown_user_is_not_found,
    a_rename_bumps_the_version_and_records_an_event,
    a_stale_expected_version_is_aborted_and_changes_nothing,
    concurrent_renames_of_one_version_let_exactly_one_win,
    a_deleted_user_is_gone_cannot_change_and_frees_its_email,
    an_oversized_request_is_rejected,
);

async fn a_registered_user_can_be_read_back_and_leaves_one_event(backend: Backend) {
    let app = spawn_app(backend).await;

    let created = app.create("Ada@Example.com", "  Ada Lovelace ").await;
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.name, "Ada Lovelace");
    assert_eq!(created.version, 1);

    let fetched = app
        .client
        .clone()
        .get_user(pb::GetUserRequest {
            id: created.id.clone(),
        })
        .await
        .expect("the user is found")
        .into_inner()
        .user;
    assert_eq!(fetched.as_ref(), Some(&created));

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 1);
    let event = &outbox[0];
    assert_eq!(event.aggregate_type, "user");
    assert_eq!(event.aggregate_id, created.id);
    assert_eq!(event.aggregate_version, 1);
    assert_eq!(event.producer, "users");
    assert_eq!(event.schema_version, 1);
    let registered: events::UserRegistered = payload(event);
    assert_eq!(registered.user_id, created.id);
    assert_eq!(registered.email, "ada@example.com");
    assert_eq!(registered.name, "Ada Lovelace");
    assert_eq!(
        (
            registered.given_name.as_str(),
            registered.family_name.as_str()
        ),
        ("", ""),
        "schema 1 leaves the parts out"
    );
}

async fn schema_2_events_add_the_split_name_and_keep_the_whole_one(backend: Backend) {
    let app =
        crate::helpers::spawn_app_with(backend, |config| config.events.event_schema = 2).await;
    let created = app
        .create("grace@example.com", "Grace Brewster Hopper")
        .await;
    app.client
        .clone()
        .update_user(pb::UpdateUserRequest {
            id: created.id.clone(),
            name: "Grace Hopper".to_owned(),
            expected_version: None,
        })
        .await
        .expect("renamed");
    let outbox = app.outbox().await;
    assert!(outbox.iter().all(|event| event.schema_version == 2));
    let registered: events::UserRegistered = payload(&outbox[0]);
    assert_eq!(
        registered.name, "Grace Brewster Hopper",
        "the old field stays"
    );
    assert_eq!(registered.given_name, "Grace Brewster");
    assert_eq!(registered.family_name, "Hopper");
    let renamed: events::UserRenamed = payload(&outbox[1]);
    assert_eq!(
        (
            renamed.name.as_str(),
            renamed.given_name.as_str(),
            renamed.family_name.as_str()
        ),
        ("Grace Hopper", "Grace", "Hopper")
    );
}

async fn invalid_input_is_rejected_naming_the_field(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut client = app.client.clone();
    let create = |email: &str, name: &str| pb::CreateUserRequest {
        email: email.to_owned(),
        name: name.to_owned(),
    };

    for (request, field) in [
        (create("", "Ada"), "email"),
        (create("not-an-email", "Ada"), "email"),
        (create("ada@example", "Ada"), "email"),
        (
            create(&format!("{}@example.com", "a".repeat(300)), "Ada"),
            "email",
        ),
        (create("ada@example.com", ""), "name"),
        (create("ada@example.com", "   "), "name"),
        (create("ada@example.com", &"x".repeat(201)), "name"),
        (create("ada@example.com", "Ada\u{7}"), "name"),
    ] {
        let status = assert_status(
            client.create_user(request).await,
            Code::InvalidArgument,
            field,
        );
        let details = status.get_error_details();
        let violations = details
            .bad_request()
            .map(|bad| bad.field_violations.clone())
            .unwrap_or_default();
        assert_eq!(
            violations.len(),
            1,
            "one BadRequest violation in {status:?}"
        );
        assert_eq!(violations[0].field, field);
    }

    for id in [
        "",
        "42",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
    ] {
        assert_status(
            client
                .get_user(pb::GetUserRequest { id: id.to_owned() })
                .await,
            Code::InvalidArgument,
            "id",
        );
    }
    assert_status(
        client
            .update_user(pb::UpdateUserRequest {
                id: "nope".to_owned(),
                name: "Ada".to_owned(),
                expected_version: None,
            })
            .await,
        Code::InvalidArgument,
        "id",
    );

    assert!(
        app.outbox().await.is_empty(),
        "rejected requests record nothing"
    );
}

async fn a_duplicate_email_is_rejected_whatever_its_case(backend: Backend) {
    let app = spawn_app(backend).await;
    app.create("grace@example.com", "Grace Hopper").await;

    let duplicate = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            email: "GRACE@example.com".to_owned(),
            name: "Another Grace".to_owned(),
        })
        .await;
    assert_status(duplicate, Code::AlreadyExists, "grace@example.com");
    assert_eq!(
        app.outbox().await.len(),
        1,
        "the rejected registration records no event"
    );
}

async fn an_unknown_user_is_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let mut client = app.client.clone();

    assert_status(
        client
            .get_user(pb::GetUserRequest {
                id: unknown.clone(),
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .update_user(pb::UpdateUserRequest {
                id: unknown.clone(),
                name: "X".to_owned(),
                expected_version: None,
            })
            .await,
        Code::NotFound,
        &unknown,
    );
    assert_status(
        client
            .delete_user(pb::DeleteUserRequest {
                id: unknown.clone(),
                expected_version: None,
            })
            .await,
        Code::NotFound,
        &unknown,
    );
}

async fn a_rename_bumps_the_version_and_records_an_event(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.create("alan@example.com", "Alan").await;

    let renamed = app
        .client
        .clone()
        .update_user(pb::UpdateUserRequest {
            id: user.id.clone(),
            name: "Alan Turing".to_owned(),
            expected_version: Some(1),
        })
        .await
        .expect("the rename applies")
        .into_inner()
        .user
        .expect("the renamed user is returned");
    assert_eq!(renamed.name, "Alan Turing");
    assert_eq!(renamed.version, 2);
    assert_eq!(renamed.email, user.email);

    // Renaming to the same name is a no-op: no new version, no new event.
    let unchanged = app
        .client
        .clone()
        .update_user(pb::UpdateUserRequest {
            id: user.id.clone(),
            name: "Alan Turing".to_owned(),
            expected_version: None,
        })
        .await
        .expect("a no-op rename succeeds")
        .into_inner()
        .user
        .expect("the user is returned");
    assert_eq!(unchanged.version, 2);

    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[1].aggregate_version, 2);
    let event: events::UserRenamed = payload(&outbox[1]);
    assert_eq!(event.name, "Alan Turing");
}

async fn a_stale_expected_version_is_aborted_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.create("edsger@example.com", "Edsger").await;
    let mut client = app.client.clone();

    assert_status(
        client
            .update_user(pb::UpdateUserRequest {
                id: user.id.clone(),
                name: "E. W. Dijkstra".to_owned(),
                expected_version: Some(7),
            })
            .await,
        Code::Aborted,
        "version 1",
    );
    assert_status(
        client
            .delete_user(pb::DeleteUserRequest {
                id: user.id.clone(),
                expected_version: Some(2),
            })
            .await,
        Code::Aborted,
        "version 1",
    );
    let stored = client
        .get_user(pb::GetUserRequest {
            id: user.id.clone(),
        })
        .await
        .expect("the user is still there")
        .into_inner()
        .user;
    assert_eq!(stored, Some(user));
    assert_eq!(app.outbox().await.len(), 1);
}

async fn concurrent_renames_of_one_version_let_exactly_one_win(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.create("barbara@example.com", "Barbara").await;

    let attempts = (0..8).map(|attempt_idx| {
        let mut client = app.client.clone();
        let id = user.id.clone();
        async move {
            client
                .update_user(pb::UpdateUserRequest {
                    id,
                    name: format!("Barbara {attempt_idx}"),
                    expected_version: Some(1),
                })
                .await
        }
    });
    let results = futures::future::join_all(attempts).await;

    let n_won = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(
        n_won, 1,
        "exactly one rename of version 1 applies: {results:?}"
    );
    for result in results.into_iter().filter(Result::is_err) {
        assert_status(result, Code::Aborted, "");
    }
    let outbox = app.outbox().await;
    assert_eq!(outbox.len(), 2);
    assert_eq!(outbox[1].aggregate_version, 2);
}

async fn a_deleted_user_is_gone_cannot_change_and_frees_its_email(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.create("ken@example.com", "Ken").await;
    let mut client = app.client.clone();

    let deleted = client
        .delete_user(pb::DeleteUserRequest {
            id: user.id.clone(),
            expected_version: Some(1),
        })
        .await
        .expect("the deletion applies")
        .into_inner();
    assert_eq!(deleted.version, 2);

    assert_status(
        client
            .get_user(pb::GetUserRequest {
                id: user.id.clone(),
            })
            .await,
        Code::NotFound,
        "deleted",
    );
    assert_status(
        client
            .update_user(pb::UpdateUserRequest {
                id: user.id.clone(),
                name: "Ken T".to_owned(),
                expected_version: None,
            })
            .await,
        Code::FailedPrecondition,
        "deleted",
    );
    assert_status(
        client
            .delete_user(pb::DeleteUserRequest {
                id: user.id.clone(),
                expected_version: None,
            })
            .await,
        Code::FailedPrecondition,
        "deleted",
    );

    let again = app.create("ken@example.com", "Ken, again").await;
    assert_ne!(again.id, user.id, "a new registration gets a new id");

    let outbox = app.outbox().await;
    let types: Vec<&str> = outbox
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    assert_eq!(
        types,
        [
            "events.v1.UserRegistered",
            "events.v1.UserDeleted",
            "events.v1.UserRegistered"
        ]
    );
    let event: events::UserDeleted = payload(&outbox[1]);
    assert_eq!(event.user_id, user.id);
    assert_eq!(outbox[1].aggregate_version, 2);
}

async fn an_oversized_request_is_rejected(backend: Backend) {
    let app = spawn_app(backend).await;
    let oversized = app
        .client
        .clone()
        .create_user(pb::CreateUserRequest {
            email: "big@example.com".to_owned(),
            name: "x".repeat(2 * 1024 * 1024),
        })
        .await;
    assert_status(oversized, Code::ResourceExhausted, "");
    assert!(app.outbox().await.is_empty());
}
