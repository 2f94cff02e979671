//! The names each agent resolved, by address, while their answers last: what the views of
//! an egress hold show beside the address (`api.example.com (93.184.215.14):443`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::name::Name;

/// Addresses kept at most; past it, expired entries go, then new ones are not kept (a view
/// then shows the address alone).
const CAPACITY: usize = 65_536;

/// What resolved to an address for one agent: the name, until when.
#[derive(Clone)]
struct Entry {
    name: Name,
    until: Instant,
}

/// (tagged root, address) → the latest name that resolved to it.
#[derive(Default)]
pub struct NameBook {
    names: Mutex<HashMap<(u64, IpAddr), Entry>>,
}

impl NameBook {
    /// Notes that `name` resolved to `addr` for the agent under `root`, for `ttl`.
    pub fn note(&self, root: u64, addr: IpAddr, name: &Name, ttl: Duration) {
        // An IPv4-mapped answer is the IPv4 address the kernel and the views see.
        let addr = addr.to_canonical();
        let Ok(mut names) = self.names.lock() else { return };
        let now = Instant::now();
        if names.len() >= CAPACITY {
            names.retain(|_, entry| entry.until > now);
        }
        if names.len() < CAPACITY || names.contains_key(&(root, addr)) {
            names.insert((root, addr), Entry { name: name.clone(), until: now + ttl });
        }
    }

    /// The addresses `name` last resolved to for the agent under `root`, each with what is
    /// left of its answer's TTL.
    pub fn resolved_to(&self, root: u64, name: &Name) -> Vec<(IpAddr, Duration)> {
        let Ok(names) = self.names.lock() else { return Vec::new() };
        let now = Instant::now();
        names
            .iter()
            .filter(|&(&(of, _), entry)| of == root && entry.name == *name && entry.until > now)
            .map(|(&(_, addr), entry)| (addr, entry.until - now))
            .collect()
    }

    /// The name the agent under `root` last resolved to `addr`, while its answer lasts.
    pub fn name_of(&self, root: u64, addr: IpAddr) -> Option<Name> {
        let names = self.names.lock().ok()?;
        let entry = names.get(&(root, addr.to_canonical()))?;
        (entry.until > Instant::now()).then(|| entry.name.clone())
    }

    /// Forgets what the agent under `root` resolved.
    pub fn forget(&self, root: u64) {
        if let Ok(mut names) = self.names.lock() {
            names.retain(|&(of, _), _| of != root);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_shown_for_its_agent_while_its_answer_lasts() {
        let book = NameBook::default();
        let (addr, name) = ("10.9.0.7".parse().unwrap(), Name::parse("api.example.com").unwrap());
        book.note(1, addr, &name, Duration::from_mins(1));
        book.note(2, addr, &name, Duration::ZERO);
        assert_eq!(book.name_of(1, addr), Some(name.clone()));
        assert_eq!(book.name_of(2, addr), None, "expired");
        assert_eq!(book.name_of(3, addr), None, "another agent's name is not this one's");
        let resolved = book.resolved_to(1, &name);
        assert!(matches!(resolved[..], [(at, left)] if at == addr && left > Duration::from_secs(59)));
        let mapped: IpAddr = "::ffff:10.9.0.8".parse().unwrap();
        book.note(1, mapped, &name, Duration::from_mins(1));
        assert_eq!(book.name_of(1, "10.9.0.8".parse().unwrap()), Some(name.clone()), "one address, one form");
        assert!(book.resolved_to(2, &name).is_empty(), "expired");
        book.forget(1);
        assert_eq!(book.name_of(1, addr), None, "forgotten");
    }
}
