//! One-time sign-in links to the embedded console: one for the daemon's own user at start,
//! and one for each operator who asks (`keyturn console login`).

use std::collections::HashMap;

use console::people::LOGIN_LIFETIME;
use nix::unistd::{getgid, getuid};

use super::{
    Daemon,
    agents::requester_or_caller,
    api::{self, Peer, Reply, SignInLink},
};
use crate::console_link::embedded::SignInLinks;

impl Daemon {
    /// The owner task's part of [`api::Request::ConsoleLogin`]: refuses agents and anyone
    /// not an approver, and names the operator as the console knows them (as it names
    /// requesters).
    pub(super) fn sign_in_operator(&self, peer: Peer) -> Reply {
        self.check_approver(peer)?;
        if let Some(console) = &self.config.console {
            return Err(format!(
                "this host's holds go to the console at {}, not to an embedded one: sign in there",
                console.endpoint
            ));
        }
        if !self.config.embedded_console {
            return Err("this daemon runs no console (embedded_console = false in keyturn.toml)".into());
        }
        api::reply(requester_or_caller(None, peer, &self.config.people)?)
    }
}

/// The rest of [`api::Request::ConsoleLogin`], off the owner's loop: a link for the
/// operator the owner task named (`operator`, its reply).
pub(super) async fn sign_in_link_for(operator: Reply, sign_in: Option<&SignInLinks>) -> Reply {
    let person: String =
        serde_json::from_value(operator?).map_err(|e| format!("the operator's name: {e}"))?;
    let sign_in = sign_in.ok_or("the embedded console did not start; the daemon's log says why")?;
    let url = sign_in.issue(&person).await.map_err(|e| e.to_string())?;
    api::reply(SignInLink { url, person, valid_secs: LOGIN_LIFETIME.as_secs() })
}

/// Logs, once at start, a link for the user the daemon runs as: the operator who started it
/// in a terminal signs in with it. The link's secret is in this one record only, and never
/// in the journal, which others (groups `adm`, `systemd-journal`) may read: there the
/// operator asks for one.
pub(super) async fn announce(sign_in: &SignInLinks, people: &HashMap<String, String>) {
    if crate::logging::to_journal() {
        tracing::info!("embedded console: `keyturn console login` prints a sign-in link");
        return;
    }
    let own = Peer { uid: getuid().as_raw(), gid: getgid().as_raw(), pid: std::process::id() };
    let issued = async {
        let person = requester_or_caller(None, own, people)?;
        let url = sign_in.issue(&person).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((person, url))
    }
    .await;
    // The link is in the message, which is what `journalctl -u keyturn` shows of a record.
    match issued {
        Ok((person, url)) => tracing::info!(
            %person,
            "embedded console: sign in as an admin with {url} (once, within {} minutes; \
             `keyturn console login` prints a new link)",
            LOGIN_LIFETIME.as_secs() / 60
        ),
        Err(error) => tracing::warn!(%error, "embedded console: no sign-in link"),
    }
}
