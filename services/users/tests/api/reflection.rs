//! End to end with the real grpcurl binary, through server reflection, as a user would.

use testkit::Backend;
use tokio::process::Command;

use crate::helpers::spawn_app;

async fn grpcurl(args: &[&str]) -> (bool, String) {
    let output = Command::new(testkit::grpcurl())
        .args(args)
        .output()
        .await
        .expect("grpcurl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[tokio::test]
async fn grpcurl_lists_describes_and_round_trips_through_reflection() {
    let app = spawn_app(Backend::Sqlite).await;
    let addr = app.server.addr().to_string();

    let (ok, listed) = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(ok, "{listed}");
    assert!(listed.contains("users.v1.UserService"), "{listed}");
    assert!(listed.contains("grpc.health.v1.Health"), "{listed}");
    assert!(
        !listed.contains("products.v1"),
        "only this service's API is advertised: {listed}"
    );

    let (ok, described) = grpcurl(&["-plaintext", &addr, "describe", "users.v1.UserService"]).await;
    assert!(ok, "{described}");
    assert!(described.contains("rpc CreateUser"), "{described}");

    let (ok, created) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"email": "linus@example.com", "name": "Linus"}"#,
        &addr,
        "users.v1.UserService/CreateUser",
    ])
    .await;
    assert!(ok, "{created}");
    let created: serde_json::Value = serde_json::from_str(&created).expect("grpcurl prints JSON");
    let id = created["user"]["id"]
        .as_str()
        .expect("the response has the user's id");

    let (ok, fetched) = grpcurl(&[
        "-plaintext",
        "-d",
        &format!(r#"{{"id": "{id}"}}"#),
        &addr,
        "users.v1.UserService/GetUser",
    ])
    .await;
    assert!(ok, "{fetched}");
    assert!(fetched.contains("linus@example.com"), "{fetched}");
    assert!(fetched.contains(r#""version": "1""#), "{fetched}");

    let (ok, rejected) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"email": "not-an-email", "name": "Linus"}"#,
        &addr,
        "users.v1.UserService/CreateUser",
    ])
    .await;
    assert!(!ok, "{rejected}");
    assert!(rejected.contains("InvalidArgument"), "{rejected}");
    assert!(rejected.contains("email"), "{rejected}");

    let (ok, health) = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(ok && health.contains("SERVING"), "{health}");
}

#[tokio::test]
async fn faults_are_set_and_cleared_through_the_admin_api_on_its_own_loopback_port() {
    let app = crate::helpers::spawn_app_with(Backend::Sqlite, |config| {
        config.common.admin_listen = Some("127.0.0.1:0".parse().expect("a socket address"));
    })
    .await;
    let addr = app.server.addr().to_string();
    let admin = app
        .fault_admin
        .expect("the admin API listens when asked for")
        .to_string();
    assert_ne!(admin, addr, "the admin API has a port of its own");

    let (ok, listed) = grpcurl(&["-plaintext", &admin, "list"]).await;
    assert!(ok && listed.contains("fault.v1.FaultAdmin"), "{listed}");
    assert!(!listed.contains("users.v1"), "{listed}");
    let (ok, listed) = grpcurl(&["-plaintext", &addr, "list"]).await;
    assert!(ok && !listed.contains("fault.v1"), "{listed}");

    let created = app.create("grace@example.com", "Grace").await;
    let get_user = format!(r#"{{"id": "{}"}}"#, created.id);
    let (ok, set) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"fault": {"target": "users.v1.UserService/GetUser", "failure_fraction": 1, "failure_code": "UNAVAILABLE"}}"#,
        &admin,
        "fault.v1.FaultAdmin/AddFault",
    ])
    .await;
    assert!(
        ok && set.contains(r#""failureCode": "UNAVAILABLE""#),
        "{set}"
    );

    let (ok, failed) = grpcurl(&[
        "-plaintext",
        "-d",
        &get_user,
        &addr,
        "users.v1.UserService/GetUser",
    ])
    .await;
    assert!(!ok && failed.contains("Unavailable"), "{failed}");
    let (ok, health) = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]).await;
    assert!(
        ok && health.contains("SERVING"),
        "health is never faulted: {health}"
    );
    app.create("alan@example.com", "Alan").await;

    let (ok, refused) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"fault": {"failure_fraction": 0.5, "failure_code": "BROKEN"}}"#,
        &admin,
        "fault.v1.FaultAdmin/AddFault",
    ])
    .await;
    assert!(
        !ok && refused.contains("InvalidArgument") && refused.contains("failure_code"),
        "{refused}"
    );

    let (ok, cleared) = grpcurl(&["-plaintext", &admin, "fault.v1.FaultAdmin/ClearFaults"]).await;
    assert!(ok, "{cleared}");
    let (ok, listed) = grpcurl(&["-plaintext", &admin, "fault.v1.FaultAdmin/ListFaults"]).await;
    assert!(ok, "{listed}");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("grpcurl prints JSON");
    assert_eq!(listed, serde_json::json!({}), "no fault is left");
    let (ok, fetched) = grpcurl(&[
        "-plaintext",
        "-d",
        &get_user,
        &addr,
        "users.v1.UserService/GetUser",
    ])
    .await;
    assert!(ok && fetched.contains("grace@example.com"), "{fetched}");
}
