//! Enforcement modes, from the strongest the kernel offers to the one every kernel here has.

use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// `lsm_cgroup` programs attached to each tagged cgroup: exec and egress held before
    /// they happen, untagged processes run no keyturn code at all. Needs 6.0+, BPF LSM.
    LsmCgroup,
    /// Global `lsm` programs filtered by cgroup: the same holds, one cached lookup for an
    /// untagged process. Needs 5.7+, BPF LSM.
    Lsm,
    /// No usable BPF LSM: `cgroup/connect*|sendmsg*` on each tagged cgroup for egress, and
    /// exec stopped at `sched_process_exec`, before the new program's first instruction.
    CgroupSock,
}

impl Mode {
    /// Strongest first: the order in which start-up tries them.
    pub const ALL: [Mode; 3] = [Mode::LsmCgroup, Mode::Lsm, Mode::CgroupSock];

    pub fn name(self) -> &'static str {
        match self {
            Mode::LsmCgroup => "lsm-cgroup",
            Mode::Lsm => "lsm",
            Mode::CgroupSock => "cgroup-sock",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == s)
            .ok_or_else(|| format!("unknown mode {s:?}: expected lsm-cgroup, lsm or cgroup-sock"))
    }
}
