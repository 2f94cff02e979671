//! Real agent runtimes under the real daemon: Python, Go, Java and Node programs connect to
//! a peer host, and C programs exec a flagged program, from the threads their runtimes use
//! (late threads, pool workers, event loops, goroutines, executors, worker threads, vfork
//! children). Each action must be held, listed by `keyturn pending` with the process and
//! the thread that acted, and decided: an approval completes it, a denial kills. Given a
//! name the policy holds rather than the peer's address, each runtime's own resolver looks
//! it up through keyturn's, and the lookup itself is held, for longer than the runtime's
//! resolver waits for an answer.

use std::{path::Path, thread::sleep, time::Duration};

use serde_json::Value;
use tests::{
    QUIET, Received, frozen, held, process_state,
    runtimes::{
        JAVA, JVM_FLAGS, Lab, NODE, PEER_ZONE, PYTHON, decide, field, interpreter, program, thread_name,
        threads, wait_all_stopped, wait_until,
    },
};

/// What the HTTP server on the peer answers.
const BODY: &str = "next-step: tidy the repo";
/// First port of a test's listeners on the peer; each case gets its own.
const FIRST_PORT: u16 = 7100;

#[derive(Clone, Copy, Debug)]
enum Decision {
    Approve,
    Deny,
}

impl Decision {
    /// The `keyturn` command that makes it.
    fn verb(self) -> &'static str {
        match self {
            Self::Approve => "approve",
            Self::Deny => "deny",
        }
    }
}

const DECISIONS: [Decision; 2] = [Decision::Approve, Decision::Deny];

/// Which thread of the agent acts.
#[derive(Clone, Copy)]
enum Caller {
    /// The main thread (its tid is the pid), as the program reports it.
    Main,
    /// Another thread, as the program reports it.
    Other,
    /// Another thread, as the program reports it, started at least `LATE_TICKS` after its
    /// process: its start time is its own, not its process's.
    Late,
    /// A thread the runtime picks; the program reports only its pid. Not the main thread,
    /// and its name (`/proc/PID/task/TID/comm`) starts with this.
    Picked(&'static str),
}

/// 0.3 s in the clock ticks of `/proc/PID/stat` (`USER_HZ` = 100).
const LATE_TICKS: u64 = 30;

/// When thread `tid` of `pid` started, in clock ticks since boot.
fn started(pid: u32, tid: u32) -> u64 {
    let stat = format!("/proc/{pid}/task/{tid}/stat");
    keyturn::hold::procfs::stat_at(Path::new(&stat))
        .unwrap_or_else(|| panic!("{stat} unreadable"))
        .start_ticks
}

/// Where a case's agent connects (the peer's address or a name of it), and what it sends:
/// the report itself over raw TCP, or a GET of `/REPORT` over HTTP.
struct Target {
    host: String,
    port: u16,
    report: String,
}

impl Target {
    fn url(&self) -> String {
        format!("http://{}:{}/{}", self.host, self.port, self.report)
    }
}

/// A connection an agent makes, held by the policy's egress rule for the peer.
struct Egress {
    name: &'static str,
    caller: Caller,
    http: bool,
    /// The agent's argv for a target.
    argv: fn(&Target) -> Vec<String>,
}

impl Egress {
    /// What the peer receives once the connection is approved.
    fn arrives(&self, target: &Target) -> String {
        if self.http { format!("GET /{} HTTP/1.1", target.report) } else { target.report.clone() }
    }

    /// The line the agent prints once done.
    fn done_line(&self, target: &Target) -> String {
        if self.http { format!("status 200 body {BODY}") } else { format!("sent {}", target.report.len()) }
    }
}

/// Which decisions the cases of a run get.
#[derive(Clone, Copy)]
enum Decisions {
    /// Each case is run twice, approved and denied.
    Both,
    /// Each case is run once, approved and denied in turn (the first case approved).
    InTurn,
}

/// Runs the cases with their decisions, side by side, in `lab`; then checks the audit
/// trail: each action held once and decided once, none dropped.
fn run_cases<C: Sync>(
    lab: &Lab,
    cases: &[C],
    decisions: Decisions,
    check: impl Fn(&Lab, &C, u16, Decision) + Sync,
) {
    // One run of cases at a time: agents of several runtimes starting together outrun the
    // time they have to start (WAIT) under emulation, in the VM tests' two CPUs.
    static ONE_RUN_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_RUN_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let runs: Vec<(&C, Decision)> = match decisions {
        Decisions::Both => cases.iter().flat_map(|case| DECISIONS.map(|decision| (case, decision))).collect(),
        Decisions::InTurn => cases.iter().zip(DECISIONS.into_iter().cycle()).collect(),
    };
    std::thread::scope(|scope| {
        for (port, &(case, decision)) in (FIRST_PORT..).zip(&runs) {
            let check = &check;
            scope.spawn(move || check(lab, case, port, decision));
        }
    });
    let trail = lab.daemon.audit();
    let ids = |kind: &str, id: fn(&Value) -> &Value| {
        let mut ids: Vec<String> =
            trail.iter().filter(|e| e["type"] == kind).map(|e| id(e).to_string()).collect();
        ids.sort();
        ids
    };
    let held = ids("hold", |e| &e["hold"]["id"]);
    assert_eq!(held.len(), runs.len(), "one hold per run: {held:?}");
    assert_eq!(ids("decision", |e| &e["id"]), held, "one decision per hold");
    assert_eq!(ids("hold_closed", |e| &e["id"]), Vec::<String>::new(), "holds closed without a decision");
    let verified = lab.daemon.cli(&["audit", "verify"]);
    assert!(
        verified.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// Nothing reached the peer's listener.
fn nothing_reached(received: &Received) -> bool {
    received.connections() == 0 && received.bytes().is_empty()
}

/// One agent's run: where it goes, what the peer received, the agent itself, and the
/// process and thread it says act.
struct Run {
    target: Target,
    received: Received,
    agent: tests::runtimes::Agent,
    pid: u32,
    reported: Option<u32>,
}

impl Run {
    fn start(lab: &Lab, case: &Egress, port: u16, decision: Decision) -> Self {
        let label = format!("{}-{}", case.name, decision.verb());
        let target = Target { host: lab.peer_host(&label), port, report: format!("report-{label}") };
        let at = lab.peer.v4.into();
        let received = if case.http { lab.peer.http(at, port, BODY) } else { lab.peer.tcp(at, port) };
        let mut agent = lab.run(&(case.argv)(&target));
        let (pid, reported) = match case.caller {
            Caller::Picked(_) => (agent.number("pid"), None),
            Caller::Main | Caller::Other | Caller::Late => {
                let (pid, tid) = agent.acting();
                (pid, Some(tid))
            }
        };
        Self { target, received, agent, pid, reported }
    }

    /// Decides `hold` and checks the outcome: approved, the agent completes its action;
    /// denied, it is killed and nothing reached the peer.
    fn decide(self, lab: &Lab, case: &Egress, hold: &Value, decision: Decision) {
        decide(&lab.daemon, hold, decision.verb());
        let done_line = case.done_line(&self.target);
        let Self { target, received, agent, .. } = self;
        let finished = agent.finish();
        match decision {
            Decision::Approve => {
                received.wait_for(&case.arrives(&target));
                assert_eq!(finished.code, 0, "{}: {finished:?}", case.name);
                assert!(finished.stdout.contains(&done_line), "{}: {finished:?}", case.name);
            }
            Decision::Deny => {
                assert_eq!(finished.code, 128 + libc::SIGKILL, "{}: {finished:?}", case.name);
                assert!(!finished.stdout.contains(&done_line), "{}: {finished:?}", case.name);
                sleep(QUIET);
                assert!(nothing_reached(&received), "{}: a denied action reached the peer", case.name);
            }
        }
    }
}

/// One held connection: the agent acts, the hold is listed with its process, thread and
/// destination, the process is stopped whole and nothing reached the peer; then the
/// decision, and its outcome.
fn check_egress(lab: &Lab, case: &Egress, port: u16, decision: Decision) {
    let run = Run::start(lab, case, port, decision);
    let (pid, reported) = (run.pid, run.reported);
    let hold = lab.daemon.pending_matching(|hold| hold["pid"] == pid && hold["kind"] == "egress");
    let what = format!("{} ({}): {hold}", case.name, decision.verb());
    assert_eq!(
        (&hold["address"], &hold["domain"], &hold["port"], &hold["protocol"], &hold["hold"]),
        (
            &Value::from(lab.peer.v4.to_string()),
            &Value::Null,
            &Value::from(port),
            &Value::from("tcp"),
            &Value::from("held")
        ),
        "{what}"
    );
    let rule = hold["policy_rule"].as_str().unwrap_or_default();
    assert!(rule.contains(&lab.peer.v4.to_string()), "{what}: held by {rule:?}");
    let tid = field(&hold, "tid");
    match case.caller {
        Caller::Main => assert_eq!((reported, tid), (Some(pid), pid), "{what}"),
        Caller::Other | Caller::Late => {
            assert!(reported.is_some_and(|t| t != pid), "{what}: the program acted from its main thread");
            assert_eq!(Some(tid), reported, "{what}");
        }
        Caller::Picked(name) => {
            assert!(tid != pid && threads(pid).contains(&tid), "{what}: tid {tid} of {:?}", threads(pid));
            let comm = thread_name(pid, tid);
            assert!(comm.starts_with(name), "{what}: thread {tid} is {comm:?}, not {name}…");
        }
    }
    if let Caller::Late = case.caller {
        let late = started(pid, tid) - started(pid, pid);
        assert!(late >= LATE_TICKS, "{what}: the thread started only {late} ticks after its process");
    }
    wait_all_stopped(pid);
    assert!(
        nothing_reached(&run.received),
        "{what}: reached the peer while held: {:?}",
        run.received.bytes()
    );
    run.decide(lab, case, &hold, decision);
}

/// How long a held lookup waits for its decision: longer than the runtimes' resolvers
/// wait for an answer (glibc's and Go's: two tries of 5 s), so that an approval shows the
/// very lookup answered after it.
const LONG_HOLD: Duration = Duration::from_secs(11);

/// One held lookup: the runtime's own resolver asks for a name of the peer that the policy
/// holds; the hold is listed with the name (`dns`), the process is stopped whole, and the
/// nameserver was asked nothing, for [`LONG_HOLD`]; then the decision: approved, the lookup
/// is answered and the connection to the answer goes through with no second hold (the run's
/// audit check counts one hold); denied, the agent is killed.
fn check_lookup(lab: &Lab, case: &Egress, port: u16, decision: Decision) {
    let run = Run::start(lab, case, port, decision);
    let pid = run.pid;
    let hold = lab.daemon.pending_matching(|hold| hold["pid"] == pid && hold["kind"] == "egress");
    let what = format!("{} ({}): {hold}", case.name, decision.verb());
    let name = run.target.host.as_str();
    assert_eq!(
        (&hold["domain"], &hold["port"], &hold["protocol"], &hold["hold"]),
        (&Value::from(name), &Value::from(53), &Value::from("dns"), &Value::from("held")),
        "{what}"
    );
    let rule = hold["policy_rule"].as_str().unwrap_or_default();
    assert!(rule.contains(&format!("*.{PEER_ZONE}")), "{what}: held by {rule:?}");
    wait_all_stopped(pid);
    sleep(LONG_HOLD);
    let nameserver = lab.nameserver.as_ref().expect("a lab with names");
    assert!(
        nameserver.asked(name).is_empty(),
        "{what}: asked before a decision: {:?}",
        nameserver.asked(name)
    );
    assert!(nothing_reached(&run.received), "{what}: reached the peer while held");
    run.decide(lab, case, &hold, decision);
}

/// `INTERPRETER SCRIPT PATTERN HOST PORT REPORT`, how the Python and Node agents run.
fn script(interpreter_path: &'static str, name: &str, pattern: &str, target: &Target) -> Vec<String> {
    let port = target.port.to_string();
    [interpreter(interpreter_path), &program(name), pattern, &target.host, &port, &target.report]
        .map(str::to_owned)
        .into()
}

fn python(pattern: &str, target: &Target) -> Vec<String> {
    script(PYTHON, "agent.py", pattern, target)
}

/// Python: a `threading.Thread` started 0.3 s after its process (its start time is its
/// own, not its process's).
const PYTHON_LATE_THREAD: Egress =
    Egress { name: "late-thread", caller: Caller::Late, http: false, argv: |t| python("late-thread", t) };
/// Python: a `ThreadPoolExecutor` worker (which looks a name up itself).
const PYTHON_POOL: Egress =
    Egress { name: "pool", caller: Caller::Other, http: false, argv: |t| python("pool", t) };
/// Python: `asyncio.open_connection` on the main thread's event loop (which looks a name up
/// with `getaddrinfo` in a thread of the loop's default executor, then connects itself).
const PYTHON_ASYNCIO: Egress =
    Egress { name: "asyncio", caller: Caller::Main, http: false, argv: |t| python("asyncio", t) };

/// Python's late thread, pool worker and event loop, each given the peer's address.
#[test]
fn python_threads_pools_and_asyncio_are_held_listed_and_decided() {
    run_cases(
        &Lab::start(),
        &[PYTHON_LATE_THREAD, PYTHON_POOL, PYTHON_ASYNCIO],
        Decisions::Both,
        check_egress,
    );
}

/// Go: `net.Dial` from a goroutine, with `GOMAXPROCS` ≥ 4 and goroutines busy meanwhile;
/// the main goroutine keeps the main thread, so every connect comes from another OS thread.
/// The agent is built without cgo: a name is looked up by Go's own resolver, in goroutines.
const GO_DIAL: Egress = Egress {
    name: "go-dial",
    caller: Caller::Other,
    http: false,
    argv: |t| vec![program("go-agent"), "dial".into(), format!("{}:{}", t.host, t.port), t.report.clone()],
};
/// Go: `net/http`, whose transport dials in a goroutine of its own.
const GO_HTTP: Egress = Egress {
    name: "go-http",
    caller: Caller::Other,
    http: true,
    argv: |t| vec![program("go-agent"), "http".into(), t.url()],
};

/// Go's `net.Dial` and `net/http`, each given the peer's address.
#[test]
fn go_dial_and_net_http_from_goroutines_are_held_listed_and_decided() {
    run_cases(&Lab::start(), &[GO_DIAL, GO_HTTP], Decisions::Both, check_egress);
}

/// Java: `HttpClient.sendAsync`; the client connects from a thread of its executor, which
/// the JDK names `HttpClient-N-Worker-M` (`HttpClient-1-Wo` in `comm`). A name is looked up
/// by `InetAddress` (the system's `getaddrinfo`).
const JAVA_HTTP_CLIENT: Egress = Egress {
    name: "java-http-client",
    caller: Caller::Picked("HttpClient-"),
    http: true,
    argv: |t| {
        let classes = program("java");
        let mut argv = vec![interpreter(JAVA).to_owned()];
        argv.extend(JVM_FLAGS.map(str::to_owned));
        argv.extend(["-cp".into(), classes, "Agent".into(), t.url()]);
        argv
    },
};

/// Java's `HttpClient`, given the peer's address. One JVM per decision: a JVM start costs
/// seconds under emulation.
#[test]
fn java_http_client_from_its_executor_is_held_listed_and_decided() {
    run_cases(&Lab::start(), &[JAVA_HTTP_CLIENT], Decisions::Both, check_egress);
}

/// An agent's own timeouts run while it is held, and keyturn cannot stop them: Go's
/// `net/http` gives each dial a deadline (30 s in its `DefaultTransport`), computed before
/// `connect(2)`. An approval within it completes the request; one after it lets the connect
/// happen (the peer accepts it), but Go has given up (`dial tcp …: i/o timeout`) and closes
/// the connection unused. The README tells approvers so. Shown with Go's 30 s and a 2 s
/// dial timeout.
#[test]
fn an_agents_own_dial_deadline_runs_while_it_is_held() {
    const SHORT: Duration = Duration::from_secs(2);
    let lab = Lab::start();
    for (port, dial_timeout, approve_after, completes) in [
        (FIRST_PORT, Duration::from_secs(30), Duration::ZERO, true),
        (FIRST_PORT + 1, SHORT, SHORT + Duration::from_secs(1), false),
    ] {
        let target = Target { host: lab.peer_host("deadline"), port, report: format!("report-{port}") };
        let received = lab.peer.http(lab.peer.v4.into(), target.port, BODY);
        let dial_timeout = format!("-dial-timeout={}s", dial_timeout.as_secs());
        let mut agent = lab.run(&[program("go-agent"), dial_timeout, "http".into(), target.url()]);
        let (pid, _) = agent.acting();
        let hold = lab.daemon.pending_matching(|hold| hold["pid"] == pid && hold["kind"] == "egress");
        sleep(approve_after);
        decide(&lab.daemon, &hold, Decision::Approve.verb());
        let finished = agent.finish();
        if completes {
            assert_eq!(finished.code, 0, "approved in time, yet the agent failed: {finished:?}");
            received.wait_for(&format!("GET /{} HTTP/1.1", target.report));
        } else {
            assert_eq!(finished.code, 1, "the agent's own deadline passed while it was held: {finished:?}");
            received.wait_connections(1);
            assert!(received.bytes().is_empty(), "Go closes the late connection unused");
        }
    }
}

fn node(pattern: &str, target: &Target) -> Vec<String> {
    script(NODE, "agent.mjs", pattern, target)
}

/// Node: `net.connect` from the main thread's event loop (a name is looked up by
/// `dns.lookup`, `getaddrinfo` in a thread of libuv's pool).
const NODE_MAIN: Egress =
    Egress { name: "node-main", caller: Caller::Main, http: false, argv: |t| node("main", t) };
/// Node: `net.connect` from a `worker_threads` Worker.
const NODE_WORKER: Egress =
    Egress { name: "node-worker", caller: Caller::Other, http: false, argv: |t| node("worker", t) };

/// Node's main thread and a Worker, each given the peer's address.
#[test]
fn node_main_thread_and_worker_connects_are_held_listed_and_decided() {
    run_cases(&Lab::start(), &[NODE_MAIN, NODE_WORKER], Decisions::Both, check_egress);
}

/// Every runtime given a name of the peer that the policy holds: its own resolver looks it
/// up (Python's `getaddrinfo` in asyncio's executor, Go's pure-Go resolver, Java's
/// `InetAddress`, Node's `dns.lookup` in libuv's pool), and keyturn holds the lookup with
/// the runtime stopped, longer than the runtime would wait; approved, the runtime gets its
/// answer and connects; denied, it is killed.
#[test]
fn runtimes_looking_up_a_held_name_wait_stopped_and_are_decided() {
    run_cases(
        &Lab::start_with_names(),
        &[PYTHON_ASYNCIO, GO_DIAL, JAVA_HTTP_CLIENT, NODE_MAIN],
        // One agent per runtime at once: four runtimes starting together under emulation
        // (the VM tests) are slow enough already.
        Decisions::InTurn,
        check_lookup,
    );
}

/// How a C agent runs the flagged program.
#[derive(Clone, Copy)]
enum Exec {
    /// `execv` from a thread other than the main one: the whole process becomes the
    /// program.
    FromThread,
    /// A child started with `posix_spawn` or `vfork` + `execv` by a multi-threaded parent.
    Spawn(&'static str),
}

/// One held exec: the hold is listed with its process, thread, path and argv, and the
/// process is held before the program did anything; then the decision, and its outcome.
///
/// What differs between modes: the LSM modes hold the `execve` itself, before it happens,
/// in the thread that called it (a vfork or `posix_spawn` parent then waits inside
/// `vfork`/`posix_spawn` until the decision); `cgroup-sock` stops the new program after
/// the exec, before its first instruction, and keeps it frozen (`hold` is `stopped`): the
/// thread that called `execve` has by then taken over its process's id, and the spawning
/// parent has already gone on to wait for its child. Either way the flagged program has
/// printed nothing until approved.
fn check_exec(lab: &Lab, case: &Exec, _port: u16, decision: Decision) {
    let flagged = lab.daemon.flagged();
    let (argv, word) = match *case {
        Exec::FromThread => {
            let word = format!("from-thread-{}", decision.verb());
            (vec![program("exec-thread"), flagged.clone(), word.clone()], word)
        }
        Exec::Spawn(how) => {
            let word = format!("{how}-{}", decision.verb());
            (vec![program("spawn"), how.into(), flagged.clone(), word.clone()], word)
        }
    };
    let mut agent = lab.run(&argv);
    // The hold, the thread that calls execve, and the parent that spawned it.
    let (hold, execing, parent) = match *case {
        Exec::FromThread => {
            let (pid, tid) = agent.acting();
            assert_ne!(tid, pid, "{word}: the program did not exec from another thread");
            (lab.daemon.pending_matching(|hold| hold["pid"] == pid && hold["kind"] == "exec"), tid, None)
        }
        Exec::Spawn(_) => {
            let parent = agent.number("parent");
            let hold = lab
                .daemon
                .pending_matching(|hold| hold["kind"] == "exec" && hold["argv"][1] == word.as_str());
            let child = field(&hold, "pid");
            assert_ne!(child, parent, "{word}: {hold}");
            assert_eq!(hold["parents"][0]["pid"], parent, "{word}: {hold}");
            assert!(!held(parent), "{word}: the parent is held, state {:?}", process_state(parent));
            assert!(
                lab.daemon.pending().iter().all(|hold| hold["pid"] != parent),
                "{word}: a hold lists the parent"
            );
            (hold, child, Some(parent))
        }
    };
    let pid = field(&hold, "pid");
    assert_eq!(
        (&hold["kind"], &hold["path"], &hold["argv"]),
        (
            &Value::from("exec"),
            &Value::from(flagged.as_str()),
            &Value::from(vec![flagged.as_str(), word.as_str()])
        ),
        "{word}: {hold}"
    );
    match hold["hold"].as_str() {
        Some("held") => {
            assert_eq!(field(&hold, "tid"), execing, "{word}: {hold}");
            wait_all_stopped(pid);
        }
        Some("stopped") => {
            assert_eq!(field(&hold, "tid"), pid, "{word}: {hold}");
            wait_until(|| format!("{word}: process {pid} frozen"), || frozen(pid));
        }
        _ => panic!("{word}: an exec is held before it happens or stopped after it: {hold}"),
    }
    assert!(!agent.printed().contains(&word), "{word}: the program ran while held");

    decide(&lab.daemon, &hold, decision.verb());
    let finished = agent.finish();
    let (code, ran) = (finished.code, finished.stdout.contains(&word));
    match decision {
        Decision::Approve => assert!(code == 0 && ran, "{word}: {finished:?}"),
        Decision::Deny => assert!(code == 128 + libc::SIGKILL && !ran, "{word}: {finished:?}"),
    }
    if parent.is_some() {
        // The parent waited for its child and says how it ended.
        let ended = match decision {
            Decision::Approve => format!("child {pid} exited 0"),
            Decision::Deny => format!("child {pid} killed by signal {}", libc::SIGKILL),
        };
        assert!(finished.stdout.contains(&ended), "{word}: {finished:?}");
    }
}

/// C: `execv` of the flagged program from a thread other than the main one, and
/// `posix_spawn` and `vfork` + `execv` of it from a multi-threaded parent.
#[test]
fn exec_from_a_thread_posix_spawn_and_vfork_are_held_listed_and_decided() {
    run_cases(
        &Lab::start(),
        &[Exec::FromThread, Exec::Spawn("posix_spawn"), Exec::Spawn("vfork")],
        Decisions::Both,
        check_exec,
    );
}
