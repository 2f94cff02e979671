//! A nameserver on a test peer: Debian's dnsmasq in the peer's network namespace, its
//! query log on, the upstream of keyturn's resolver in the tests.

use std::{
    fs,
    net::Ipv4Addr,
    path::PathBuf,
    process::{Child, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::{Peer, WAIT};

/// dnsmasq answering every name of its zones with the peer's IPv4 address (for 300 s) and
/// no IPv6 address, and a few names of their own with addresses and a TTL of their own;
/// killed on drop.
pub struct Nameserver {
    child: Child,
    log: PathBuf,
}

impl Nameserver {
    /// Serves `zones` on the peer's IPv4 address, and each `(name, addresses, ttl)` of
    /// `records`.
    pub fn start(peer: &Peer, zones: &[&str], records: &[(&str, &[Ipv4Addr], u32)]) -> Self {
        let log = std::env::temp_dir().join(format!("kt-nameserver-{}-{}.log", std::process::id(), peer.v4));
        let at = peer.v4.to_string();
        let child = peer
            .command("dnsmasq")
            .args(["--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll"])
            .args(["--bind-interfaces", "--log-queries", "--log-facility=-", "--local-ttl=300"])
            .arg(format!("--listen-address={at}"))
            // Only IPv4: `--local` makes the zone dnsmasq's own, so AAAA gets no data rather
            // than REFUSED (it would be forwarded, and there is no server to forward it to).
            .args(
                zones
                    .iter()
                    .flat_map(|zone| [format!("--address=/{zone}/{at}"), format!("--local=/{zone}/")]),
            )
            .args(records.iter().flat_map(|(name, addresses, ttl)| {
                addresses.iter().map(move |addr| format!("--host-record={name},{addr},{ttl}"))
            }))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("create the nameserver's log"))
            .spawn()
            .expect("start dnsmasq (Debian's dnsmasq-base)");
        let nameserver = Self { child, log };
        let deadline = Instant::now() + WAIT;
        while !nameserver.log().contains("started, version") {
            assert!(Instant::now() < deadline, "dnsmasq did not start: {}", nameserver.log());
            sleep(Duration::from_millis(20));
        }
        nameserver
    }

    /// Its log: a line `query[TYPE] NAME from ADDRESS` for each query it was asked.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The types of the queries for `name` it was asked, in order (`A`, `AAAA`…).
    pub fn asked(&self, name: &str) -> Vec<String> {
        let asked = format!(" {name} from ");
        self.log()
            .lines()
            .filter(|line| line.contains(&asked))
            .filter_map(|line| Some(line.split_once("query[")?.1.split_once(']')?.0.to_owned()))
            .collect()
    }
}

impl Drop for Nameserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.log);
    }
}
