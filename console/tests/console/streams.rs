//! The console against real databases (SQLite files and a PostgreSQL cluster of its own)
//! and real gRPC streams on loopback: holds up, signed decisions down, replicas, races.

use std::time::Duration;

use crate::support::{Db, Running, connect, connected, hold, key, loopback, next_event, stored};
use console::{
    people::Credential,
    store::{DecisionRequest, Outcome, StoreError},
};
use host_client::ClientEvent;
use proto::v1::{Scope, Verdict};

pub fn request(host: &str, hold_id: &str, verdict: Verdict, by: &str) -> DecisionRequest {
    DecisionRequest {
        host: host.into(),
        hold_id: hold_id.into(),
        verdict,
        scope: Scope::Once,
        duration_secs: 0,
        reason: format!("{by} says so"),
        decided_by: by.into(),
        credential: Credential::Unrecorded,
    }
}

fn decided(outcome: Result<Outcome, StoreError>) -> proto::v1::SignedDecision {
    match outcome {
        Ok(Outcome::Decided(signed)) => signed,
        other => panic!("expected a decision, got {other:?}"),
    }
}

crate::both_databases!(
    a_decision_reaches_its_host_signed_and_bound,
    a_quorum_needs_distinct_people_and_not_the_requester,
    a_hold_past_its_deadline_cannot_be_decided,
    the_audit_trail_names_an_edited_or_cut_record,
    holds_raised_while_the_console_is_down_arrive_when_it_is_back,
    a_host_key_is_pinned_at_its_first_connection,
    a_host_gets_only_its_own_decisions,
    two_deciders_on_two_replicas_exactly_one_wins,
);

async fn a_decision_reaches_its_host_signed_and_bound(db: Db) {
    let console_key = key(1);
    let running = Running::start(&db.url(), &console_key, loopback());
    let replica = db.other_replica(&running.console, &console_key).await;
    let (host, mut events) = connect(&running.endpoint(), "web-01", &key(2), &console_key);
    connected(&mut events).await;
    // A malformed hold is refused alone; the stream goes on.
    host.raise(hold("not a valid id!", 76));
    host.raise(hold("h1", 77));
    let record = stored(replica.store(), "web-01", "h1").await;
    assert!(replica.store().hold("web-01", "not a valid id!").await.unwrap().is_none());
    assert_eq!((record.status.as_str(), record.nonce, record.kind.as_str()), ("pending", 77, "exec"));

    let signed = decided(replica.decide(&request("web-01", "h1", Verdict::Approve, "bob")).await);
    let ClientEvent::Decision(decision) = next_event(&mut events).await else { panic!("no decision") };
    assert_eq!((decision.hold_id.as_str(), decision.nonce, decision.host.as_str()), ("h1", 77, "web-01"));
    assert_eq!(decision.verdict(), Verdict::Approve);
    assert_eq!((decision.decided_by.as_str(), decision.approvers.clone()), ("bob", vec!["bob".to_owned()]));
    // What the host verified is exactly what the console signed and stored.
    let stored_signed = replica.store().decision("web-01", "h1").await.unwrap().unwrap();
    assert_eq!(stored_signed, signed);
    assert_eq!(host_client::verify(&signed, &[console_key.verifying_key()]).unwrap(), decision);

    let again = replica.decide(&request("web-01", "h1", Verdict::Deny, "carol")).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyDecided { ref status, .. }) if status == "approved"),
        "{again:?}"
    );
    let unknown = replica.decide(&request("web-01", "nope", Verdict::Deny, "carol")).await;
    assert!(matches!(unknown, Err(StoreError::UnknownHold { .. })), "{unknown:?}");
    let other_host = replica.decide(&request("web-02", "h1", Verdict::Deny, "carol")).await;
    assert!(matches!(other_host, Err(StoreError::UnknownHold { .. })), "{other_host:?}");

    host.close(proto::v1::HoldClosed {
        id: "h1".into(),
        nonce: 77,
        reason: proto::v1::CloseReason::Decided.into(),
    });
    tokio::time::timeout(crate::support::WAIT, async {
        while replica.store().hold("web-01", "h1").await.unwrap().unwrap().closed_reason.is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let head = replica.store().verify_audit().await.unwrap();
    let types: Vec<String> = replica
        .store()
        .audit_events()
        .await
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["host_enrolled", "hold_raised", "decided", "hold_closed"]);
    assert_eq!(head.records, 4);
}

async fn a_quorum_needs_distinct_people_and_not_the_requester(db: Db) {
    let console_key = key(1);
    let replica = db.console(&console_key).await;
    let store = replica.store();
    store.host_connected("db-01", "f", "test", None).await.unwrap();
    let mut quorum_hold = hold("q1", 5);
    quorum_hold.quorum = 2;
    store.raise("db-01", &quorum_hold).await.unwrap();

    let own = replica.decide(&request("db-01", "q1", Verdict::Approve, "alice")).await;
    assert!(matches!(own, Err(StoreError::SelfApproval { ref person, .. }) if person == "alice"), "{own:?}");
    let first = replica.decide(&request("db-01", "q1", Verdict::Approve, "bob")).await;
    assert!(matches!(first, Ok(Outcome::AwaitingQuorum { approvals: 1, quorum: 2 })), "{first:?}");
    let twice = replica.decide(&request("db-01", "q1", Verdict::Approve, "bob")).await;
    assert!(matches!(twice, Err(StoreError::AlreadyApproved { .. })), "{twice:?}");
    let anonymous = replica.decide(&request("db-01", "q1", Verdict::Approve, " ")).await;
    assert!(matches!(anonymous, Err(StoreError::Anonymous)), "{anonymous:?}");
    assert_eq!(store.hold("db-01", "q1").await.unwrap().unwrap().approvals, 1, "refusals leave no trace");

    let signed = decided(replica.decide(&request("db-01", "q1", Verdict::Approve, "carol")).await);
    let decision = host_client::verify(&signed, &[console_key.verifying_key()]).unwrap();
    assert_eq!(decision.approvers, ["bob", "carol"]);
    assert_eq!(decision.quorum, 2);

    // The requester may still deny their own agent's action.
    store.raise("db-01", &hold("q2", 6)).await.unwrap();
    decided(replica.decide(&request("db-01", "q2", Verdict::Deny, "alice")).await);
    store.verify_audit().await.unwrap();
}

async fn a_hold_past_its_deadline_cannot_be_decided(db: Db) {
    let replica = db.console(&key(1)).await;
    let store = replica.store();
    store.host_connected("web-01", "f", "test", None).await.unwrap();
    let mut late = hold("late", 1);
    late.deadline_ms = late.requested_at_ms - 1;
    store.raise("web-01", &late).await.unwrap();
    let refused = replica.decide(&request("web-01", "late", Verdict::Approve, "bob")).await;
    assert!(matches!(refused, Err(StoreError::Expired { .. })), "{refused:?}");
    assert_eq!(store.expire().await.unwrap(), 1);
    assert_eq!(store.hold("web-01", "late").await.unwrap().unwrap().status, "expired");
    assert_eq!(store.expire().await.unwrap(), 0, "each hold expires once");
    let still = replica.decide(&request("web-01", "late", Verdict::Approve, "bob")).await;
    assert!(matches!(still, Err(StoreError::Expired { .. })), "{still:?}");
}

async fn the_audit_trail_names_an_edited_or_cut_record(db: Db) {
    let replica = db.console(&key(1)).await;
    let store = replica.store();
    store.host_connected("web-01", "f", "test", None).await.unwrap();
    for n in 0..3 {
        store.raise("web-01", &hold(&format!("h{n}"), n)).await.unwrap();
    }
    assert_eq!(store.verify_audit().await.unwrap().records, 4);
    // Tamper through a connection of our own, as someone with database access would.
    let tamper = sqlx::AnyPool::connect(&db.url()).await.unwrap();
    let original: String =
        sqlx::query_scalar("SELECT event FROM audit WHERE seq = 2").fetch_one(&tamper).await.unwrap();
    sqlx::query("UPDATE audit SET event = $1 WHERE seq = 2")
        .bind(original.replace("claude", "innocent"))
        .execute(&tamper)
        .await
        .unwrap();
    let edited = store.verify_audit().await.unwrap_err().to_string();
    assert!(edited.contains("audit record 2: contents do not match"), "{edited}");
    sqlx::query("UPDATE audit SET event = $1 WHERE seq = 2").bind(&original).execute(&tamper).await.unwrap();
    sqlx::query("DELETE FROM audit WHERE seq = 3").execute(&tamper).await.unwrap();
    let cut = store.verify_audit().await.unwrap_err().to_string();
    assert!(cut.contains("truncated"), "{cut}");
    sqlx::query("DELETE FROM audit WHERE seq = 1").execute(&tamper).await.unwrap();
    let removed = store.verify_audit().await.unwrap_err().to_string();
    assert!(removed.contains("audit record 2: sequence 2 where 1 was due"), "{removed}");
}

async fn holds_raised_while_the_console_is_down_arrive_when_it_is_back(db: Db) {
    let console_key = key(1);
    let running = Running::start(&db.url(), &console_key, loopback());
    let (addr, endpoint) = (running.addr, running.endpoint());
    let (host, mut events) = connect(&endpoint, "web-01", &key(2), &console_key);
    connected(&mut events).await;
    host.raise(hold("before", 1));
    let replica = db.console(&console_key).await;
    stored(replica.store(), "web-01", "before").await;

    drop(running);
    let down = tokio::time::timeout(crate::support::WAIT, events.recv()).await.unwrap().unwrap();
    assert!(matches!(down, ClientEvent::Disconnected(_)), "{down:?}");
    host.raise(hold("during", 2));
    // Decided while the host cannot be reached: it must get this once it is back.
    decided(replica.decide(&request("web-01", "before", Verdict::Deny, "bob")).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(replica.store().hold("web-01", "during").await.unwrap().is_none());

    let back = Running::start(&db.url(), &console_key, addr);
    connected(&mut events).await;
    assert_eq!(stored(replica.store(), "web-01", "during").await.status, "pending");
    let ClientEvent::Decision(first) = next_event(&mut events).await else { panic!("no decision") };
    assert_eq!((first.hold_id.as_str(), first.verdict()), ("before", Verdict::Deny));
    decided(
        db.other_replica(&back.console, &console_key)
            .await
            .decide(&request("web-01", "during", Verdict::Approve, "bob"))
            .await,
    );
    let ClientEvent::Decision(second) = next_event(&mut events).await else { panic!("no decision") };
    assert_eq!((second.hold_id.as_str(), second.nonce), ("during", 2));
}

async fn a_host_key_is_pinned_at_its_first_connection(db: Db) {
    let console_key = key(1);
    let running = Running::start(&db.url(), &console_key, loopback());
    let (_host, mut events) = connect(&running.endpoint(), "web-01", &key(2), &console_key);
    connected(&mut events).await;
    let (impostor, mut impostor_events) = connect(&running.endpoint(), "web-01", &key(3), &console_key);
    let refused = tokio::time::timeout(crate::support::WAIT, impostor_events.recv()).await.unwrap().unwrap();
    let ClientEvent::Disconnected(reason) = refused else { panic!("impostor got {refused:?}") };
    assert!(reason.contains("enrolled with key"), "{reason}");
    impostor.raise(hold("forged", 1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let replica = db.console(&console_key).await;
    assert!(replica.store().hold("web-01", "forged").await.unwrap().is_none());
    let events = replica.store().audit_events().await.unwrap();
    assert!(events.iter().any(|e| e["type"] == "host_refused"), "{events:?}");
}

async fn a_host_gets_only_its_own_decisions(db: Db) {
    let console_key = key(1);
    let running = Running::start(&db.url(), &console_key, loopback());
    let replica = db.other_replica(&running.console, &console_key).await;
    let (a, mut a_events) = connect(&running.endpoint(), "web-a", &key(2), &console_key);
    let (b, mut b_events) = connect(&running.endpoint(), "web-b", &key(3), &console_key);
    connected(&mut a_events).await;
    connected(&mut b_events).await;
    // The same hold id on two hosts is two holds.
    a.raise(hold("same", 1));
    b.raise(hold("same", 2));
    stored(replica.store(), "web-a", "same").await;
    stored(replica.store(), "web-b", "same").await;
    decided(replica.decide(&request("web-a", "same", Verdict::Approve, "bob")).await);
    let ClientEvent::Decision(decision) = next_event(&mut a_events).await else { panic!("no decision") };
    assert_eq!((decision.host.as_str(), decision.nonce), ("web-a", 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), b_events.recv()).await.is_err(),
        "host b heard of host a's decision"
    );
    assert_eq!(replica.store().hold("web-b", "same").await.unwrap().unwrap().status, "pending");
}

/// Two replicas on PostgreSQL; on SQLite two deciders racing through one console's pool.
async fn two_deciders_on_two_replicas_exactly_one_wins(db: Db) {
    const HOLDS: u64 = 20;
    let console_key = key(1);
    let running = Running::start(&db.url(), &console_key, loopback());
    let (host, mut events) = connect(&running.endpoint(), "web-01", &key(2), &console_key);
    connected(&mut events).await;
    let a = db.other_replica(&running.console, &console_key).await;
    let b = db.other_replica(&running.console, &console_key).await;
    for n in 0..HOLDS {
        host.raise(hold(&format!("r{n}"), n));
    }
    stored(a.store(), "web-01", &format!("r{}", HOLDS - 1)).await;
    for n in 0..HOLDS {
        let id = format!("r{n}");
        let (approve, deny) =
            (request("web-01", &id, Verdict::Approve, "bob"), request("web-01", &id, Verdict::Deny, "carol"));
        let (on_a, on_b) = tokio::join!(a.decide(&approve), b.decide(&deny));
        let won: Vec<Verdict> = [(on_a, Verdict::Approve), (on_b, Verdict::Deny)]
            .into_iter()
            .filter_map(|(outcome, verdict)| match outcome {
                Ok(Outcome::Decided(_)) => Some(verdict),
                Err(StoreError::AlreadyDecided { .. }) => None,
                other => panic!("hold {id}: {other:?}"),
            })
            .collect();
        assert_eq!(won.len(), 1, "hold {id}: winners {won:?}");
        let ClientEvent::Decision(decision) = next_event(&mut events).await else { panic!("no decision") };
        assert_eq!((decision.hold_id.as_str(), decision.verdict()), (id.as_str(), won[0]));
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.recv()).await.is_err(),
        "a hold got a second decision"
    );
    a.store().verify_audit().await.unwrap();
}

/// Two replicas on one PostgreSQL: the host is connected to B, the approver uses A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_replica_a_reaches_a_host_on_replica_b() {
    let db = Db::postgres();
    let console_key = key(1);
    let replica_b = Running::start(&db.url(), &console_key, loopback());
    let replica_a = db.console(&console_key).await;
    let (host, mut events) = connect(&replica_b.endpoint(), "web-01", &key(2), &console_key);
    connected(&mut events).await;
    host.raise(hold("h1", 9));
    stored(replica_a.store(), "web-01", "h1").await;
    let started = std::time::Instant::now();
    decided(replica_a.decide(&request("web-01", "h1", Verdict::Approve, "bob")).await);
    let ClientEvent::Decision(decision) = next_event(&mut events).await else { panic!("no decision") };
    let latency = started.elapsed();
    assert_eq!((decision.hold_id.as_str(), decision.nonce, decision.verdict()), ("h1", 9, Verdict::Approve));
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
}

#[tokio::test]
async fn an_in_memory_or_unknown_database_is_refused() {
    for url in ["sqlite::memory:", "sqlite://x.db?mode=memory"] {
        let error = console::Store::open(url).await.err().expect("refused").to_string();
        assert!(error.contains("differs per pooled connection"), "{error}");
    }
    let error = console::Store::open("mysql://db/keyturn").await.err().expect("refused").to_string();
    assert!(error.contains("only sqlite:// and postgres://"), "{error}");
}
