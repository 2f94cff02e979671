//! `keyturn doctor`: what this kernel offers keyturn, and which mode start-up picks.

use std::{fs, path::Path};

use crate::{
    cgroup::Hierarchy,
    kernel::{self, mode::Mode},
};

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    pub lsms: Option<String>,
    pub bpf_lsm_listed: bool,
    pub lockdown: Option<String>,
    pub cgroup2: Option<String>,
    pub attempts: Vec<kernel::Attempt>,
    pub mode: Option<Mode>,
    pub sock_addr_can_signal: bool,
}

const SECURITYFS: &str = "/sys/kernel/security";

/// Reads a securityfs file, mounting securityfs first if it is not mounted.
fn securityfs(file: &str) -> Option<String> {
    let path = Path::new(SECURITYFS).join(file);
    if !path.exists() {
        let _ =
            std::process::Command::new("mount").args(["-t", "securityfs", "securityfs", SECURITYFS]).status();
    }
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

pub fn report() -> Report {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let lsms = securityfs("lsm");
    let (attempts, mode) = match kernel::probe() {
        Ok(probe) => probe,
        Err(e) => (
            vec![kernel::Attempt {
                what: "load keyturn's BPF object".into(),
                result: Err(kernel::error_chain(&e)),
            }],
            None,
        ),
    };
    let sock_addr_can_signal = attempts.iter().any(|a| a.what.contains("connect4_hold") && a.result.is_ok());
    Report {
        kernel,
        btf: Path::new(crate::kernel::btf::Btf::SYS_PATH).exists(),
        bpf_lsm_listed: lsms.as_deref().is_some_and(|l| l.split(',').any(|m| m == "bpf")),
        lsms,
        lockdown: securityfs("lockdown"),
        cgroup2: Hierarchy::find().ok().map(|h| h.root().display().to_string()),
        attempts,
        mode,
        sock_addr_can_signal,
    }
}

/// What a mode means for the people relying on it.
pub fn explain(mode: Mode, sock_addr_can_signal: bool) -> Vec<String> {
    match mode {
        Mode::LsmCgroup | Mode::Lsm => vec![
            "exec: held in bprm_check_security, before the exec happens; a stray SIGCONT re-holds it".into(),
            "egress: held in socket_connect/socket_sendmsg before any packet; a stray SIGCONT re-holds it"
                .into(),
        ],
        Mode::CgroupSock => vec![
            "exec: no exec LSM hook; the process is stopped at sched_process_exec, before the new program's \
             first instruction, then frozen in a cgroup of its own. A SIGCONT not sent by keyturn before the \
             freeze (the daemon's reaction time) kills it"
                .into(),
            if sock_addr_can_signal {
                "egress: held in cgroup/connect*|sendmsg* before any packet; a stray SIGCONT re-holds it"
                    .into()
            } else {
                "egress: this kernel refuses bpf_send_signal in sock_addr programs: a held connect fails with \
                 EPERM at once and succeeds when retried after approval"
                    .into()
            },
        ],
    }
}

pub fn print(report: &Report) {
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!("kernel            {}", report.kernel);
    println!("BTF               {}", yes_no(report.btf));
    println!("LSMs              {}", report.lsms.as_deref().unwrap_or("unknown (securityfs unavailable)"));
    println!("BPF LSM listed    {}", yes_no(report.bpf_lsm_listed));
    println!("lockdown          {}", report.lockdown.as_deref().unwrap_or("unknown"));
    println!("cgroup v2         {}", report.cgroup2.as_deref().unwrap_or("NOT MOUNTED"));
    println!("sock_addr signals {}", yes_no(report.sock_addr_can_signal));
    println!("program loads:");
    for attempt in &report.attempts {
        match &attempt.result {
            Ok(()) => println!("  ok    {}", attempt.what),
            Err(e) => println!("  FAIL  {}\n        {e}", attempt.what),
        }
    }
    match report.mode {
        Some(mode) => {
            println!("mode              {mode}");
            for line in explain(mode, report.sock_addr_can_signal) {
                println!("  {line}");
            }
        }
        None => println!("mode              NONE: keyturn cannot enforce on this kernel"),
    }
}
