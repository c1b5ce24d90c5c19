//! CPU time from Linux's /proc, for the lab's reports and the benchmarks (one reading of it
//! for both; no service needs it). Elsewhere than Linux every reading is absent.

/// utime + stime of a process, in clock ticks ([`ticks_per_second`]).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_ticks(&stat)
}

/// Clock ticks per second, the unit of every tick count here.
pub fn ticks_per_second() -> u64 {
    rustix::param::clock_ticks_per_second().max(1)
}

/// The pids of the processes whose command name is `name` (e.g. every `postgres` process).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == name)
        })
        .collect()
}

/// The machine's clock ticks, all cores: (busy, in all), from the first line of /proc/stat.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(stat.lines().next()?)
}

fn parse_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces: count from the
    // last ')'. utime and stime are fields 14 and 15, so 11th and 12th after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_machine_ticks(line: &str) -> Option<(u64, u64)> {
    // cpu user nice system idle iowait irq softirq steal ...
    let ticks: Vec<u64> = line
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = ticks[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_are_read_past_names_with_spaces() {
        let stat = "4242 (purchases sync) S 1 4242 4242 0 -1 4194560 1234 0 0 0 170 30 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_ticks(stat), Some(200));
        assert_eq!(parse_ticks("garbage"), None);
    }

    #[test]
    fn the_machine_line_counts_waiting_for_the_disk_as_idle() {
        assert_eq!(
            parse_machine_ticks("cpu  100 5 50 800 40 3 2 1 0 0"),
            Some((161, 1001))
        );
        assert_eq!(parse_machine_ticks("cpu0 1 2 3"), None);
    }

    #[test]
    fn this_process_has_a_name_and_a_cpu_time() {
        assert!(cpu_ticks(std::process::id()).is_some());
        let me = std::fs::read_to_string("/proc/self/comm").expect("comm");
        assert!(pids_named(me.trim_end()).contains(&std::process::id()));
    }
}
