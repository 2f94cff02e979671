//! Judging held execs off the daemon's owner task, on the blocking pool, several at once:
//! the executable is identified (opened, verified, hashed) and the policy applied, and for
//! an exec that goes to a person, what the process's memory says is read (argv, parents).
//! A large or slow file, or memory an agent makes slow to read, never stalls decisions.
//! Each judgement comes back as a [`Judged`].
//! Each tagged root gets a fair share of the judges: an agent whose files make judging
//! hang (a FUSE mount it serves) only ever holds up its own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use agent_common::{HoldEvent, HoldKey};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    hold::context::{self, FromMemory},
    hold::identity::{Digests, Executable},
    policy::Verdict,
    policy::file::{ExecJudgement, Policy},
};

/// Judgements that may run at once: enough to keep a build's fresh executables moving on
/// a small machine without letting a flood of execs take every thread.
const PARALLEL: usize = 8;

/// Judgements of one tagged root that may run at once.
const PARALLEL_PER_ROOT: usize = 2;

/// A judged exec hold, for the owner task to act on.
pub struct Judged {
    pub key: HoldKey,
    pub event: HoldEvent,
    /// Picked up from a previous daemon's pinned record.
    pub restored: bool,
    /// The verified executable and what the policy says of it, or why it could not be
    /// verified (then only a person can judge it).
    pub outcome: Result<(Executable, ExecJudgement), String>,
    /// What the process's memory says, read when a person will be asked (or a rule
    /// needed the argv).
    pub memory: FromMemory,
    /// The policy it was judged under.
    pub policy: Arc<Policy>,
}

/// Hands exec holds to judges and their judgements back to the owner task.
pub struct Judge {
    digests: Arc<Digests>,
    permits: Arc<Semaphore>,
    /// Each tagged root's share of the permits.
    shares: Mutex<HashMap<u64, Arc<Semaphore>>>,
    done: mpsc::UnboundedSender<Judged>,
}

impl Judge {
    /// A judge, and where its judgements arrive.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Judged>) {
        let (done, judged) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(PARALLEL));
        (Self { digests: Arc::default(), permits, shares: Mutex::default(), done }, judged)
    }

    /// Judges the exec hold `key` under `policy`; the judgement arrives later, and
    /// `progress` counts the bytes of the executable read meanwhile. Must be called from
    /// within the daemon's runtime.
    pub fn submit(
        &self,
        key: HoldKey,
        event: &HoldEvent,
        restored: bool,
        policy: Arc<Policy>,
        progress: Arc<AtomicU64>,
    ) {
        let (digests, permits, done, event) =
            (self.digests.clone(), self.permits.clone(), self.done.clone(), *event);
        let share = self.share(event.hold.root);
        tokio::spawn(async move {
            let (Ok(share), Ok(permit)) = (share.acquire_owned().await, permits.acquire_owned().await) else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                let (outcome, memory, lease) = judge(&digests, &event, &policy, &progress);
                drop((permit, share));
                let _ = done.send(Judged { key, event, restored, outcome, memory, policy });
                // A fresh file's lease outlives the judgement until its change time settled.
                if let Some(lease) = lease {
                    lease.wait_out();
                }
            })
            .await;
        });
    }

    /// The share of the judges of the tagged root `root`. Shares nobody is using are
    /// forgotten once many roots have come and gone (`keyturn run` makes one per run).
    fn share(&self, root: u64) -> Arc<Semaphore> {
        let mut shares = self.shares.lock().expect("shares lock");
        if shares.len() >= 1024 {
            shares.retain(|_, share| share.available_permits() < PARALLEL_PER_ROOT);
        }
        shares.entry(root).or_insert_with(|| Arc::new(Semaphore::new(PARALLEL_PER_ROOT))).clone()
    }
}

type Judgement =
    (Result<(Executable, ExecJudgement), String>, FromMemory, Option<crate::hold::identity::Lease>);

/// Identifies and judges the exec of `event` under `policy`. The argv is read only if a
/// rule asks for it or the verdict goes to a person (reading it may wait for the held
/// thread to reach its stop), the parents only in the latter case.
fn judge(digests: &Digests, event: &HoldEvent, policy: &Policy, progress: &AtomicU64) -> Judgement {
    match digests.identify(event, progress) {
        Ok((exe, lease)) => {
            let mut argv = None;
            let judgement = policy.judge_exec(&exe, digests, || {
                argv = context::exec_argv(event);
                argv.clone()
            });
            let memory = if judgement.verdict == Verdict::Hold {
                FromMemory::read(event, argv)
            } else {
                FromMemory { argv, parents: None }
            };
            (Ok((exe, judgement)), memory, lease)
        }
        Err(why) => (Err(why), FromMemory::read(event, None), None),
    }
}
