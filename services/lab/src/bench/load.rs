//! The load the bench offers: each mode at a constant arrival rate (open loop), latency
//! counted from when each request was due; the steps up to saturation, narrowed where a mode
//! saturates; and the reference rounds the summary and the cost of tracing come from.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::results::{ModeResult, Reference, RoundFigures, Step, TracingCost};
use super::{DEADLINE, MODES, SATURATED_BELOW, SATURATED_ERRORS, Settings};
use crate::measure::{Clients, ErrorTally, Mode, micros, micros_histogram};
use crate::seed::SeededUser;
use crate::topology::Endpoints;
use crate::up::RunningLab;
use crate::writer::lock;

/// Every mode at every rate of the settings, rates on the outside, then the steps that
/// narrow each mode's saturation: each mode's steps in rate order.
pub(super) async fn series(
    lab: &RunningLab,
    clients: &Clients,
    users: &Arc<Vec<SeededUser>>,
    settings: &Settings,
    progress: &ProgressBar,
) -> BTreeMap<String, ModeResult> {
    // Rates on the outside, modes inside: the background writer grows the data as the run
    // goes on, and every mode meets each rate on the same data.
    let mut steps: BTreeMap<Mode, Vec<Step>> =
        MODES.iter().map(|mode| (*mode, Vec::new())).collect();
    let mut saturated: BTreeMap<Mode, bool> = BTreeMap::new();
    for &rate in &settings.rates {
        for mode in MODES {
            progress.inc(1);
            // Past saturation a mode is not loaded harder, except to the reference rate, so
            // every mode's series has the step the summary is measured at.
            if saturated.get(&mode).copied().unwrap_or(false) && rate > settings.reference_rate {
                continue;
            }
            progress.set_prefix(mode.name());
            progress.set_message(format!("{rate} req/s"));
            let step = step_with_cpu(lab, clients, mode, users, rate, settings).await;
            if step.saturated {
                saturated.insert(mode, true);
            }
            steps.entry(mode).or_default().push(step);
        }
    }
    for _ in 0..settings.refine_steps {
        for mode in MODES {
            let Some(rate) = steps
                .get(&mode)
                .and_then(|steps| between_carried_and_not(steps))
            else {
                continue;
            };
            progress.inc_length(1);
            progress.inc(1);
            progress.set_prefix(mode.name());
            progress.set_message(format!("{rate} req/s, narrowing its saturation"));
            let step = step_with_cpu(lab, clients, mode, users, rate, settings).await;
            steps.entry(mode).or_default().push(step);
        }
    }
    for steps in steps.values_mut() {
        steps.sort_by_key(|step| step.offered_rps);
    }
    steps
        .into_iter()
        .map(|(mode, steps)| {
            let saturation_rps = steps
                .iter()
                .map(|step| step.throughput_rps)
                .fold(0.0, f64::max);
            (
                mode.name().to_owned(),
                ModeResult {
                    steps,
                    saturation_rps,
                    saturation_reached: saturated.get(&mode).copied().unwrap_or(false),
                },
            )
        })
        .collect()
}

/// One step of the series: `rate` held for the step's length, with the CPU every process
/// used meanwhile.
pub(super) async fn step_with_cpu(
    lab: &RunningLab,
    clients: &Clients,
    mode: Mode,
    users: &Arc<Vec<SeededUser>>,
    rate: u32,
    settings: &Settings,
) -> Step {
    let pids = lab.pids();
    let cpu_before = crate::cpu::sample(&pids);
    let length = Duration::from_millis(settings.step_ms);
    let step = open_loop(clients, mode, users, rate, length, settings)
        .await
        .step(rate);
    Step {
        cpu_pct: crate::cpu::usage(&cpu_before, &crate::cpu::sample(&pids)),
        ..step
    }
}

/// The rate halfway (on a log scale) between the highest rate a mode carried and the lowest
/// it did not, or None when the mode never saturated, never carried a rate, or the two are
/// already within 10% of each other.
pub(super) fn between_carried_and_not(steps: &[Step]) -> Option<u32> {
    let not_carried = steps
        .iter()
        .filter(|step| step.saturated)
        .map(|step| step.offered_rps)
        .min()?;
    let carried = steps
        .iter()
        .filter(|step| !step.saturated && step.offered_rps < not_carried)
        .map(|step| step.offered_rps)
        .max()?;
    if f64::from(not_carried) < 1.1 * f64::from(carried) {
        return None;
    }
    let between = (f64::from(carried) * f64::from(not_carried)).sqrt().round() as u32;
    (between > carried && between < not_carried).then_some(between)
}

/// Offers the reference rate to every mode in turn, `reference_rounds` times, each round
/// starting one mode further on so no mode always follows the same one. Each mode's summary
/// is taken over all its turns: a disturbance of the machine (a writeback, a neighbour on
/// the host) lands on one turn of each mode rather than on one mode's whole measurement.
///
/// With `tracing` (the share of traces kept when it is on), every round runs twice, once
/// with the services keeping no new traces and once keeping that share, which goes first
/// alternating round by round: the summary is the rounds off, and the cost of tracing is
/// read from the same rounds on.
pub(super) async fn reference_rounds(
    endpoints: &Endpoints,
    clients: &Clients,
    users: &Arc<Vec<SeededUser>>,
    settings: &Settings,
    rate: u32,
    tracing: Option<f64>,
    progress: &ProgressBar,
) -> anyhow::Result<(Reference, BTreeMap<Mode, Step>)> {
    let turn = Duration::from_millis(settings.reference_round_ms);
    let mut off = RoundsOf::default();
    let mut on = RoundsOf::default();
    for round in 0..settings.reference_rounds {
        let mut order = MODES;
        order.rotate_left(round as usize % MODES.len());
        let passes: Vec<Option<f64>> = match tracing {
            None => vec![None],
            Some(ratio) if round % 2 == 0 => vec![Some(0.0), Some(ratio)],
            Some(ratio) => vec![Some(ratio), Some(0.0)],
        };
        for pass in passes {
            if let Some(ratio) = pass {
                crate::traces::set_sampling(endpoints, ratio).await?;
            }
            let traced = pass.is_some_and(|ratio| ratio > 0.0);
            for mode in order {
                progress.inc(1);
                progress.set_prefix(mode.name());
                progress.set_message(format!(
                    "{rate} req/s, reference round {}/{}{}",
                    round + 1,
                    settings.reference_rounds,
                    if traced { ", traced" } else { "" }
                ));
                let measured = open_loop(clients, mode, users, rate, turn, settings).await;
                if traced { &mut on } else { &mut off }.add(mode, measured, rate);
            }
        }
    }
    if tracing.is_some() {
        crate::traces::set_sampling(endpoints, 0.0).await?;
    }
    let tracing = tracing.map(|ratio| TracingCost {
        ratio,
        on: on.overall(rate),
        off: off.overall(rate),
        per_round_on: on.per_round.clone(),
    });
    let overall = off.overall(rate);
    let steps = off
        .merged
        .into_iter()
        .map(|(mode, measured)| (mode, measured.step(rate)))
        .collect();
    let reference = Reference {
        rate,
        rounds: settings.reference_rounds,
        round_ms: settings.reference_round_ms,
        overall,
        per_round: off.per_round,
        tracing,
    };
    Ok((reference, steps))
}

/// Every mode's turns of the reference rounds under one setting: each turn's figures, and
/// all turns merged.
#[derive(Debug, Default)]
struct RoundsOf {
    merged: BTreeMap<Mode, Measured>,
    per_round: BTreeMap<String, Vec<RoundFigures>>,
}

impl RoundsOf {
    fn add(&mut self, mode: Mode, measured: Measured, rate: u32) {
        self.per_round
            .entry(mode.name().to_owned())
            .or_default()
            .push(RoundFigures::of(&measured.step(rate)));
        match self.merged.get_mut(&mode) {
            Some(all) => all.absorb(&measured),
            None => {
                self.merged.insert(mode, measured);
            }
        }
    }

    fn overall(&self, rate: u32) -> BTreeMap<String, RoundFigures> {
        self.merged
            .iter()
            .map(|(mode, measured)| {
                (
                    mode.name().to_owned(),
                    RoundFigures::of(&measured.step(rate)),
                )
            })
            .collect()
    }
}

impl RoundFigures {
    fn of(step: &Step) -> Self {
        Self {
            p50_us: step.p50_us,
            p99_us: step.p99_us,
            error_rate: step.error_rate,
        }
    }
}

/// Shared by the requests of one step.
#[derive(Debug)]
struct StepRecorder {
    corrected: Histogram<u64>,
    uncorrected: Histogram<u64>,
    send_lag: Histogram<u64>,
    ok: u64,
    errors: ErrorTally,
}

/// What one stretch of open-loop load at one rate recorded.
#[derive(Debug)]
struct Measured {
    recorder: StepRecorder,
    scheduled: u64,
    seconds: f64,
}

impl Measured {
    fn step(&self, offered_rps: u32) -> Step {
        self.recorder
            .finish(offered_rps, self.scheduled, self.seconds)
    }

    /// Adds another stretch at the same rate, as if the two had run back to back.
    fn absorb(&mut self, other: &Measured) {
        self.recorder.absorb(&other.recorder);
        self.scheduled += other.scheduled;
        self.seconds += other.seconds;
    }
}

impl StepRecorder {
    fn absorb(&mut self, other: &StepRecorder) {
        // Every recorder's histograms share `micros_histogram`'s bounds and record saturated
        // values, so one always fits into another.
        let _ = self.corrected.add(&other.corrected);
        let _ = self.uncorrected.add(&other.uncorrected);
        let _ = self.send_lag.add(&other.send_lag);
        self.ok += other.ok;
        self.errors.absorb(&other.errors);
    }

    fn new() -> Self {
        Self {
            corrected: micros_histogram(),
            uncorrected: micros_histogram(),
            send_lag: micros_histogram(),
            ok: 0,
            errors: ErrorTally::default(),
        }
    }

    fn finish(&self, offered_rps: u32, scheduled: u64, seconds: f64) -> Step {
        let failed = scheduled.saturating_sub(self.ok);
        let error_rate = if scheduled == 0 {
            0.0
        } else {
            failed as f64 / scheduled as f64
        };
        let throughput_rps = self.ok as f64 / seconds.max(f64::EPSILON);
        let quantile = Histogram::<u64>::value_at_quantile;
        Step {
            offered_rps,
            seconds,
            scheduled,
            ok: self.ok,
            throughput_rps,
            p50_us: quantile(&self.corrected, 0.5),
            p90_us: quantile(&self.corrected, 0.9),
            p99_us: quantile(&self.corrected, 0.99),
            p999_us: quantile(&self.corrected, 0.999),
            max_us: self.corrected.max(),
            uncorrected_p50_us: quantile(&self.uncorrected, 0.5),
            uncorrected_p99_us: quantile(&self.uncorrected, 0.99),
            send_lag_p99_us: quantile(&self.send_lag, 0.99),
            error_rate,
            errors: self.errors.counts.clone(),
            example_errors: self.errors.examples.clone(),
            cpu_pct: BTreeMap::new(),
            saturated: throughput_rps < SATURATED_BELOW * f64::from(offered_rps)
                || error_rate > SATURATED_ERRORS,
        }
    }
}

/// Requests due at `rate` per second for `duration`, each sent when due (by a timer thread,
/// whose lateness is recorded) unless `max_in_flight` are outstanding.
async fn open_loop(
    clients: &Clients,
    mode: Mode,
    users: &Arc<Vec<SeededUser>>,
    rate: u32,
    duration: Duration,
    settings: &Settings,
) -> Measured {
    let recorder = Arc::new(Mutex::new(StepRecorder::new()));
    let in_flight = Arc::new(Semaphore::new(settings.max_in_flight as usize));
    let tracker = TaskTracker::new();
    let handle = tokio::runtime::Handle::current();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let page_size = settings.page_size;
    let pacer = {
        let (clients, users, recorder, tracker) = (
            clients.clone(),
            Arc::clone(users),
            Arc::clone(&recorder),
            tracker.clone(),
        );
        // A thread of its own: tokio's timer ticks in milliseconds, far coarser than the
        // gap between requests at a few thousand per second.
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut scheduled = 0_u64;
            loop {
                let due = started + interval.mul_f64(scheduled as f64);
                if due >= started + duration {
                    break;
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let user = users[usize::try_from(scheduled).unwrap_or(0) % users.len()].clone();
                let (clients, recorder, in_flight) = (
                    clients.clone(),
                    Arc::clone(&recorder),
                    Arc::clone(&in_flight),
                );
                tracker.spawn_on(
                    async move {
                        let sent_at = Instant::now();
                        let permit =
                            tokio::time::timeout_at((due + DEADLINE).into(), in_flight.acquire())
                                .await;
                        let Ok(Ok(_permit)) = permit else {
                            let mut recorder = lock(&recorder);
                            recorder.errors.add(
                                "ClientBacklog",
                                &format!(
                                    "the load generator already had its limit of requests in flight for {DEADLINE:?}: the mode is saturated"
                                ),
                            );
                            return;
                        };
                        let sent = Instant::now();
                        let outcome = clients.call(mode, &user, page_size).await;
                        let done = Instant::now();
                        let mut recorder = lock(&recorder);
                        recorder.send_lag.saturating_record(micros(sent_at - due));
                        match outcome {
                            Ok(()) => {
                                recorder.ok += 1;
                                recorder.corrected.saturating_record(micros(done - due));
                                recorder.uncorrected.saturating_record(micros(done - sent));
                            }
                            Err((code, message)) => {
                                recorder.errors.add(&format!("{code:?}"), &message);
                            }
                        }
                    },
                    &handle,
                );
                scheduled += 1;
            }
            (scheduled, started)
        })
    };
    let fallback = Instant::now();
    let (scheduled, started) = tokio::task::spawn_blocking(move || pacer.join())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or((0, fallback));
    tracker.close();
    tracker.wait().await;
    // Until the last answer, not the last send: a mode that fell behind finishes its backlog
    // after the step, and that time is part of what it took.
    let seconds = started.elapsed().as_secs_f64();
    let recorder = std::mem::replace(&mut *lock(&recorder), StepRecorder::new());
    Measured {
        recorder,
        scheduled,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_falls_behind_or_fails_is_saturated() {
        let answered = |ok: u64, scheduled: u64| {
            let mut recorder = StepRecorder::new();
            for _ in 0..ok {
                recorder.ok += 1;
                recorder.corrected.saturating_record(500);
            }
            recorder.finish(100, scheduled, 1.0)
        };
        let kept_up = answered(100, 100);
        assert!(!kept_up.saturated);
        assert_eq!(kept_up.p50_us, 500);

        let failing = answered(95, 100);
        assert!((failing.error_rate - 0.05).abs() < 1e-9);
        assert!(failing.saturated, "5% failed, over the 1% bound");

        let behind = answered(80, 80);
        assert_eq!(behind.error_rate, 0.0);
        assert!(behind.saturated, "80 per second of 100 offered");
    }

    #[test]
    fn refinement_halves_the_gap_where_a_mode_saturated() {
        let step = |offered: u32, saturated: bool| {
            let mut step = StepRecorder::new().finish(offered, 0, 1.0);
            step.saturated = saturated;
            step
        };
        let series = [step(1_000, false), step(2_000, false), step(4_000, true)];
        assert_eq!(between_carried_and_not(&series), Some(2_828));
        // The next refinement narrows whichever half the first one left.
        let narrowed = [&series[..], &[step(2_828, true)]].concat();
        assert_eq!(between_carried_and_not(&narrowed), Some(2_378));
        let carried = [&series[..], &[step(2_828, false)]].concat();
        assert_eq!(between_carried_and_not(&carried), Some(3_363));
        // The reference rate may be run past saturation: it does not count as carried above.
        let past = [step(1_000, true), step(500, false), step(2_000, false)];
        assert_eq!(between_carried_and_not(&past), Some(707));
        assert_eq!(
            between_carried_and_not(&series[..2]),
            None,
            "never saturated"
        );
        assert_eq!(
            between_carried_and_not(&[step(100, true)]),
            None,
            "nothing carried"
        );
        let close = [step(1_000, false), step(1_050, true)];
        assert_eq!(between_carried_and_not(&close), None, "close enough");
    }

    #[test]
    fn rounds_merge_as_if_they_had_run_back_to_back() {
        let stretch = |latency_us: u64, ok: u64, failed: u64| {
            let mut recorder = StepRecorder::new();
            for _ in 0..ok {
                recorder.ok += 1;
                recorder.corrected.saturating_record(latency_us);
            }
            for _ in 0..failed {
                recorder.errors.add("Unavailable", "down");
            }
            Measured {
                recorder,
                scheduled: ok + failed,
                seconds: 1.0,
            }
        };
        let mut all = stretch(100, 100, 0);
        all.absorb(&stretch(10_000, 98, 2));
        let step = all.step(100);
        assert_eq!((step.scheduled, step.ok), (200, 198));
        assert!((step.throughput_rps - 99.0).abs() < 1e-9, "{step:?}");
        assert!((step.error_rate - 0.01).abs() < 1e-9);
        assert_eq!(step.errors.get("Unavailable"), Some(&2));
        assert_eq!(step.p50_us, 100, "half the answers took 100 us");
        assert!(
            step.p99_us >= 9_990,
            "the slow round's tail is kept: {step:?}"
        );
    }
}
