//! CPU time of the lab's processes, read from /proc, so a report can say which process a
//! mode kept busy. Elsewhere than Linux the figures are simply absent.

use std::collections::BTreeMap;
use std::time::Instant;

/// CPU time per process (in clock ticks) at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    ticks: BTreeMap<String, u64>,
}

/// The lab itself is the load generator: its CPU is part of what a step costs the machine.
const LOAD_GENERATOR: &str = "lab (load generator)";

pub fn sample(pids: &BTreeMap<String, u32>) -> Sample {
    let own = (LOAD_GENERATOR.to_owned(), std::process::id());
    let ticks = pids
        .iter()
        .map(|(name, pid)| (name.clone(), *pid))
        .chain([own])
        .filter_map(|(name, pid)| Some((name, platform::procfs::cpu_ticks(pid)?)))
        .collect();
    Sample {
        at: Instant::now(),
        ticks,
    }
}

/// Percent of one core each process used between two samples.
pub fn usage(before: &Sample, after: &Sample) -> BTreeMap<String, f64> {
    let seconds = after.at.duration_since(before.at).as_secs_f64();
    if seconds <= 0.0 {
        return BTreeMap::new();
    }
    let per_second = platform::procfs::ticks_per_second() as f64;
    after
        .ticks
        .iter()
        .filter_map(|(name, after)| {
            let used = after.checked_sub(*before.ticks.get(name)?)?;
            let percent = used as f64 / per_second / seconds * 100.0;
            Some((name.clone(), (percent * 10.0).round() / 10.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cpu_time() {
        let before = sample(&BTreeMap::new());
        assert!(before.ticks.contains_key(LOAD_GENERATOR));
        let mut spin = 0_u64;
        while before.at.elapsed().as_millis() < 50 {
            spin = spin.wrapping_add(1);
        }
        let used = usage(&before, &sample(&BTreeMap::new()));
        assert!(
            used.contains_key(LOAD_GENERATOR),
            "{used:?} after {spin} turns"
        );
    }
}
