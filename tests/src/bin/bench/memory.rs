//! Memory of the enforcer and its maps at 1,000 more tagged cgroups.

use std::{
    fs,
    time::{Duration, Instant},
};

use agent_common::Tag;
use keyturn::cgroup;

use crate::{
    Result,
    fixtures::{ALLOWED_POLICY, BenchCgroups, Loaded},
    report::kib,
};

const MANY_CGROUPS: usize = 1000;

pub struct Memory {
    rss_before: u64,
    rss_after: u64,
    maps_before: u64,
    maps_after: u64,
    tagging: Duration,
    /// Entries of `TAGGED_ROOTS` afterwards.
    tagged: usize,
}

/// Tags `MANY_CGROUPS` fresh cgroups, reading RSS and map memory before and after.
pub fn measure_memory(loaded: &mut Loaded, cgroups: &BenchCgroups) -> Result<Memory> {
    let enforcer = loaded.enforcer();
    let (rss_before, maps_before) = (rss_bytes()?, enforcer.maps_memory());
    let start = Instant::now();
    for index in 0..MANY_CGROUPS {
        let dir = cgroups.dir("many").join(format!("c{index:04}"));
        cgroup::create(&dir)?;
        enforcer.tag(&dir, Tag { policy: ALLOWED_POLICY, max_pending: 16 })?;
    }
    let tagging = start.elapsed();
    Ok(Memory {
        rss_before,
        rss_after: rss_bytes()?,
        maps_before,
        maps_after: enforcer.maps_memory(),
        tagging,
        tagged: enforcer.tags()?.len(),
    })
}

/// This process's resident set size, `VmRSS` in /proc/self/status.
fn rss_bytes() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

pub fn print_memory(memory: &Memory) {
    println!(
        "\nmemory: {MANY_CGROUPS} more cgroups tagged in {:.2} s; {} tagged roots in the kernel",
        memory.tagging.as_secs_f64(),
        memory.tagged
    );
    println!("  {:<18}{:>14}{:>14}{:>14}", "", "before", "after", "delta");
    for (label, before, after) in [
        ("enforcer VmRSS", memory.rss_before, memory.rss_after),
        ("maps memlock", memory.maps_before, memory.maps_after),
    ] {
        let sign = if after < before { "-" } else { "+" };
        println!(
            "  {label:<18}{:>14}{:>14}{:>14}",
            kib(before),
            kib(after),
            format!("{sign}{}", kib(after.abs_diff(before)))
        );
    }
}
