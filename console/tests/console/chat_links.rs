//! Chat accounts linked over the HTTP API: admins link, list and unlink (as `keyturn
//! console link` does), everyone else reads only their own links; bad input is refused
//! with one clear message, and every change is audited.

use console::{people::Role, store::Store};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::{
    api::{As, Fixture, refused},
    support::Db,
};

crate::both_databases!(
    admins_link_and_unlink_chat_accounts,
    a_link_offer_is_used_once_by_one_person,
    links_made_by_their_person_follow_their_sign_ins
);

async fn admins_link_and_unlink_chat_accounts(db: Db) {
    let api = Fixture::start(&db).await;
    let (ada, bob) =
        (api.token("ada@example.com", Role::Admin).await, api.token("bob@example.com", Role::Approver).await);
    let put = async |path: &str, who: &str, body: &str| {
        api.call(Method::PUT, &format!("/api/chat-links/{path}"), &As::Token(who), Some(body)).await
    };
    let bob_link = r#"{"person": "bob@example.com"}"#;
    refused(&put("slack:T0KT/U0BOB", &bob, bob_link).await, StatusCode::FORBIDDEN, "forbidden");
    let (status, linked) = put("slack:T0KT/U0BOB", &ada, bob_link).await;
    assert_eq!(status, StatusCode::OK, "{linked}");
    assert_eq!(
        linked,
        json!({"account": "slack:T0KT/U0BOB", "person": "bob@example.com", "role": "approver"})
    );
    // The account's `/` may come encoded; a Teams account's GUIDs are kept in lower case.
    let (status, _) =
        put("slack:T0KT%2FU0VERA", &ada, r#"{"person": "vera@example.com", "role": "viewer"}"#).await;
    assert_eq!(status, StatusCode::OK);
    let teams = "teams:72F988BF-86F1-41AF-91AB-2D7CD011DB47/00000000-0000-0000-0000-0000000000AB";
    let (status, linked) = put(teams, &ada, bob_link).await;
    assert_eq!((status, linked["account"].as_str()), (StatusCode::OK, Some(teams.to_lowercase().as_str())));

    for (account, body, says) in [
        ("slack:T0KT", bob_link, "is not TEAM/USER"),
        ("slack:T0KT/U0 BOB", bob_link, "is not TEAM/USER"),
        ("irc:T0KT/U0BOB", bob_link, "is not slack:TEAM/USER or teams:TENANT/USER"),
        ("teams:T0KT/U0BOB", bob_link, "two GUIDs"),
        ("slack:T0KT/U0BOB", r#"{"person": "bob@example.com", "role": "admin"}"#, "a viewer or an approver"),
        ("slack:T0KT/U0BOB", r#"{"person": "bob@example.com", "role": "root"}"#, "unknown variant"),
        ("slack:T0KT/U0BOB", r#"{"person": " bob@example.com"}"#, "without spaces"),
        ("slack:T0KT/U0BOB", "{\"person\": \"bob@example.com\u{200B}\"}", "invisible"),
        ("slack:T0KT/U0BOB", r#"{"person": ""}"#, "must name a person"),
        ("slack:T0KT/U0BOB", r#"{"person": "bob@example.com", "by": "ada"}"#, "unknown field"),
        ("slack:T0KT/U0BOB", "", "must name a person"),
    ] {
        let answer = put(account, &ada, body).await;
        refused(&answer, StatusCode::BAD_REQUEST, "bad_request");
        let message = answer.1["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{account} {body}: {message}");
    }

    let (status, all) = api.get("/api/chat-links", &As::Token(&ada)).await;
    assert_eq!(status, StatusCode::OK);
    let accounts: Vec<&str> =
        all["links"].as_array().unwrap().iter().map(|l| l["account"].as_str().unwrap()).collect();
    assert_eq!(accounts, ["slack:T0KT/U0BOB", "slack:T0KT/U0VERA", &teams.to_lowercase()]);
    assert_eq!(
        (&all["links"][1]["role"], &all["links"][1]["linked_by"]),
        (&json!("viewer"), &json!("ada@example.com"))
    );
    let (_, own) = api.get("/api/chat-links", &As::Token(&bob)).await;
    let own: Vec<&str> =
        own["links"].as_array().unwrap().iter().map(|l| l["account"].as_str().unwrap()).collect();
    assert_eq!(own, ["slack:T0KT/U0BOB", &teams.to_lowercase()], "bob sees his own links only");

    let delete = async |path: &str, who: &str| {
        api.call(Method::DELETE, &format!("/api/chat-links/{path}"), &As::Token(who), None).await
    };
    // A person unlinks an account linked to them (one they find is not theirs), no other.
    refused(&delete("slack:T0KT/U0VERA", &bob).await, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(delete(&teams.to_lowercase(), &bob).await.0, StatusCode::NO_CONTENT);
    refused(&delete("slack:T0KT", &ada).await, StatusCode::BAD_REQUEST, "bad_request");
    assert_eq!(delete("slack:T0KT/U0BOB", &ada).await.0, StatusCode::NO_CONTENT);
    refused(&delete("slack:T0KT/U0BOB", &ada).await, StatusCode::NOT_FOUND, "not_linked");
    let linked = api.audited("chat_linked").await;
    assert_eq!(linked.len(), 3, "{linked:?}");
    assert!(linked.iter().all(|e| e["by"] == "ada@example.com" && e.get("how").is_none()), "{linked:?}");
    let unlinked = api.audited("chat_unlinked").await;
    assert_eq!(
        unlinked,
        [
            json!({"type": "chat_unlinked", "account": teams.to_lowercase(), "by": "bob@example.com"}),
            json!({"type": "chat_unlinked", "account": "slack:T0KT/U0BOB", "by": "ada@example.com"})
        ]
    );
}

/// An offer's secret is kept as a hash only; only the person the chat service named as the
/// account's may confirm it (a forwarded link is refused, and left for them); of their two
/// confirmations at once, one links; a viewer stays a viewer; an admin is linked as an
/// approver; an account linked since the offer is not linked again by it.
async fn a_link_offer_is_used_once_by_one_person(db: Db) {
    let api = Fixture::start(&db).await;
    let store: &Store = api.running.console.store();
    let account = console::chat::ChatAccount::slack("T0KT/U0NEW").unwrap();
    let secret = store.offer_chat_link(&account, "new\u{202E}name\u{7}", "Vera@example.com").await.unwrap();
    let kept = sqlx::AnyPool::connect(&db.url()).await.unwrap();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT secret_sha256, name FROM chat_link_offers").fetch_all(&kept).await.unwrap();
    assert_eq!(rows, [(hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&secret)), "newname".to_owned())]);

    let (vera, ada) =
        (api.token("vera@example.com", Role::Viewer).await, api.token("ada@example.com", Role::Admin).await);
    let body = json!({"secret": secret}).to_string();
    let (status, offer) = api.post("/api/chat-link-offers/read", &As::Token(&vera), &body).await;
    assert_eq!(
        (status, &offer["role"], &offer["name"]),
        (StatusCode::OK, &json!("viewer"), &json!("newname")),
        "{offer}"
    );
    let (as_vera, as_ada) = (As::Token(&vera), As::Token(&ada));
    let forwarded = api.post("/api/chat-link-offers/confirm", &as_ada, &body).await;
    refused(&forwarded, StatusCode::FORBIDDEN, "not_yours");
    let (first, second) = tokio::join!(
        api.post("/api/chat-link-offers/confirm", &as_vera, &body),
        api.post("/api/chat-link-offers/confirm", &as_vera, &body),
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::GONE], "{first:?} {second:?}");
    let link = store.chat_link(&account).await.unwrap().unwrap();
    assert_eq!((link.person.as_str(), link.role), ("vera@example.com", Role::Viewer));
    let offered = api.audited("chat_linked").await;
    assert_eq!(offered.len(), 1);
    assert_eq!((&offered[0]["by"], &offered[0]["how"]), (&json!("vera@example.com"), &json!("offer")));

    // An admin is linked as an approver; not by an offer made before the account was
    // linked by someone else.
    let ada_account = console::chat::ChatAccount::slack("T0KT/U0ADA").unwrap();
    let early = store.offer_chat_link(&ada_account, "ada", "ada@example.com").await.unwrap();
    let late = store.offer_chat_link(&account, "new", "ada@example.com").await.unwrap();
    store.link_chat(&account, "vera@example.com", Role::Viewer, "ada@example.com").await.unwrap();
    let confirm = async |secret: &str| {
        api.post("/api/chat-link-offers/confirm", &as_ada, &json!({"secret": secret}).to_string()).await
    };
    refused(&confirm(&late).await, StatusCode::GONE, "linked_since");
    let (status, done) = confirm(&early).await;
    assert_eq!((status, &done["role"]), (StatusCode::OK, &json!("approver")), "{done}");

    let other = store.offer_chat_link(&account, "", "ada@example.com").await.unwrap();
    let bad = |secret: &str| json!({"secret": secret}).to_string();
    for secret in ["", "zz", &other.to_uppercase()[..10], &format!("{other}0")] {
        refused(
            &api.post("/api/chat-link-offers/confirm", &As::Token(&ada), &bad(secret)).await,
            StatusCode::GONE,
            "unknown_link",
        );
    }
    sqlx::query("UPDATE chat_link_offers SET created_at_ms = created_at_ms - 600001")
        .execute(&kept)
        .await
        .unwrap();
    refused(
        &api.post("/api/chat-link-offers/read", &As::Token(&ada), &bad(&other)).await,
        StatusCode::GONE,
        "link_expired",
    );
}

/// A link its person made (a one-time link, a sign-in) takes the role of their sign-in, at
/// most approver, and goes with a refused one, whatever case the person is named in; an
/// admin's link keeps its role; a sign-in that changes nothing audits nothing.
async fn links_made_by_their_person_follow_their_sign_ins(db: Db) {
    let api = Fixture::start(&db).await;
    let store: &Store = api.running.console.store();
    let account = |text: &str| console::chat::ChatAccount::slack(text).unwrap();
    let (own, by_admin, teams) = (
        account("T0KT/U0OWN"),
        account("T0KT/U0ADM"),
        console::chat::ChatAccount::teams(
            "72f988bf-86f1-41af-91ab-2d7cd011db47/00000000-0000-0000-0000-0000000000ab",
        )
        .unwrap(),
    );
    let secret = store.offer_chat_link(&own, "vera", "vera@example.com").await.unwrap();
    let vera = api.token("vera@example.com", Role::Viewer).await;
    let body = json!({"secret": secret}).to_string();
    assert_eq!(api.post("/api/chat-link-offers/confirm", &As::Token(&vera), &body).await.0, StatusCode::OK);
    store.link_chat(&by_admin, "vera@example.com", Role::Viewer, "ada@example.com").await.unwrap();
    store.link_at_sign_in(&teams, "vera@example.com", Role::Viewer).await.unwrap();
    let role =
        async |account: &console::chat::ChatAccount| store.chat_link(account).await.unwrap().map(|l| l.role);
    let before = api.audited("chat_linked").await.len();

    store.follow_sign_in("Vera@example.com", Some(Role::Admin), None).await.unwrap();
    assert_eq!(
        (role(&own).await, role(&by_admin).await, role(&teams).await),
        (Some(Role::Approver), Some(Role::Viewer), Some(Role::Approver))
    );
    assert_eq!(api.audited("chat_linked").await.len(), before + 2);
    store.follow_sign_in("vera@example.com", Some(Role::Approver), None).await.unwrap();
    assert_eq!(api.audited("chat_linked").await.len(), before + 2, "nothing changed, nothing audited");

    // Someone whose name folds to Kate's only beyond ASCII is not Kate.
    let kelvin = account("T0KT/U0KELVIN");
    store.link_at_sign_in(&kelvin, "\u{212A}ate@example.com", Role::Viewer).await.unwrap();
    store.follow_sign_in("kate@example.com", Some(Role::Approver), None).await.unwrap();
    assert_eq!(role(&kelvin).await, Some(Role::Viewer));

    store.follow_sign_in("vera@example.com", None, None).await.unwrap();
    assert_eq!(
        (role(&own).await, role(&by_admin).await, role(&teams).await),
        (None, Some(Role::Viewer), None)
    );
    assert_eq!(api.audited("chat_unlinked").await.len(), 2);
    // A refused sign-in ends the link its Teams account had from a sign-in under another name.
    store.link_at_sign_in(&teams, "vera.old@example.com", Role::Approver).await.unwrap();
    store.follow_sign_in("vera@example.com", None, Some(&teams)).await.unwrap();
    assert_eq!(role(&teams).await, None);
}
