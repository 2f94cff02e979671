//! What `keyturn status` and the metrics show: the mode, agents, pending holds, counters,
//! and the kernel's refusals, each also audited.

use std::{collections::BTreeMap, fmt::Write as _};

use agent_common::counter;
use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse as _,
    routing::get,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{
    Agent, Daemon,
    api::{Ask, Command, ask},
};
use crate::{
    audit::AuditEvent,
    dns::{DnsCounts, Resolver},
    kernel::{EgressHold, mode::Mode},
    state::write_json,
};

/// What `keyturn status` shows.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub mode: Mode,
    pub egress_hold: EgressHold,
    pub agents: Vec<Agent>,
    pub pending: usize,
    pub policies_watched: bool,
    /// `connected` or `unreachable`; none without a console.
    pub console: Option<String>,
    pub counters: Counters,
    /// The kernel's refusals by reason, since its maps were made.
    pub refused: BTreeMap<String, u64>,
    /// keyturn's resolver for tagged cgroups.
    pub dns: DnsCounts,
}

/// What happened to holds, in the kernel and here, since start.
#[derive(Debug, Serialize, Deserialize)]
pub struct Counters {
    pub holds: u64,
    pub released_in_kernel: u64,
    pub denied_in_kernel: u64,
    pub approvals: u64,
    pub denials: u64,
    pub timeouts: u64,
    pub exited_while_held: u64,
    pub auto_released: u64,
    pub orphaned: u64,
    pub rogue_sigconts: u64,
    pub exec_killed: u64,
}

/// The kernel's refusals (each fails the action with EPERM, or kills an exec that can no
/// longer fail), by counter and the reason the audit trail and `status` give.
pub(super) const REFUSALS: [(u32, &str); 8] = [
    (counter::FLOOD_REFUSED, "flood"),
    (counter::RINGBUF_FULL, "ringbuf_full"),
    (counter::SIGNAL_FAILED, "signal_failed"),
    (counter::DAEMON_ABSENT, "daemon_absent"),
    (counter::HOLD_TABLE_REFUSED, "hold_table"),
    (counter::EXEC_KILLED, "exec_killed"),
    (counter::DNS_REFUSED, "dns"),
    (counter::SOCKET_REFUSED, "socket"),
];

/// State file: the refusal (and rogue SIGCONT) counts already in the audit trail.
pub(super) const REFUSALS_AUDITED: &str = "refusals-audited.json";

#[derive(Default)]
pub(super) struct Stats {
    pub(super) approvals: u64,
    pub(super) denials: u64,
    pub(super) timeouts: u64,
    pub(super) exits: u64,
    pub(super) auto_released: u64,
    /// Stops, frozen cells and kernel records no pending hold accounted for.
    pub(super) orphaned: u64,
}

/// Prometheus text format on a loopback port, one response per connection.
/// Serves the metrics, in Prometheus' text format, at `GET /metrics`.
pub(super) async fn serve_metrics(listener: tokio::net::TcpListener, commands: mpsc::Sender<Command>) {
    let metrics = move || async move {
        match ask(&commands, Ask::Metrics).await {
            Ok(serde_json::Value::String(body)) => {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
            }
            _ => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    };
    let app = Router::new().route("/metrics", get(metrics));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "serving metrics");
    }
}

impl Daemon {
    pub(super) fn status(&self) -> Status {
        let counters = self.enforcer.counters().unwrap_or_default();
        let kernel = |index: u32| counters[index as usize];
        Status {
            mode: self.enforcer.mode(),
            egress_hold: self.enforcer.egress_hold(),
            agents: self.agents.values().cloned().collect(),
            pending: self.pending.len(),
            policies_watched: self.policies_watched,
            console: self
                .link
                .as_ref()
                .map(|_| if self.console_connected { "connected" } else { "unreachable" }.into()),
            counters: Counters {
                holds: kernel(counter::HOLDS),
                released_in_kernel: kernel(counter::RELEASED),
                denied_in_kernel: kernel(counter::DENIED),
                approvals: self.stats.approvals,
                denials: self.stats.denials,
                timeouts: self.stats.timeouts,
                exited_while_held: self.stats.exits,
                auto_released: self.stats.auto_released,
                orphaned: self.stats.orphaned,
                rogue_sigconts: kernel(counter::ROGUE_CONTINUE),
                exec_killed: kernel(counter::EXEC_KILLED),
            },
            refused: REFUSALS.iter().map(|&(index, reason)| (reason.to_owned(), kernel(index))).collect(),
            dns: self.resolver.as_ref().map_or_else(
                |why| DnsCounts { listening: format!("off: {why}"), ..DnsCounts::default() },
                Resolver::counts,
            ),
        }
    }

    /// Audits what the kernel refused since the last look, per reason. The kernel only
    /// counts refusals (an event per refusal would let a flood crowd out real holds); the
    /// counters are pinned, so refusals made while no daemon ran are audited at start.
    pub(super) fn audit_refusals(&mut self) {
        let Ok(counters) = self.enforcer.counters() else { return };
        let mut changed = false;
        let counted = REFUSALS.iter().map(|&(index, reason)| (index, Some(reason)));
        // SIGCONTs that were not keyturn's: each held the process again, and only the
        // first at each hold has a record of its own.
        for (index, reason) in counted.chain([(counter::ROGUE_CONTINUE, None)]) {
            let (now, audited) = (counters[index as usize], self.refusals_audited[index as usize]);
            if now != audited {
                // Counters start again from zero when the maps are created anew.
                let count = if now > audited { now - audited } else { now };
                self.record(match reason {
                    Some(reason) => AuditEvent::Refused { reason: reason.into(), count },
                    None => AuditEvent::RogueSigconts { count },
                });
                changed = true;
            }
        }
        if changed {
            self.refusals_audited = counters;
            if let Err(e) = write_json(&self.config.state_dir.join(REFUSALS_AUDITED), &self.refusals_audited)
            {
                tracing::error!(error = %e, "saving the audited refusal counts");
            }
        }
    }

    pub(super) fn metrics(&self) -> String {
        let status = self.status();
        let mut text = format!(
            "keyturn_pending_holds {}\nkeyturn_tagged_cgroups {}\n",
            status.pending,
            status.agents.len()
        );
        // Each counter by its name in `status`.
        if let Ok(serde_json::Value::Object(counters)) = serde_json::to_value(&status.counters) {
            for (name, value) in counters {
                let _ = writeln!(text, "keyturn_{name}_total {value}");
            }
        }
        for (reason, value) in &status.refused {
            let _ = writeln!(text, "keyturn_refused_total{{reason=\"{reason}\"}} {value}");
        }
        if let Ok(serde_json::Value::Object(counts)) = serde_json::to_value(&status.dns) {
            for (name, value) in counts.iter().filter(|(_, value)| value.is_u64()) {
                let _ = writeln!(text, "keyturn_dns_{name}_total {value}");
            }
        }
        text
    }
}
