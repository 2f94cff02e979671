//! The kernel hold against the real kernel: real processes in real tagged cgroups make
//! real syscalls to a peer in its own network namespace, and the tests check what the
//! kernel did. Runs in whichever mode `KEYTURN_TEST_MODE` names (else the best one).

use std::{net::IpAddr, os::unix::process::ExitStatusExt as _, path::PathBuf, thread::sleep};

use agent_common::counter;
use keyturn::{
    hold::process::OnDeny,
    hold::table::Happened,
    kernel::EgressHold,
    kernel::mode::Mode,
    policy::{EgressSpec, FileId, KernelPolicy, Verdict},
};
use tests::{
    Kernel, Peer, QUIET, Received, TestCgroup, actor_path, finish, frozen, held, hold_peer_policy,
    process_state, rogue_signal, spawn_actor, thread_states, wait_held, wait_stopped,
};

const MESSAGE: &str = "hello-keyturn";

/// One egress scenario: which actor action, to which address, heard by which listener.
#[derive(Clone)]
struct Egress {
    action: &'static str,
    to: IpAddr,
    port: u16,
    received: Received,
}

fn egress(peer: &Peer, action: &'static str, to: IpAddr, listen: IpAddr, port: u16) -> Egress {
    let received = if action.starts_with("udp") { peer.udp(listen, port) } else { peer.tcp(listen, port) };
    Egress { action, to, port, received }
}

fn setup() -> (Peer, Kernel, TestCgroup) {
    let peer = Peer::new();
    let mut kernel = Kernel::load();
    let cgroup = TestCgroup::new();
    kernel.set_policy(1, &hold_peer_policy(&peer, &[]));
    kernel.tag(&cgroup, 1, 16);
    (peer, kernel, cgroup)
}

fn start(cgroup: Option<&TestCgroup>, e: &Egress, extra: &[&str]) -> std::process::Child {
    let (to, port) = (e.to.to_string(), e.port.to_string());
    let mut args: Vec<&str> = extra.to_vec();
    args.extend([e.action, &to, &port, MESSAGE]);
    spawn_actor(cgroup, &args)
}

/// Held: stopped, nothing reached the peer; a rogue SIGCONT changes nothing; approval
/// completes the very syscall and the data arrives.
fn held_rogue_approved(kernel: &mut Kernel, cgroup: &TestCgroup, e: &Egress, extra: &[&str]) {
    assert_eq!(kernel.enforcer().egress_hold(), EgressHold::Stop);
    let child = start(Some(cgroup), e, extra);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    wait_stopped(pid);
    sleep(QUIET);
    assert!(e.received.bytes().is_empty(), "nothing may reach the peer while held");

    let rogue_before = kernel.counter(counter::ROGUE_CONTINUE);
    rogue_signal(pid, libc::SIGCONT);
    assert!(matches!(kernel.expect_event(pid), Happened::RogueContinueReheld(_)));
    wait_stopped(pid);
    sleep(QUIET);
    assert_eq!(process_state(pid), Some('T'), "a rogue SIGCONT must not release the hold");
    assert!(e.received.bytes().is_empty(), "nothing may reach the peer after a rogue SIGCONT");
    assert!(kernel.counter(counter::ROGUE_CONTINUE) > rogue_before);

    kernel.approve(&key);
    e.received.wait_for(MESSAGE);
    let (out, status) = finish(child);
    assert!(status.success(), "actor failed after approval: {out}");
    assert_eq!(out.trim(), "ok");
}

/// A flood of SIGCONTs at a held process: each one holds it again and is counted, but only
/// the first is reported, so the flood cannot fill the ring buffer that every agent's
/// holds go through. The hold stands, and its approval still delivers.
#[test]
fn a_flood_of_rogue_sigconts_is_counted_and_reported_once() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7024);
    let child = start(Some(&cgroup), &e, &[]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    wait_stopped(pid);
    let before = kernel.counter(counter::ROGUE_CONTINUE);
    for _ in 0..500 {
        rogue_signal(pid, libc::SIGCONT);
        wait_stopped(pid);
    }
    assert!(matches!(kernel.expect_event(pid), Happened::RogueContinueReheld(reheld) if reheld == key));
    sleep(QUIET);
    let more: Vec<_> =
        kernel.enforcer().wait_events(QUIET).into_iter().filter(|event| event.tgid == pid).collect();
    assert!(more.is_empty(), "one report per hold, not {} more", more.len());
    assert!(kernel.counter(counter::ROGUE_CONTINUE) >= before + 500, "every rogue SIGCONT is counted");
    assert!(e.received.bytes().is_empty());
    kernel.approve(&key);
    e.received.wait_for(MESSAGE);
    assert!(finish(child).1.success());
}

#[test]
fn tcp_connect_is_held_and_approval_delivers() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7001);
    held_rogue_approved(&mut kernel, &cgroup, &e, &[]);
}

#[test]
fn udp_sendto_is_held_and_approval_delivers() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "udp", peer.v4.into(), peer.v4.into(), 7002);
    held_rogue_approved(&mut kernel, &cgroup, &e, &[]);
}

/// `udp_sendmsg` reads an `AF_UNSPEC` address on an IPv4 socket as an IPv4 one.
#[test]
fn udp_sendto_an_unspec_address_is_held_and_approval_delivers() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "udp-unspec", peer.v4.into(), peer.v4.into(), 7031);
    held_rogue_approved(&mut kernel, &cgroup, &e, &[]);
}

#[test]
fn connected_udp_is_held_and_approval_delivers() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "udp-connected", peer.v4.into(), peer.v4.into(), 7003);
    held_rogue_approved(&mut kernel, &cgroup, &e, &[]);
}

#[test]
fn ipv6_connect_is_held_and_approval_delivers() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v6.into(), peer.v6.into(), 7004);
    held_rogue_approved(&mut kernel, &cgroup, &e, &[]);
}

#[test]
fn ipv4_mapped_ipv6_is_treated_as_ipv4() {
    let peer = Peer::new();
    let mut kernel = Kernel::load();
    let cgroup = TestCgroup::new();
    // Only the IPv4 network is held: the mapped address must hit that rule.
    let mut policy = hold_peer_policy(&peer, &[]);
    policy.egress.retain(|rule| rule.cidr == peer.v4_net);
    kernel.set_policy(1, &policy);
    kernel.tag(&cgroup, 1, 16);
    let mapped: IpAddr = peer.v4.to_ipv6_mapped().into();
    let e = egress(&peer, "tcp", mapped, peer.v4.into(), 7005);
    held_rogue_approved(&mut kernel, &cgroup, &e, &[]);
}

#[test]
fn tcp_fast_open_is_held_and_approval_delivers() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tfo", peer.v4.into(), peer.v4.into(), 7006);
    held_rogue_approved(&mut kernel, &cgroup, &e, &[]);
}

#[test]
fn multi_threaded_process_is_stopped_whole() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7007);
    let child = start(Some(&cgroup), &e, &["threads", "4"]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    wait_stopped(pid);
    sleep(QUIET);
    let states = thread_states(pid);
    assert!(states.len() >= 5, "expected the actor's 5 threads, saw {states:?}");
    assert!(states.iter().all(|&s| s == 'T' || s == 't'), "every thread must be stopped: {states:?}");
    assert!(e.received.bytes().is_empty());
    kernel.approve(&key);
    e.received.wait_for(MESSAGE);
    assert!(finish(child).1.success());
}

/// A connect from a thread started well after its process: the kernel names that thread,
/// and user space opens it as the very thread that was held (not "process gone").
#[test]
fn a_thread_started_late_is_held_as_itself_and_decided() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7018);
    let child = start(Some(&cgroup), &e, &["late-thread", "300"]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    assert_ne!(key.tid, pid, "the connect came from the late thread, not the main one");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}/task/{}", key.tid)).exists(),
        "the held tid is a thread of the held process"
    );
    wait_stopped(pid);
    sleep(QUIET);
    assert!(e.received.bytes().is_empty());
    kernel.approve(&key);
    e.received.wait_for(MESSAGE);
    let (out, status) = finish(child);
    assert!(status.success(), "{out}");
}

/// Two threads of one process connecting at once: approving the first hold approves only
/// that thread's connect. The other thread's connect is held on its own (raised before or
/// after the first approval: the first stop may catch that thread before its connect), and
/// since a stop is the whole process's, the approved thread may itself wait for that second
/// decision before its connect runs; it never needs a second approval.
#[test]
fn approving_one_threads_hold_releases_only_that_threads_action() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7019);
    let child = start(Some(&cgroup), &e, &["each-thread", "2"]);
    let pid = child.id();
    let first = kernel.expect_hold(pid);
    wait_stopped(pid);
    kernel.approve(&first);
    let second = match kernel.expect_event(pid) {
        Happened::Held(key) | Happened::ReheldAfterRelease(key) => key,
        other => panic!("expected the other thread's hold, got {other:?}"),
    };
    assert_eq!(second.tgid, pid);
    assert_ne!(second.tid, first.tid, "the second hold is the other thread's");
    wait_stopped(pid);
    sleep(QUIET);
    assert!(e.received.connections() <= 1, "the second thread's connect went out unapproved");
    let records = kernel.enforcer().holds().expect("holds");
    let state = |key| records.iter().find(|(k, _)| *k == key).map(|(_, hold)| hold.state);
    assert_eq!(state(second), Some(agent_common::hold_state::PENDING));
    assert!(
        matches!(state(first), None | Some(agent_common::hold_state::APPROVED)),
        "the first thread's approval is used or still waiting for its restart"
    );
    kernel.approve(&second);
    let (out, status) = finish(child);
    assert!(status.success(), "{out}");
    e.received.wait_connections(2);
    let deadline = std::time::Instant::now() + tests::WAIT;
    while String::from_utf8_lossy(&e.received.bytes()).matches(MESSAGE).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "the threads' data never arrived");
        sleep(std::time::Duration::from_millis(5));
    }
}

/// An egress held in a thread that uses io_uring (a request it submitted, or one an io-wq
/// worker runs for it): -ERESTARTNOINTR cannot restart an io_uring request, so the action
/// fails with EPERM at once and the hold is deferred (listed, decided like any other, the
/// process runs on). Nothing reaches the peer before the approval; after it, the same
/// action retried goes through. The application never sees 513.
fn io_uring_is_deferred_and_an_approved_retry_delivers(how: &'static str, port: u16) {
    let (peer, mut kernel, cgroup) = setup();
    let action = if how.starts_with("udp") { "udp" } else { "tcp" };
    let e = egress(&peer, action, peer.v4.into(), peer.v4.into(), port);
    let child = start(Some(&cgroup), &Egress { action: how, ..e.clone() }, &["retry", "uring"]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    assert_eq!(key.tid, 0, "a deferred hold: any thread of the process may retry");
    let held = kernel.holds.get(key).expect("kept").event();
    assert_eq!(held.event_type, agent_common::event_type::DEFERRED);
    sleep(QUIET);
    assert_ne!(process_state(pid), Some('T'), "an io_uring request is never held by a stop");
    assert!(e.received.bytes().is_empty(), "nothing may reach the peer before the approval");
    kernel.approve(&key);
    let (out, status) = finish(child);
    assert!(status.success(), "{out} ({})", kernel.state());
    assert_eq!(out.trim(), "ok");
    e.received.wait_for(MESSAGE);
}

#[test]
fn io_uring_connect_is_deferred_and_an_approved_retry_delivers() {
    io_uring_is_deferred_and_an_approved_retry_delivers("tcp", 7020);
}

#[test]
fn io_uring_connect_run_by_an_io_wq_worker_is_deferred_too() {
    io_uring_is_deferred_and_an_approved_retry_delivers("tcp-async", 7021);
}

#[test]
fn io_uring_sendmsg_is_deferred_and_an_approved_retry_delivers() {
    io_uring_is_deferred_and_an_approved_retry_delivers("udp", 7022);
}

/// Denying an io_uring egress hold kills the process; nothing ever reached the peer.
/// A non-blocking connect asked again for its result, as event loops written against
/// connect(2) do, is one action: held once. The LSM hook runs on every connect call; the
/// calls after the approval only ask about the connection already made.
#[test]
fn a_connect_asked_again_for_its_result_is_held_once() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp-asking", peer.v4.into(), peer.v4.into(), 7025);
    let holds_before = kernel.counter(counter::HOLDS);
    let child = start(Some(&cgroup), &e, &[]);
    let key = kernel.expect_hold(child.id());
    kernel.approve(&key);
    let (out, status) = finish(child);
    assert!(status.success(), "{out} ({})", kernel.state());
    e.received.wait_for(MESSAGE);
    assert_eq!(kernel.counter(counter::HOLDS) - holds_before, 1, "held once: {}", kernel.state());
}

#[test]
fn a_denied_io_uring_connect_kills_and_delivers_nothing() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7023);
    let child = start(Some(&cgroup), &e, &["retry", "uring"]);
    let key = kernel.expect_hold(child.id());
    kernel.deny(&key, OnDeny::Kill);
    assert_eq!(finish(child).1.signal(), Some(libc::SIGKILL));
    sleep(QUIET);
    assert!(e.received.bytes().is_empty(), "a denied connection must never reach the peer");
    assert_eq!(e.received.connections(), 0);
}

#[test]
fn deny_kills_the_held_process() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7008);
    let child = start(Some(&cgroup), &e, &[]);
    let key = kernel.expect_hold(child.id());
    wait_stopped(child.id());
    kernel.deny(&key, OnDeny::Kill);
    let (_, status) = finish(child);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    sleep(QUIET);
    assert!(e.received.bytes().is_empty(), "a denied connection must never reach the peer");
}

#[test]
fn deny_with_fail_returns_eperm_to_the_syscall() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7009);
    let child = start(Some(&cgroup), &e, &[]);
    let key = kernel.expect_hold(child.id());
    wait_stopped(child.id());
    kernel.deny(&key, OnDeny::Fail);
    let (out, status) = finish(child);
    assert!(!status.success());
    assert_eq!(out.trim(), format!("error: {}", libc::EPERM));
    assert!(e.received.bytes().is_empty());
}

#[test]
fn untagged_process_is_untouched() {
    let (peer, mut kernel, _cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7010);
    let holds_before = kernel.counter(counter::HOLDS);
    let (out, status) = finish(start(None, &e, &[]));
    assert!(status.success(), "{out}");
    e.received.wait_for(MESSAGE);
    assert_eq!(kernel.counter(counter::HOLDS), holds_before);
}

#[test]
fn allowed_and_denied_destinations_are_decided_in_the_kernel() {
    let peer = Peer::new();
    let mut kernel = Kernel::load();
    let cgroup = TestCgroup::new();
    let mut policy = hold_peer_policy(&peer, &[]);
    let rule = |ports: Vec<(u16, u16)>, verdict| EgressSpec {
        cidr: peer.v4_net,
        ports,
        protocol: 0,
        verdict,
        quorum: 1,
        in_console: false,
        notify: vec![],
    };
    policy.egress.insert(0, rule(vec![(7011, 7011)], Verdict::Allow));
    policy.egress.insert(0, rule(vec![(7012, 7012)], Verdict::Deny));
    kernel.set_policy(1, &policy);
    kernel.tag(&cgroup, 1, 16);
    let holds_before = kernel.counter(counter::HOLDS);

    let allowed = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7011);
    let (out, status) = finish(start(Some(&cgroup), &allowed, &[]));
    assert!(status.success(), "allowed port: {out}");
    allowed.received.wait_for(MESSAGE);

    let denied = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7012);
    let (out, status) = finish(start(Some(&cgroup), &denied, &[]));
    assert!(!status.success());
    assert_eq!(out.trim(), format!("error: {}", libc::EPERM));
    assert_eq!(kernel.counter(counter::HOLDS), holds_before, "neither may raise a hold");
}

#[test]
fn cgroups_created_under_a_tagged_one_are_enforced() {
    let (peer, mut kernel, cgroup) = setup();
    let child_cgroup = cgroup.child("later");
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7013);
    let child = start(Some(&child_cgroup), &e, &[]);
    let key = kernel.expect_hold(child.id());
    wait_stopped(child.id());
    assert_eq!(kernel.holds.get(key).expect("held").event().hold.root, cgroup.id());
    kernel.approve(&key);
    e.received.wait_for(MESSAGE);
    assert!(finish(child).1.success());
}

#[test]
fn flood_beyond_max_pending_is_refused_and_counted() {
    let peer = Peer::new();
    let mut kernel = Kernel::load();
    let cgroup = TestCgroup::new();
    kernel.set_policy(1, &hold_peer_policy(&peer, &[]));
    kernel.tag(&cgroup, 1, 2);
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7014);
    let first = start(Some(&cgroup), &e, &[]);
    let second = start(Some(&cgroup), &e, &[]);
    let first_key = kernel.expect_hold(first.id());
    let second_key = kernel.expect_hold(second.id());
    let refused_before = kernel.counter(counter::FLOOD_REFUSED);
    let (out, status) = finish(start(Some(&cgroup), &e, &[]));
    assert!(!status.success());
    assert_eq!(out.trim(), format!("error: {}", libc::EPERM), "the third hold must be refused at once");
    assert_eq!(kernel.counter(counter::FLOOD_REFUSED), refused_before + 1);
    // A decision frees a slot.
    kernel.approve(&first_key);
    assert!(finish(first).1.success());
    let third = start(Some(&cgroup), &e, &[]);
    let third_key = kernel.expect_hold(third.id());
    kernel.approve(&second_key);
    kernel.approve(&third_key);
    assert!(finish(second).1.success());
    assert!(finish(third).1.success());
}

#[test]
fn without_a_daemon_heartbeat_flagged_actions_fail() {
    let peer = Peer::new();
    // Long enough for the child started after the heartbeat below to connect in time, even
    // under emulation on a busy host.
    let liveness = std::time::Duration::from_secs(2);
    let mut kernel = Kernel::load_with(|o| o.liveness_timeout = liveness);
    let cgroup = TestCgroup::new();
    kernel.set_policy(1, &hold_peer_policy(&peer, &[]));
    kernel.tag(&cgroup, 1, 16);
    sleep(liveness + QUIET);
    let absent_before = kernel.counter(counter::DAEMON_ABSENT);
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7015);
    let (out, status) = finish(start(Some(&cgroup), &e, &[]));
    assert!(!status.success());
    assert_eq!(out.trim(), format!("error: {}", libc::EPERM));
    assert_eq!(kernel.counter(counter::DAEMON_ABSENT), absent_before + 1);
    // A heartbeat brings holds back.
    kernel.enforcer().heartbeat().expect("heartbeat");
    let child = start(Some(&cgroup), &e, &[]);
    let key = kernel.expect_hold(child.id());
    kernel.approve(&key);
    assert!(finish(child).1.success());
}

#[test]
fn holds_survive_a_daemon_restart() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7016);
    let child = start(Some(&cgroup), &e, &[]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    wait_stopped(pid);
    let mut kernel = kernel.restart();
    sleep(QUIET);
    assert_eq!(process_state(pid), Some('T'), "the process stays held while no daemon runs");
    let records = kernel.enforcer().holds().expect("holds");
    let (_, hold) = records.iter().find(|(k, _)| *k == key).expect("the hold is still in the pinned map");
    // The restarted daemon rebuilds its view from the pinned record and decides.
    let event = keyturn::hold::process::event_from_record(key, hold);
    let reopened = keyturn::hold::process::HeldProcess::open(&event).expect("reopen the held process");
    reopened.release(kernel.enforcer()).expect("release");
    e.received.wait_for(MESSAGE);
    assert!(finish(child).1.success());
}

/// A pinned map of another layout (as another build would leave: here `STOPS`'s pin moved
/// over `CONFIG`) is refused at load and named, never read as this build's `CONFIG`.
#[test]
fn pins_of_another_layout_are_refused_by_name() {
    let kernel = Kernel::load();
    let config = kernel.pin_dir.join("CONFIG");
    std::fs::remove_file(&config).expect("unpin CONFIG");
    std::fs::rename(kernel.pin_dir.join("STOPS"), &config).expect("pin STOPS as CONFIG");
    let options = keyturn::kernel::Options {
        mode: tests::test_mode(),
        pin_dir: kernel.pin_dir.clone(),
        ..keyturn::kernel::Options::default()
    };
    let Err(error) = keyturn::kernel::Enforcer::load(&options) else { panic!("a foreign CONFIG was used") };
    let message = error.to_string();
    assert!(
        message.contains(&format!("pinned map {} was made by another keyturn build", config.display())),
        "{message}"
    );
}

#[test]
fn an_approval_releases_only_its_own_process() {
    let (peer, mut kernel, cgroup) = setup();
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7017);
    let first = start(Some(&cgroup), &e, &[]);
    let second = start(Some(&cgroup), &e, &[]);
    let first_key = kernel.expect_hold(first.id());
    let second_key = kernel.expect_hold(second.id());
    wait_stopped(second.id());
    kernel.approve(&first_key);
    assert!(finish(first).1.success());
    // The same action by another process stays held; a SIGCONT does not help it.
    rogue_signal(second.id(), libc::SIGCONT);
    sleep(QUIET);
    assert_eq!(process_state(second.id()), Some('T'));
    kernel.deny(&second_key, OnDeny::Kill);
    assert_eq!(finish(second).1.signal(), Some(libc::SIGKILL));
}

#[test]
fn egress_retry_mode_fails_then_succeeds_after_approval() {
    let peer = Peer::new();
    let mut kernel = Kernel::load_with(|o| o.egress_retry = true);
    if kernel.enforcer().mode() != Mode::CgroupSock {
        // Proof of why there is nothing to test: LSM modes always hold egress.
        assert_eq!(kernel.enforcer().egress_hold(), EgressHold::Stop);
        return;
    }
    assert_eq!(kernel.enforcer().egress_hold(), EgressHold::FailThenRetry);
    let cgroup = TestCgroup::new();
    kernel.set_policy(1, &hold_peer_policy(&peer, &[]));
    kernel.tag(&cgroup, 1, 16);
    let e = egress(&peer, "tcp", peer.v4.into(), peer.v4.into(), 7018);
    let child = start(Some(&cgroup), &e, &["retry"]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    assert_eq!(key.tid, 0, "a deferred hold belongs to the whole process");
    sleep(QUIET);
    assert!(e.received.bytes().is_empty(), "retries fail until approved");
    assert_ne!(process_state(pid), Some('T'), "a deferred hold does not stop the process");
    kernel.approve(&key);
    e.received.wait_for(MESSAGE);
    let (out, status) = finish(child);
    assert!(status.success(), "{out}");
}

/// A copy of a real program, flagged by file identity.
fn flagged_copy(dir: &std::path::Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/echo", &path).expect("copy echo");
    path
}

fn exec_setup(flagged: &[PathBuf]) -> (Peer, Kernel, TestCgroup) {
    let peer = Peer::new();
    let mut kernel = Kernel::load();
    let cgroup = TestCgroup::new();
    kernel.set_policy(1, &hold_peer_policy(&peer, flagged));
    kernel.tag(&cgroup, 1, 16);
    (peer, kernel, cgroup)
}

fn scratch_dir() -> PathBuf {
    static SERIAL: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("kt-exec-{}-{serial}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn exec_of_a_flagged_program_is_held_and_approval_runs_it() {
    let dir = scratch_dir();
    let flagged = flagged_copy(&dir, "flagged-echo");
    let (_peer, mut kernel, cgroup) = exec_setup(std::slice::from_ref(&flagged));
    let child = spawn_actor(Some(&cgroup), &["exec", flagged.to_str().expect("utf-8"), "exec-ran"]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    wait_held(pid);
    sleep(QUIET);
    assert!(held(pid));
    let event = *kernel.holds.get(key).expect("held").event();
    let path = String::from_utf8_lossy(&event.path);
    assert!(path.starts_with(flagged.to_str().expect("utf-8")), "event names the executable: {path}");
    kernel.approve(&key);
    let (out, status) = finish(child);
    assert!(status.success());
    assert_eq!(out.trim(), "exec-ran");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_renamed_hard_link_of_a_flagged_program_is_still_held() {
    let dir = scratch_dir();
    let flagged = flagged_copy(&dir, "flagged-echo");
    let alias = dir.join("innocent-name");
    std::fs::hard_link(&flagged, &alias).expect("hard link");
    let (_peer, mut kernel, cgroup) = exec_setup(&[flagged]);
    let child = spawn_actor(Some(&cgroup), &["exec", alias.to_str().expect("utf-8"), "alias-ran"]);
    let key = kernel.expect_hold(child.id());
    wait_held(child.id());
    kernel.deny(&key, OnDeny::Kill);
    let (out, status) = finish(child);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!out.contains("alias-ran"), "a denied program must not run");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn exec_hold_resists_a_rogue_sigcont() {
    let dir = scratch_dir();
    let flagged = flagged_copy(&dir, "flagged-echo");
    let (_peer, mut kernel, cgroup) = exec_setup(std::slice::from_ref(&flagged));
    let child = spawn_actor(Some(&cgroup), &["exec", flagged.to_str().expect("utf-8"), "rogue-ran"]);
    let pid = child.id();
    let key = kernel.expect_hold(pid);
    wait_held(pid);
    rogue_signal(pid, libc::SIGCONT);
    match kernel.expect_event(pid) {
        Happened::RogueContinueReheld(_) => {
            // LSM modes: the exec restarted and was held again before it happened.
            wait_held(pid);
            sleep(QUIET);
            assert_eq!(process_state(pid), Some('T'));
            kernel.approve(&key);
            assert_eq!(finish(child).0.trim(), "rogue-ran");
        }
        Happened::RogueContinueFrozen(_) => {
            // cgroup-sock mode: the exec had happened, but the process sits in a frozen
            // cgroup of its own: the SIGCONT cannot run it, and the hold stands.
            assert_eq!(kernel.enforcer().mode(), Mode::CgroupSock);
            sleep(QUIET);
            assert!(frozen(pid), "the held process must stay frozen");
            kernel.approve(&key);
            let (out, status) = finish(child);
            assert!(status.success());
            assert_eq!(out.trim(), "rogue-ran", "approval runs the program once, and only then");
        }
        other => panic!("unexpected {other:?}"),
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn unflagged_exec_and_untagged_exec_run_freely() {
    let dir = scratch_dir();
    let flagged = flagged_copy(&dir, "flagged-echo");
    let (_peer, mut kernel, cgroup) = exec_setup(std::slice::from_ref(&flagged));
    let holds_before = kernel.counter(counter::HOLDS);
    let (out, status) = finish(spawn_actor(Some(&cgroup), &["exec", "/bin/echo", "free"]));
    assert!(status.success());
    assert_eq!(out.trim(), "free");
    let (out, status) = finish(spawn_actor(None, &["exec", flagged.to_str().expect("utf-8"), "untagged"]));
    assert!(status.success());
    assert_eq!(out.trim(), "untagged");
    assert_eq!(kernel.counter(counter::HOLDS), holds_before);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_program_changed_after_its_verdict_was_recorded_is_held_again() {
    let dir = scratch_dir();
    let program = flagged_copy(&dir, "judged-echo");
    let mut kernel = Kernel::load();
    let cgroup = TestCgroup::new();
    // As the daemon sets it: the kernel asks about every file version it has no verdict for.
    let policy = KernelPolicy {
        exec_default: Verdict::Hold,
        egress_default: Verdict::Allow,
        executables: vec![(FileId::of(&actor_path()).expect("stat actor"), Verdict::Allow)],
        egress: vec![],
    };
    kernel.set_policy(1, &policy);
    kernel
        .enforcer()
        .record_exec_verdict(1, FileId::of(&program).expect("stat"), Verdict::Allow)
        .expect("record");
    kernel.tag(&cgroup, 1, 16);

    let (out, status) =
        finish(spawn_actor(Some(&cgroup), &["exec", program.to_str().expect("utf-8"), "v1-ran"]));
    assert!(status.success() && out.contains("v1-ran"), "the recorded version runs: {out}");
    assert_eq!(kernel.counter(counter::HOLDS), 0, "and is decided in the kernel, with no hold");

    // A chmod is enough to make a new version: its change time moved.
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o750)).expect("chmod");
    let child = spawn_actor(Some(&cgroup), &["exec", program.to_str().expect("utf-8"), "v2-ran"]);
    let key = kernel.expect_hold(child.id());
    wait_held(child.id());
    kernel.deny(&key, OnDeny::Kill);
    let (out, status) = finish(child);
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(!out.contains("v2-ran"), "an unjudged version must not run");
    std::fs::remove_dir_all(dir).ok();
}
