//! A scenario's claims, checked against what was measured: every mode healthy before the
//! fault, each mode during it as the design says (from the scenario's own file), recovered
//! after, and the projection consistent with the owners at the end.

use std::collections::BTreeMap;

use serde::Serialize;

use super::consistency::Consistency;
use super::load::Series;
use super::phases::{PhaseStats, phase_stats};
use super::scenarios::Scenario;

/// One expectation of a scenario and whether the run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Expectation {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// What a scenario claims of one series during its fault: the share of calls that succeed
/// lies between the two bounds (in percent), and why.
pub(super) type Claim = (Series, f64, f64, &'static str);

/// The scenario's claims about the modes, checked against what was measured.
pub(super) fn expectations(
    scenario: Scenario,
    phases: &BTreeMap<String, BTreeMap<String, PhaseStats>>,
    consistency: &Consistency,
) -> Vec<Expectation> {
    let stat = |phase: &str, series: Series| {
        phases
            .get(phase)
            .and_then(|per_series| per_series.get(series.name()))
            .cloned()
            .unwrap_or_else(|| phase_stats(std::iter::empty()))
    };
    let mut expected = Vec::new();
    let mut success = |phase: &str, series: Series, at_least: f64, at_most: f64, why: &str| {
        let measured = stat(phase, series);
        expected.push(Expectation {
            what: format!(
                "{why}: {} {phase} answers {}",
                series.name(),
                bounds(at_least, at_most)
            ),
            measured: format!(
                "{:.1}% of {} ({})",
                measured.success_pct,
                measured.requests,
                errors_line(&measured.errors)
            ),
            met: measured.requests > 0
                && measured.success_pct >= at_least
                && measured.success_pct <= at_most,
        });
    };
    for series in [
        Series::Sync,
        Series::Bus,
        Series::Async,
        Series::Monolith,
        Series::Writes,
    ] {
        success("before", series, 99.0, 100.0, "healthy at first");
    }
    let during = super::scenarios::during(scenario);
    for (series, at_least, at_most, why) in during {
        success("during", series, at_least, at_most, why);
    }
    for series in scenario.recovers() {
        success("after", *series, 90.0, 100.0, "recovered");
    }
    expected.extend(super::scenarios::latency_claims(scenario, &stat));
    expected.push(Expectation {
        what: "the projection matches the owners: nothing missing, duplicated, unexpected or different, no acknowledged write lost".to_owned(),
        measured: consistency_line(consistency),
        met: consistency.ok,
    });
    expected
}

/// What a fault of the event streams leaves standing: writes (their events wait in the
/// outbox), async (it answers from its projection), and sync and the monolith, which use no
/// NATS. The bus way is claimed by each scenario: it needs NATS, not the streams.
pub(super) fn bus_fault(writes_why: &'static str) -> Vec<Claim> {
    [
        (Series::Writes, writes_why),
        (Series::Async, "async answers from its projection"),
        (Series::Sync, "sync does not use NATS"),
        (Series::Monolith, "the monolith does not use NATS"),
    ]
    .into_iter()
    .map(|(series, why)| (series, 99.0, 100.0, why))
    .collect()
}

/// A series unaffected by the fault: it answers as it did before.
pub(super) fn unaffected(series: Series, why: &'static str) -> Claim {
    (series, 99.0, 100.0, why)
}

fn bounds(at_least: f64, at_most: f64) -> String {
    match (at_least > 0.0, at_most < 100.0) {
        (true, true) => format!("between {at_least}% and {at_most}%"),
        (true, false) => format!("at least {at_least}%"),
        (false, true) => format!("at most {at_most}%"),
        (false, false) => "anything".to_owned(),
    }
}

pub(super) fn errors_line(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "no errors".to_owned();
    }
    errors
        .iter()
        .map(|(code, count)| format!("{count} {code}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn consistency_line(consistency: &Consistency) -> String {
    format!(
        "{} users: {} orders in the owners, {} purchases in the projection; {} missing, {} duplicated, {} unexpected, {} different; {} writes acknowledged, {} lost; {} after the load stopped",
        consistency.users_checked,
        consistency.orders_in_owners,
        consistency.purchases_in_projection,
        consistency.missing,
        consistency.duplicated,
        consistency.unexpected,
        consistency.mismatched,
        consistency.writes_acknowledged,
        consistency.writes_lost,
        if consistency.ok {
            format!("agreed {:.2} s", consistency.converged_after_s)
        } else {
            format!("still disagreeing {:.0} s", consistency.converged_after_s)
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::load::Sample;
    use crate::chaos::phases::phases;
    use crate::chaos::phases::tests::sample;

    #[test]
    fn expectations_fail_when_a_mode_misbehaves() {
        let window = (10.0, 20.0, 30.0);
        let mut samples = Vec::new();
        for at in 0..30 {
            let at = f64::from(at);
            let during = (10.0..20.0).contains(&at);
            for series in [Series::Async, Series::Monolith, Series::Writes] {
                samples.push(sample(series, at, 500, None));
            }
            for series in [Series::Sync, Series::Bus] {
                samples.push(sample(series, at, 900, during.then_some("Unavailable")));
            }
        }
        let consistent = Consistency {
            ok: true,
            ..Consistency::default()
        };
        let met = |samples: &[Sample], consistency: &Consistency| {
            expectations(Scenario::KillUsers, &phases(samples, window), consistency)
                .iter()
                .all(|expectation| expectation.met)
        };
        assert!(met(&samples, &consistent));
        assert!(
            !met(&samples, &Consistency::default()),
            "an inconsistent projection fails"
        );
        // Async failing during the fault breaks the scenario's central claim.
        let mut broken = samples.clone();
        for sample in broken
            .iter_mut()
            .filter(|s| s.series == Series::Async && s.at >= 10.0)
        {
            sample.error = Some("Unavailable".to_owned());
        }
        assert!(!met(&broken, &consistent));
        // So does sync (and the bus way) answering while its dependency is dead.
        let mut answering = samples;
        for sample in answering.iter_mut() {
            sample.error = None;
        }
        assert!(!met(&answering, &consistent));
    }
}
