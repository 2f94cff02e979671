//! Grants: approvals that reach beyond one action (`--for`, `--always`), kept across restarts.

use agent_common::Action;
use serde::{Deserialize, Serialize};

use super::Daemon;
use crate::state::{read_json, write_json};

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
}

impl Grant {
    pub(super) fn covers(&self, root: u64, action: &Action, now: u64) -> bool {
        self.root == root && self.action == *action && self.until.is_none_or(|until| until > now)
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
    pub(super) fn save_grants(&self) {
        if let Err(e) = write_json(&self.config.state_dir.join(GRANTS), &self.grants) {
            tracing::error!(error = %e, "saving approval scopes");
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
    use agent_common::Action;

    use super::*;

    #[test]
    fn a_grant_covers_its_agent_s_same_action_until_it_ends() {
        let action = Action { kind: 2, port: 443, ..Action::default() };
        let other = Action { port: 80, ..action };
        let for_ten_minutes = Grant { root: 5, action, until: Some(1_000 + 600) };
        assert!(for_ten_minutes.covers(5, &action, 1_000));
        assert!(for_ten_minutes.covers(5, &action, 1_599));
        assert!(!for_ten_minutes.covers(5, &action, 1_600), "expired");
        assert!(!for_ten_minutes.covers(6, &action, 1_000), "another agent");
        assert!(!for_ten_minutes.covers(5, &other, 1_000), "another action");
        let always = Grant { root: 5, action, until: None };
        assert!(always.covers(5, &action, u64::MAX));
    }

    #[test]
    fn a_grant_is_kept_as_the_bytes_of_its_action() {
        let grant =
            Grant { root: 5, action: Action { kind: 2, port: 443, ..Action::default() }, until: None };
        let text = serde_json::to_string(&grant).unwrap();
        let back: Grant = serde_json::from_str(&text).unwrap();
        assert_eq!((back.root, back.action, back.until), (5, grant.action, None));
        assert!(serde_json::from_str::<Grant>(&text.replace("\"action\":\"", "\"action\":\"00")).is_err());
    }
}
