//! `GET /api/audit/export` over real HTTP: a trail with every kind of record the console
//! writes, each exported event judged by the OCSF project's schema; periods, roles, and a
//! broken chain refused.

use std::collections::BTreeSet;

use crate::{
    streams::request,
    support::{Db, egress_hold, hold, key, loopback},
};
use console::{
    Api, Console, RoleMap,
    audit::AuditEvent,
    people::{Credential, Principal, Role, SignIn, TOKEN_LIFETIME},
    store::now_ms,
};
use proto::v1::{ChainAnchor, PolicyInForce, PolicyReport, Verdict};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{Value, value::RawValue};
use sha2::{Digest as _, Sha256};

/// Every kind of event [`AuditEvent`] has, as serde names them: the names its error for an
/// unknown kind lists, so a kind added later is here without anyone listing it.
pub fn every_kind() -> BTreeSet<String> {
    let error = serde_json::from_str::<AuditEvent>(r#"{"type": "?"}"#).unwrap_err().to_string();
    let listed = error.split("expected one of").nth(1).expect("serde lists the variants");
    listed
        .split(',')
        .map(|name| name.trim().trim_matches(|c: char| c == '`' || !c.is_ascii()).to_owned())
        .map(|name| name.split('`').next().unwrap_or_default().to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

/// Writes a trail with at least one record of every kind the console writes, through the
/// console's own paths (the API for refusals and exports); returns the admin's token and
/// the API's base URL.
async fn every_kind_of_record(console: &Console) -> (String, String, tokio::task::JoinHandle<()>) {
    let store = console.store();
    store.host_connected("web-01", "key-1", "test", None).await.unwrap();
    store.host_connected("web-01", "key-2", "test", None).await.unwrap_err();
    let token = store.issue_token("web-02", std::time::Duration::from_mins(1)).await.unwrap();
    store.enrol("web-02", "not-the-token", "key-3", "cert").await.unwrap_err();
    store.enrol("web-02", &token, "key-3", &"cd".repeat(32)).await.unwrap();

    let mut quorum = hold("exec-1", 1);
    quorum.quorum = 2;
    store.raise("web-01", &quorum).await.unwrap();
    store.raise("web-01", &egress_hold("egress-1", 2)).await.unwrap();
    let mut late = hold("late-1", 3);
    late.deadline_ms = late.requested_at_ms;
    store.raise("web-02", &late).await.unwrap();
    assert_eq!(store.expire().await.unwrap(), 1);
    console.decide(&request("web-01", "exec-1", Verdict::Approve, "bob@example.com")).await.unwrap();
    let by_subject = "248289761001@https://accounts.example.com";
    console.decide(&request("web-01", "exec-1", Verdict::Approve, by_subject)).await.unwrap();
    console.decide(&request("web-01", "egress-1", Verdict::Deny, "carol@example.com")).await.unwrap();
    store.close("web-01", "exec-1", 1, "decided").await.unwrap();
    // The host's trail anchored, then shown cut; its policies reported, then one changed.
    let anchor = |records, head: &str| ChainAnchor { records, head: head.into(), ..ChainAnchor::default() };
    store.anchor("web-01", &anchor(3, "a3")).await.unwrap();
    store.anchor("web-01", &anchor(2, "b2")).await.unwrap().expect("a finding");
    let policy = |text: &str| PolicyInForce {
        name: "default".into(),
        sha256: hex::encode(Sha256::digest(text)),
        text: text.into(),
    };
    store.report_policies("web-01", &PolicyReport { policies: vec![policy("a = 1\n")] }).await.unwrap();
    store.report_policies("web-01", &PolicyReport { policies: vec![policy("a = 2\n")] }).await.unwrap();
    let period = console::evidence::Period { from_ms: 0, to_ms: now_ms() + 1 };
    console::evidence::export(store, console.signer(), period, "ada@example.com").await.unwrap();

    let sign_in = |person: &str| Principal {
        person: person.into(),
        display_name: person.into(),
        role: Role::Admin,
        via: "session".into(),
        credential: Credential::Oidc { issuer: "https://idp.example".into(), subject: person.into() },
    };
    store.issue_sign_in_link("unix:root").await.unwrap();
    store.create_session(&sign_in("unix:root"), SignIn::Link).await.unwrap();
    store.create_session(&sign_in("ada@example.com"), SignIn::Oidc).await.unwrap();
    // Only an identity provider's callback refuses a sign-in: recorded as it records it.
    let refused =
        AuditEvent::SignInRefused { person: "mallory@example.com".into(), groups: vec!["guests".into()] };
    store.record(&refused).await.unwrap();
    let (old, _) =
        store.create_api_token("bob@example.com", Role::Approver, "ci", "ada", TOKEN_LIFETIME).await.unwrap();
    store.revoke_api_token(&old, None, "ada@example.com").await.unwrap();
    let slack_account = console::chat::ChatAccount::slack("T0KEYTURN/U0BOB").unwrap();
    store.link_chat(&slack_account, "bob@example.com", Role::Approver, "unix:root").await.unwrap();
    assert!(store.unlink_chat(&slack_account, "unix:root").await.unwrap());
    let teams_account = console::chat::ChatAccount::teams(
        "72f988bf-86f1-41af-91ab-2d7cd011db47/0000a11c-0000-0000-0000-00000000a11c",
    )
    .unwrap();
    store.link_at_sign_in(&teams_account, "ada@example.com", Role::Admin).await.unwrap();
    let (_, admin) = store
        .create_api_token("ada@example.com", Role::Admin, "export", "ada", TOKEN_LIFETIME)
        .await
        .unwrap();
    let (_, viewer) = store
        .create_api_token("vera@example.com", Role::Viewer, "read", "ada", TOKEN_LIFETIME)
        .await
        .unwrap();

    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api = Api::new(console.clone(), None, RoleMap::default(), false);
    let served = tokio::spawn(async move { api.serve(listener).await.unwrap() });
    let client = reqwest::Client::new();
    let status = client
        .post(format!("{base}/api/holds/late-1@web-02/approve"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer's decision is refused, and audited");
    // The first export is a record of its own (`audit_exported`).
    assert_eq!(get(&base, "?format=keyturn", &admin).await.0, StatusCode::OK);
    (admin, base, served)
}

async fn get(base: &str, query: &str, token: &str) -> (StatusCode, String) {
    let response = reqwest::Client::new()
        .get(format!("{base}/api/audit/export{query}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// A record as exported, its event verbatim.
#[derive(Deserialize)]
struct Exported {
    seq: i64,
    at_ms: i64,
    prev: String,
    hash: String,
    event: Box<RawValue>,
}

impl Exported {
    fn kind(&self) -> String {
        serde_json::from_str::<Value>(self.event.get()).unwrap()["type"].as_str().unwrap().to_owned()
    }
}

crate::both_databases!(every_kind_of_record_exports_as_valid_ocsf);

/// Every kind of record, exported as OCSF, is valid by the OCSF project's schema and keeps
/// the record itself; exported as keyturn records, the chain checks from the export alone.
async fn every_kind_of_record_exports_as_valid_ocsf(db: Db) {
    let console = db.console(&key(1)).await;
    let (admin, base, served) = every_kind_of_record(&console).await;

    let (status, keyturn) = get(&base, "?format=keyturn", &admin).await;
    assert_eq!(status, StatusCode::OK, "{keyturn}");
    let records: Vec<Exported> = keyturn.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let kinds: BTreeSet<String> = records.iter().map(Exported::kind).collect();
    let every = every_kind();
    assert!(every.len() >= 16, "{every:?}");
    assert_eq!(kinds, every, "every kind of record needs a sample in this trail");
    let mut prev = "0".repeat(64);
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record.seq, i64::try_from(n).unwrap());
        assert_eq!(record.prev, prev);
        let sealed = format!("{}\n{}\n{}\n{}", record.seq, record.at_ms, record.prev, record.event.get());
        assert_eq!(
            hex::encode(Sha256::digest(sealed)),
            record.hash,
            "record {} checks from the export",
            record.seq
        );
        prev.clone_from(&record.hash);
    }

    let (status, ocsf) = get(&base, "", &admin).await;
    assert_eq!(status, StatusCode::OK, "{ocsf}");
    let summary = ocsf::validator::validate(ocsf.as_bytes());
    let events: Vec<Value> = ocsf.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let decided = records.iter().filter(|r| r.kind() == "decided").count();
    assert_eq!(events.len(), records.len() + 1 + decided, "one event a record, two a decision: {summary}");
    for class in [1007, 4001, 6003, 3002] {
        assert!(summary["classes"][class.to_string()].as_u64() > Some(0), "class {class}: {summary}");
    }
    for event in &events {
        let record = &event["unmapped"]["keyturn"];
        let seq = record["seq"].as_i64().unwrap();
        if let Some(original) = records.get(usize::try_from(seq).unwrap()) {
            assert_eq!(record["hash"].as_str(), Some(original.hash.as_str()));
        }
    }
    let of = |kind: &str| -> Vec<&Value> {
        events.iter().filter(|e| e["unmapped"]["keyturn"]["event"]["type"] == kind).collect()
    };
    let raised = of("hold_raised");
    assert_eq!(raised[0]["class_uid"], 1007);
    assert_eq!(raised[0]["disposition_id"], 14, "Delayed");
    assert_eq!(raised[0]["process"]["file"]["path"], "/usr/bin/curl");
    assert_eq!(raised[0]["device"]["hostname"], "web-01");
    assert_eq!(raised[1]["class_uid"], 4001);
    assert_eq!(raised[1]["dst_endpoint"]["port"], 443);
    let votes = of("approval_recorded");
    assert_eq!(
        (&votes[0]["class_uid"], &votes[0]["actor"]["user"]["email_addr"]),
        (&json(6003), &json("bob@example.com"))
    );
    let decisions = of("decided");
    let (vote, outcome) = (decisions[0], decisions[1]);
    assert_eq!(vote["class_uid"], 6003);
    assert_eq!(vote["actor"]["user"]["uid"], "248289761001", "the subject");
    assert_eq!(vote["actor"]["user"]["domain"], "https://accounts.example.com", "the issuer");
    assert_eq!((&outcome["class_uid"], &outcome["disposition_id"]), (&json(1007), &json(8)), "Approved");
    assert_eq!(
        (&decisions[3]["class_uid"], &decisions[3]["disposition_id"]),
        (&json(4001), &json(25)),
        "Rejected"
    );
    assert_eq!(of("hold_expired")[0]["disposition_id"], 2, "Blocked");
    assert_eq!(of("signed_in")[0]["class_uid"], 3002);
    assert_eq!(of("sign_in_refused")[0]["status_id"], 2);
    served.abort();
}

fn json(value: impl Into<Value>) -> Value {
    value.into()
}

/// `since` and `until` bound the records by time; only admins export; a broken chain is
/// refused, never exported as if whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_are_bounded_by_time_admins_only_and_whole() {
    let db = Db::sqlite();
    let console = db.console(&key(1)).await;
    let store = console.store();
    store.host_connected("web-01", "key-1", "test", None).await.unwrap();
    store.raise("web-01", &hold("before", 1)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let middle = now_ms();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.raise("web-01", &hold("after", 2)).await.unwrap();
    let (_, admin) = store.create_api_token("ada", Role::Admin, "t", "t", TOKEN_LIFETIME).await.unwrap();
    let (_, approver) =
        store.create_api_token("bob", Role::Approver, "t", "t", TOKEN_LIFETIME).await.unwrap();
    let (_, viewer) = store.create_api_token("vera", Role::Viewer, "t", "t", TOKEN_LIFETIME).await.unwrap();
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let api = Api::new(console.clone(), None, RoleMap::default(), false);
    let served = tokio::spawn(async move { api.serve(listener).await.unwrap() });

    let seqs = |text: &str| -> Vec<i64> {
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_i64().unwrap()).collect()
    };
    let (status, before) = get(&base, &format!("?format=keyturn&until={middle}"), &admin).await;
    assert_eq!((status, seqs(&before)), (StatusCode::OK, vec![0, 1]), "{before}");
    let since = console::export::rfc3339(middle);
    let (status, after) = get(&base, &format!("?format=keyturn&since={since}"), &admin).await;
    // Records 3 to 5 are the tokens, 6 the export before this one (and 7 is this one's).
    assert_eq!((status, seqs(&after)), (StatusCode::OK, vec![2, 3, 4, 5, 6]), "{after}");
    let (status, body) = get(&base, "?since=yesterday", &admin).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    for token in [&approver, &viewer] {
        let (status, body) = get(&base, "", token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    assert_eq!(
        reqwest::get(format!("{base}/api/audit/export")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let tamper = sqlx::AnyPool::connect(&db.url()).await.unwrap();
    sqlx::query("UPDATE audit SET event = replace(event, 'claude', 'innocent') WHERE seq = 1")
        .execute(&tamper)
        .await
        .unwrap();
    let (status, body) = get(&base, "", &admin).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body.contains("audit_broken") && body.contains("audit record 1"), "{body}");
    served.abort();
}
