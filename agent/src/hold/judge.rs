//! Judging held execs off the daemon's owner task: the executable is identified (opened,
//! verified, hashed) and the policy applied on the blocking pool, several at once, so a
//! large or slow file never stalls decisions. Each judgement comes back as a [`Judged`].

use std::sync::Arc;

use agent_common::{HoldEvent, HoldKey};
use tokio::sync::{Semaphore, mpsc};

use crate::{
    hold::context,
    hold::identity::{Digests, Executable},
    policy::Verdict,
    policy::file::{ExecJudgement, Policy},
};

/// Judgements that may run at once: enough to keep a build's fresh executables moving on
/// a small machine without letting a flood of execs take every thread.
const PARALLEL: usize = 8;

/// A judged exec hold, for the owner task to act on.
pub struct Judged {
    pub key: HoldKey,
    pub event: HoldEvent,
    /// Picked up from a previous daemon's pinned record.
    pub restored: bool,
    /// The verified executable and what the policy says of it, or why it could not be
    /// verified (then only a person can judge it).
    pub outcome: Result<(Executable, ExecJudgement), String>,
    /// The argv the exec passed, when a rule needed it or a person will be asked.
    pub argv: Option<Vec<String>>,
}

/// Hands exec holds to judges and their judgements back to the owner task.
pub struct Judge {
    digests: Arc<Digests>,
    permits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Judged>,
}

impl Judge {
    /// A judge, and where its judgements arrive.
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Judged>) {
        let (done, judged) = mpsc::unbounded_channel();
        (Self { digests: Arc::default(), permits: Arc::new(Semaphore::new(PARALLEL)), done }, judged)
    }

    /// Judges the exec hold `key` under `policy`; the judgement arrives later. Must be
    /// called from within the daemon's runtime.
    pub fn submit(&self, key: HoldKey, event: HoldEvent, restored: bool, policy: Arc<Policy>) {
        let (digests, permits, done) = (self.digests.clone(), self.permits.clone(), self.done.clone());
        tokio::spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else { return };
            let _ = tokio::task::spawn_blocking(move || {
                let (outcome, argv, lease) = judge(&digests, &event, &policy);
                drop(permit);
                let _ = done.send(Judged { key, event, restored, outcome, argv });
                // A fresh file's lease outlives the judgement until its change time settled.
                if let Some(lease) = lease {
                    lease.wait_out();
                }
            })
            .await;
        });
    }
}

type Judgement =
    (Result<(Executable, ExecJudgement), String>, Option<Vec<String>>, Option<crate::hold::identity::Lease>);

/// Identifies and judges the exec of `event` under `policy`. The argv is read only if a
/// rule asks for it or the verdict goes to a person (reading it may wait for the held
/// thread to reach its stop).
fn judge(digests: &Digests, event: &HoldEvent, policy: &Policy) -> Judgement {
    match digests.identify(event) {
        Ok((exe, lease)) => {
            let mut argv = None;
            let judgement = policy.judge_exec(&exe, digests, || {
                argv = context::exec_argv(event);
                argv.clone()
            });
            if judgement.verdict == Verdict::Hold && argv.is_none() {
                argv = context::exec_argv(event);
            }
            (Ok((exe, judgement)), argv, lease)
        }
        Err(why) => (Err(why), context::exec_argv(event), None),
    }
}
