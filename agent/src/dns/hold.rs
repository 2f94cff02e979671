//! Lookups the policy holds: one pending hold per agent and name, raised by the daemon
//! (which lists it and stops the sender); every query for that name (A and AAAA, retries)
//! waits for its one decision, and the sender goes on once the last of them is answered.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use agent_common::DnsSender;
use tokio::sync::{mpsc, oneshot, watch};

use super::name::Name;
use crate::{hold::process::LookupProcess, policy::Asks};

/// Queries that may wait on one held lookup, and on all of one agent's; more are refused
/// at once. Each waits in a task of its own, holding none of the resolver's shared slots.
const QUERIES_PER_HOLD: usize = 16;
const QUERIES_PER_AGENT: usize = 64;

/// A lookup the policy holds, for the daemon to list, decide and answer on `decided`.
#[derive(Debug)]
pub struct LookupHold {
    pub sender: DnsSender,
    pub name: Name,
    /// The rule that holds it, as an approver reads it, what approving it asks, and whom
    /// it is told of directly.
    pub rule: String,
    pub asks: Asks,
    pub notify: Vec<String>,
    pub decided: oneshot::Sender<LookupDecision>,
}

/// The daemon's decision on a held lookup.
#[derive(Debug)]
pub struct LookupDecision {
    /// What the approval of it asked (its hold's); `None`: refused (denied, timed out, closed).
    pub approved: Option<Asks>,
    /// The sender, stopped while its lookup waited: resumed once every query waiting on the
    /// lookup is answered. `None` when it was not stopped, or was killed.
    pub process: Option<LookupProcess>,
}

/// What every query waiting on a held lookup learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Approved(Asks),
    Refused,
}

/// A query that waited on the held lookup of `name` by the agent under `root`: once its
/// answer is sent, [`HeldLookups::answered`].
#[derive(Debug)]
pub struct Waited {
    root: u64,
    name: Name,
}

struct Waiting {
    outcome: watch::Receiver<Option<Outcome>>,
    /// Queries waiting on it whose answer was not sent yet.
    queries: usize,
    process: Option<LookupProcess>,
}

/// The held lookups, by agent and name.
#[derive(Default)]
pub struct HeldLookups {
    held: Mutex<HashMap<(u64, Name), Waiting>>,
}

impl HeldLookups {
    /// Waits for the decision on `name`, looked up by `sender`, which `rule` holds asking
    /// `asks` (telling `notify`): joins the agent's hold of the name if it has one, else asks `raise`
    /// for one. `None`: refused at once, as the agent already has `max_pending` lookups
    /// held, or it or this one has as many queries waiting as it may.
    pub async fn decide(
        &self,
        raise: &mpsc::Sender<LookupHold>,
        sender: DnsSender,
        name: &Name,
        (rule, asks, notify): (String, Asks, Vec<String>),
        max_pending: usize,
    ) -> Option<(Outcome, Waited)> {
        let key = (sender.root, name.clone());
        let (mut outcome, publish) = {
            let mut held = self.lock();
            let agent_s = held.iter().filter(|((root, _), _)| *root == sender.root);
            if agent_s.map(|(_, waiting)| waiting.queries).sum::<usize>() >= QUERIES_PER_AGENT {
                return None;
            }
            if let Some(waiting) = held.get_mut(&key) {
                if waiting.queries >= QUERIES_PER_HOLD {
                    return None;
                }
                waiting.queries += 1;
                (waiting.outcome.clone(), None)
            } else {
                if held.keys().filter(|(root, _)| *root == sender.root).count() >= max_pending {
                    return None;
                }
                let (publish, outcome) = watch::channel(None);
                held.insert(key.clone(), Waiting { outcome: outcome.clone(), queries: 1, process: None });
                (outcome, Some(publish))
            }
        };
        if let Some(publish) = publish {
            let (decided, decision) = oneshot::channel();
            let hold = LookupHold { sender, name: name.clone(), rule, asks, notify, decided };
            // A daemon that cannot take it, or drops it undecided, refuses it.
            let decision = match raise.send(hold).await {
                Ok(()) => decision.await.ok(),
                Err(_) => None,
            };
            let (outcome, process) = decision.map_or((Outcome::Refused, None), |decision| {
                let outcome = decision.approved.map_or(Outcome::Refused, Outcome::Approved);
                (outcome, decision.process)
            });
            if let Some(waiting) = self.lock().get_mut(&key) {
                waiting.process = process;
            }
            publish.send_replace(Some(outcome));
        }
        let decided = outcome.wait_for(Option::is_some).await.ok().and_then(|outcome| *outcome);
        Some((decided.unwrap_or(Outcome::Refused), Waited { root: key.0, name: key.1 }))
    }

    /// The answer of a query that `waited` was sent: once the last is, the lookup's hold
    /// ends and its sender is resumed (`forget_stop` forgets keyturn's stop of it first).
    pub fn answered(&self, waited: Waited, forget_stop: impl FnOnce(u32)) {
        let process = {
            let mut held = self.lock();
            let key = (waited.root, waited.name);
            let Some(waiting) = held.get_mut(&key) else { return };
            waiting.queries -= 1;
            if waiting.queries > 0 {
                return;
            }
            held.remove(&key).and_then(|waiting| waiting.process)
        };
        if let Some(process) = process {
            let pid = process.pid();
            if let Err(e) = process.resume(forget_stop) {
                tracing::warn!(pid, error = %e, "DNS: resuming the process of a held lookup");
            }
        }
    }

    /// The processes stopped for lookups that were decided and are being answered: the
    /// orphan sweep counts them as held.
    pub fn answering(&self) -> Vec<u32> {
        self.lock().values().filter_map(|waiting| waiting.process.as_ref().map(LookupProcess::pid)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, Name), Waiting>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn sender(root: u64) -> DnsSender {
        DnsSender { root, tgid: 1, tid: 1, ..DnsSender::default() }
    }

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap()
    }

    #[tokio::test]
    async fn the_queries_of_one_name_wait_on_one_hold_and_learn_its_decision() {
        let lookups = Arc::new(HeldLookups::default());
        let (raise, mut raised) = mpsc::channel(4);
        let ask = |root| {
            let (lookups, raise) = (lookups.clone(), raise.clone());
            tokio::spawn(async move {
                lookups
                    .decide(&raise, sender(root), &name("a.example"), ("rule".into(), Asks::ONE, vec![]), 1)
                    .await
            })
        };
        let (a, aaaa) = (ask(5), ask(5));
        let hold = raised.recv().await.expect("one hold");
        while lookups.lock().get(&(5, name("a.example"))).map(|waiting| waiting.queries) != Some(2) {
            tokio::task::yield_now().await;
        }
        assert_eq!((hold.sender.root, hold.name.to_string()), (5, "a.example".to_owned()));
        // The agent's second held name is one too many; another agent's is its own.
        let other = lookups
            .decide(&raise, sender(5), &name("b.example"), ("rule".into(), Asks::ONE, vec![]), 1)
            .await;
        assert!(other.is_none(), "over the agent's pending holds");
        let elsewhere = ask(6);
        let their_hold = raised.recv().await.expect("another agent's hold");
        assert_eq!(their_hold.sender.root, 6);
        let two = Asks { quorum: 2, in_console: false };
        hold.decided.send(LookupDecision { approved: Some(two), process: None }).unwrap();
        for query in [a, aaaa] {
            let (outcome, waited) = query.await.unwrap().expect("decided");
            assert_eq!(outcome, Outcome::Approved(two));
            lookups.answered(waited, |_| unreachable!("nothing was stopped"));
        }
        assert!(raised.try_recv().is_err(), "one hold for both queries");
        drop(their_hold);
        let (outcome, _) = elsewhere.await.unwrap().expect("decided");
        assert_eq!(outcome, Outcome::Refused, "a hold dropped undecided is refused");
        assert!(lookups.lock().get(&(5, name("a.example"))).is_none(), "ended once every query was answered");
    }
}
