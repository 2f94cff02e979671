//! What the kernel-level measurements share: the bench's cgroups and pins, keyturn loaded
//! with its policies, a loopback listener, and worker processes in a cgroup.

use std::{
    fs,
    net::{Ipv4Addr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use agent_common::{Tag, protocol};
use keyturn::{
    cgroup::{self, Hierarchy},
    kernel::{Enforcer, Options, error_chain},
    policy::{EgressSpec, KernelPolicy, Verdict},
};
use nix::sys::socket::{Backlog, setsockopt, sockopt};

use crate::{Result, SETTLE, TIMEOUT};

pub const ALLOWED_POLICY: u32 = 1;
pub const HOLD_POLICY: u32 = 2;
/// The held connect's destination: loopback, but outside the allowed listener's address.
pub const HELD_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// `SO_LINGER` 0: closing sends a reset instead of leaving the port in `TIME_WAIT`, so a
/// hundred thousand connects neither exhaust ephemeral ports nor slow the run down.
pub fn reset_on_close(stream: &TcpStream) {
    let _ = setsockopt(stream, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 });
}

/// The bench's cgroups under the cgroup v2 root: `plain` (never tagged), `tagged`, `held`,
/// `named` (the names bench's) and `many` (parent of the memory test's cgroups). Killed and removed on drop.
pub struct BenchCgroups {
    root: PathBuf,
}

impl BenchCgroups {
    pub fn create() -> Result<Self> {
        let root = Hierarchy::find()?.root().join(format!("kt-bench-{}", std::process::id()));
        cgroup::create(&root)?;
        let cgroups = Self { root };
        for name in ["plain", "tagged", "held", "named", "many"] {
            cgroup::create(&cgroups.dir(name))?;
        }
        Ok(cgroups)
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for BenchCgroups {
    fn drop(&mut self) {
        let _ = fs::write(self.root.join("cgroup.kill"), "1");
        let deadline = Instant::now() + TIMEOUT;
        while cgroup::remove(&self.root).is_err() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The bench's own bpffs directory. Removed on drop, which detaches whatever an
/// interrupted run left pinned there.
pub struct Pins(pub PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// keyturn loaded with the bench's pins; uninstalled on drop, so nothing stays attached.
pub struct Loaded(Option<Enforcer>);

impl Loaded {
    /// Loads keyturn with the allowing policy and tags the `tagged` cgroup.
    pub fn tagged(pins: &Pins, cgroups: &BenchCgroups) -> Result<Self> {
        let options =
            Options { pin_dir: pins.0.clone(), liveness_timeout: TIMEOUT * 60, ..Options::default() };
        let enforcer = Enforcer::load(&options).map_err(|e| format!("load keyturn: {}", error_chain(&e)))?;
        let mut loaded = Self(Some(enforcer));
        loaded.enforcer().set_policy(ALLOWED_POLICY, &allowed_policy()?)?;
        loaded.enforcer().tag(&cgroups.dir("tagged"), Tag { policy: ALLOWED_POLICY, max_pending: 16 })?;
        thread::sleep(SETTLE);
        Ok(loaded)
    }

    pub fn enforcer(&mut self) -> &mut Enforcer {
        self.0.as_mut().expect("loaded until unloaded")
    }

    pub fn unload(mut self) -> Result<()> {
        let enforcer = self.0.take().expect("loaded until unloaded");
        enforcer.uninstall().map_err(|e| format!("uninstall keyturn: {}", error_chain(&e)))?;
        thread::sleep(SETTLE);
        Ok(())
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(enforcer) = self.0.take() {
            let _ = enforcer.uninstall();
        }
    }
}

/// Exec allowed by default; egress allowed to loopback by a rule, denied elsewhere.
fn allowed_policy() -> Result<KernelPolicy> {
    Ok(KernelPolicy {
        exec_default: Verdict::Allow,
        egress_default: Verdict::Deny,
        executables: vec![],
        egress: vec![EgressSpec {
            cidr: "127.0.0.0/8".parse()?,
            ports: vec![],
            protocol: protocol::ANY,
            verdict: Verdict::Allow,
            quorum: 1,
            in_console: false,
            notify: vec![],
        }],
    })
}

/// Holds TCP to `HELD_ADDR:port`, allows everything else.
pub fn hold_policy(port: u16) -> Result<KernelPolicy> {
    Ok(KernelPolicy {
        exec_default: Verdict::Allow,
        egress_default: Verdict::Allow,
        executables: vec![],
        egress: vec![EgressSpec {
            cidr: format!("{HELD_ADDR}/32").parse()?,
            ports: vec![(port, port)],
            protocol: protocol::TCP,
            verdict: Verdict::Hold,
            quorum: 1,
            in_console: false,
            notify: vec![],
        }],
    })
}

/// A loopback listener on `addr` that accepts and closes every connection on a thread
/// of its own; returns its port.
pub fn listen(addr: Ipv4Addr) -> Result<u16> {
    let listener = TcpListener::bind((addr, 0))?;
    // A deep accept queue: a connect never waits for the accepting thread (listen(2) again
    // on a listening socket only changes its backlog).
    nix::sys::socket::listen(&listener, Backlog::new(4096)?)?;
    let port = listener.local_addr()?.port();
    thread::spawn(move || listener.incoming().for_each(drop));
    Ok(port)
}

/// Starts `bench worker ARGS…` inside the cgroup at `dir`.
pub fn spawn_worker(dir: &Path, args: &[&str], stdin: Stdio) -> Result<Child> {
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("worker").args(args).stdin(stdin).stdout(Stdio::piped());
    tests::enter_cgroup_on_exec(&mut command, dir)?;
    Ok(command.spawn()?)
}
