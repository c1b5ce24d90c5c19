//! The timeline cut into the three phases (before, during and after the fault) and into
//! buckets for the charts: requests, successes, latency and errors per series.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::load::{Sample, Series};
use super::round2;

/// Figures for one series in one phase.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseStats {
    pub requests: u64,
    pub ok: u64,
    /// Share answered without error, in percent (100 when there were no requests).
    pub success_pct: f64,
    /// Percentiles over the successful calls only (0 when none succeeded).
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: BTreeMap<String, u64>,
}

pub(super) fn phase_stats<'a>(samples: impl Iterator<Item = &'a Sample>) -> PhaseStats {
    let mut histogram = crate::measure::micros_histogram();
    let mut requests = 0;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for sample in samples {
        requests += 1;
        match &sample.error {
            None => histogram.saturating_record(sample.latency_us),
            Some(code) => *errors.entry(code.clone()).or_default() += 1,
        }
    }
    let ok = histogram.len();
    PhaseStats {
        requests,
        ok,
        success_pct: if requests == 0 {
            100.0
        } else {
            100.0 * ok as f64 / requests as f64
        },
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        errors,
    }
}

/// The three phases, by name, in order.
pub const PHASES: [&str; 3] = ["before", "during", "after"];

/// One bucket of the timeline chart.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Seconds from the scenario's start to the bucket's start.
    pub at: f64,
    pub series: BTreeMap<String, PhaseStats>,
}

/// Which phase a moment belongs to.
fn phase_of(at: f64, (from, to, _): (f64, f64, f64)) -> &'static str {
    if at < from {
        "before"
    } else if at < to {
        "during"
    } else {
        "after"
    }
}

pub(super) fn phases(
    samples: &[Sample],
    window: (f64, f64, f64),
) -> BTreeMap<String, BTreeMap<String, PhaseStats>> {
    PHASES
        .iter()
        .map(|phase| {
            let per_series = Series::ALL
                .iter()
                .map(|series| {
                    let stats = phase_stats(samples.iter().filter(|sample| {
                        sample.series == *series && phase_of(sample.at, window) == *phase
                    }));
                    (series.name().to_owned(), stats)
                })
                .collect();
            ((*phase).to_owned(), per_series)
        })
        .collect()
}

/// Seconds after the fault ended at which the last order written during it showed up.
pub(super) fn drained_after(samples: &[Sample], (from, to, _): (f64, f64, f64)) -> Option<f64> {
    samples
        .iter()
        .filter(|sample| {
            sample.series == Series::Freshness
                && sample.error.is_none()
                && sample.at >= from
                && sample.at < to
        })
        .map(|sample| sample.at + sample.latency_us as f64 / 1e6 - to)
        .fold(None, |latest: Option<f64>, seen| {
            Some(latest.map_or(seen, |latest| latest.max(seen)))
        })
        .map(|seconds| round2(seconds.max(0.0)))
}

pub(super) fn buckets(samples: &[Sample], end: f64, width: f64) -> Vec<Bucket> {
    let count = (end / width).ceil() as usize;
    let mut grouped: Vec<HashMap<Series, Vec<&Sample>>> = vec![HashMap::new(); count.max(1)];
    for sample in samples {
        let index = ((sample.at / width) as usize).min(grouped.len() - 1);
        grouped[index]
            .entry(sample.series)
            .or_default()
            .push(sample);
    }
    grouped
        .into_iter()
        .enumerate()
        .map(|(index, series)| Bucket {
            at: round2(index as f64 * width),
            series: series
                .into_iter()
                .map(|(series, samples)| {
                    (series.name().to_owned(), phase_stats(samples.into_iter()))
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(series: Series, at: f64, latency_us: u64, error: Option<&str>) -> Sample {
        Sample {
            series,
            at,
            latency_us,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn samples_fall_into_the_phase_of_their_due_time() {
        let window = (10.0, 20.0, 30.0);
        let samples = vec![
            sample(Series::Sync, 1.0, 1_000, None),
            sample(Series::Sync, 9.99, 1_000, None),
            sample(Series::Sync, 10.0, 500, Some("Unavailable")),
            sample(Series::Sync, 15.0, 700, Some("Unavailable")),
            sample(Series::Sync, 20.0, 2_000, None),
        ];
        let phases = phases(&samples, window);
        let sync = |phase: &str| phases[phase]["sync"].clone();
        assert_eq!((sync("before").requests, sync("before").ok), (2, 2));
        assert_eq!(sync("during").success_pct, 0.0);
        assert_eq!(sync("during").errors.get("Unavailable"), Some(&2));
        assert_eq!(sync("during").p50_us, 0, "no success, no latency");
        assert_eq!(sync("after").ok, 1);
        assert_eq!(
            phases["during"]["async"].success_pct, 100.0,
            "no calls is not a failure of the figure"
        );
        assert_eq!(phases["during"]["async"].requests, 0);
    }

    #[test]
    fn the_drain_time_is_when_the_last_order_of_the_outage_showed() {
        let window = (10.0, 20.0, 30.0);
        let samples = vec![
            // Written before the outage: not counted.
            sample(Series::Freshness, 9.0, 30_000_000, None),
            sample(Series::Freshness, 12.0, 9_500_000, None),
            sample(Series::Freshness, 18.0, 3_000_000, None),
            sample(Series::Freshness, 19.0, 100_000_000, Some("NeverSeen")),
        ];
        assert_eq!(drained_after(&samples, window), Some(1.5));
        assert_eq!(drained_after(&samples[..1], window), None);
    }

    #[test]
    fn buckets_cover_the_run_and_keep_each_series_apart() {
        let samples = vec![
            sample(Series::Sync, 0.2, 100, None),
            sample(Series::Sync, 0.7, 300, Some("Unavailable")),
            sample(Series::Async, 1.2, 50, None),
        ];
        let buckets = buckets(&samples, 1.5, 0.5);
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets[1].at, 0.5);
        assert_eq!(buckets[1].series["sync"].success_pct, 0.0);
        assert_eq!(buckets[2].series["async"].ok, 1);
        assert!(!buckets[0].series.contains_key("async"));
    }
}
