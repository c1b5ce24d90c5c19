//! The lab binary end to end: `lab up` brings up every service (called here through the real
//! grpcurl), `lab seed` loads data into it, Ctrl-C or a kill leaves no process behind, and
//! `lab demo` writes a report with a figure for every mode.

mod common;

use common::{alive, lab, read_json, succeeds, up};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::run_grpcurl;
use tokio::process::Child;

fn pids(state: &Value) -> Vec<(String, u32)> {
    state["pids"]
        .as_object()
        .expect("pids in lab.json")
        .iter()
        .map(|(name, pid)| (name.clone(), pid.as_u64().expect("a pid") as u32))
        .collect()
}

async fn all_gone(pids: &[(String, u32)]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(*pid)).collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id().expect("running") as i32).expect("a pid");
    rustix::process::kill_process(pid, signal).expect("the lab can be signalled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_up_serves_every_service_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut child, state) = up(dir.path()).await;
    let pids = pids(&state);
    assert_eq!(
        pids.len(),
        9,
        "eight services (purchases-sync twice) and nats-server: {pids:?}"
    );
    // One worker thread per service unless --service-threads says otherwise.
    assert_eq!(state["endpoints"]["worker_threads"], 1, "{state}");
    for (name, pid) in pids.iter().filter(|(name, _)| !name.starts_with("nats")) {
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).expect("cmdline");
        let args: Vec<&str> = cmdline.split('\0').collect();
        assert!(
            args.windows(2)
                .any(|flag| flag == ["--worker-threads", "1"]),
            "{name}: {args:?}"
        );
    }
    let addr = |service: &str| {
        state["endpoints"]["services"][service]
            .as_str()
            .expect("an address")
            .to_owned()
    };

    for (service, api) in [
        ("users", "users.v1.UserService"),
        ("products", "products.v1.ProductService"),
        ("orders", "orders.v1.OrderService"),
        ("purchases-sync", "purchases.v1.PurchaseService"),
        ("purchases-async", "purchases.v1.PurchaseService"),
        ("monolith", "orders.v1.OrderService"),
    ] {
        let listed = run_grpcurl(&["-plaintext", &addr(service), "list"]).await;
        assert!(listed.contains(api), "{service} lists {api}: {listed}");
    }

    let seeded = lab(dir.path())
        .args(["seed", "--users", "5", "--products", "3", "--orders", "20"])
        .output()
        .await
        .expect("lab seed runs");
    assert!(
        seeded.status.success(),
        "lab seed: {}",
        String::from_utf8_lossy(&seeded.stderr)
    );
    let seed: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("seed.json")).expect("seed.json"),
    )
    .expect("seed.json is JSON");
    let users = seed["users"].as_array().expect("users");
    assert_eq!(users.len(), 5);
    let buyer = users
        .iter()
        .max_by_key(|user| user["purchases"].as_u64())
        .expect("a user");
    let expected = buyer["purchases"].as_u64().expect("a count") as usize;
    for (service, user) in [
        ("purchases-sync", &buyer["microservices"]),
        ("purchases-async", &buyer["microservices"]),
        ("monolith", &buyer["monolith"]),
    ] {
        let body = format!(r#"{{"user_id":{user},"page_size":100}}"#);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer: Value = serde_json::from_str(
                &run_grpcurl(&[
                    "-plaintext",
                    "-d",
                    &body,
                    &addr(service),
                    "purchases.v1.PurchaseService/ListUserPurchases",
                ])
                .await,
            )
            .expect("grpcurl prints JSON");
            let got = answer["purchases"].as_array().map_or(0, Vec::len);
            if got == expected {
                break;
            }
            // Only the projection may lag, and only for a moment.
            assert!(
                service == "purchases-async" && Instant::now() < deadline,
                "{service} answered {got} of {expected} purchases"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    signal(&child, rustix::process::Signal::INT);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the lab stops after Ctrl-C")
        .expect("the lab's status");
    assert!(status.success(), "lab up ended with {status}");
    all_gone(&pids).await;
    assert!(
        !dir.path().join("lab.json").exists(),
        "the state file goes with the lab"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lab_takes_its_processes_with_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (mut child, state) = up(dir.path()).await;
    let pids = pids(&state);
    signal(&child, rustix::process::Signal::KILL);
    let _ = child.wait().await;
    all_gone(&pids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_demo_reports_a_figure_for_every_mode() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().join("lab");
    let stdout = succeeds(
        lab(&data_dir).args([
            "demo",
            "--ephemeral-ports",
            "--users",
            "20",
            "--products",
            "10",
            "--orders",
            "100",
            "--requests",
            "100",
            "--freshness-samples",
            "10",
            "--fault-calls",
            "10",
        ]),
        "lab demo",
    )
    .await;
    let report = read_json(&data_dir.join("report.json"));
    for mode in ["echo", "sync", "bus", "async", "monolith"] {
        let latency = &report["latency"][mode];
        assert_eq!(
            latency["ok"], 100,
            "{mode} answered every request: {latency}"
        );
        assert!(
            latency["p50_us"].as_u64().is_some_and(|p50| p50 > 0),
            "{mode}"
        );
        assert!(stdout.contains(mode), "the terminal table shows {mode}");
    }
    assert_eq!(report["freshness"]["samples"], 10);
    assert_eq!(report["freshness"]["never_seen"], 0);
    let during = &report["fault"]["during"];
    assert_eq!(during["sync"]["ok"], 0, "sync fails without users");
    assert!(
        during["sync"]["example_errors"]["Unavailable"]
            .as_str()
            .is_some_and(|message| message.contains("users")),
        "sync names the users service: {during}"
    );
    assert_eq!(
        during["bus"]["ok"], 0,
        "the bus way fails without users too"
    );
    assert!(
        during["bus"]["example_errors"]["Unavailable"]
            .as_str()
            .is_some_and(|message| message.contains("users")),
        "the bus way names the users service: {during}"
    );
    assert_eq!(during["async"]["ok"], 10, "async answers without users");
    assert_eq!(during["monolith"]["ok"], 10);
    assert_eq!(report["fault"]["after"]["sync"]["ok"], 10, "sync recovers");
    assert_eq!(
        report["fault"]["after"]["bus"]["ok"], 10,
        "the bus way recovers"
    );
    for file in ["report.md", "report.html"] {
        let text = std::fs::read_to_string(data_dir.join(file)).expect("the report file");
        assert!(
            text.contains("async") && text.contains("monolith"),
            "{file}"
        );
    }
    let html = std::fs::read_to_string(data_dir.join("report.html")).expect("report.html");
    assert!(html.contains("<svg"), "the HTML report has charts");
    assert!(
        html.contains("<table>") && !html.contains("<pre>"),
        "the figures are HTML tables, not a Markdown dump"
    );
    assert!(
        html.contains(">99%<") && html.contains(">99.9%<"),
        "latency is drawn as a distribution, out to the tail"
    );

    // A second demo on the same dir starts from empty again.
    std::fs::write(data_dir.join("stray"), "x").expect("a file");
    let again = lab(&data_dir)
        .args([
            "demo",
            "--ephemeral-ports",
            "--users",
            "2",
            "--products",
            "1",
            "--orders",
            "2",
        ])
        .args([
            "--requests",
            "10",
            "--freshness-samples",
            "1",
            "--fault-calls",
            "1",
        ])
        .output()
        .await
        .expect("lab demo runs");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(
        !data_dir.join("stray").exists(),
        "the lab's data dir was emptied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_bench_writes_a_summary_for_every_mode_with_stable_names() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let data_dir = dir.path().join("lab");
    let json = dir.path().join("results").join("bench.json");
    let stdout = succeeds(
        lab(&data_dir)
            .args(["bench", "--ephemeral-ports", "--nats-fsync", "lazy"])
            .args(["--users", "20", "--products", "10", "--orders", "100"])
            .args([
                "--rates",
                "20,40",
                "--reference-rate",
                "30",
                "--low-rate",
                "10",
                "--step-ms",
                "500",
            ])
            .args(["--reference-rounds", "2", "--reference-round-ms", "300"])
            .args(["--write-rate", "20", "--freshness-write-rate", "100"])
            .args(["--freshness-ms", "500", "--json"])
            .arg(&json),
        "lab bench",
    )
    .await;
    let report = read_json(&json);
    for mode in [
        "echo",
        "sync",
        "sync-sequential",
        "bus",
        "async",
        "monolith",
    ] {
        let summary = &report["summary"][mode];
        let number = |name: &str| {
            summary[name]
                .as_f64()
                .unwrap_or_else(|| panic!("summary.{mode}.{name} is a number: {summary}"))
        };
        assert!(number("p50_us") > 0.0 && number("p99_us") >= number("p50_us"));
        assert!(number("throughput_rps") > 0.0, "{mode}: {summary}");
        assert_eq!(
            number("error_rate"),
            0.0,
            "{mode} failed requests: {summary}"
        );
        assert!(number("saturation_rps") >= number("throughput_rps") * 0.99);
        let steps = report["series"][mode]["steps"]
            .as_array()
            .expect("the series of steps");
        let offered: Vec<u64> = steps
            .iter()
            .filter_map(|step| step["offered_rps"].as_u64())
            .collect();
        assert_eq!(offered, vec![20, 30, 40], "{mode}: every rate, in order");
        assert!(
            steps[0]["cpu_pct"]["purchases-async"].is_number(),
            "CPU per process: {}",
            steps[0]
        );
        assert!(stdout.contains(mode), "the terminal table shows {mode}");
        // The summary comes from the reference rounds, each mode's turns kept apart too.
        let rounds = report["reference"]["per_round"][mode]
            .as_array()
            .unwrap_or_else(|| panic!("{mode}'s rounds: {}", report["reference"]));
        assert_eq!(rounds.len(), 2, "{mode}: {rounds:?}");
        assert!(
            rounds.iter().all(|round| round["p50_us"].as_u64() > Some(0)
                && round["error_rate"].as_f64() == Some(0.0)),
            "{mode}: {rounds:?}"
        );
    }
    assert_eq!(report["reference"]["rate"], 30);
    assert!(stdout.contains("in 2 rounds of 0.3 s per mode"), "{stdout}");
    let aim = |name: &str| {
        report["aims"]
            .as_array()
            .and_then(|aims| aims.iter().find(|aim| aim["name"] == name))
            .unwrap_or_else(|| panic!("the aim {name}: {}", report["aims"]))
            .clone()
    };
    for name in [
        "async p50 / echo p50",
        "sync p50 / (3 x echo p50)",
        "async p50 / echo p50 at 10 requests/s",
        "sync p50 / (3 x echo p50) at 10 requests/s",
    ] {
        let rounds = aim(name)["rounds"].as_array().map(Vec::len);
        assert_eq!(rounds, Some(2), "{name}, round by round: {}", aim(name));
    }
    // The low rate's rounds stand beside the reference's, every mode in each.
    assert_eq!(report["low_rate"]["rate"], 10);
    assert_eq!(
        report["low_rate"]["per_round"]["sync"]
            .as_array()
            .map(Vec::len),
        Some(2),
        "{}",
        report["low_rate"]
    );
    assert!(
        stdout.contains("At 10 requests/s, one request or two in flight"),
        "{stdout}"
    );
    for name in [
        "freshness p99 over JetStream alone's p99 (ms)",
        "projection stage p99, delivery to visible (ms)",
    ] {
        assert!(aim(name)["measured"].is_number(), "{}", aim(name));
    }
    assert!(stdout.contains("over 2 rounds"), "{stdout}");
    let freshness = &report["freshness"];
    assert!(
        freshness["samples"].as_u64().is_some_and(|n| n > 0),
        "{freshness}"
    );
    assert_eq!(freshness["never_seen"], 0, "{freshness}");
    assert!(freshness["p99_us"].as_u64() >= freshness["p50_us"].as_u64());
    // The probe follows the orders stream itself: it must have seen every timed order.
    let stages = &freshness["stages"];
    assert_eq!(stages["samples"], freshness["samples"], "{stages}");
    let slowest: Vec<u64> = stages["slowest"]
        .as_array()
        .expect("the slowest samples")
        .iter()
        .filter_map(|split| split["total_us"].as_u64())
        .collect();
    assert!(
        !slowest.is_empty() && slowest.is_sorted_by(|a, b| a >= b),
        "{stages}"
    );
    let max = freshness["max_us"].as_u64().expect("max_us") as f64;
    assert!(
        (slowest[0] as f64 - max).abs() <= max * 0.01,
        "the slowest split is the slowest sample: {stages}"
    );
    // The JetStream stage of every order the phase placed, timed or not.
    assert!(
        stages["every_order"]["orders"].as_u64() >= freshness["samples"].as_u64(),
        "{stages}"
    );
    for stage in ["relay", "jetstream", "projection"] {
        assert!(stages[stage]["p99_us"].as_u64() <= stages[stage]["max_us"].as_u64());
    }
    assert!(stdout.contains("Split over"), "{stdout}");
    // JetStream alone at the freshness rate (100/s for 0.5 s): every message timed.
    let alone = &freshness["jetstream_alone"];
    assert_eq!(alone["messages"], 50, "{alone}");
    assert_eq!(alone["never_delivered"], 0, "{alone}");
    assert_eq!(alone["errors"], 0, "{alone}");
    assert!(
        alone["payload_bytes"].as_u64() > Some(100),
        "sized like an order event: {alone}"
    );
    for span in ["publish_to_delivery", "publish_to_ack"] {
        let max = alone[span]["max_us"].as_u64();
        assert!(
            max > Some(0) && alone[span]["p99_us"].as_u64() <= max,
            "{alone}"
        );
    }
    assert!(stdout.contains("JetStream alone just before"), "{stdout}");
    assert_eq!(report["nats_fsync"], "lazy");
    assert_eq!(report["service_threads"], 1, "the lab's default");
    assert!(report["background_writes"]["placed"].as_u64() > Some(0));
    assert_eq!(report["background_writes"]["failed"], 0);
    for store in [
        "users",
        "orders",
        "purchases-async",
        "monolith",
        "jetstream",
    ] {
        assert!(
            report["storage_bytes"][store].as_u64() > Some(0),
            "{store}: {}",
            report["storage_bytes"]
        );
    }
    assert_eq!(
        aim("freshness p99 over JetStream alone's p99 (ms)")["rounds"],
        serde_json::json!([])
    );
    let memory = &report["memory"];
    for process in ["users", "purchases-async", "purchases-bus", "nats-server"] {
        assert!(
            memory["peak_rss_kib"][process]
                .as_u64()
                .is_some_and(|kib| kib > 1_024),
            "{process}'s peak memory: {memory}"
        );
        let resident = &memory["resident_after_kib"][process];
        assert!(
            resident["file_kib"].as_u64().is_some_and(|kib| kib > 1_024)
                && resident["anon_kib"].as_u64().is_some_and(|kib| kib > 0),
            "{process}'s resident set, file-backed and anonymous: {memory}"
        );
    }
    assert!(
        memory["purchases_held"].as_u64() >= Some(100),
        "the seeded orders at least: {memory}"
    );
    assert!(memory["projection_kib_per_1000_purchases"].is_number());
    let html = std::fs::read_to_string(data_dir.join("bench.html")).expect("bench.html");
    assert!(html.contains("<polyline") && html.contains("sync-sequential"));
    assert!(
        html.contains("<table>") && !html.contains("<pre>"),
        "figures as HTML tables, not a Markdown dump"
    );
    let markdown = std::fs::read_to_string(data_dir.join("bench.md")).expect("bench.md");
    assert!(markdown.contains("| mode |"), "{markdown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_bench_fanout_shows_the_wider_fan_out_paying_the_tail_and_async_flat() {
    let dir = tempfile::tempdir().expect("a temp dir");
    succeeds(
        lab(dir.path())
            .args(["bench", "--ephemeral-ports", "fanout"])
            .args([
                "--slow-fraction",
                "0.2",
                "--delay-ms",
                "100",
                "--hedge-after-ms",
                "30",
            ])
            .args(["--requests", "100", "--rate", "100", "--widths", "1,10"])
            .args(["--fanout-users", "3"]),
        "lab bench fanout",
    )
    .await;
    let report = read_json(&dir.path().join("fanout.json"));
    let widths = report["widths"].as_array().expect("widths");
    assert_eq!(
        widths.iter().map(|w| w["k"].as_u64()).collect::<Vec<_>>(),
        [Some(1), Some(10)]
    );
    let slow = |k: usize, way: &str| {
        widths[k]["ways"][way]["slow_fraction"]
            .as_f64()
            .unwrap_or_else(|| panic!("{way} at width {k}: {}", widths[k]))
    };
    // p = 0.2 and k = 10: the law says 89% of per-item requests wait on a slowed call, and
    // the batch fan-out's 20% does not move with k; async never asks products.
    assert!(
        slow(1, "per-item") > slow(1, "batch") + 0.3,
        "the wider fan-out pays the tail: {}",
        widths[1]
    );
    assert!(
        slow(0, "async") <= 0.05 && slow(1, "async") <= 0.05,
        "{report}"
    );
    let predicted = widths[1]["ways"]["per-item"]["predicted"]
        .as_f64()
        .expect("a prediction");
    assert!((predicted - (1.0 - 0.8_f64.powi(10))).abs() < 1e-9);
    let hedging = &widths[1]["hedging"];
    assert!(
        hedging["calls_served"].as_u64() > hedging["calls_needed"].as_u64(),
        "hedges are counted where products received them: {hedging}"
    );
    let html = std::fs::read_to_string(dir.path().join("fanout.html")).expect("fanout.html");
    assert!(html.contains("1-(1-p)^k") && html.contains("<polyline"));
}

#[tokio::test]
async fn a_data_dir_with_foreign_files_is_refused_not_emptied() {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("thesis.tex"), "precious").expect("a file");
    let output = lab(dir.path())
        .args(["demo", "--ephemeral-ports"])
        .output()
        .await
        .expect("lab demo runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("empty data dir"), "{stderr}");
    assert!(dir.path().join("thesis.tex").exists());
}

/// A system the lab did not start (here another lab, as a compose system would be): seeded,
/// measured and broken where that needs no process of its own, through `--endpoints`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tools_work_on_a_system_the_lab_did_not_start() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let system = dir.path().join("system");
    let (mut child, _) = up(&system).await;
    let endpoints = system.join("lab.json");

    let seeding = dir.path().join("seeding");
    let seeded = lab(&seeding)
        .arg("--endpoints")
        .arg(&endpoints)
        .args(["seed", "--users", "5", "--products", "3", "--orders", "10"])
        .output()
        .await
        .expect("lab seed runs");
    assert!(
        seeded.status.success(),
        "lab seed --endpoints: {}",
        String::from_utf8_lossy(&seeded.stderr)
    );

    let measuring = dir.path().join("measuring");
    let json = measuring.join("bench.json");
    let stdout = succeeds(
        lab(&measuring)
            .arg("--endpoints")
            .arg(&endpoints)
            .args([
                "bench",
                "--users",
                "10",
                "--products",
                "5",
                "--orders",
                "20",
            ])
            .args([
                "--rates",
                "20",
                "--reference-rate",
                "20",
                "--step-ms",
                "300",
            ])
            .args(["--reference-rounds", "1", "--reference-round-ms", "300"])
            .args(["--write-rate", "10", "--freshness-write-rate", "50"])
            .args(["--freshness-ms", "300", "--refine-steps", "0"]),
        "lab bench --endpoints",
    )
    .await;
    let report = read_json(&json);
    for mode in [
        "echo",
        "sync",
        "sync-sequential",
        "bus",
        "async",
        "monolith",
    ] {
        assert_eq!(
            report["summary"][mode]["error_rate"].as_f64(),
            Some(0.0),
            "{mode} answers on the attached system: {}",
            report["summary"][mode]
        );
    }
    assert!(
        report["catch_up"].is_null(),
        "no catch-up without a process of the lab's own"
    );
    assert!(stdout.contains("Not timing a catch-up"), "{stdout}");

    // A scenario that only needs the fault admin API runs; one that kills a process is
    // refused before anything starts.
    let breaking = dir.path().join("breaking");
    let chaos = lab(&breaking)
        .arg("--endpoints")
        .arg(&endpoints)
        .args(["chaos", "slow-products", "--quick", "--users", "10"])
        .args(["--products", "5", "--orders", "20"])
        .output()
        .await
        .expect("lab chaos runs");
    assert!(
        chaos.status.success(),
        "lab chaos slow-products --endpoints: {}\n{}",
        String::from_utf8_lossy(&chaos.stdout),
        String::from_utf8_lossy(&chaos.stderr)
    );
    let refused = lab(&dir.path().join("refused"))
        .arg("--endpoints")
        .arg(&endpoints)
        .args(["chaos", "kill-users", "--quick"])
        .output()
        .await
        .expect("lab chaos runs");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("kill-users need a lab that started the services itself")
            && stderr.contains("slow-products"),
        "{stderr}"
    );
    // The system it worked on is still the other lab's, untouched.
    assert!(endpoints.exists(), "the other lab's state file stays");

    signal(&child, rustix::process::Signal::INT);
    let _ = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
}
