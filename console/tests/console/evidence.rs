//! Evidence packs from a console fed by a simulated host: what a period's pack holds, that it
//! verifies offline, and that every kind of tampering is refused with the file named.

use std::{
    collections::BTreeMap,
    io::{Cursor, Read as _, Write as _},
};

use crate::{
    api::{As, Fixture, HOST, refused},
    streams::request,
    support::{Db, hold, key},
};
use console::{
    evidence::{self, EvidenceError, Period, record::HoldEvidence},
    keys::Signer,
    people::{Credential, Principal, Role, SignIn},
    policies::HostPolicy,
    store::now_ms,
};
use ed25519_dalek::SigningKey;
use proto::v1::{PolicyInForce, PolicyReport, Verdict};
use reqwest::StatusCode;

crate::both_databases!(a_pack_holds_the_period_and_verifies);

/// The files of the zip `pack`, by name.
fn unzip(pack: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(Cursor::new(pack)).unwrap();
    (0..archive.len())
        .map(|i| {
            let mut file = archive.by_index(i).unwrap();
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).unwrap();
            (file.name().unwrap().into_owned(), bytes)
        })
        .collect()
}

fn rezip(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in files {
        zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// Signs `files`' manifest again with `key`, as a forger holding that key would.
fn resign(files: &mut BTreeMap<String, Vec<u8>>, key: &SigningKey) {
    let signature = Signer::new(key.clone()).sign_evidence_manifest(&files[evidence::MANIFEST]);
    files.insert(evidence::SIGNATURE.into(), hex::encode(signature.to_bytes()).into_bytes());
}

/// Sets the manifest's digest of `path` to that of its present contents.
fn redigest(files: &mut BTreeMap<String, Vec<u8>>, path: &str) {
    let mut manifest: serde_json::Value = serde_json::from_slice(&files[evidence::MANIFEST]).unwrap();
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&files[path]));
    for file in manifest["files"].as_array_mut().unwrap() {
        if file["path"] == path {
            file["sha256"] = digest.clone().into();
            file["bytes"] = files[path].len().into();
        }
    }
    files.insert(evidence::MANIFEST.into(), serde_json::to_vec_pretty(&manifest).unwrap());
}

/// Why the pack `files` is refused under the console key (seed 1).
#[track_caller]
fn refusal(files: &BTreeMap<String, Vec<u8>>) -> String {
    match evidence::verify(&rezip(files), &key(1).verifying_key()) {
        Err(error @ EvidenceError::Rejected(_)) => error.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A period of approvals, a denial, an expiry and a quorum of two (its votes cast on two
/// replicas on PostgreSQL), a session's vote by way of the identity provider, and a hold from
/// before the period: the admin's pack holds exactly the period's holds, with every vote's
/// credential, and verifies; a viewer and an approver may not export.
/// The host reports policy `test` with `text` in force.
async fn report_test_policy(api: &Fixture, text: &str) {
    let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text));
    let report =
        PolicyReport { policies: vec![PolicyInForce { name: "test".into(), sha256, text: text.into() }] };
    api.running.console.store().report_policies(HOST, &report).await.unwrap();
}

async fn a_pack_holds_the_period_and_verifies(db: Db) {
    let api = Fixture::start(&db).await;
    let (bob, carol) = (api.token("bob", Role::Approver).await, api.token("carol", Role::Admin).await);
    let (vera, ada) = (api.token("vera", Role::Viewer).await, api.token("ada", Role::Admin).await);
    let start = now_ms();
    let mut old = hold("old", 1);
    old.requested_at_ms -= 86_400_000;
    api.raise(old).await;
    let approved = api.raise(hold("approved", 2)).await;
    let denied = api.raise(hold("denied", 3)).await;
    let mut late = hold("late", 4);
    late.deadline_ms = late.requested_at_ms - 1;
    api.raise(late).await;
    let mut two = hold("two", 5);
    two.quorum = 2;
    let two = api.raise(two).await;
    let by_session = api.raise(hold("session", 6)).await;

    let approve = |id: &str| format!("/api/holds/{id}/approve");
    let for_ten_minutes = r#"{"scope": "for", "duration_secs": 600, "reason": "release"}"#;
    assert_eq!(api.post(&approve(&approved), &As::Token(&bob), for_ten_minutes).await.0, StatusCode::OK);
    let deny = format!("/api/holds/{denied}/deny");
    assert_eq!(api.post(&deny, &As::Token(&carol), r#"{"reason": "no"}"#).await.0, StatusCode::OK);
    assert_eq!(api.post(&approve(&two), &As::Token(&bob), "").await.0, StatusCode::ACCEPTED);
    // The second vote on another replica (on SQLite there is one).
    let key1 = key(1);
    let other = db.other_replica(&api.running.console, &key1).await;
    let mut second = request(HOST, "two", Verdict::Approve, "carol");
    second.credential = Credential::ApiToken { token: "carol-token".into() };
    other.decide(&second).await.unwrap();
    let dora = Principal {
        person: "dora@example.com".into(),
        display_name: "Dora".into(),
        role: Role::Approver,
        via: "session".into(),
        credential: Credential::Oidc { issuer: "https://idp.example".into(), subject: "dora-1".into() },
    };
    let cookie = api.running.console.store().create_session(&dora, SignIn::Oidc).await.unwrap();
    assert_eq!(api.post(&approve(&by_session), &As::Session(&cookie, true), "").await.0, StatusCode::OK);
    assert_eq!(api.running.console.store().expire().await.unwrap(), 1);
    let policy = "# the test policy\n";
    report_test_policy(&api, policy).await;

    let query = format!(
        "/api/evidence?from={}&to={}",
        evidence::utc(start - 60_000),
        evidence::utc(now_ms() + 60_000)
    );
    refused(&api.get(&query, &As::Token(&vera)).await, StatusCode::FORBIDDEN, "forbidden");
    refused(&api.get(&query, &As::Token(&bob)).await, StatusCode::FORBIDDEN, "forbidden");
    refused(
        &api.get("/api/evidence?from=soon&to=later", &As::Token(&ada)).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    let response = api.client.get(format!("{}{query}", api.base)).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let pack = response.bytes().await.unwrap();

    let summary = evidence::verify(&pack, &key1.verifying_key()).unwrap();
    assert_eq!(summary.holds, 5, "{summary}");
    let counts: Vec<(&str, usize)> = summary.by_status.iter().map(|(s, n)| (s.as_str(), *n)).collect();
    assert_eq!(counts, [("approved", 3), ("denied", 1), ("expired", 1)], "{summary}");
    assert_eq!((summary.votes, summary.decisions), (5, 4), "{summary}");
    assert_eq!(summary.manifest.exported_by, "ada");
    assert_eq!(summary.policies, 1, "{summary}");
    println!("{summary}");

    let files = unzip(&pack);
    let holds: Vec<HoldEvidence> = serde_json::from_slice(&files[evidence::HOLDS]).unwrap();
    let hold = |id: &str| holds.iter().find(|h| h.hold_id == id).unwrap_or_else(|| panic!("no {id}"));
    assert!(holds.iter().all(|h| h.hold_id != "old"), "a hold before the period is not in its pack");
    let first = hold("approved");
    let decision = first.decision.as_ref().unwrap();
    assert_eq!((decision.duration_secs, decision.reason.as_str()), (600, "release"));
    assert_eq!(serde_json::to_value(decision.scope).unwrap(), "for");
    assert!(matches!(&first.votes[0].credential, Credential::ApiToken { .. }));
    assert_eq!(first.context.exec.as_ref().unwrap().argv, ["curl", "-T", "dump.sql"]);
    assert!(first.audit_records.len() >= 2, "raised and decided: {:?}", first.audit_records);
    let quorum: Vec<&str> = hold("two").votes.iter().map(|v| v.person.as_str()).collect();
    assert_eq!((hold("two").quorum, quorum), (2, vec!["bob", "carol"]));
    assert_eq!(hold("two").decision.as_ref().unwrap().approvers, ["bob", "carol"]);
    assert_eq!(hold("denied").votes[0].person, "carol");
    assert!(hold("late").decision.is_none() && hold("late").votes.is_empty());
    assert_eq!(
        hold("session").votes[0].credential,
        Credential::Oidc { issuer: "https://idp.example".into(), subject: "dora-1".into() }
    );
    let policies: Vec<HostPolicy> = serde_json::from_slice(&files[evidence::POLICIES]).unwrap();
    assert_eq!((policies[0].host.as_str(), policies[0].text.as_str()), (HOST, policy));
    assert_eq!(policies[0].until_ms, None, "still in force");
    let readme = String::from_utf8(files[evidence::README].clone()).unwrap();
    for control in ["CC6.1", "CC6.2", "CC7.2", "CC8.1", "A.5.15", "A.5.18", "A.8.2", "A.8.15", "A.8.32"] {
        assert!(readme.contains(control), "{control} is not in the pack's README");
    }
    for control in ["AC-3(2)", "AC-5", "AU-3", "AU-9(3)", "AU-10", "## Policies in force"] {
        assert!(readme.contains(control), "{control} is not in the pack's README");
    }
    let exported = api.running.console.store().audit_events().await.unwrap();
    assert!(exported.iter().any(|e| e["type"] == "evidence_exported" && e["by"] == "ada"));
}

/// One period exported twice gives the same files but for the export's own fields; any file
/// edited, removed or added, a signature replaced, made by another key or checked against
/// another key is refused with the file named; so is a broken segment even when signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_period_packs_alike_and_tampering_is_named() {
    let db = Db::sqlite();
    let api = Fixture::start(&db).await;
    let bob = api.token("bob", Role::Approver).await;
    let start = now_ms();
    for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
        let id = api.raise(hold(id, n as u64)).await;
        api.post(&format!("/api/holds/{id}/approve"), &As::Token(&bob), "").await;
    }
    report_test_policy(&api, "b = 1\n").await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let period = Period { from_ms: start - 1000, to_ms: now_ms() };
    let console = &api.running.console;
    let export =
        async || evidence::export(console.store(), console.signer(), period, "auditor").await.unwrap();
    let (once, twice) = (unzip(&export().await), unzip(&export().await));
    let differing: Vec<&str> =
        once.iter().filter(|(name, bytes)| twice[*name] != **bytes).map(|(name, _)| name.as_str()).collect();
    assert_eq!(differing, [evidence::CHAIN, evidence::MANIFEST, evidence::SIGNATURE]);
    let names: Vec<&str> = once.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "README.md",
            "audit/chain.json",
            "audit/segment.jsonl",
            "console-public-key.pem",
            "holds.json",
            "manifest.json",
            "manifest.sig",
            "policies.json"
        ]
    );
    evidence::verify(&rezip(&once), &key(1).verifying_key()).unwrap();

    let mut edited = once.clone();
    edited.get_mut(evidence::HOLDS).unwrap().extend_from_slice(b" ");
    assert!(refusal(&edited).contains("holds.json: edited"), "{}", refusal(&edited));
    let mut removed = once.clone();
    removed.remove(evidence::SEGMENT);
    assert!(refusal(&removed).contains("audit/segment.jsonl: removed"), "{}", refusal(&removed));
    let mut added = once.clone();
    added.insert("notes/extra.txt".into(), b"trust me".to_vec());
    assert!(refusal(&added).contains("notes/extra.txt: added"), "{}", refusal(&added));
    let mut replaced = once.clone();
    replaced.insert(evidence::SIGNATURE.into(), hex::encode([7u8; 64]).into_bytes());
    assert!(refusal(&replaced).contains("manifest.sig: not a signature"), "{}", refusal(&replaced));
    let mut unsigned = once.clone();
    unsigned.remove(evidence::SIGNATURE);
    assert!(refusal(&unsigned).contains("manifest.sig: removed"), "{}", refusal(&unsigned));
    // Edited, its digest mended in the manifest: the manifest no longer matches its signature.
    let mut mended = edited.clone();
    redigest(&mut mended, evidence::HOLDS);
    assert!(refusal(&mended).contains("manifest.sig: not a signature"), "{}", refusal(&mended));
    // …and signed again by someone else's key.
    resign(&mut mended, &key(9));
    assert!(refusal(&mended).contains("manifest.sig: not a signature"), "{}", refusal(&mended));
    // A policy's text changed, its digest mended and the pack signed again with the console's
    // own key: the text no longer hashes to the digest it is listed with.
    let mut policy_edited = once.clone();
    let text = String::from_utf8(policy_edited[evidence::POLICIES].clone()).unwrap();
    policy_edited.insert(evidence::POLICIES.into(), text.replacen("b = 1", "b = 9", 1).into_bytes());
    redigest(&mut policy_edited, evidence::POLICIES);
    resign(&mut policy_edited, &key(1));
    assert!(refusal(&policy_edited).contains("policies.json: policy test of"), "{}", refusal(&policy_edited));
    // Checked against another console's key, the genuine pack is refused too.
    let other = evidence::verify(&rezip(&once), &key(9).verifying_key()).unwrap_err().to_string();
    assert!(other.contains("manifest.sig") && other.contains("manifest.json: names console key"), "{other}");
    // A record of the segment edited and the pack signed again with the console's own key:
    // the chain check still finds it.
    let mut rechained = once.clone();
    let segment = String::from_utf8(rechained[evidence::SEGMENT].clone()).unwrap();
    let tampered = segment.replacen("\\\"bob\\\"", "\\\"mallory\\\"", 1);
    assert_ne!(segment, tampered);
    rechained.insert(evidence::SEGMENT.into(), tampered.into_bytes());
    redigest(&mut rechained, evidence::SEGMENT);
    resign(&mut rechained, &key(1));
    let broken = refusal(&rechained);
    assert!(broken.contains("audit/segment.jsonl: audit record") && broken.contains("edited"), "{broken}");
}
