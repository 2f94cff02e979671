//! The policies hosts report in force: each version kept with when it was in force, changes
//! audited, and a report whose digests do not match its texts refused.

use console::policies::malformed;
use proto::v1::{PolicyInForce, PolicyReport};
use sha2::{Digest as _, Sha256};

use crate::support::{Db, key};

crate::both_databases!(each_version_of_a_policy_is_kept_with_when_it_was_in_force);

fn policy(name: &str, text: &str) -> PolicyInForce {
    PolicyInForce { name: name.into(), sha256: hex::encode(Sha256::digest(text)), text: text.into() }
}

async fn each_version_of_a_policy_is_kept_with_when_it_was_in_force(db: Db) {
    let replica = db.console(&key(1)).await;
    let store = replica.store();
    store.host_connected("web-01", "f", "test", None).await.unwrap();
    let first = PolicyReport { policies: vec![policy("default", "a = 1\n"), policy("test", "b = 1\n")] };
    store.report_policies("web-01", &first).await.unwrap();
    store.report_policies("web-01", &first).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let changed_at = console::store::now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = PolicyReport { policies: vec![policy("default", "a = 1\n"), policy("test", "b = 2\n")] };
    store.report_policies("web-01", &second).await.unwrap();
    let since_second = console::store::now_ms() + 1;

    let all = store.policies_in_force(0, i64::MAX).await.unwrap();
    let versions: Vec<(&str, &str, bool)> =
        all.iter().map(|p| (p.name.as_str(), p.text.as_str(), p.until_ms.is_none())).collect();
    assert_eq!(
        versions,
        [("default", "a = 1\n", true), ("test", "b = 1\n", false), ("test", "b = 2\n", true)]
    );
    let before: Vec<String> =
        store.policies_in_force(0, changed_at).await.unwrap().into_iter().map(|p| p.text).collect();
    assert_eq!(before, ["a = 1\n", "b = 1\n"], "what was in force before the change");
    let after: Vec<String> =
        store.policies_in_force(since_second, i64::MAX).await.unwrap().into_iter().map(|p| p.text).collect();
    assert_eq!(after, ["a = 1\n", "b = 2\n"], "what was in force after it");

    let events = store.audit_events().await.unwrap();
    let kinds: Vec<&str> =
        events.iter().filter_map(|e| e["type"].as_str()).filter(|t| t.starts_with("host_policy")).collect();
    assert_eq!(
        kinds,
        ["host_policy_in_force", "host_policy_in_force", "host_policy_retired", "host_policy_in_force"]
    );

    let mut forged = policy("test", "b = 3\n");
    forged.text = "b = 4\n".into();
    let why = malformed(&PolicyReport { policies: vec![forged] }).expect("refused");
    assert!(why.contains("not the digest of its text"), "{why}");
    let twice =
        malformed(&PolicyReport { policies: vec![policy("a", "x"), policy("a", "y")] }).expect("refused");
    assert!(twice.contains("twice"), "{twice}");
    assert_eq!(malformed(&second), None);
}
