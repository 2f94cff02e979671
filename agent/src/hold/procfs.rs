//! `/proc/PID/stat`, read as bytes: a command name is whatever the process was started
//! as (invalid UTF-8, spaces, parentheses), and must never hide the fields after it.

use std::path::Path;

/// The fields of a `stat` file keyturn uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// The command name, as the kernel keeps it (at most 15 bytes, any bytes but NUL).
    pub comm: Vec<u8>,
    /// The state letter: `R`, `S`, `T` (stopped)…
    pub state: u8,
    pub ppid: u32,
    /// Start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses the contents of a `stat` file. The command name sits between the first `(` and
/// the last `)`; the fields after it are plain numbers and letters.
pub fn parse_stat(text: &[u8]) -> Option<Stat> {
    let open = text.iter().position(|&b| b == b'(')?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let comm = text.get(open + 1..close)?.to_vec();
    let rest = std::str::from_utf8(text.get(close + 2..)?).ok()?;
    let mut fields = rest.split_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let ppid = fields.next()?.parse().ok()?;
    // `starttime` is field 22 of the file, the 20th after the state.
    let start_ticks = fields.nth(17)?.parse().ok()?;
    Some(Stat { comm, state, ppid, start_ticks })
}

/// The `stat` file at `path` (`/proc/PID/stat`, `/proc/PID/task/TID/stat`).
pub fn stat_at(path: &Path) -> Option<Stat> {
    parse_stat(&std::fs::read(path).ok()?)
}

/// `/proc/PID/stat`, or `None` once the process is reaped.
pub fn stat(pid: u32) -> Option<Stat> {
    stat_at(Path::new(&format!("/proc/{pid}/stat")))
}

/// The real user and group ids of process `pid` (`/proc/PID/status`, which anyone may
/// read, whatever the process made of its own dumpability and `/proc/PID`'s owner).
pub fn ids(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let real = |field: &str| {
        let line = status.lines().find_map(|line| line.strip_prefix(field))?;
        line.split_whitespace().next()?.parse().ok()
    };
    Some((real("Uid:")?, real("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_command_name_does_not_shift_the_fields() {
        let text = [
            &b"4242 (a) T 7 \xff\x1b[2J)) S 17 4242 4242 0 -1 4194560 98 0 0 0 0 0 0 0 20 0 1 0 123456 "[..],
            b"2375680 221 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
        ]
        .concat();
        let stat = parse_stat(&text).expect("parses");
        assert_eq!(stat.comm, b"a) T 7 \xff\x1b[2J)".to_vec());
        assert_eq!((stat.state, stat.ppid, stat.start_ticks), (b'S', 17, 123_456));
    }

    #[test]
    fn the_real_ids_are_read_from_status() {
        let ids = ids(std::process::id()).expect("own status");
        assert_eq!(ids, (nix::unistd::getuid().as_raw(), nix::unistd::getgid().as_raw()));
    }

    #[test]
    fn this_process_is_running_and_started_after_boot() {
        let stat = stat(std::process::id()).expect("own stat");
        assert_eq!(stat.ppid, std::os::unix::process::parent_id());
        assert!(stat.start_ticks > 0);
    }
}
