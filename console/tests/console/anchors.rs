//! Hosts' trail anchors: kept once per length, signed by the host's own key, and a trail
//! cut or rewritten after an anchor named, audited, and kept once.

use std::time::{Duration, Instant};

use crate::support::{Db, Running, WAIT, connect, connected, key, loopback};
use host_client::ClientEvent;
use proto::v1::ChainAnchor;

crate::both_databases!(an_anchor_is_kept_once_and_a_changed_trail_is_named, a_host_anchors_over_its_stream);

fn anchor(records: u64, head: &str, witness_records: u64, witness: &str) -> ChainAnchor {
    ChainAnchor {
        records,
        head: head.into(),
        witness_records,
        witness: witness.into(),
        at_ms: 1,
        signature: vec![0; 64],
    }
}

async fn an_anchor_is_kept_once_and_a_changed_trail_is_named(db: Db) {
    let replica = db.console(&key(1)).await;
    let store = replica.store();
    store.host_connected("web-01", "f", "test", None).await.unwrap();
    assert_eq!(store.anchored_records("web-01").await.unwrap(), 0);
    for kept in [anchor(3, "a3", 0, ""), anchor(3, "a3", 0, ""), anchor(5, "a5", 3, "a3")] {
        assert_eq!(store.anchor("web-01", &kept).await.unwrap(), None, "{kept:?}");
    }
    assert_eq!(store.anchored_records("web-01").await.unwrap(), 5);
    assert_eq!(
        store.trail_state("web-01").await.unwrap().anchors.len(),
        2,
        "an idle trail's anchor is kept once"
    );

    let rewritten = store.anchor("web-01", &anchor(5, "b5", 3, "a3")).await.unwrap().expect("a finding");
    assert_eq!(rewritten, "rewritten: record 4 hashes to b5, anchored as a5");
    let witnessed = store.anchor("web-01", &anchor(7, "b7", 5, "b5")).await.unwrap().expect("a finding");
    assert_eq!(witnessed, rewritten, "the witness shows the same record changed");
    let truncated = store.anchor("web-01", &anchor(4, "c4", 0, "")).await.unwrap().expect("a finding");
    assert_eq!(truncated, "truncated: the trail has 4 records, but an earlier anchor covered 5");

    let state = store.trail_state("web-01").await.unwrap();
    let details: Vec<&str> = state.findings.iter().map(|f| f.detail.as_str()).collect();
    assert_eq!(details, [rewritten.as_str(), truncated.as_str()], "the same finding in a row is kept once");
    assert_eq!(
        state.anchors.iter().map(|a| a.records).collect::<Vec<_>>(),
        [3, 5],
        "no anchor of a changed trail"
    );
    let audit = store.audit_events().await.unwrap();
    assert_eq!(audit.iter().filter(|e| e["type"] == "host_trail_tampered").count(), 2);
    store.verify_audit().await.unwrap();
}

async fn a_host_anchors_over_its_stream(db: Db) {
    let console_key = key(1);
    let running = Running::start(&db.url(), &console_key, loopback());
    let (host, mut events) = connect(&running.endpoint(), "web-01", &key(2), &console_key);
    connected(&mut events).await;
    let head = "ab".repeat(32);
    // Malformed: refused, and the stream with it.
    host.anchor(anchor(2, "not a hash", 0, ""));
    let refused = tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert!(
        matches!(&refused, ClientEvent::Disconnected(why) if why.contains("64 hex digits")),
        "{refused:?}"
    );
    connected(&mut events).await;
    host.anchor(anchor(2, &head, 0, ""));
    let store = running.console.store();
    let deadline = Instant::now() + WAIT;
    while store.anchored_records("web-01").await.unwrap() != 2 {
        assert!(Instant::now() < deadline, "the anchor never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The signature the console kept is the host key's, over the anchor's bytes.
    let signature: String = sqlx::query_scalar("SELECT signature FROM host_anchors WHERE host = 'web-01'")
        .fetch_one(&sqlx::AnyPool::connect(&db.url()).await.unwrap())
        .await
        .unwrap();
    let signature = ed25519_dalek::Signature::from_slice(&hex::decode(signature).unwrap()).unwrap();
    let message = proto::anchor_message("web-01", &anchor(2, &head, 0, ""));
    key(2).verifying_key().verify_strict(&message, &signature).expect("signed by the host key");
    assert!(key(3).verifying_key().verify_strict(&message, &signature).is_err());
    drop((host, events));

    // A new connection hears how far the console's anchors reach.
    let (_host, mut events) = connect(&running.endpoint(), "web-01", &key(2), &console_key);
    let event = tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert!(matches!(event, ClientEvent::Connected { anchored_records: 2 }), "{event:?}");
}
