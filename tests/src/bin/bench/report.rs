//! Numbers as the report shows them: nanoseconds, percentiles, microseconds, verdicts.

use std::time::Duration;

pub fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[expect(clippy::cast_precision_loss, reason = "values far below 2^52")]
pub fn float(value: u64) -> f64 {
    value as f64
}

/// Nearest-rank percentile `q` (0–100) of `samples`.
pub fn percentile(samples: &[u64], q: usize) -> u64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = (sorted.len() * q).div_ceil(100).max(1);
    sorted[rank - 1]
}

pub fn micros(ns: u64) -> String {
    format!("{:.1} µs", float(ns) / 1e3)
}

pub fn kib(bytes: u64) -> String {
    format!("{} KiB", bytes / 1024)
}

pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}
