//! Names approved beyond one action: a held lookup approved (for its answer's TTL, or
//! `--for`, `--always`), or `--for`/`--always` on a connection held with a name. The
//! service, not one of its addresses, is let through by the kernel.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use agent_common::{EgressRule, PortRule, capacity, protocol, verdict};

use super::name::Name;
use crate::policy::Asks;

/// An approval of `name` for the agent under `root`: the agent may look the name up, and
/// every address it resolves the name to is let through where `reach` says, until `until`
/// (`None`: while the agent is tagged), where the policy would hold the connection asking
/// no more than `asks` (the approved hold's: a chat approval never opens a console-only port).
#[derive(Clone, Debug)]
pub struct NameGrant {
    pub root: u64,
    pub name: Name,
    pub reach: Reach,
    pub until: Option<SystemTime>,
    pub asks: Asks,
}

/// Where an approved name's addresses are let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// Every port the policy would hold: the lookup itself was approved.
    Name,
    /// One port over TCP or UDP: a connection held with the name was approved.
    Port { protocol: u32, port: u16 },
}

/// Whether `grants` let the agent under `root` look `name` up at `now`, where the policy
/// holds the lookup asking `asks`: any approval of the name that asked as much does.
pub fn approved(grants: &[NameGrant], root: u64, name: &Name, asks: Asks, now: SystemTime) -> bool {
    grants.iter().any(|grant| grant.covers(root, name, now) && asks.met_by(grant.asks))
}

/// The approval of `name`'s lookup by the most people (made in the console, of two as
/// many) among `grants`, if any is in force.
pub fn lookup_approval<'a>(
    grants: &'a [NameGrant],
    root: u64,
    name: &Name,
    now: SystemTime,
) -> Option<&'a NameGrant> {
    grants
        .iter()
        .filter(|grant| grant.reach == Reach::Name && grant.covers(root, name, now))
        .max_by_key(|grant| (grant.asks.quorum, grant.asks.in_console))
}

impl NameGrant {
    fn covers(&self, root: u64, name: &Name, now: SystemTime) -> bool {
        let reach = match self.reach {
            Reach::Name => true,
            Reach::Port { protocol, .. } => [protocol::TCP, protocol::UDP].contains(&protocol),
        };
        self.root == root && self.name == *name && self.until.is_none_or(|until| until > now) && reach
    }

    /// How long it lasts from `now` (`Duration::MAX`: while the agent is tagged).
    pub fn lasts(&self, now: SystemTime) -> Duration {
        self.until.map_or(Duration::MAX, |end| end.duration_since(now).unwrap_or_default())
    }
}

/// `rule` (the domain rules' ports for `name`, if any name it) with the ports `grants`
/// approve for the name put first, where `held_for(grant)` says the policy would otherwise
/// hold the connection asking no more than the grant's hold (never where it denies it), and
/// how long at most the result may last (until the first of those grants ends). `None`
/// when neither says anything of the name. When the grants' ports do not fit beside the
/// domain rules' in the kernel's rule, the rule is left as it is: the daemon then releases
/// the holds a grant covers.
pub fn with_grants(
    rule: Option<EgressRule>,
    grants: &[NameGrant],
    (root, name): (u64, &Name),
    now: SystemTime,
    held_for: impl Fn(&NameGrant) -> bool,
) -> Option<(EgressRule, Duration)> {
    // (protocol, port) → when the latest grant of it ends (`None`: never).
    let mut ports: BTreeMap<(u32, u16), Option<SystemTime>> = BTreeMap::new();
    for grant in grants.iter().filter(|grant| grant.covers(root, name, now) && held_for(grant)) {
        let Reach::Port { protocol, port } = grant.reach else { continue };
        let until = ports.entry((protocol, port)).or_insert(grant.until);
        *until = until.zip(grant.until).map(|(a, b)| a.max(b));
    }
    let given = rule.unwrap_or(EgressRule { fallback: verdict::NONE, ..EgressRule::default() });
    let count = given.count as usize;
    if ports.is_empty() || count + ports.len() > capacity::PORT_RULES {
        return rule.map(|rule| (rule, Duration::MAX));
    }
    let mut granted = given;
    granted.ports.copy_within(0..count, ports.len());
    for (slot, (&(protocol, port), _)) in granted.ports.iter_mut().zip(&ports) {
        *slot = PortRule {
            low: port,
            high: port,
            protocol: u16::try_from(protocol).unwrap_or(0),
            verdict: u16::try_from(verdict::ALLOW).unwrap_or(0),
        };
    }
    granted.count += u32::try_from(ports.len()).unwrap_or(0);
    let first_end = ports.values().flatten().min();
    let lasts = first_end.map_or(Duration::MAX, |end| end.duration_since(now).unwrap_or_default());
    Some((granted, lasts))
}

#[cfg(test)]
mod tests {
    use agent_common::protocol;

    use super::*;

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap()
    }

    fn grant(port: u16, until: Option<SystemTime>) -> NameGrant {
        let reach = Reach::Port { protocol: protocol::TCP, port };
        NameGrant { root: 5, name: name("api.example.com"), reach, until, asks: Asks::ONE }
    }

    /// `with_grants` for agent 5's `api.example.com`, where the policy holds every port.
    fn granted(
        rule: Option<EgressRule>,
        grants: &[NameGrant],
        now: SystemTime,
    ) -> Option<(EgressRule, Duration)> {
        with_grants(rule, grants, (5, &name("api.example.com")), now, |_| true)
    }

    fn deny_22() -> EgressRule {
        let mut rule = EgressRule { fallback: verdict::NONE, count: 1, ..EgressRule::default() };
        rule.ports[0] =
            PortRule { low: 22, high: 22, protocol: 0, verdict: u16::try_from(verdict::DENY).unwrap() };
        rule
    }

    #[test]
    fn granted_ports_come_before_the_domain_rules_and_last_until_the_first_grant_ends() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let grants = [grant(443, None), grant(8443, Some(now + Duration::from_mins(10)))];
        let (rule, lasts) = granted(Some(deny_22()), &grants, now).unwrap();
        assert_eq!(rule.count, 3);
        let ports: Vec<(u16, u32)> = rule.ports[..3].iter().map(|p| (p.low, u32::from(p.verdict))).collect();
        assert_eq!(ports, [(443, verdict::ALLOW), (8443, verdict::ALLOW), (22, verdict::DENY)]);
        assert_eq!(u32::from(rule.ports[0].protocol), protocol::TCP);
        assert_eq!(rule.fallback, verdict::NONE, "the other ports stay the CIDR rules'");
        assert_eq!(lasts, Duration::from_mins(10));
    }

    #[test]
    fn a_name_no_rule_names_gets_its_granted_ports_alone() {
        let now = SystemTime::UNIX_EPOCH;
        let (rule, lasts) = granted(None, &[grant(443, None)], now).unwrap();
        assert_eq!((rule.count, rule.ports[0].low, rule.fallback), (1, 443, verdict::NONE));
        assert_eq!(lasts, Duration::MAX);
        assert!(approved(&[grant(443, None)], 5, &name("api.example.com"), Asks::ONE, now));
        let two = Asks { quorum: 2, ..Asks::ONE };
        assert!(
            !approved(&[grant(443, None)], 5, &name("api.example.com"), two, now),
            "a lookup two must approve"
        );
        let in_console = Asks { in_console: true, ..Asks::ONE };
        let chat = [grant(443, None)];
        assert!(!approved(&chat, 5, &name("api.example.com"), in_console, now), "a console-only lookup");
        let console = [NameGrant { asks: in_console, ..grant(443, None) }];
        assert!(approved(&console, 5, &name("api.example.com"), in_console, now));
    }

    #[test]
    fn grants_of_another_agent_or_name_or_ended_change_nothing() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let ended = grant(443, Some(now));
        let other_agent = NameGrant { root: 6, ..grant(443, None) };
        let other_name = NameGrant { name: name("example.com"), ..grant(443, None) };
        let grants = [ended, other_agent, other_name];
        let api = name("api.example.com");
        assert_eq!(granted(None, &grants, now), None);
        assert_eq!(granted(Some(deny_22()), &grants, now), Some((deny_22(), Duration::MAX)));
        assert!(!approved(&grants, 5, &api, Asks::ONE, now));
    }

    #[test]
    fn a_grant_applies_only_where_the_policy_would_hold_and_only_for_tcp_or_udp() {
        let now = SystemTime::UNIX_EPOCH;
        let api = name("api.example.com");
        let grants = [grant(443, None), grant(8443, None)];
        let on_443 = |grant: &NameGrant| grant.reach == Reach::Port { protocol: protocol::TCP, port: 443 };
        let (rule, _) = with_grants(None, &grants, (5, &api), now, on_443).unwrap();
        assert_eq!(
            (rule.count, rule.ports[0].low),
            (1, 443),
            "not where the policy denies, or asks more people"
        );
        assert_eq!(with_grants(None, &grants, (5, &api), now, |_| false), None);
        let any = NameGrant { reach: Reach::Port { protocol: protocol::ANY, port: 443 }, ..grant(443, None) };
        assert_eq!(
            granted(None, std::slice::from_ref(&any), now),
            None,
            "a grant of any protocol would open them all"
        );
        assert!(!approved(&[any], 5, &api, Asks::ONE, now));
    }

    #[test]
    fn a_lookup_approval_is_found_by_its_name_and_takes_no_port_slot() {
        let now = SystemTime::UNIX_EPOCH;
        let api = name("api.example.com");
        let by_one = NameGrant { reach: Reach::Name, ..grant(0, Some(now + Duration::from_secs(30))) };
        let by_two = NameGrant { asks: Asks { quorum: 2, in_console: false }, ..by_one.clone() };
        let grants = [by_one, by_two, grant(443, None)];
        let found = lookup_approval(&grants, 5, &api, now).unwrap();
        assert_eq!((found.asks.quorum, found.lasts(now)), (2, Duration::from_secs(30)));
        assert!(lookup_approval(&grants, 5, &api, now + Duration::from_secs(30)).is_none(), "ended");
        assert!(lookup_approval(&grants[2..], 5, &api, now).is_none(), "a port's approval is no lookup's");
        assert!(approved(&grants, 5, &api, Asks { quorum: 2, in_console: false }, now));
        let (rule, _) = granted(None, &grants, now).unwrap();
        assert_eq!((rule.count, rule.ports[0].low), (1, 443), "only the port's approval takes a slot");
    }

    #[test]
    fn the_same_port_granted_twice_takes_one_slot_and_the_later_end() {
        let now = SystemTime::UNIX_EPOCH;
        let grants =
            [grant(443, Some(now + Duration::from_mins(1))), grant(443, Some(now + Duration::from_mins(10)))];
        let (rule, lasts) = granted(None, &grants, now).unwrap();
        assert_eq!((rule.count, lasts), (1, Duration::from_mins(10)));
        let forever = [grants[0].clone(), grant(443, None)];
        assert_eq!(granted(None, &forever, now).unwrap().1, Duration::MAX);
    }

    #[test]
    fn grants_that_do_not_fit_beside_the_domain_rules_are_left_to_the_daemon() {
        let now = SystemTime::UNIX_EPOCH;
        let mut full = deny_22();
        full.count = u32::try_from(capacity::PORT_RULES).unwrap();
        assert_eq!(granted(Some(full), &[grant(443, None)], now), Some((full, Duration::MAX)));
    }
}
