//! What the kernel knows about a process: CPU time and memory, read from `/proc`.
//!
//! Two CPU clocks, because neither is enough alone:
//! - `/proc/<pid>/stat` user+sys counts every thread the process ever had (exited ones too),
//!   but in clock ticks (10 ms here) — fine over a throughput window of seconds of CPU.
//! - `/proc/<pid>/task/*/schedstat` is nanoseconds of run time per live thread — needed for
//!   idle CPU, where a budget of 0.1 ms/s is far below one tick over any sane window. It
//!   misses threads that exited during the window, so callers compare thread sets.

use std::collections::BTreeSet;
use std::time::Instant;

/// Clock ticks per second for `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux/x86-64).
pub const CLK_TCK: u64 = 100;

/// One reading of a process's CPU clocks.
#[derive(Debug, Clone)]
pub struct CpuSample {
    pub at: Instant,
    /// user + sys, in clock ticks, all threads ever.
    pub ticks: u64,
    /// The sys part of `ticks`.
    pub sys_ticks: u64,
    /// Minor page faults, all threads ever (each one a page the kernel had to map: a freshly
    /// mmapped or grown heap page on first touch).
    pub minor_faults: u64,
    /// Run time of the live threads, in nanoseconds.
    pub sched_ns: u64,
    /// The live thread ids.
    pub threads: BTreeSet<u32>,
}

/// CPU used between two samples.
#[derive(Debug, Clone, Copy)]
pub struct CpuDelta {
    pub wall_s: f64,
    /// From ticks, in microseconds (10 ms resolution).
    pub ticks_us: f64,
    /// The kernel's share of `ticks_us`.
    pub sys_us: f64,
    /// From schedstat, in microseconds (ns resolution, live threads only).
    pub sched_us: f64,
    /// Minor page faults.
    pub minor_faults: u64,
    /// Whether the thread set was the same at both ends (schedstat is then trustworthy).
    pub same_threads: bool,
}

impl CpuDelta {
    /// The best figure: schedstat when no thread came or went, ticks otherwise.
    pub fn best_us(&self) -> f64 {
        if self.same_threads {
            self.sched_us
        } else {
            self.ticks_us
        }
    }

    /// Utilization as a percentage of one core (ticks-based: counts every thread).
    pub fn core_percent(&self) -> f64 {
        if self.wall_s <= 0.0 {
            return 0.0;
        }
        self.ticks_us / 1e6 / self.wall_s * 100.0
    }
}

impl CpuSample {
    pub fn read(pid: u32) -> Option<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3 → index 0; minflt is field 10 → index 7; utime is
        // field 14 → index 11, stime 12.
        let minor_faults: u64 = fields.get(7)?.parse().ok()?;
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        let mut sched_ns = 0;
        let mut threads = BTreeSet::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) {
                sched_ns += text
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                threads.insert(tid);
            }
        }
        Some(Self {
            at,
            ticks: utime + stime,
            sys_ticks: stime,
            minor_faults,
            sched_ns,
            threads,
        })
    }

    pub fn since(&self, earlier: &CpuSample) -> CpuDelta {
        CpuDelta {
            wall_s: self.at.duration_since(earlier.at).as_secs_f64(),
            ticks_us: (self.ticks.saturating_sub(earlier.ticks)) as f64 * 1e6 / CLK_TCK as f64,
            sys_us: (self.sys_ticks.saturating_sub(earlier.sys_ticks)) as f64 * 1e6
                / CLK_TCK as f64,
            sched_us: (self.sched_ns.saturating_sub(earlier.sched_ns)) as f64 / 1e3,
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
            same_threads: self.threads == earlier.threads,
        }
    }
}

/// Memory figures from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident now.
    pub rss_kib: u64,
    /// Peak resident ("high water mark").
    pub hwm_kib: u64,
    pub threads: u64,
}

impl Memory {
    pub fn read(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mut memory = Memory::default();
        for line in status.lines() {
            let mut parts = line.split_whitespace();
            let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "VmRSS:" => memory.rss_kib = value,
                "VmHWM:" => memory.hwm_kib = value,
                "Threads:" => memory.threads = value,
                _ => {}
            }
        }
        Some(memory)
    }
}

/// Busy time of the whole machine (all cores), in ticks, from `/proc/stat`.
#[derive(Debug, Clone, Copy)]
pub struct MachineSample {
    pub busy: u64,
}

impl MachineSample {
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice
        let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
        let total: u64 = values.iter().take(8).sum();
        Some(Self {
            busy: total.saturating_sub(idle),
        })
    }

    /// Busy ticks since `earlier`.
    pub fn busy_since(&self, earlier: &MachineSample) -> u64 {
        self.busy.saturating_sub(earlier.busy)
    }
}

/// The 1-minute load average.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
