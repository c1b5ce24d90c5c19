//! The aims the project holds its designs to, as ratios measured in this run, each with
//! whether the run met it and, where the reference rounds measure it, its value round by
//! round.

use std::collections::BTreeMap;

use super::results::{Aim, CatchUp, FreshnessResult, Memory, Reference, RoundFigures, Summary};

pub(super) fn aims(
    summary: &BTreeMap<String, Summary>,
    reference: &Reference,
    freshness: &FreshnessResult,
    catch_up: Option<&CatchUp>,
    memory: &Memory,
) -> Vec<Aim> {
    let get = |mode: &str| summary.get(mode);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let hundredths = |value: f64| (value * 100.0).round() / 100.0;
    // `mode`'s figure over `floor` times echo's, round by round.
    let per_round = |mode: &str, figure: fn(&RoundFigures) -> u64, floor: f64| -> Vec<f64> {
        let (Some(rounds), Some(echo)) = (
            reference.per_round.get(mode),
            reference.per_round.get("echo"),
        ) else {
            return Vec::new();
        };
        rounds
            .iter()
            .zip(echo)
            .map(|(own, echo)| hundredths(ratio(figure(own) as f64, floor * figure(echo) as f64)))
            .collect()
    };
    let mut aims = Vec::new();
    let mut aim = |name: &str, measured: f64, comparison: &str, target: f64, rounds: Vec<f64>| {
        let met = if comparison == "<=" {
            measured <= target
        } else {
            measured >= target
        };
        aims.push(Aim {
            name: name.to_owned(),
            measured: hundredths(measured),
            target,
            comparison: comparison.to_owned(),
            met,
            rounds,
        });
    };
    let p50 = |figures: &RoundFigures| figures.p50_us;
    let p99 = |figures: &RoundFigures| figures.p99_us;
    if let (Some(echo), Some(asynchronous)) = (get("echo"), get("async")) {
        aim(
            "async p50 / echo p50",
            ratio(asynchronous.p50_us as f64, echo.p50_us as f64),
            "<=",
            1.3,
            per_round("async", p50, 1.0),
        );
        aim(
            "async p99 / echo p99",
            ratio(asynchronous.p99_us as f64, echo.p99_us as f64),
            "<=",
            2.0,
            per_round("async", p99, 1.0),
        );
    }
    if let (Some(sync), Some(asynchronous)) = (get("sync"), get("async")) {
        aim(
            "async saturation / sync saturation",
            ratio(asynchronous.saturation_rps, sync.saturation_rps),
            ">=",
            3.0,
            Vec::new(),
        );
    }
    if let (Some(echo), Some(sync)) = (get("echo"), get("sync")) {
        // Three round trips one after another: caller to D, users and orders together,
        // then products.
        aim(
            "sync p50 / (3 x echo p50)",
            ratio(sync.p50_us as f64, 3.0 * echo.p50_us as f64),
            "<=",
            1.2,
            per_round("sync", p50, 3.0),
        );
    }
    aim(
        "freshness p99 (ms)",
        freshness.p99_us as f64 / 1_000.0,
        "<=",
        5.0,
        Vec::new(),
    );
    // Every service of ours but purchases-async, whose view holds the data by design.
    let largest = memory
        .peak_rss_kib
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "purchases-async" | "nats-server"))
        .max_by_key(|(_, kib)| **kib);
    if let Some((_, kib)) = largest {
        aim(
            "largest peak RSS over the reference rounds but purchases-async's (MiB)",
            *kib as f64 / 1_024.0,
            "<=",
            30.0,
            Vec::new(),
        );
    }
    if let Some(catch_up) = catch_up {
        aim(
            "catch-up (events/s)",
            catch_up.events_per_second,
            ">=",
            20_000.0,
            Vec::new(),
        );
    }
    aims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aims_compare_measured_ratios() {
        let summary = |p50, p99, saturation| Summary {
            p50_us: p50,
            p99_us: p99,
            throughput_rps: 200.0,
            error_rate: 0.0,
            saturation_rps: saturation,
        };
        let mut modes = BTreeMap::new();
        modes.insert("echo".to_owned(), summary(200, 300, 10_000.0));
        modes.insert("async".to_owned(), summary(240, 700, 6_000.0));
        modes.insert("sync".to_owned(), summary(700, 2_000, 1_000.0));
        let freshness = FreshnessResult {
            p50_us: 1_000,
            p90_us: 2_000,
            p99_us: 6_000,
            max_us: 9_000,
            samples: 10,
            never_seen: 0,
            write_rate_offered: 1_000,
            write_rate_achieved: 990.0,
            write_errors: 0,
            writes_skipped: 0,
            distribution: Vec::new(),
            stages: None,
            span_stages: None,
            jetstream_alone: None,
            cpu_pct: BTreeMap::new(),
        };
        let catch_up = CatchUp {
            events: 30_000,
            seconds_from_start: 2.0,
            events_per_second: 25_000.0,
        };
        let figures = |p50_us, p99_us| RoundFigures {
            p50_us,
            p99_us,
            error_rate: 0.0,
        };
        let reference = Reference {
            rate: 200,
            rounds: 2,
            round_ms: 500,
            per_round: BTreeMap::from([
                (
                    "echo".to_owned(),
                    vec![figures(200, 300), figures(400, 300)],
                ),
                (
                    "async".to_owned(),
                    vec![figures(240, 600), figures(240, 900)],
                ),
                (
                    "sync".to_owned(),
                    vec![figures(660, 2_000), figures(900, 2_000)],
                ),
            ]),
            tracing: None,
        };
        let memory = Memory::new(
            BTreeMap::from([
                ("users".to_owned(), 20_480),
                ("purchases-async".to_owned(), 61_440),
            ]),
            Some(2_000),
        );
        let aims = aims(&modes, &reference, &freshness, Some(&catch_up), &memory);
        let find = |name: &str| {
            aims.iter()
                .find(|aim| aim.name.starts_with(name))
                .unwrap_or_else(|| panic!("an aim {name}"))
        };
        let met = |name: &str| Some(find(name).met);
        // Each round is its own ratio, against echo in the same round.
        assert_eq!(find("async p50").rounds, vec![1.2, 0.6]);
        assert_eq!(find("async p99").rounds, vec![2.0, 3.0]);
        assert_eq!(find("sync p50").rounds, vec![1.1, 0.75]);
        assert!(
            find("freshness").rounds.is_empty(),
            "not measured in rounds"
        );
        assert_eq!(met("async p50"), Some(true), "1.2x");
        assert_eq!(met("async p99"), Some(false), "2.33x");
        assert_eq!(met("async saturation"), Some(true), "6x");
        assert_eq!(
            met("sync p50"),
            Some(true),
            "700 us against three round trips of 200: 1.17x"
        );
        assert_eq!(met("freshness"), Some(false), "6 ms");
        assert_eq!(met("catch-up"), Some(true), "25k events/s");
        let largest = find("largest peak RSS");
        assert_eq!(
            (largest.measured, largest.met),
            (20.0, true),
            "users' 20 MiB; purchases-async's 60 MiB is not held to it"
        );
        assert_eq!(
            memory.projection_kib_per_1000_purchases, None,
            "no purchases-sync to subtract"
        );
    }
}
