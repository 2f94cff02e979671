//! Agents: the cgroups operators tag, who launched each, and who may decide their holds.

use std::{collections::HashMap, ffi::CString, path::PathBuf};

use agent_common::Tag;
use nix::unistd::{Group, Uid, User, getgrouplist};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    Daemon,
    api::{self, Peer, Reply, Target},
};
use crate::{
    audit::AuditEvent,
    cgroup::{self, Hierarchy},
    hold::context,
    kernel::error_chain,
    state::{read_json, write_json},
    systemd::{self, UnitKind},
};

/// A tagged cgroup and who runs in it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agent {
    /// Path relative to the cgroup v2 root.
    pub path: String,
    pub name: String,
    pub policy: String,
    /// Who launched the agent, as the tagging or `keyturn run` request said (empty in a
    /// tag from before requesters were recorded).
    #[serde(default)]
    pub requester: String,
    /// Created by `keyturn run`: removed when it empties.
    pub run: bool,
    /// The systemd unit whose cgroup this is: the tag follows it to every new cgroup
    /// systemd makes for the unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
}

/// Whether `uid` is root or a member of group `group` (its primary group, a member listed
/// with the group, or one whose group list has it).
pub(super) fn is_approver(uid: u32, gid: u32, group: &str) -> bool {
    if uid == 0 {
        return true;
    }
    // Through NSS, as every program on the host sees them: files, LDAP, SSSD, extrausers.
    let Ok(Some(group)) = Group::from_name(group) else { return false };
    if group.gid.as_raw() == gid {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else { return false };
    // Some sources list no members with the group: the user's own group list has them.
    group.mem.contains(&user.name)
        || CString::new(user.name.as_bytes())
            .is_ok_and(|name| getgrouplist(&name, user.gid).is_ok_and(|groups| groups.contains(&group.gid)))
}

/// The requester a tagging request names, checked; else the calling user as `people` names
/// them at the console, or `unix:NAME`.
pub(super) fn requester_or_caller(
    requester: Option<String>,
    peer: Peer,
    people: &HashMap<String, String>,
) -> Result<String, String> {
    if let Some(requester) = requester {
        return api::check_requester(&requester).map(|()| requester);
    }
    let user = context::user_name(peer.uid);
    Ok(people.get(&user).cloned().unwrap_or_else(|| format!("unix:{user}")))
}

/// Whether the cgroup at `path` (or a descendant) still has processes.
pub(super) fn populated(hierarchy: &Hierarchy, path: &str) -> bool {
    let Ok(dir) = hierarchy.dir(path) else { return false };
    std::fs::read_to_string(dir.join("cgroup.events"))
        .is_ok_and(|events| !events.lines().any(|l| l == "populated 0"))
}

impl Daemon {
    pub(super) fn save_tags(&self) {
        let agents: Vec<&Agent> = self.agents.values().chain(&self.waiting).collect();
        if let Err(e) = write_json(&self.config.state_dir.join("tags.json"), &agents) {
            tracing::error!(error = %e, "saving tags");
        }
    }

    pub(super) fn restore_tags(&mut self) -> anyhow::Result<()> {
        let agents: Vec<Agent> = read_json(&self.config.state_dir.join("tags.json"))?;
        for agent in agents {
            match self.apply_tag(agent.clone()) {
                Ok(_) => {}
                // Its cgroup comes back when systemd starts the unit.
                Err(_) if agent.unit.is_some() => self.waiting.push(agent),
                Err(e) => self.record(AuditEvent::TagLost { cgroup: agent.path, error: e }),
            }
        }
        self.save_tags();
        Ok(())
    }

    pub(super) fn apply_tag(&mut self, agent: Agent) -> Result<u64, String> {
        if !self.policies.contains_key(&agent.policy) {
            return Err(format!("no policy named {:?}", agent.policy));
        }
        let dir = self.hierarchy.dir(&agent.path).map_err(|e| e.to_string())?;
        if agent.unit.is_some() && !dir.is_dir() {
            // Made before systemd makes it, which then uses it as it is: the unit's first
            // process starts tagged, whatever runs before keyturn's drop-in.
            std::fs::create_dir_all(&dir).map_err(|e| format!("making the cgroup {}: {e}", dir.display()))?;
        }
        if !dir.is_dir() {
            return Err(format!("no cgroup at {}", dir.display()));
        }
        let tag = Tag { policy: self.policy_id(&agent.policy), max_pending: self.config.max_pending };
        let id = self.enforcer.tag(&dir, tag).map_err(|e| error_chain(&e))?;
        // Tagged anew: the names it resolved were judged by its former policy.
        if self.agents.insert(id, agent).is_some()
            && let Ok(resolver) = &self.resolver
        {
            resolver.forget(id);
        }
        Ok(id)
    }

    /// The agent a process runs under, if any: its cgroup or an ancestor is tagged.
    pub(super) fn agent_of_process(&self, pid: u32) -> Option<&Agent> {
        self.agent_of_cgroup(self.hierarchy.of_process(pid).ok()?)
    }

    /// The agent the cgroup at `dir` belongs to, if any: it or an ancestor is tagged.
    fn agent_of_cgroup(&self, mut dir: PathBuf) -> Option<&Agent> {
        loop {
            if let Ok(id) = cgroup::id(&dir)
                && let Some(agent) = self.agents.get(&id)
            {
                return Some(agent);
            }
            if dir == self.hierarchy.root() || !dir.pop() {
                return None;
            }
        }
    }

    /// Refuses callers who must not decide: agents, and anyone not an approver.
    pub(super) fn check_approver(&self, peer: Peer) -> Result<(), String> {
        // Fail closed: an agent could connect from a child that then exits, and send the
        // request itself.
        let cgroup = self.hierarchy.of_process(peer.pid).map_err(|_| {
            format!(
                "refused: the process that connected (pid {}) is gone, so where it ran cannot be checked",
                peer.pid
            )
        })?;
        if let Some(agent) = self.agent_of_cgroup(cgroup) {
            return Err(format!(
                "refused: the caller runs inside the tagged cgroup of agent {:?}; an agent cannot decide its own holds",
                agent.name
            ));
        }
        if !is_approver(peer.uid, peer.gid, &self.config.approver_group) {
            return Err(format!(
                "permission denied: uid {} is neither root nor in group {:?}",
                peer.uid, self.config.approver_group
            ));
        }
        Ok(())
    }

    pub(super) fn tag(
        &mut self,
        target: Target,
        policy: String,
        name: Option<String>,
        requester: String,
        run: bool,
        peer: Peer,
    ) -> Reply {
        let (path, unit) = match target {
            Target::Path(path) => (path.trim_start_matches('/').to_owned(), None),
            Target::Unit(unit) => {
                let unit = systemd::control_group(&unit)?;
                (unit.cgroup, Some(unit.id))
            }
        };
        if path.is_empty() {
            return Err("refused: the cgroup v2 root holds every process on this host, approvers and \
                        keyturn included; tag the cgroup an agent runs in"
                .into());
        }
        let dir = self.hierarchy.dir(&path).map_err(|e| e.to_string())?;
        for (who, pid) in [("keyturn itself", std::process::id()), ("the caller", peer.pid)] {
            if self.hierarchy.of_process(pid).is_ok_and(|cgroup| cgroup.starts_with(&dir)) {
                return Err(format!("refused: {path} holds {who}; tag the cgroup an agent runs in"));
            }
        }
        let name = name.unwrap_or_else(|| match &unit {
            Some(unit) => unit.rsplit_once('.').map_or(unit.as_str(), |(name, _)| name).to_owned(),
            None => path.rsplit('/').next().unwrap_or(&path).to_owned(),
        });
        // Approvers read the name in `keyturn pending`: it must print as itself.
        if context::printable(name.as_bytes()) != name {
            return Err(format!("agent name {name:?} has control or invisible characters"));
        }
        let agent = Agent { path, name, policy, requester, run, unit };
        let id = match self.apply_tag(agent.clone()) {
            Ok(id) => Some(id),
            Err(_)
                if agent.unit.is_some() && !self.hierarchy.dir(&agent.path).is_ok_and(|dir| dir.is_dir()) =>
            {
                // Not running: tagged when systemd makes its cgroup.
                if !self.policies.contains_key(&agent.policy) {
                    return Err(format!("no policy named {:?}", agent.policy));
                }
                self.waiting.retain(|waiting| waiting.unit != agent.unit);
                self.waiting.push(agent.clone());
                None
            }
            Err(e) => return Err(e),
        };
        if let Some(unit) = &agent.unit
            && systemd::unit_kind(unit) == Ok(UnitKind::Service)
            && let Err(e) = systemd::install_drop_in(unit)
        {
            let _ = self.untag(&Target::Unit(unit.clone()));
            return Err(format!("{unit} stays untagged: {e}"));
        }
        self.record(AuditEvent::Tag {
            cgroup: agent.path.clone(),
            agent: agent.name.clone(),
            policy: agent.policy.clone(),
            requester: agent.requester.clone(),
            cgroup_id: id.unwrap_or(0),
            unit: agent.unit.clone(),
        });
        self.save_tags();
        Ok(json!({"cgroup": agent.path, "cgroup_id": id, "agent": agent.name, "policy": agent.policy,
            "requester": agent.requester, "unit": agent.unit}))
    }

    pub(super) fn untag(&mut self, target: &Target) -> Reply {
        let found = match target {
            Target::Path(path) => {
                let dir = self.hierarchy.dir(path).map_err(|e| e.to_string())?;
                self.agents
                    .iter()
                    .find(|(_, a)| a.path == path.trim_start_matches('/'))
                    .map(|(&id, _)| id)
                    .or_else(|| cgroup::id(&dir).ok().filter(|id| self.agents.contains_key(id)))
            }
            Target::Unit(unit) => {
                self.agents.iter().find(|(_, a)| a.unit.as_ref() == Some(unit)).map(|(&id, _)| id)
            }
        };
        let agent = if let Some(id) = found {
            self.enforcer.untag(id).map_err(|e| error_chain(&e))?;
            if let Ok(resolver) = &self.resolver {
                resolver.forget(id);
            }
            self.grants.retain(|g| g.root != id);
            self.save_grants();
            self.agents.remove(&id).expect("present")
        } else {
            let Target::Unit(unit) = target else { return Err(format!("{target:?} is not tagged")) };
            let at = self.waiting.iter().position(|a| a.unit.as_ref() == Some(unit));
            self.waiting.remove(at.ok_or_else(|| format!("{unit} is not tagged"))?)
        };
        self.record(AuditEvent::Untag { cgroup: agent.path.clone(), agent: agent.name.clone() });
        self.save_tags();
        if let Some(unit) = &agent.unit {
            systemd::remove_drop_in(unit)?;
        }
        Ok(json!({"cgroup": agent.path, "untagged": true, "unit": agent.unit}))
    }

    /// Keeps the tags of systemd units on the cgroup at their path: when systemd removes a
    /// stopped unit's cgroup, keyturn makes it again at once and tags it, so that the
    /// unit's next start finds it tagged (unless it starts within that tick, which its
    /// drop-in covers). A tag that cannot be applied waits and is tried on every tick.
    pub(super) fn follow_units(&mut self) {
        let moved: Vec<(u64, Agent)> = self
            .agents
            .iter()
            .filter(|&(&id, agent)| agent.unit.is_some() && self.current_id(&agent.path) != Some(id))
            .map(|(&id, agent)| (id, agent.clone()))
            .collect();
        if moved.is_empty() && self.waiting.is_empty() {
            return;
        }
        let mut changed = !moved.is_empty();
        let mut agents = std::mem::take(&mut self.waiting);
        // Approvals for a while (`--for`) are the unit's and go with it; those for the life
        // of its cgroup (`--always`) end with that cgroup.
        let mut carried = Vec::new();
        for (old, agent) in moved {
            let _ = self
                .enforcer
                .untag(old)
                .inspect_err(|e| tracing::warn!(error = %e, "untagging a gone cgroup"));
            self.agents.remove(&old);
            let (theirs, others) = std::mem::take(&mut self.grants).into_iter().partition(|g| g.root == old);
            self.grants = others;
            carried.extend(theirs.into_iter().filter(|g| g.until.is_some()).map(|g| (agent.unit.clone(), g)));
            agents.push(agent);
        }
        for agent in agents {
            match self.apply_tag(agent.clone()) {
                Ok(id) => {
                    changed = true;
                    for (_, mut grant) in carried.extract_if(.., |(unit, _)| *unit == agent.unit) {
                        grant.root = id;
                        self.grants.push(grant);
                    }
                    tracing::info!(unit = agent.unit.as_deref(), agent = %agent.name, cgroup = %agent.path, cgroup_id = id,
                        "tag follows its unit to a new cgroup");
                    self.record(AuditEvent::TagFollowed {
                        unit: agent.unit.clone().unwrap_or_default(),
                        agent: agent.name.clone(),
                        cgroup: agent.path.clone(),
                        cgroup_id: id,
                    });
                }
                Err(_) => self.waiting.push(agent),
            }
        }
        if changed {
            self.save_grants();
            self.save_tags();
        }
    }

    /// The id of the cgroup now at `path`, if there is one.
    fn current_id(&self, path: &str) -> Option<u64> {
        cgroup::id(&self.hierarchy.dir(path).ok()?).ok()
    }

    /// The drop-in of a tagged service, as root, from inside the service's new cgroup:
    /// nothing of the service runs until this has tagged it (an error stops the start).
    pub(super) fn unit_starting(&mut self, unit: &str, peer: Peer) -> Reply {
        // Root only, and wherever it runs: at worst it tags the cgroup it is already in.
        if peer.uid != 0 {
            return Err(format!("permission denied: uid {} is not root", peer.uid));
        }
        let path = systemd::control_group(unit)?.cgroup;
        let tagged = |agent: &Agent| agent.unit.as_deref() == Some(unit);
        if !self.agents.values().chain(&self.waiting).any(tagged) {
            return Err(format!("{unit} is not tagged: keyturn untag --unit {unit} left its drop-in?"));
        }
        for agent in self.agents.values_mut().chain(&mut self.waiting).filter(|a| tagged(a)) {
            agent.path.clone_from(&path);
        }
        self.follow_units();
        match self.agents.iter().find(|(_, agent)| tagged(agent)) {
            Some((id, agent)) => Ok(json!({"unit": unit, "cgroup": agent.path, "cgroup_id": id})),
            None => Err(format!("{unit}: no cgroup at {path} to tag")),
        }
    }

    /// `keyturn run`: a new cgroup under `keyturn.run/`, tagged, with the caller's child in it.
    pub(super) fn run_agent(
        &mut self,
        pid: u32,
        policy: String,
        name: Option<String>,
        requester: String,
        peer: Peer,
    ) -> Reply {
        if let Some(agent) = self.agent_of_process(peer.pid) {
            return Err(format!("refused: the caller already runs under keyturn as agent {:?}", agent.name));
        }
        if crate::hold::procfs::stat(pid).map(|stat| stat.ppid) != Some(peer.pid) {
            return Err(format!("refused: process {pid} is not a child of the caller"));
        }
        if !self.policies.contains_key(&policy) {
            return Err(format!("no policy named {policy:?}"));
        }
        self.run_serial += 1;
        let name = name.unwrap_or_else(|| format!("run-{pid}"));
        let safe: String =
            name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = format!("keyturn.run/{safe}-{}-{}", std::process::id(), self.run_serial);
        let dir = self.hierarchy.dir(&path).map_err(|e| e.to_string())?;
        cgroup::create(dir.parent().expect("has parent")).map_err(|e| e.to_string())?;
        cgroup::create(&dir).map_err(|e| e.to_string())?;
        let reply = self.tag(Target::Path(path), policy, Some(name), requester, true, peer)?;
        cgroup::move_process(&dir, pid).map_err(|e| e.to_string())?;
        Ok(reply)
    }
}
