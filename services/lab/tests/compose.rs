//! What can be checked of compose.yaml without a Docker engine: it parses, it names every
//! service with the services' default ports and URLs, and the per-service database script
//! really isolates the services on a PostgreSQL server (the local one).

use std::path::Path;

use serde_json::Value;
use sqlx::Connection as _;

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(workspace().join("compose.yaml")).expect("compose.yaml");
    // serde-saphyr resolves the anchors and merge keys compose.yaml shares settings with.
    serde_saphyr::from_str(&text).expect("compose.yaml is YAML")
}

fn env<'a>(service: &'a Value, key: &str) -> &'a str {
    service["environment"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is set"))
}

#[test]
fn compose_names_every_service_on_its_default_port() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let names: Vec<&str> = services.keys().map(String::as_str).collect();
    for (name, binary, port, listen_var) in [
        ("users", "users", 50051, "USERS_LISTEN"),
        ("products", "products", 50052, "PRODUCTS_LISTEN"),
        ("orders", "orders", 50053, "ORDERS_LISTEN"),
        ("monolith", "monolith", 50060, "MONOLITH_LISTEN"),
        (
            "purchases-sync",
            "purchases-sync",
            50061,
            "PURCHASES_SYNC_LISTEN",
        ),
        (
            "purchases-sync-sequential",
            "purchases-sync",
            50063,
            "PURCHASES_SYNC_LISTEN",
        ),
        (
            "purchases-bus",
            "purchases-bus",
            50064,
            "PURCHASES_BUS_LISTEN",
        ),
        (
            "purchases-async",
            "purchases-async",
            50062,
            "PURCHASES_ASYNC_LISTEN",
        ),
    ] {
        assert!(names.contains(&name), "{name} is in compose.yaml");
        let service = &compose["services"][name];
        assert_eq!(
            service["command"][0].as_str(),
            Some(binary),
            "{name} runs its binary"
        );
        assert_eq!(env(service, listen_var), format!("0.0.0.0:{port}"));
        assert_eq!(
            service["ports"][0].as_str(),
            Some(format!("{port}:{port}").as_str()),
            "{name} publishes its default port"
        );
        let probe = service["healthcheck"]["test"]
            .as_array()
            .expect("a health check");
        assert_eq!(
            probe.last().and_then(Value::as_str),
            Some(format!("127.0.0.1:{port}").as_str()),
            "{name}'s health check probes its own port"
        );
        assert!(
            service["depends_on"].is_object(),
            "{name} waits for what it needs"
        );
    }
    for name in ["nats", "postgres"] {
        assert!(names.contains(&name), "{name} is in compose.yaml");
        assert!(compose["services"][name]["healthcheck"].is_object());
    }
    for name in ["purchases-sync", "purchases-sync-sequential"] {
        let sync = &compose["services"][name];
        assert_eq!(env(sync, "USERS_URL"), "http://users:50051");
        assert_eq!(env(sync, "ORDERS_URL"), "http://orders:50053");
        assert_eq!(env(sync, "PRODUCTS_URL"), "http://products:50052");
    }
    assert_eq!(
        env(&compose["services"]["purchases-sync-sequential"], "FANOUT"),
        "sequential",
        "the second purchases-sync calls one dependency after another"
    );
    // Each service's database URL names its own database with its own role.
    for (name, var, database) in [
        ("users", "USERS_DATABASE_URL", "users"),
        ("products", "PRODUCTS_DATABASE_URL", "products"),
        ("orders", "ORDERS_DATABASE_URL", "orders"),
        (
            "purchases-async",
            "PURCHASES_ASYNC_DATABASE_URL",
            "purchases_async",
        ),
        ("monolith", "MONOLITH_DATABASE_URL", "monolith"),
    ] {
        let url = url::Url::parse(env(&compose["services"][name], var)).expect("a URL");
        assert_eq!(url.username(), database, "{name} logs in as its own role");
        assert_eq!(
            url.path(),
            format!("/{database}"),
            "{name} uses its own database"
        );
    }
}

fn postgres_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

#[tokio::test]
async fn the_database_script_gives_each_service_a_database_only_it_can_use() {
    let admin = url::Url::parse(&postgres_url()).expect("a PostgreSQL URL");
    let prefix = format!("t{}_", uuid::Uuid::now_v7().simple());
    let status =
        tokio::process::Command::new(workspace().join("deploy/postgres/init-databases.sh"))
            .env("DB_PREFIX", &prefix)
            .env("PGHOST", admin.host_str().unwrap_or("127.0.0.1"))
            .env("PGPORT", admin.port().unwrap_or(5432).to_string())
            .env("PGUSER", admin.username())
            .env_remove("POSTGRES_USER")
            .status()
            .await
            .expect("the script runs");
    assert!(status.success(), "init-databases.sh failed: {status}");

    let url_as = |role: &str, database: &str| {
        let mut url = admin.clone();
        url.set_username(role).expect("a username");
        url.set_password(Some(role)).expect("a password");
        url.set_path(database);
        url.to_string()
    };
    let users = format!("{prefix}users");
    let orders = format!("{prefix}orders");
    // Its own database: it may create and read tables there.
    let mut own = sqlx::postgres::PgConnection::connect(&url_as(&users, &users))
        .await
        .expect("users reaches its own database");
    sqlx::query("CREATE TABLE accounts (id BIGINT PRIMARY KEY)")
        .execute(&mut own)
        .await
        .expect("users owns its schema");
    own.close().await.expect("closes");
    // Another service's database: refused at the door.
    let refused = sqlx::postgres::PgConnection::connect(&url_as(&users, &orders)).await;
    let error = refused.expect_err("users cannot connect to orders' database");
    assert!(
        error.to_string().contains("permission denied"),
        "refused for lack of permission: {error}"
    );

    let mut conn = sqlx::postgres::PgConnection::connect(&postgres_url())
        .await
        .expect("admin connection");
    for service in ["users", "products", "orders", "purchases_async", "monolith"] {
        let name = format!("{prefix}{service}");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop database");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP ROLE IF EXISTS \"{name}\""
        )))
        .execute(&mut conn)
        .await
        .expect("drop role");
    }
}

#[test]
fn nats_admits_each_service_with_a_key_only_that_service_mounts() {
    let compose = compose();
    let nats = &compose["services"]["nats"];
    assert_eq!(
        nats["command"].as_array().map(Vec::len),
        Some(2),
        "nats runs from its configuration file alone"
    );
    assert_eq!(nats["command"][1], "/etc/nats/nats-server.conf");
    assert_eq!(
        nats["depends_on"]["nats-auth"]["condition"], "service_completed_successfully",
        "nats starts once its configuration is written"
    );
    let auth = &compose["services"]["nats-auth"];
    let auth_volumes: Vec<&str> = auth["volumes"]
        .as_array()
        .expect("nats-auth's volumes")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut seen_volumes = std::collections::HashSet::new();
    for name in [
        "users",
        "products",
        "orders",
        "purchases-bus",
        "purchases-async",
    ] {
        let service = &compose["services"][name];
        assert_eq!(
            env(service, "NATS_NKEY"),
            format!("/run/nats/{name}.nk"),
            "{name} authenticates with its own nkey"
        );
        let volumes: Vec<&str> = service["volumes"]
            .as_array()
            .expect("a volume")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(volumes, [format!("{name}-nats:/run/nats:ro")], "{name}");
        assert!(
            auth_volumes.contains(&format!("{name}-nats:/out/{name}").as_str()),
            "nats-auth writes {name}'s key into {name}'s volume"
        );
        assert!(
            seen_volumes.insert(volumes[0].to_owned()),
            "no two services share a key"
        );
    }
    for name in ["purchases-sync", "monolith"] {
        assert!(
            compose["services"][name]["environment"]["NATS_NKEY"].is_null(),
            "{name} does not use NATS and gets no key"
        );
    }
}

#[tokio::test]
async fn the_configuration_nats_auth_writes_refuses_outsiders_and_admits_the_services() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = natsd::free_loopback_ports(1).expect("a port")[0];
    let listen = format!("127.0.0.1:{port}");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_lab"))
            .args(["nats-auth", "--out"])
            .arg(dir.path())
            .args(["--listen", &listen, "--store-dir"])
            .arg(dir.path().join("jetstream"))
            .output()
            .expect("lab nats-auth runs")
    };
    let first = run();
    assert!(first.status.success(), "{first:?}");
    let config_path = dir.path().join("nats/nats-server.conf");
    let config = std::fs::read_to_string(&config_path).expect("the configuration");
    assert!(config.contains("sync_interval: always"), "{config}");
    let seed = std::fs::read_to_string(dir.path().join("users/users.nk")).expect("users' seed");
    assert!(
        !config.contains(seed.trim()),
        "no seed in the server's configuration"
    );
    let again = run();
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("keeping it"),
        "a second run keeps the keys"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("users/users.nk")).expect("users' seed"),
        seed
    );

    let binary = natsd::find_nats_server().expect("a nats-server");
    let mut command = tokio::process::Command::new(binary);
    natsd::die_with_parent(&mut command);
    let _server = command
        .arg("-c")
        .arg(&config_path)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server starts");
    let url = format!("nats://{listen}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let users = loop {
        match async_nats::ConnectOptions::with_nkey(seed.trim().to_owned())
            .custom_inbox_prefix(bus::inbox_prefix("users"))
            .connect(&url)
            .await
        {
            Ok(client) => break client,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "users never connected: {error}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    };
    async_nats::jetstream::new(users)
        .create_or_update_stream(async_nats::jetstream::stream::Config {
            name: "USERS".into(),
            subjects: vec!["users.>".into()],
            ..Default::default()
        })
        .await
        .expect("users keeps its stream");
    assert!(
        async_nats::connect(&url).await.is_err(),
        "an anonymous client is refused"
    );
}

#[test]
fn every_service_sends_its_spans_to_jaeger_and_is_scraped_by_prometheus() {
    let compose = compose();
    assert!(
        compose["services"]["jaeger"]["image"]
            .as_str()
            .is_some_and(|image| image.starts_with("jaegertracing/")),
        "a Jaeger to see the traces in"
    );
    let prometheus = &compose["services"]["prometheus"];
    let mounted = prometheus["volumes"][0]
        .as_str()
        .expect("its configuration");
    let (source, _) = mounted.split_once(':').expect("a bind mount");
    let config: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(workspace().join(source)).expect("prometheus.yml"),
    )
    .expect("prometheus.yml is YAML");
    let targets: Vec<&str> = config["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in [
        "users",
        "products",
        "orders",
        "purchases-sync",
        "purchases-sync-sequential",
        "purchases-bus",
        "purchases-async",
        "monolith",
    ] {
        let service = &compose["services"][name];
        assert_eq!(
            env(service, "OTEL_EXPORTER_OTLP_ENDPOINT"),
            "http://jaeger:4317",
            "{name} exports its spans to Jaeger"
        );
        let listen = env(service, "METRICS_LISTEN");
        let port = listen.rsplit(':').next().expect("a port");
        assert!(
            targets.contains(&format!("{name}:{port}").as_str()),
            "Prometheus scrapes {name} where it serves its metrics ({listen})"
        );
    }
}

#[test]
fn the_endpoints_file_lists_every_port_compose_publishes() {
    let compose = compose();
    let endpoints: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join("deploy/compose-endpoints.json"))
            .expect("deploy/compose-endpoints.json"),
    )
    .expect("the endpoints file is JSON");
    let services = endpoints["services"].as_object().expect("services");
    for (name, addr) in services {
        let port = addr
            .as_str()
            .and_then(|addr| addr.rsplit_once(':'))
            .map(|(_, port)| port)
            .expect("host:port");
        assert_eq!(
            compose["services"][name.as_str()]["ports"][0].as_str(),
            Some(format!("{port}:{port}").as_str()),
            "{name} is published where the endpoints file says"
        );
    }
    assert_eq!(services.len(), 8, "every service the lab compares");
    let nats_port = endpoints["nats_url"]
        .as_str()
        .and_then(|url| url.rsplit_once(':'))
        .map(|(_, port)| port)
        .expect("nats_url");
    assert_eq!(
        compose["services"]["nats"]["ports"][0].as_str(),
        Some(format!("{nats_port}:{nats_port}").as_str())
    );
}

#[test]
fn the_image_build_keeps_dependencies_between_builds() {
    let dockerfile =
        std::fs::read_to_string(workspace().join("Dockerfile")).expect("the Dockerfile");
    assert!(
        dockerfile.starts_with("# syntax=docker/dockerfile:1"),
        "BuildKit's syntax, for cache mounts"
    );
    for cached in ["/usr/local/cargo/registry", "/src/target"] {
        assert!(
            dockerfile
                .lines()
                .any(|line| line.contains("--mount=type=cache")
                    && line.contains(&format!("target={cached} "))),
            "{cached} is a cache mount, so a source edit does not rebuild the dependencies"
        );
    }
}
