//! Names, not numbers: a tagged agent's DNS goes through keyturn's resolver, whatever server
//! it asks, and names are judged before a query leaves the host: a held name is held right
//! there, its agent stopped, until a person decides. The upstream is Debian's dnsmasq in a
//! network namespace of its own, with its query log on.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::Child,
    thread::sleep,
    time::Duration,
};

use serde_json::Value;
use tests::{
    Peer, Received, TestCgroup,
    daemon::{Daemon, agent_in, finish},
    nameserver::Nameserver,
    runtimes::{wait_all_stopped, wait_until},
};

/// Allowed by name on two TCP ports, denied by name, allowed for 5 s; the rest held, telling
/// the on-call person. DNS servers are allowed (by address: the lookup is what keyturn
/// judges).
const POLICY: &str = r#"timeout = "1m"
[[egress]]
cidr = "0.0.0.0/0"
ports = [53]
action = "allow"

[[egress]]
domain = "*.allowed.test"
ports = [7201, 7202]
protocol = "tcp"
action = "allow"

[[egress]]
domain = "*.ttl.test"
action = "allow"

[[egress]]
domain = "denied.test"
action = "deny"

[egress_default]
action = "hold"
notify = ["oncall@example.com"]
"#;

fn start(peer: &Peer) -> (Nameserver, Daemon) {
    start_with(peer, POLICY, &[])
}

/// The upstream, with `records` besides the test zones, and a daemon under `policy`.
fn start_with(peer: &Peer, policy: &str, records: &[(&str, &[Ipv4Addr], u32)]) -> (Nameserver, Daemon) {
    start_behind(peer, policy, records, &[])
}

/// [`start_with`], the daemon asking the upstreams `first` before the test's.
fn start_behind(
    peer: &Peer,
    policy: &str,
    records: &[(&str, &[Ipv4Addr], u32)],
    first: &[SocketAddr],
) -> (Nameserver, Daemon) {
    let short_lived = [peer.v4];
    let records = [&[("short.ttl.test", &short_lived[..], 5)], records].concat();
    let upstream = Nameserver::start(peer, &["allowed.test", "denied.test", "other.test"], &records);
    let upstreams: Vec<String> = first
        .iter()
        .map(ToString::to_string)
        .chain([format!("{}:53", peer.v4)])
        .map(|at| format!("{at:?}"))
        .collect();
    let config = format!("\n[dns]\nlisten = \"127.0.0.1:0\"\nupstream = [{}]\n", upstreams.join(", "));
    (upstream, Daemon::start_with_config(policy, &config))
}

/// `actor ARGS…` as a tagged agent: its exit code and output.
fn agent(daemon: &Daemon, args: &[&str]) -> (i32, String) {
    let actor = tests::actor_path();
    finish(daemon.run_agent(actor.to_str().expect("utf-8"), args))
}

/// A DNS query for `name` (type A, recursion desired), with an EDNS0 OPT record if asked.
fn query(name: &str, edns: bool) -> Vec<u8> {
    let mut message = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
    for label in name.split('.') {
        message.push(u8::try_from(label.len()).expect("short label"));
        message.extend_from_slice(label.as_bytes());
    }
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    if edns {
        message.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    message
}

fn dns(daemon: &Daemon, how: &str, server: &str, port: &str, message: &[u8]) -> String {
    let (code, out) = agent(daemon, &["dns", how, server, port, &hex::encode(message)]);
    assert!(code == 0 || out.contains("error:"), "{out}");
    out
}

fn status_dns(daemon: &Daemon, counter: &str) -> u64 {
    daemon.status()["dns"][counter].as_u64().unwrap_or_else(|| panic!("{}", daemon.status()))
}

/// An allowed name resolves through whatever nameserver the agent's resolver library
/// uses, and its address is let through by the kernel: no hold, one query upstream.
#[test]
fn an_allowed_name_resolves_and_connects_with_no_hold() {
    let peer = Peer::new();
    let (upstream, daemon) = start(&peer);
    let received = peer.tcp(peer.v4.into(), 7201);
    let (code, out) = agent(&daemon, &["resolve-tcp", "api.allowed.test", "7201", "by-name"]);
    assert_eq!((code, out.trim_end().lines().last()), (0, Some("ok")), "{out}\n{}", daemon.log());
    received.wait_for("by-name");
    assert!(!upstream.asked("api.allowed.test").is_empty(), "{}", upstream.log());
    assert!(daemon.pending().is_empty());
    assert!(
        !daemon.audit().iter().any(|r| r["type"] == "hold"),
        "no hold went to a person: decided in the kernel"
    );
    assert!(status_dns(&daemon, "answered") >= 1);

    // A port the domain rule does not name is judged as any address: held.
    let actor = tests::actor_path();
    let child =
        daemon.run_agent(actor.to_str().expect("utf-8"), &["resolve-tcp", "api.allowed.test", "7209", "x"]);
    let hold = daemon.pending_one();
    assert_eq!(hold["domain"], "api.allowed.test", "{hold}");
    assert_eq!(hold["policy_rule"], "egress_default");
    let denied = daemon.cli(&["deny", hold["id"].as_str().expect("id")]);
    assert!(denied.status.success());
    let _ = finish(child);
}

/// A denied name is refused by keyturn: the upstream never sees the query, however the
/// agent sends it: its resolver library, straight to the upstream's address (UDP, connected
/// UDP, TCP), to the host's stub address, with EDNS0.
#[test]
fn a_denied_name_never_leaves_the_host_however_it_is_asked() {
    let peer = Peer::new();
    let (upstream, daemon) = start(&peer);
    let (code, out) = agent(&daemon, &["resolve", "denied.test"]);
    assert_eq!(code, 1, "{out}");
    let at = peer.v4.to_string();
    for (how, server) in [("udp", at.as_str()), ("udp-connected", &at), ("tcp", &at), ("udp", "127.0.0.53")] {
        for edns in [false, true] {
            let out = dns(&daemon, how, server, "53", &query("denied.test", edns));
            assert!(out.contains("rcode: 5"), "{how} {server} edns {edns}: REFUSED expected, got {out}");
        }
    }
    // Replies appear to come from the server the agent asked, as resolver libraries check.
    let out = dns(&daemon, "udp", &at, "53", &query("denied.test", false));
    assert!(out.contains(&format!("from: {at}:53")), "{out}");
    // An allowed name asked the same way does reach the upstream, over UDP and TCP.
    for how in ["udp", "tcp"] {
        let out = dns(&daemon, how, &at, "53", &query("www.allowed.test", false));
        assert!(out.contains("rcode: 0"), "{how}: {out}\n{}", daemon.log());
    }
    assert!(!upstream.asked("www.allowed.test").is_empty(), "{}", upstream.log());
    assert!(upstream.asked("denied.test").is_empty(), "{}", upstream.log());
    assert!(status_dns(&daemon, "refused") >= 9);
}

/// What cannot go through the resolver is refused by the kernel: DNS over IPv6, and the
/// resolver's own port asked directly (where a source address could be forged).
#[test]
fn dns_around_the_resolver_is_refused_by_the_kernel() {
    let peer = Peer::new();
    let (upstream, daemon) = start(&peer);
    let v6 = peer.v6.to_string();
    let out = dns(&daemon, "udp", &v6, "53", &query("api.allowed.test", false));
    assert!(out.contains(&format!("error: {}", libc::EPERM)), "{out}");
    let listening = daemon.status()["dns"]["listening"].as_str().expect("listening").to_owned();
    let (address, port) = listening.split_once(':').expect("ADDRESS:PORT");
    for (how, address) in [("udp", address), ("tcp", address), ("udp", "0.0.0.0"), ("tcp", "127.0.0.9")] {
        let out = dns(&daemon, how, address, port, &query("api.allowed.test", false));
        assert!(out.contains(&format!("error: {}", libc::EPERM)), "{how} {address}: {out}");
    }
    // Nor may an agent take the resolver's port, on any address.
    for (how, address) in [("udp", "127.0.0.1"), ("tcp", "0.0.0.0")] {
        let (code, out) = agent(&daemon, &["bind", how, address, port]);
        assert_eq!(
            (code, out.trim()),
            (1, format!("error: {}", libc::EPERM).as_str()),
            "bind {how} {address}"
        );
    }
    assert!(upstream.asked("api.allowed.test").is_empty());
    assert!(daemon.status()["refused"]["dns"].as_u64().expect("dns refusals") >= 7);
    // A message on a socket connected to the resolver goes from the source the kernel gave
    // the socket, whatever source its control data asks for: never another agent's.
    let at = peer.v4.to_string();
    let out = dns(&daemon, "pktinfo-127.0.0.77", &at, "53", &query("www.allowed.test", false));
    assert!(out.contains("rcode: 0"), "{out}");
    assert_eq!(status_dns(&daemon, "unattributed"), 0);
}

/// Hostile queries get an error answer (or none) and never stall the resolver; none
/// reaches the upstream.
#[test]
fn hostile_queries_are_answered_with_errors_and_never_reach_the_upstream() {
    let peer = Peer::new();
    let (upstream, daemon) = start(&peer);
    let at = peer.v4.to_string();
    let header = |questions: u8| vec![0xab, 0xcd, 0x01, 0x00, 0, questions, 0, 0, 0, 0, 0, 0];
    let long_name = ["a".repeat(63), "b".repeat(63), "c".repeat(63), "d".repeat(61)].join(".");
    let mut twenty = header(20);
    for _ in 0..20 {
        twenty.extend_from_slice(&query("x.allowed.test", false)[12..]);
    }
    let mut looping = header(1);
    looping.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let hostile: [(&str, Vec<u8>, &[&str]); 5] = [
        ("truncated", query("a.allowed.test", false)[..15].to_vec(), &["rcode: 1"]),
        ("no question", header(0), &["rcode: 1"]),
        ("twenty questions", twenty, &["rcode: 1"]),
        ("compression loop", looping, &["rcode: 1"]),
        ("255-byte name", query(&format!("{long_name}.allowed.test"), false), &["rcode: 1", "rcode: 5"]),
    ];
    for (what, message, expected) in hostile {
        let out = dns(&daemon, "udp", &at, "53", &message);
        assert!(expected.iter().any(|e| out.contains(e)), "{what}: {out}");
    }
    assert!(!upstream.log().contains("query["), "nothing was asked: {}", upstream.log());
    assert!(status_dns(&daemon, "malformed") >= 5);
    let out = dns(&daemon, "udp", &at, "53", &query("still.allowed.test", false));
    assert!(out.contains("rcode: 0"), "the resolver still answers: {out}");
}

/// A held connection to an address the agent resolved shows the name beside it, in every
/// view: here a port the name's domain rule leaves to the CIDR rules.
#[test]
fn a_hold_shows_the_name_the_agent_resolved() {
    let peer = Peer::new();
    let (_upstream, daemon) = start(&peer);
    let actor = tests::actor_path();
    let args = ["resolve-tcp", "api.allowed.test", "7203", "x"];
    let child = daemon.run_agent(actor.to_str().expect("utf-8"), &args);
    let hold = daemon.pending_one();
    let at = peer.v4.to_string();
    assert_eq!(
        (hold["domain"].as_str(), hold["address"].as_str()),
        (Some("api.allowed.test"), Some(at.as_str()))
    );
    assert_eq!(hold["notify"], serde_json::json!(["oncall@example.com"]), "the rule's: {hold}");
    let listed = daemon.cli(&["pending"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains(&format!("tcp api.allowed.test ({at}):7203")), "{listed}");
    let recorded = daemon.audit().into_iter().find(|r| r["type"] == "hold").expect("hold record");
    assert_eq!(recorded["hold"]["domain"], "api.allowed.test", "{recorded}");
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let _ = finish(child);
}

/// A name the policy holds is held at its lookup, before the query leaves the host: listed
/// with the name and the server the agent asked, the agent stopped whole, the upstream
/// asked nothing, for longer than the agent's resolver library waits (glibc: two tries of
/// 5 s). Approved once, the very lookup is answered and the agent connects to the answer
/// with no second hold. The daemon first asks two upstreams that never answer (4 s): the
/// agent stays stopped, and counted as held, until its answer is sent.
#[test]
fn a_held_lookup_waits_stopped_and_unasked_until_approved() {
    let peer = Peer::new();
    let silent =
        [UdpSocket::bind("127.0.0.1:0").expect("bind"), UdpSocket::bind("127.0.0.1:0").expect("bind")];
    let first = silent.each_ref().map(|socket| socket.local_addr().expect("bound"));
    let (upstream, daemon) = start_behind(&peer, POLICY, &[], &first);
    let cgroup = tagged(&daemon);
    let received = peer.tcp(peer.v4.into(), 7203);
    let child = as_agent(&cgroup, &["resolve-tcp", "other.test", "7203", "after the hold"]);
    let hold = daemon.pending_one();
    assert_eq!(
        (hold["kind"].as_str(), hold["protocol"].as_str(), hold["domain"].as_str(), hold["port"].as_u64()),
        (Some("egress"), Some("dns"), Some("other.test"), Some(53)),
        "{hold}"
    );
    assert_eq!(hold["policy_rule"], "egress_default", "{hold}");
    assert_eq!(hold["notify"], serde_json::json!(["oncall@example.com"]), "the rule's: {hold}");
    let listed = daemon.cli(&["pending"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("dns other.test ("), "{listed:?}");
    let pid = u32::try_from(hold["pid"].as_u64().expect("pid")).expect("a pid");
    assert_eq!(pid, child.id());
    // Started by this test, outside the agent's cgroup: the chain of parents ends there.
    assert_eq!(hold["parents"].as_array().map(Vec::len), Some(1), "{hold}");
    assert_eq!(hold["parents"][0]["pid"], std::process::id(), "{hold}");
    wait_all_stopped(pid);
    sleep(Duration::from_secs(11));
    assert!(upstream.asked("other.test").is_empty(), "asked before approval: {}", upstream.log());
    let waited = (status_dns(&daemon, "held"), status_dns(&daemon, "answered"));
    assert!(waited.0 >= 1 && waited.1 == 0, "{}", daemon.status()["dns"]);

    let from = daemon.audit().len();
    assert!(daemon.cli(&["approve", hold["id"].as_str().expect("id")]).status.success());
    let (code, out) = daemon.finish(child);
    assert_eq!(code, 0, "{out}");
    received.wait_for("after the hold");
    assert!(upstream.asked("other.test").iter().any(|asked| asked == "A"), "{}", upstream.log());
    let trail = daemon.audit();
    let holds: Vec<_> = trail.iter().filter(|r| r["type"] == "hold").collect();
    assert_eq!(holds.len(), 1, "no second hold for the connection: {holds:?}");
    let released: Vec<_> = trail[from..].iter().filter(|r| r["type"] == "release").collect();
    assert_eq!(released.len(), 1, "{released:?}");
    let orphaned: Vec<_> = trail.iter().filter(|r| r["type"] == "hold_orphaned").collect();
    assert!(orphaned.is_empty(), "stopped while answered, and counted as held: {orphaned:?}");
}

/// A daemon killed while a lookup is held leaves its process stopped with no hold: the next
/// daemon's orphan sweep settles it (the policy's `on_timeout`, here a kill) and audits it,
/// and the query never left the host.
#[test]
fn a_lookup_held_when_the_daemon_dies_is_settled_by_the_next_one() {
    let peer = Peer::new();
    let (upstream, mut daemon) = start(&peer);
    let cgroup = tagged(&daemon);
    let child = as_agent(&cgroup, &["resolve", "other.test"]);
    let hold = daemon.pending_one();
    let pid = u32::try_from(hold["pid"].as_u64().expect("pid")).expect("a pid");
    wait_all_stopped(pid);
    daemon.kill9();
    daemon.launch();
    let (code, out) = daemon.finish(child);
    assert_eq!(code, 128 + libc::SIGKILL, "{out}");
    let orphaned = daemon.wait_record(0, |record| record["type"] == "hold_orphaned");
    assert_eq!(
        (orphaned["pid"].as_u64(), orphaned["outcome"].as_str()),
        (Some(u64::from(pid)), Some("killed"))
    );
    assert!(upstream.asked("other.test").is_empty(), "{}", upstream.log());
}

/// A held lookup denied is never asked upstream: the agent is killed (the policy's
/// `on_deny`), or its lookup refused (`on_deny = "fail"`). The lookup is held whatever
/// server the agent asked, here one the CIDR rules hold; an allowed name still resolves.
#[test]
fn a_denied_lookup_never_leaves_the_host() {
    let peer = Peer::new();
    let without_dns = POLICY.split_once("\n\n").expect("the DNS rule comes first").1;
    let (upstream, daemon) = start_with(&peer, without_dns, &[]);
    let cgroup = tagged(&daemon);
    let child = as_agent(&cgroup, &["resolve", "other.test"]);
    let hold = daemon.pending_one();
    assert_eq!(hold["domain"], "other.test", "{hold}");
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let (code, out) = daemon.finish(child);
    assert_eq!(code, 128 + libc::SIGKILL, "killed: {out}");

    let from = daemon.audit().len();
    daemon.write_policy("test", &format!("on_deny = \"fail\"\n{without_dns}"));
    daemon.wait_record(from, |record| record["type"] == "policy_reload");
    // Its resolver library asks again at once, elsewhere and with search domains: refused
    // for a while with no second hold, while another name is held anew.
    let (code, out) = daemon.finish(as_agent(&cgroup, &["resolve", "other.test"]));
    assert!(code == 1 && out.contains("lookup failed"), "{out}");
    let child = as_agent(&cgroup, &["resolve", "again.other.test"]);
    let hold = daemon.pending_one();
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let (code, out) = daemon.finish(child);
    assert!(code == 1 && out.contains("lookup failed"), "refused, and the agent goes on: {out}");
    succeeds(&daemon, &cgroup, &["resolve", "api.allowed.test"]);
    let holds = daemon.audit().into_iter().filter(|record| record["type"] == "hold").count();
    assert_eq!(holds, 2, "one hold per name, none per retry");

    // A reload that denies the name while its lookup is held wins over a later approval.
    let child = as_agent(&cgroup, &["resolve", "late.other.test"]);
    let hold = daemon.pending_one();
    let from = daemon.audit().len();
    let denying = "[[egress]]\ndomain = \"*.other.test\"\naction = \"deny\"\n\n";
    daemon.write_policy("test", &format!("on_deny = \"fail\"\n{denying}{without_dns}"));
    daemon.wait_record(from, |record| record["type"] == "policy_reload");
    assert!(daemon.cli(&["approve", hold["id"].as_str().expect("id")]).status.success());
    let (code, out) = daemon.finish(child);
    assert!(code == 1 && out.contains("lookup failed"), "refused after all: {out}");
    for name in ["other.test", "again.other.test", "late.other.test"] {
        assert!(upstream.asked(name).is_empty(), "{name} asked: {}", upstream.log());
    }
    assert!(!upstream.asked("api.allowed.test").is_empty(), "{}", upstream.log());
}

/// `--always` on a held lookup approves the name: the agent's next lookups are answered
/// with no hold, also after its names were forgotten (a new tag), and its connections to
/// every address of the name are let through by the kernel, with no second decision.
#[test]
fn always_on_a_held_lookup_approves_the_name() {
    let peer = Peer::new();
    let second = peer.add_v4(3);
    let (upstream, daemon) = start_with(&peer, POLICY, &[("twice.test", &[peer.v4, second], 300)]);
    let cgroup = tagged(&daemon);
    let first = peer.tcp(peer.v4.into(), 7207);
    let other = peer.tcp(second.into(), 7207);
    let child = as_agent(&cgroup, &["resolve", "twice.test"]);
    let hold = daemon.pending_one();
    assert_eq!(
        (hold["protocol"].as_str(), hold["domain"].as_str()),
        (Some("dns"), Some("twice.test")),
        "{hold}"
    );
    let approved = daemon.cli(&["approve", hold["id"].as_str().expect("id"), "--always"]);
    assert!(approved.status.success(), "approve: {}", tests::daemon::stderr(&approved));
    let (code, out) = daemon.finish(child);
    assert_eq!(code, 0, "{out}");

    let from = daemon.audit().len();
    succeeds(&daemon, &cgroup, &["resolve-tcp", "twice.test", "7207", "by name"]);
    succeeds(&daemon, &cgroup, &["tcp", &peer.v4.to_string(), "7207", "first address"]);
    first.wait_for("first address");
    daemon.tag(&cgroup, "named-agent");
    succeeds(&daemon, &cgroup, &["resolve", "twice.test"]);
    succeeds(&daemon, &cgroup, &["tcp", &second.to_string(), "7207", "other address"]);
    other.wait_for("other address");
    let decided: Vec<_> = daemon.audit().into_iter().skip(from).filter(|r| r["type"] == "release").collect();
    assert!(decided.is_empty(), "no decision after the approval: {decided:?}");
    let lookups = upstream.asked("twice.test").iter().filter(|asked| *asked == "A").count();
    assert!(lookups >= 3, "looked up three times: {}", upstream.log());
}

/// An agent that resolved a name reaches its address again with no lookup while the answer
/// lasts, and after its TTL is judged by the CIDR rules again (here, held), with no name.
#[test]
fn after_the_ttl_the_address_needs_the_name_again() {
    let peer = Peer::new();
    let (_upstream, daemon) = start(&peer);
    let cgroup = tagged(&daemon);
    let received = reached_by_name(&peer, &daemon, &cgroup, "short.ttl.test", 7204);
    sleep(Duration::from_secs(6));
    let hold = held_and_denied(&daemon, &cgroup, &received, &peer.v4.to_string(), 7204);
    assert!(hold.get("domain").is_none(), "the name's answer has expired: {hold}");
}

/// A reload that stops allowing a name takes effect at once for the addresses it resolved
/// to: the agent's next connection to one is judged by the CIDR rules (here, held), not let
/// through by the kernel until the answer expires.
#[test]
fn a_reload_that_stops_allowing_a_name_stops_its_addresses_at_once() {
    let peer = Peer::new();
    let (_upstream, daemon) = start(&peer);
    let cgroup = tagged(&daemon);
    let received = reached_by_name(&peer, &daemon, &cgroup, "api.allowed.test", 7201);
    assert_eq!(status_dns(&daemon, "forgotten"), 0);

    let from = daemon.audit().len();
    daemon.write_policy("test", &POLICY.replace("*.allowed.test", "*.elsewhere.test"));
    daemon.wait_record(from, |record| record["type"] == "policy_reload");
    wait_until(|| daemon.status()["dns"].to_string(), || status_dns(&daemon, "forgotten") == 1);
    let hold = held_and_denied(&daemon, &cgroup, &received, &peer.v4.to_string(), 7201);
    assert_eq!(hold["policy_rule"], "egress_default", "{hold}");
    assert_eq!(hold["domain"], "api.allowed.test", "still the name the agent resolved: {hold}");
}

/// Tagging an agent anew, or untagging it, forgets the names it resolved: the cgroup starts
/// again with no address let through by name.
#[test]
fn a_retagged_or_untagged_agent_s_names_are_forgotten() {
    let peer = Peer::new();
    let (_upstream, daemon) = start(&peer);
    let cgroup = tagged(&daemon);
    let received = reached_by_name(&peer, &daemon, &cgroup, "api.allowed.test", 7202);
    let at = peer.v4.to_string();

    daemon.tag(&cgroup, "renamed-agent");
    assert_eq!(status_dns(&daemon, "forgotten"), 1);
    let hold = held_and_denied(&daemon, &cgroup, &received, &at, 7202);
    assert!(hold.get("domain").is_none(), "the name was forgotten with the former tag: {hold}");

    succeeds(&daemon, &cgroup, &["resolve-tcp", "api.allowed.test", "7202", "resolved again"]);
    let untagged = daemon.cli(&["untag", &cgroup.relative()]);
    assert!(untagged.status.success(), "untag: {}", tests::daemon::stderr(&untagged));
    assert_eq!(status_dns(&daemon, "forgotten"), 2);
    daemon.tag(&cgroup, "named-agent");
    let hold = held_and_denied(&daemon, &cgroup, &received, &at, 7202);
    assert!(hold.get("domain").is_none(), "the name was forgotten with the agent: {hold}");
}

/// `--always` on a connection held with a name approves the name on that port: the agent's
/// connections to the name's other address, also after its names were forgotten (a new
/// tag) and the name looked up again, are let through by the kernel with no second
/// decision; another port of the name is still held, and a deny rule for the port wins.
#[test]
fn always_on_a_hold_shown_with_a_name_approves_the_name_on_its_port() {
    let peer = Peer::new();
    let second = peer.add_v4(3);
    // Looked up freely (its first domain rule allows another port); its port 7205 is held.
    let named = "[[egress]]\ndomain = \"twice.test\"\nports = [7299]\naction = \"allow\"\n\n[egress_default]";
    let policy = POLICY.replace("[egress_default]", named);
    let (_upstream, daemon) = start_with(&peer, &policy, &[("twice.test", &[peer.v4, second], 300)]);
    let cgroup = tagged(&daemon);
    let listeners = [(peer.v4, peer.tcp(peer.v4.into(), 7205)), (second, peer.tcp(second.into(), 7205))];
    let received_at = |addr: Ipv4Addr| &listeners.iter().find(|(at, _)| *at == addr).expect("a listener").1;

    // Held, then denied: `protocol` to port 0 of `at`.
    let held_at_port_0 = |how: &str, at: Ipv4Addr, protocol: &str| {
        let child = as_agent(&cgroup, &[how, &at.to_string(), "0", "port 0"]);
        let hold = daemon.pending_one();
        assert_eq!((hold["protocol"].as_str(), hold["port"].as_u64()), (Some(protocol), Some(0)), "{hold}");
        assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
        let _ = finish(child);
    };
    // A UDP connect to port 0 of an address no name of the agent resolved to is judged as any.
    held_at_port_0("udp-connected", second, "udp");

    let child = as_agent(&cgroup, &["resolve-tcp", "twice.test", "7205", "first"]);
    // glibc orders a name's addresses by connecting a UDP socket to each, port 0 (RFC 6724's
    // source address selection): let through, as the name is allowed on a port. The one
    // hold is the connection.
    let hold = daemon.pending_one();
    assert_eq!(
        (hold["protocol"].as_str(), hold["domain"].as_str()),
        (Some("tcp"), Some("twice.test")),
        "{hold}"
    );
    let first: Ipv4Addr = hold["address"].as_str().and_then(|a| a.parse().ok()).expect("an IPv4 address");
    let other = if first == peer.v4 { second } else { peer.v4 };
    let approved = daemon.cli(&["approve", hold["id"].as_str().expect("id"), "--always"]);
    assert!(approved.status.success(), "approve: {}", tests::daemon::stderr(&approved));
    assert_eq!(daemon.finish(child).0, 0);
    received_at(first).wait_for("first");
    // The name's address: a UDP connect to port 0 goes through (and its datagram), TCP's is
    // still judged as any.
    succeeds(&daemon, &cgroup, &["udp-connected", &second.to_string(), "0", "named"]);
    held_at_port_0("tcp", second, "tcp");

    let from = daemon.audit().len();
    succeeds(&daemon, &cgroup, &["tcp", &other.to_string(), "7205", "other address"]);
    received_at(other).wait_for("other address");
    // Tagged anew, the agent's names are forgotten and its approvals kept: looked up again
    // (one query, no address ordering), the answer is recorded with the approval.
    let forgotten = status_dns(&daemon, "forgotten");
    daemon.tag(&cgroup, "named-agent");
    assert!(status_dns(&daemon, "forgotten") > forgotten);
    let lookup = hex::encode(query("twice.test", false));
    let (code, out) = daemon.finish(as_agent(&cgroup, &["dns", "udp", &peer.v4.to_string(), "53", &lookup]));
    assert!(code == 0 && out.contains("rcode: 0"), "{out}");
    succeeds(&daemon, &cgroup, &["tcp", &other.to_string(), "7205", "looked up again"]);
    received_at(other).wait_for("looked up again");
    let decided: Vec<_> = daemon.audit().into_iter().skip(from).filter(|r| r["type"] == "release").collect();
    assert!(decided.is_empty(), "the kernel let them through, no release: {decided:?}");

    let another_port = peer.tcp(other.into(), 7206);
    let hold = held_and_denied(&daemon, &cgroup, &another_port, &other.to_string(), 7206);
    assert_eq!(hold["domain"], "twice.test", "{hold}");

    // A reload whose domain rules deny the approved port wins over the approval, even where
    // the first rule naming the name allows another port.
    let from = daemon.audit().len();
    let denying =
        "[[egress]]\ndomain = \"twice.test\"\nports = [7205]\naction = \"deny\"\n\n[egress_default]";
    daemon.write_policy("test", &policy.replace("[egress_default]", denying));
    daemon.wait_record(from, |record| record["type"] == "policy_reload");
    let (code, out) =
        daemon.finish(as_agent(&cgroup, &["tcp", &other.to_string(), "7205", "after the deny rule"]));
    assert_ne!(code, 0, "{out}");
    assert!(daemon.pending().is_empty(), "denied by the kernel, not held");
    assert!(!String::from_utf8_lossy(&received_at(other).bytes()).contains("after the deny rule"));
}

/// `approve_in = "console"` on egress rules: an approval of a name's lookup made for a
/// hold anyone could decide (here `--always`) lets its address through on every port the
/// policy holds but the one a domain rule keeps to the console, whose connection is still
/// held, shown `in_console`, and goes once approved on the host (the console's side). A CIDR
/// rule's hold is shown `in_console` too, and so is a lookup a console-only domain rule holds.
#[test]
fn a_name_approved_anywhere_leaves_its_console_only_port_held() {
    let peer = Peer::new();
    let elsewhere = peer.add_v4(3);
    // Looked up under its first domain rule (anyone decides); its port 7209 is the console's.
    let rules = format!(
        "[[egress]]\ndomain = \"kept.test\"\nports = [7299]\naction = \"hold\"\n\n\
         [[egress]]\ndomain = \"kept.test\"\nports = [7209]\naction = \"hold\"\napprove_in = \"console\"\n\n\
         [[egress]]\ncidr = \"{elsewhere}/32\"\naction = \"hold\"\napprove_in = \"console\"\n\n\
         [[egress]]\ndomain = \"console.test\"\naction = \"hold\"\napprove_in = \"console\"\n\n[egress_default]"
    );
    let policy = POLICY.replace("[egress_default]", &rules);
    let (_upstream, daemon) = start_with(&peer, &policy, &[("kept.test", &[peer.v4], 300)]);
    let cgroup = tagged(&daemon);
    let child = as_agent(&cgroup, &["resolve", "kept.test"]);
    let hold = daemon.pending_one();
    assert_eq!(
        (hold["protocol"].as_str(), hold["domain"].as_str(), hold.get("in_console")),
        (Some("dns"), Some("kept.test"), None),
        "{hold}"
    );
    let approved = daemon.cli(&["approve", hold["id"].as_str().expect("id"), "--always"]);
    assert!(approved.status.success(), "approve: {}", tests::daemon::stderr(&approved));
    assert_eq!(daemon.finish(child).0, 0);

    let at = peer.v4.to_string();
    let ordinary = peer.tcp(peer.v4.into(), 7208);
    succeeds(&daemon, &cgroup, &["tcp", &at, "7208", "ordinary"]);
    ordinary.wait_for("ordinary");
    let kept = peer.tcp(peer.v4.into(), 7209);
    let child = as_agent(&cgroup, &["tcp", &at, "7209", "kept"]);
    let hold = daemon.pending_one();
    assert_eq!(
        (hold["port"].as_u64(), hold["domain"].as_str(), hold["in_console"].as_bool()),
        (Some(7209), Some("kept.test"), Some(true)),
        "{hold}"
    );
    assert!(!String::from_utf8_lossy(&kept.bytes()).contains("kept"), "through before its approval");
    assert!(daemon.cli(&["approve", hold["id"].as_str().expect("id")]).status.success());
    assert_eq!(daemon.finish(child).0, 0);
    kept.wait_for("kept");

    let hold =
        held_and_denied(&daemon, &cgroup, &peer.tcp(elsewhere.into(), 7210), &elsewhere.to_string(), 7210);
    assert_eq!(hold["in_console"], true, "{hold}");

    let child = as_agent(&cgroup, &["resolve", "console.test"]);
    let hold = daemon.pending_one();
    assert_eq!(
        (hold["protocol"].as_str(), hold["domain"].as_str(), hold["in_console"].as_bool()),
        (Some("dns"), Some("console.test"), Some(true)),
        "{hold}"
    );
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let _ = finish(child);
}

/// A cgroup tagged under the `test` policy, for an agent whose processes share one root.
fn tagged(daemon: &Daemon) -> TestCgroup {
    let cgroup = TestCgroup::new();
    daemon.tag(&cgroup, "named-agent");
    cgroup
}

/// The agent in `cgroup` resolves `name` and connects to its address (the peer's) on `port`,
/// then to the address alone: both let through with no hold. Returns the peer's listener.
fn reached_by_name(peer: &Peer, daemon: &Daemon, cgroup: &TestCgroup, name: &str, port: u16) -> Received {
    let received = peer.tcp(peer.v4.into(), port);
    succeeds(daemon, cgroup, &["resolve-tcp", name, &port.to_string(), "by name"]);
    succeeds(daemon, cgroup, &["tcp", &peer.v4.to_string(), &port.to_string(), "again"]);
    received.wait_for("again");
    received
}

/// The agent in `cgroup` connects to `at:port`: held, denied, and nothing reached
/// `received`. Returns the hold as it was listed.
fn held_and_denied(daemon: &Daemon, cgroup: &TestCgroup, received: &Received, at: &str, port: u16) -> Value {
    let child = as_agent(cgroup, &["tcp", at, &port.to_string(), "held"]);
    let hold = daemon.pending_one();
    assert_eq!(
        (hold["address"].as_str(), hold["port"].as_u64()),
        (Some(at), Some(u64::from(port))),
        "{hold}"
    );
    assert!(daemon.cli(&["deny", hold["id"].as_str().expect("id")]).status.success());
    let _ = finish(child);
    assert!(!String::from_utf8_lossy(&received.bytes()).contains("held"), "a denied connection got through");
    hold
}

/// `actor ARGS…` in `cgroup`, as `nobody` (root may decide its holds).
fn as_agent(cgroup: &TestCgroup, args: &[&str]) -> Child {
    agent_in(cgroup, tests::actor_path(), args).spawn().expect("spawn actor")
}

/// `actor ARGS…` in `cgroup` exits 0 with no hold.
fn succeeds(daemon: &Daemon, cgroup: &TestCgroup, args: &[&str]) {
    let (code, out) = daemon.finish(as_agent(cgroup, args));
    assert_eq!(code, 0, "{args:?}: {out}\n{}", daemon.log());
    assert!(daemon.pending().is_empty(), "{args:?} was held");
}
