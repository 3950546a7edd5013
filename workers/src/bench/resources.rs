//! CPU time and peak memory of the processes a benchmark exercises, read
//! from `/proc` (Linux): this process (the fleet), PostgreSQL, RabbitMQ and
//! Redis on the same machine. Elsewhere the figures are absent, not wrong.

use std::collections::BTreeMap;

/// The process groups measured, by the command name `/proc/<pid>/comm` shows.
pub const GROUPS: [(&str, &str); 4] = [
    ("payfleet", ""),
    ("postgresql", "postgres"),
    ("rabbitmq", "beam.smp"),
    ("redis", "redis-server"),
];

/// CPU milliseconds and the largest peak RSS (KiB) per group at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub cpu_ms: BTreeMap<&'static str, f64>,
    pub peak_rss_kib: BTreeMap<&'static str, u64>,
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime in ticks, from `/proc/<pid>/stat` (fields 14 and 15, after the `(comm)`).
fn cpu_ticks(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?)
}

fn peak_rss(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Reads every group now.
pub fn sample() -> Sample {
    let tick_ms = 1000.0 / clock_ticks_per_second();
    let me = std::process::id().to_string();
    let mut out = Sample::default();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let group = GROUPS.iter().find(|(_, name)| {
            if name.is_empty() {
                pid == me
            } else {
                comm.trim() == *name
            }
        });
        let Some((group, _)) = group else { continue };
        if let Some(ticks) = cpu_ticks(&pid) {
            *out.cpu_ms.entry(group).or_default() += ticks * tick_ms;
        }
        if let Some(rss) = peak_rss(&pid) {
            let peak = out.peak_rss_kib.entry(group).or_default();
            *peak = (*peak).max(rss);
        }
    }
    out
}

/// CPU milliseconds each group spent between two samples.
pub fn cpu_between(before: &Sample, after: &Sample) -> BTreeMap<&'static str, f64> {
    after
        .cpu_ms
        .iter()
        .map(|(group, ms)| {
            (
                *group,
                (ms - before.cpu_ms.get(group).copied().unwrap_or(0.0)).max(0.0),
            )
        })
        .collect()
}
