//! Domain rules (`[[egress]] domain = "…"`): what a policy says of a name an agent looks
//! up, and of the addresses that name resolved to, port by port.

use agent_common::{EgressRule, PortRule, capacity, verdict};

use crate::{
    dns::name::{DomainPattern, Name},
    policy::{Asks, Verdict},
};

/// One domain rule: names the pattern matches, on `ports` (all if empty) over `protocol`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameRule {
    pub pattern: DomainPattern,
    pub ports: Vec<(u16, u16)>,
    /// An `agent_common::protocol` constant; `ANY` matches every protocol.
    pub protocol: u32,
    pub verdict: Verdict,
    /// How many distinct people must approve a hold this rule flags.
    pub quorum: u32,
    /// Whether its holds are decided in the console only (`approve_in = "console"`).
    pub in_console: bool,
    /// The people told directly of each hold it flags.
    pub notify: Vec<String>,
}

impl NameRule {
    /// The rule as an approver reads it.
    pub fn describe(&self) -> String {
        format!("egress domain {:?} action {:?}", self.pattern.to_string(), self.verdict)
    }

    /// What approving a hold it flags asks.
    pub fn asks(&self) -> Asks {
        Asks { quorum: self.quorum, in_console: self.in_console }
    }

    fn covers(&self, port: u16, protocol: u32) -> bool {
        (self.ports.is_empty() || self.ports.iter().any(|&(low, high)| (low..=high).contains(&port)))
            && (self.protocol == agent_common::protocol::ANY || self.protocol == protocol)
    }
}

/// What a policy says of a name an agent looks up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameJudgement {
    /// The lookup's verdict: the first domain rule naming the name, else `egress_default`.
    /// A denied name is refused before any query leaves the host; the others are answered.
    pub verdict: Verdict,
    /// The rule that decided, as an approver reads it.
    pub rule: String,
    /// How many distinct people must approve the lookup, when it is held, and where.
    pub asks: Asks,
    /// The people told directly of the lookup, when it is held.
    pub notify: Vec<String>,
    /// What the kernel applies to the answer's addresses while its TTL lasts: the port
    /// rules of every domain rule naming the name, in order. `None` when no domain rule
    /// names it: its addresses are judged by the CIDR rules, as any other address.
    pub kernel: Option<EgressRule>,
}

/// Judges `name` by `rules` (in policy order), with `default` (its verdict and whom its
/// holds are told of) when none names it.
pub fn judge(rules: &[NameRule], default: (Verdict, &[String]), name: &Name) -> NameJudgement {
    let mut naming = rules.iter().filter(|rule| rule.pattern.matches(name)).peekable();
    let Some(first) = naming.peek() else {
        let (verdict, notify) = (default.0, default.1.to_vec());
        return NameJudgement {
            verdict,
            rule: "egress_default".into(),
            asks: Asks::ONE,
            notify,
            kernel: None,
        };
    };
    let (verdict, rule, asks, notify) = (first.verdict, first.describe(), first.asks(), first.notify.clone());
    // Ports the domain rules do not name are left to the CIDR rules (`verdict::NONE`).
    let mut kernel = EgressRule { fallback: verdict::NONE, ..EgressRule::default() };
    for rule in naming {
        if rule.ports.is_empty() && rule.protocol == agent_common::protocol::ANY {
            kernel.fallback = rule.verdict.kernel();
            break;
        }
        let ranges: &[(u16, u16)] = if rule.ports.is_empty() { &[(0, u16::MAX)] } else { &rule.ports };
        for &(low, high) in ranges {
            // Past the kernel's capacity, later rules' ports are judged by the CIDR rules:
            // a policy with that many rules for one name is refused at load (`check`).
            let Some(slot) = kernel.ports.get_mut(kernel.count as usize) else { break };
            *slot = PortRule {
                low,
                high,
                protocol: u16::try_from(rule.protocol).unwrap_or(0),
                verdict: u16::try_from(rule.verdict.kernel()).unwrap_or(0),
            };
            kernel.count += 1;
        }
    }
    NameJudgement { verdict, rule, asks, notify, kernel: Some(kernel) }
}

/// The domain rule that decides egress to a name's address on `port` over `protocol`.
pub fn rule_for<'a>(rules: &'a [NameRule], name: &Name, port: u16, protocol: u32) -> Option<&'a NameRule> {
    rules.iter().find(|rule| rule.pattern.matches(name) && rule.covers(port, protocol))
}

/// Refuses a rule whose port ranges, with those of the earlier domain rules, could not all
/// be given to the kernel for a name both match.
pub fn check(earlier: &[NameRule], rule: &NameRule) -> Result<(), String> {
    let ranges = |r: &NameRule| r.ports.len().max(1);
    let overlapping: usize =
        earlier.iter().filter(|e| e.pattern.overlaps(&rule.pattern)).map(ranges).sum::<usize>()
            + ranges(rule);
    if overlapping > capacity::PORT_RULES {
        return Err(format!(
            "more than {} port rules apply to names matching {:?}",
            capacity::PORT_RULES,
            rule.pattern.to_string()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::protocol;

    fn rule(domain: &str, ports: &[(u16, u16)], verdict: Verdict) -> NameRule {
        NameRule {
            pattern: DomainPattern::parse(domain).unwrap(),
            ports: ports.to_vec(),
            protocol: protocol::ANY,
            verdict,
            quorum: 1,
            in_console: false,
            notify: Vec::new(),
        }
    }

    fn name(text: &str) -> Name {
        Name::parse(text).unwrap()
    }

    #[test]
    fn the_first_rule_naming_a_name_decides_its_lookup_and_all_of_them_its_ports() {
        let rules = [
            rule("api.example.com", &[(443, 443)], Verdict::Allow),
            rule("*.example.com", &[(22, 22)], Verdict::Hold),
            rule("*.example.com", &[], Verdict::Deny),
        ];
        let judged = judge(&rules, (Verdict::Hold, &[]), &name("API.example.com"));
        assert_eq!(
            (judged.verdict, judged.rule.as_str()),
            (Verdict::Allow, "egress domain \"api.example.com\" action Allow")
        );
        let kernel = judged.kernel.unwrap();
        assert_eq!(kernel.count, 2);
        assert_eq!((kernel.ports[0].low, u32::from(kernel.ports[0].verdict)), (443, verdict::ALLOW));
        assert_eq!((kernel.ports[1].low, u32::from(kernel.ports[1].verdict)), (22, verdict::HOLD));
        assert_eq!(kernel.fallback, verdict::DENY, "the catch-all ends the chain");

        let other = judge(&rules, (Verdict::Hold, &[]), &name("www.example.com"));
        assert_eq!(other.verdict, Verdict::Hold);
        assert_eq!(rule_for(&rules, &name("www.example.com"), 443, protocol::TCP), Some(&rules[2]));
    }

    #[test]
    fn a_name_no_rule_names_is_judged_by_the_default_and_its_addresses_by_cidr() {
        let rules = [rule("*.example.com", &[(443, 443)], Verdict::Allow)];
        let judged = judge(&rules, (Verdict::Deny, &[]), &name("example.com"));
        let by_default = NameJudgement {
            verdict: Verdict::Deny,
            rule: "egress_default".into(),
            asks: Asks::ONE,
            notify: vec![],
            kernel: None,
        };
        assert_eq!(judged, by_default);
    }

    #[test]
    fn ports_not_named_fall_through_to_the_cidr_rules() {
        let judged = judge(
            &[rule("a.example", &[(443, 443)], Verdict::Allow)],
            (Verdict::Hold, &[]),
            &name("a.example"),
        );
        assert_eq!(judged.kernel.unwrap().fallback, verdict::NONE);
    }

    #[test]
    fn too_many_port_rules_for_one_name_are_refused() {
        let wide = rule("*.example.com", &[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)], Verdict::Allow);
        let narrow = rule("a.example.com", &[(6, 6), (7, 7), (8, 8), (9, 9)], Verdict::Hold);
        assert!(check(std::slice::from_ref(&wide), &narrow).unwrap_err().contains("more than 8 port rules"));
        let elsewhere = rule("a.example.org", &[(6, 6), (7, 7), (8, 8), (9, 9)], Verdict::Hold);
        assert!(check(&[wide], &elsewhere).is_ok());
    }
}
