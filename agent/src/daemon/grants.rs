//! Grants: approvals that reach beyond one action (`--for`, `--always`), kept across restarts.

use agent_common::{Action, kind};
use serde::{Deserialize, Serialize};

use super::Daemon;
use crate::{
    dns::{NameGrant, Reach, name::Name},
    policy::Asks,
    state::{read_json, write_json},
};

/// State file: approval scopes beyond one action.
pub(super) const GRANTS: &str = "grants.json";

/// An approval that reaches beyond one action. Kept in the state directory: a restart
/// must not forget an approval "for the life of the agent's cgroup".
#[derive(Serialize, Deserialize)]
pub(super) struct Grant {
    pub(super) root: u64,
    #[serde(with = "action_bytes")]
    pub(super) action: Action,
    /// Unix seconds when it ends; `None`: when the agent's cgroup goes.
    pub(super) until: Option<u64>,
    /// The name the approver saw: for an egress action's address, the grant then covers
    /// every address the agent resolves the name to, on the action's port and protocol; for
    /// a lookup, the name's lookups and its addresses on every port the policy would hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<Name>,
    /// How many people approved the hold: the grant covers only actions the policy holds
    /// for no more (1 in grants kept before quorums were).
    #[serde(default = "one")]
    pub(super) quorum: u32,
    /// Whether its hold was decided in the console only: only then does it cover actions a
    /// rule says `approve_in = "console"` of (false in grants kept before egress rules could).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) in_console: bool,
}

fn one() -> u32 {
    1
}

impl Grant {
    /// Whether it covers `action` of the agent under `root`, whose destination the agent
    /// resolved from `name` (or the lookup of `name`), which the policy holds asking `asks`,
    /// at Unix time `now`. Any approval of a name approves looking it up.
    pub(super) fn covers(
        &self,
        root: u64,
        action: &Action,
        name: Option<&Name>,
        asks: Asks,
        now: u64,
    ) -> bool {
        let same_service = || {
            self.name.is_some()
                && self.name.as_ref() == name
                && match (self.action.kind, action.kind) {
                    (kind::LOOKUP, kind::EGRESS | kind::LOOKUP) | (kind::EGRESS, kind::LOOKUP) => true,
                    _ => {
                        (action.kind, action.protocol, action.port)
                            == (self.action.kind, self.action.protocol, self.action.port)
                    }
                }
        };
        self.root == root
            && self.until.is_none_or(|until| until > now)
            && asks.met_by(self.asks())
            && (self.action == *action || same_service())
    }

    /// What its hold asked.
    fn asks(&self) -> Asks {
        Asks { quorum: self.quorum, in_console: self.in_console }
    }

    /// What the resolver lets through for it, if it approves a name.
    fn name_grant(&self) -> Option<NameGrant> {
        let reach = match self.action.kind {
            kind::LOOKUP => Reach::Name,
            kind::EGRESS => {
                Reach::Port { protocol: self.action.protocol, port: u16::try_from(self.action.port).ok()? }
            }
            _ => return None,
        };
        Some(NameGrant {
            root: self.root,
            name: self.name.clone()?,
            reach,
            // An end past what the clock can hold is no end.
            until: self
                .until
                .and_then(|secs| std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))),
            asks: self.asks(),
        })
    }
}

/// An [`Action`] as the hex of its bytes (it is plain data: every byte pattern is valid).
mod action_bytes {
    use agent_common::Action;
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(action: &Action, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytemuck::bytes_of(action)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Action, D::Error> {
        let bytes = hex::decode(String::deserialize(deserializer)?).map_err(D::Error::custom)?;
        bytemuck::try_pod_read_unaligned(&bytes).map_err(|_| D::Error::custom("not an action"))
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Daemon {
    /// Keeps the grants across restarts, and gives the resolver the names they approve
    /// (called after every change).
    pub(super) fn save_grants(&self) {
        if let Err(e) = write_json(&self.config.state_dir.join(GRANTS), &self.grants) {
            tracing::error!(error = %e, "saving approval scopes");
        }
        self.share_name_grants();
    }

    /// Gives the resolver the names the grants approve: it lets their addresses through in
    /// the kernel.
    pub(super) fn share_name_grants(&self) {
        if let Ok(resolver) = &self.resolver {
            resolver.grant_names(self.grants.iter().filter_map(Grant::name_grant).collect());
        }
    }

    /// Approval scopes a previous daemon gave, for agents still tagged and not expired.
    pub(super) fn restore_grants(&mut self) -> anyhow::Result<()> {
        let grants: Vec<Grant> = read_json(&self.config.state_dir.join(GRANTS))?;
        let now = unix_now();
        self.grants = grants
            .into_iter()
            .filter(|g| self.agents.contains_key(&g.root) && g.until.is_none_or(|until| until > now))
            .collect();
        self.save_grants();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use agent_common::{Action, protocol};

    use super::*;

    const ONE: Asks = Asks::ONE;
    const TWO: Asks = Asks { quorum: 2, in_console: false };

    /// Agent 5's `--always` approval of `action`, shown with `name`, by one person anywhere.
    fn always(action: Action, name: &Name) -> Grant {
        Grant { root: 5, action, until: None, name: Some(name.clone()), quorum: 1, in_console: false }
    }

    #[test]
    fn a_grant_covers_its_agent_s_same_action_until_it_ends() {
        let action = Action { kind: 2, port: 443, ..Action::default() };
        let other = Action { port: 80, ..action };
        let for_ten_minutes =
            Grant { root: 5, action, until: Some(1_000 + 600), name: None, quorum: 1, in_console: false };
        assert!(for_ten_minutes.covers(5, &action, None, ONE, 1_000));
        assert!(for_ten_minutes.covers(5, &action, None, ONE, 1_599));
        assert!(!for_ten_minutes.covers(5, &action, None, ONE, 1_600), "expired");
        assert!(!for_ten_minutes.covers(6, &action, None, ONE, 1_000), "another agent");
        assert!(!for_ten_minutes.covers(5, &other, None, ONE, 1_000), "another action");
        assert!(!for_ten_minutes.covers(5, &action, None, TWO, 1_000), "the policy now asks two people");
        let always = Grant { root: 5, action, until: None, name: None, quorum: 1, in_console: false };
        assert!(always.covers(5, &action, None, ONE, u64::MAX));
    }

    #[test]
    fn a_grant_of_a_name_covers_its_other_addresses_on_the_same_port() {
        let name = Name::parse("api.example.com").unwrap();
        let action = Action {
            kind: kind::EGRESS,
            protocol: protocol::TCP,
            port: 443,
            addr: [1; 16],
            ..Action::default()
        };
        let grant =
            Grant { root: 5, action, until: None, name: Some(name.clone()), quorum: 1, in_console: false };
        let elsewhere = Action { addr: [2; 16], ..action };
        let covers = |action: &Action, name: Option<&Name>, quorum| grant.covers(5, action, name, quorum, 0);
        assert!(covers(&elsewhere, Some(&name), ONE));
        assert!(!covers(&elsewhere, Some(&name), TWO), "where the policy asks two people");
        assert!(!covers(&elsewhere, None, ONE), "an address not resolved from the name");
        assert!(!covers(&elsewhere, Some(&Name::parse("example.com").unwrap()), ONE), "another name");
        assert!(!covers(&Action { port: 80, ..elsewhere }, Some(&name), ONE), "another port");
        assert!(
            !covers(&Action { protocol: protocol::UDP, ..elsewhere }, Some(&name), ONE),
            "another protocol"
        );
        assert!(!grant.covers(6, &elsewhere, Some(&name), ONE, 0), "another agent");
        let shared = grant.name_grant().unwrap();
        let reach = Reach::Port { protocol: protocol::TCP, port: 443 };
        assert_eq!(
            (shared.root, shared.name, shared.reach, shared.until, shared.asks),
            (5, name, reach, None, ONE)
        );
        let endless = Grant { until: Some(u64::MAX), ..grant };
        assert_eq!(endless.name_grant().unwrap().until, None, "an end past the clock's is none");
        let exec = Grant { action: Action { kind: kind::EXEC, ..action }, ..endless };
        assert!(exec.name_grant().is_none(), "only egress approves a name");
    }

    #[test]
    fn a_grant_of_a_lookup_covers_the_name_s_lookups_and_its_addresses_on_every_port() {
        let name = Name::parse("api.example.com").unwrap();
        let lookup = Action { kind: kind::LOOKUP, ..Action::default() };
        let grant = always(lookup, &name);
        let connect = Action {
            kind: kind::EGRESS,
            protocol: protocol::UDP,
            port: 8443,
            addr: [1; 16],
            ..Action::default()
        };
        assert!(grant.covers(5, &lookup, Some(&name), ONE, 0));
        assert!(grant.covers(5, &connect, Some(&name), ONE, 0));
        assert!(!grant.covers(5, &connect, None, ONE, 0), "an address not resolved from the name");
        assert!(!grant.covers(5, &connect, Some(&name), TWO, 0), "where the policy asks two people");
        let exec = Action { kind: kind::EXEC, ..Action::default() };
        assert!(!grant.covers(5, &exec, Some(&name), ONE, 0));
        assert_eq!(grant.name_grant().unwrap().reach, Reach::Name);
        let on_443 = Grant {
            action: Action { kind: kind::EGRESS, protocol: protocol::TCP, port: 443, ..connect },
            ..grant
        };
        assert!(
            on_443.covers(5, &lookup, Some(&name), ONE, 0),
            "a port's approval lets the name be looked up"
        );
    }

    #[test]
    fn only_a_grant_of_a_console_only_hold_covers_what_a_rule_keeps_to_the_console() {
        let name = Name::parse("api.example.com").unwrap();
        let lookup = Action { kind: kind::LOOKUP, ..Action::default() };
        let connect = Action { kind: kind::EGRESS, protocol: protocol::TCP, port: 8443, ..Action::default() };
        let chat = always(lookup, &name);
        let console = Grant { in_console: true, ..always(lookup, &name) };
        let in_console = Asks { in_console: true, ..ONE };
        assert!(chat.covers(5, &connect, Some(&name), ONE, 0));
        assert!(
            !chat.covers(5, &connect, Some(&name), in_console, 0),
            "a port the rule keeps to the console"
        );
        assert!(!chat.covers(5, &lookup, Some(&name), in_console, 0));
        assert!(console.covers(5, &connect, Some(&name), in_console, 0));
        assert!(console.covers(5, &connect, Some(&name), ONE, 0));
        assert_eq!(
            console.name_grant().unwrap().asks,
            in_console,
            "and so does what the resolver lets through"
        );
        let text = serde_json::to_string(&console).unwrap();
        assert!(serde_json::from_str::<Grant>(&text).unwrap().in_console, "{text}");
        assert!(!serde_json::to_string(&chat).unwrap().contains("in_console"));
    }

    #[test]
    fn a_grant_is_kept_as_the_bytes_of_its_action() {
        let name = Some(Name::parse("api.example.com").unwrap());
        let action = Action { kind: 2, port: 443, ..Action::default() };
        let grant = Grant { root: 5, action, until: None, name, quorum: 2, in_console: false };
        let text = serde_json::to_string(&grant).unwrap();
        let back: Grant = serde_json::from_str(&text).unwrap();
        assert_eq!((back.root, back.action, back.until, back.quorum), (5, grant.action, None, 2));
        assert_eq!(back.name, grant.name);
        assert!(serde_json::from_str::<Grant>(&text.replace("\"action\":\"", "\"action\":\"00")).is_err());
        let bad_name = text.replace("api.example.com", "bad..name");
        assert!(serde_json::from_str::<Grant>(&bad_name).is_err(), "a name is checked as it is read");
        let before_names = r#"{"root":5,"action":"HEX","until":null}"#
            .replace("HEX", &hex::encode(bytemuck::bytes_of(&grant.action)));
        let old = serde_json::from_str::<Grant>(&before_names).unwrap();
        assert_eq!((old.asks(), old.name), (ONE, None), "a grant kept before approve_in is a chat one");
    }
}
