//! What a benchmark reads about the processes it measures: CPU pinning,
//! CPU time, page faults and context switches from `/proc`, `wrk` runs
//! with their request counts, and quartiles.

use std::process::Command;

/// Pins every thread of process `pid` to the CPUs `cpus` (`taskset`'s
/// list syntax, e.g. `0` or `0,1`). Threads it starts later inherit it.
pub fn pin(pid: u32, cpus: &str) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run taskset");
    assert!(status.success(), "taskset {pid}");
}

/// Counters of a process and its descendants, read from `/proc`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    /// User plus system CPU seconds.
    pub cpu_seconds: f64,
    /// Minor page faults.
    pub minor_faults: u64,
    /// Voluntary plus involuntary context switches of the live threads.
    pub context_switches: u64,
}

/// Ticks per second of `/proc/PID/stat`'s times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

impl ProcStats {
    /// The counters of `pid` and every process under it, now.
    pub fn of(pid: u32) -> Self {
        let mut total = Self::default();
        let mut pending = vec![pid];
        while let Some(pid) = pending.pop() {
            total = total.plus(Self::one(pid));
            pending.extend(children(pid));
        }
        total
    }

    /// The counters of `pid` alone (zero when it is gone).
    fn one(pid: u32) -> Self {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return Self::default();
        };
        // The fields after the command name, which is in parentheses and
        // may hold spaces: state is field 3, minflt 10, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let field =
            |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
        let mut switches = 0;
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in tasks.flatten() {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                switches += status
                    .lines()
                    .filter(|l| l.contains("ctxt_switches:"))
                    .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                    .sum::<u64>();
            }
        }
        Self {
            cpu_seconds: (field(14) + field(15)) as f64 / TICKS,
            minor_faults: field(10),
            context_switches: switches,
        }
    }

    fn plus(self, other: Self) -> Self {
        Self {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            minor_faults: self.minor_faults + other.minor_faults,
            context_switches: self.context_switches + other.context_switches,
        }
    }

    /// What was counted between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            cpu_seconds: self.cpu_seconds - earlier.cpu_seconds,
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
            context_switches: self
                .context_switches
                .saturating_sub(earlier.context_switches),
        }
    }
}

/// The direct children of `pid`, from every thread's `children` file.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// One `wrk` run.
#[derive(Clone, Debug)]
pub struct WrkRun {
    /// Requests per second.
    pub rps: f64,
    /// Requests completed.
    pub requests: u64,
    /// The p99 latency as wrk prints it.
    pub p99: String,
}

/// `wrk -t2 -c64` on one URL (with `headers`) for `seconds`; panics when
/// a request failed.
pub fn wrk_run(url: &str, seconds: u64, headers: &[&str]) -> WrkRun {
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", url])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no rate: {text}"));
    assert!(!text.contains("Non-2xx"), "wrk saw failed requests: {text}");
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk printed no request count: {text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map_or_else(|| "?".into(), |v| v.trim().to_owned());
    WrkRun { rps, requests, p99 }
}

/// The lower quartile, median and upper quartile of `values` (not empty).
pub fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: usize| values[(values.len() - 1) * q / 4];
    [at(1), at(2), at(3)]
}
