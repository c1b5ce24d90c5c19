//! `lab chaos` end to end, on real processes: each scenario's claims (sync fails where it
//! must, async keeps answering, writes keep committing) read back from chaos.json, and the
//! consistency check finding nothing lost or duplicated. Quick phases keep each under a
//! minute; the scenarios run one at a time, since each loads both cores.

use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tokio::process::Command;

/// One lab at a time: a scenario's figures mean nothing on a machine another one saturates.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `lab chaos <scenario> --quick` on a small data set and returns that scenario's results.
async fn chaos(scenario: &str) -> Value {
    chaos_all(&[scenario]).await.remove(0)
}

/// Runs `lab chaos <scenarios...> --quick` on one lab and returns each scenario's results, in
/// order.
async fn chaos_all(scenarios: &[&str]) -> Vec<Value> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().join("lab");
    let output = Command::new(env!("CARGO_BIN_EXE_lab"))
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("chaos")
        .args(scenarios)
        .args(["--quick", "--ephemeral-ports"])
        .args(["--users", "20", "--products", "10", "--orders", "200"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("lab chaos runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "lab chaos {scenarios:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = read_json(&data_dir.join("chaos.json"));
    let html = std::fs::read_to_string(data_dir.join("chaos.html")).expect("chaos.html");
    assert!(html.contains("<svg"), "the report has its timeline charts");
    scenarios
        .iter()
        .enumerate()
        .map(|(index, scenario)| {
            assert!(stdout.contains(scenario), "the terminal shows {scenario}");
            let results = report["scenarios"][index].clone();
            assert_eq!(results["name"], *scenario);
            assert_eq!(results["passed"], true, "{results:#}");
            assert_consistent(&results);
            results
        })
        .collect()
}

/// The expectation whose description mentions `needle`, which must have been met.
fn met(results: &Value, needle: &str) {
    let expectation = results["expectations"]
        .as_array()
        .expect("expectations")
        .iter()
        .find(|expectation| {
            expectation["what"]
                .as_str()
                .is_some_and(|what| what.contains(needle))
        })
        .unwrap_or_else(|| panic!("an expectation on {needle}: {results:#}"));
    assert_eq!(expectation["met"], true, "{expectation}");
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("the results file"))
        .expect("the results are JSON")
}

/// The success rate of `series` in `phase`, in percent.
fn success(results: &Value, phase: &str, series: &str) -> f64 {
    let stats = &results["phases"][phase][series];
    assert!(
        stats["requests"]
            .as_u64()
            .is_some_and(|requests| requests > 0),
        "{series} was loaded {phase} the fault: {stats}"
    );
    stats["success_pct"].as_f64().expect("a success rate")
}

fn assert_consistent(results: &Value) {
    let consistency = &results["consistency"];
    for count in [
        "missing",
        "duplicated",
        "unexpected",
        "mismatched",
        "writes_lost",
    ] {
        assert_eq!(consistency[count], 0, "{count}: {consistency:#}");
    }
    assert_eq!(consistency["ok"], true, "{consistency:#}");
    assert!(
        consistency["writes_acknowledged"].as_u64() > Some(0),
        "writes went on through the scenario: {consistency:#}"
    );
    assert_eq!(
        consistency["orders_in_owners"], consistency["purchases_in_projection"],
        "{consistency:#}"
    );
}

#[tokio::test]
async fn kill_users_breaks_sync_only_and_loses_nothing() {
    let results = chaos("kill-users").await;
    // The bus way keeps the direct calls' coupling: it fails with users too.
    for series in ["sync", "bus"] {
        assert!(
            success(&results, "during", series) <= 10.0,
            "{series}: {results:#}"
        );
        assert!(
            success(&results, "after", series) >= 90.0,
            "{series} recovers"
        );
    }
    for series in ["async", "monolith", "writes"] {
        assert!(
            success(&results, "during", series) >= 99.0,
            "{series}: {results:#}"
        );
    }
}

#[tokio::test]
async fn a_nats_outage_delays_events_without_failing_a_write_or_losing_one() {
    let results = chaos("nats-outage").await;
    assert!(
        success(&results, "during", "bus") <= 10.0,
        "the bus way needs the bus: {results:#}"
    );
    assert!(success(&results, "after", "bus") >= 90.0, "bus recovers");
    for series in ["writes", "sync", "async", "monolith"] {
        assert!(
            success(&results, "during", series) >= 99.0,
            "{series}: {results:#}"
        );
    }
    // Orders written while NATS was down reached the projection only after it was back: the
    // outbox held them, and none was lost on the way.
    let held = results["phases"]["during"]["freshness"]["p99_us"]
        .as_u64()
        .expect("freshness during the outage");
    assert!(held >= 1_000_000, "events waited for NATS: p99 {held} us");
    assert_eq!(
        results["phases"]["during"]["freshness"]["ok"],
        results["phases"]["during"]["freshness"]["requests"],
        "every timed order showed up eventually"
    );
}

#[tokio::test]
async fn purchases_async_catches_up_after_its_downtime_without_losing_an_event() {
    let results = chaos("catch-up").await;
    assert!(
        success(&results, "during", "async") <= 10.0,
        "async was down"
    );
    for series in ["sync", "monolith", "writes"] {
        assert!(
            success(&results, "during", series) >= 99.0,
            "{series}: {results:#}"
        );
    }
    assert!(success(&results, "after", "async") >= 90.0);
    let notes = results["notes"].to_string();
    assert!(
        notes.contains("caught up"),
        "the catch-up is timed: {notes}"
    );
}

#[tokio::test]
async fn duplicates_delivered_out_of_order_change_no_answer() {
    let results = chaos("duplicates").await;
    assert!(success(&results, "during", "async") >= 99.0, "{results:#}");
    met(&results, "every copy");
}

#[tokio::test]
async fn losing_the_stream_leader_of_a_nats_cluster_loses_neither_writes_nor_events() {
    let results = chaos("cluster-failover").await;
    assert!(
        results["nats"]
            .as_str()
            .is_some_and(|nats| nats.contains("cluster")),
        "{results:#}"
    );
    for series in ["writes", "async", "sync"] {
        assert!(
            success(&results, "during", series) >= 99.0,
            "{series}: {results:#}"
        );
    }
    assert_eq!(
        results["phases"]["during"]["freshness"]["ok"],
        results["phases"]["during"]["freshness"]["requests"],
        "every order timed during the failover reached the projection"
    );
    let notes = results["notes"].to_string();
    assert!(notes.contains("elected"), "a new leader took over: {notes}");
}

#[tokio::test]
async fn a_schema_upgrade_keeps_the_older_reader_working_and_breaks_a_shared_database() {
    let results = chaos("schema-evolution").await;
    for needle in [
        "split name",
        "older purchases-async answers",
        "older purchases-async matches the owners",
        "shared database",
    ] {
        met(&results, needle);
    }
}

#[tokio::test]
async fn the_attacks_on_the_trust_boundaries_fail_and_lose_nothing() {
    let results = chaos_all(&[
        "forged-event",
        "idle-connections",
        "stream-lost",
        "retention",
    ])
    .await;
    let [forged, idle, lost, retention] = <[Value; 4]>::try_from(results).expect("four scenarios");

    met(&forged, "without credentials");
    met(&forged, "publishing a users event");
    met(&forged, "dead-letters every forgery");
    met(&forged, "orders' replica");

    for series in ["sync", "async", "monolith", "writes"] {
        assert_eq!(
            success(&idle, "during", series),
            100.0,
            "{series}: not one call failed beside the idle sockets: {idle:#}"
        );
    }

    met(&lost, "makes ORDERS again");
    for series in ["writes", "async"] {
        assert!(
            success(&lost, "during", series) >= 99.0,
            "{series}: {lost:#}"
        );
    }

    met(&retention, "re-emitted state answers every seeded user");
    met(&retention, "what it never read");
}
