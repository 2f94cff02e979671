//! Chat announcements, whatever the chat, against a recording chat: a hold is posted to the
//! channel and directly to the approver accounts its policy's `notify` names, the
//! requester is told the outcome, and a batch announced again posts nothing twice.

use std::sync::Mutex;

use console::{
    chat::{
        Chat, ChatAccount,
        announce::{Announcer, announce},
    },
    people::Role,
    search::HoldDetail,
    siem::SiemError,
};
use reqwest::{Method, StatusCode};

use crate::{
    api::{As, Fixture},
    support::{Db, hold},
};

crate::both_databases!(each_message_of_a_hold_is_posted_once_to_whom_it_is_for);

/// A chat that records what it is asked to post and update.
#[derive(Default)]
struct Recording {
    /// (conversation, hold status) of each post, in order.
    posts: Mutex<Vec<(String, String)>>,
    /// The conversations of each update, in order.
    updates: Mutex<Vec<String>>,
}

impl Announcer for Recording {
    const CHAT: Chat = Chat::Slack;

    fn channel(&self) -> &'static str {
        "C0HOLDS"
    }

    async fn direct(&self, account: &ChatAccount) -> Result<Option<String>, SiemError> {
        Ok(Some(format!("D-{}", account.user)))
    }

    async fn post(&self, detail: &HoldDetail, to: &str) -> Result<Option<(String, String)>, SiemError> {
        let mut posts = self.posts.lock().unwrap();
        posts.push((to.to_owned(), detail.record.status.clone()));
        Ok(Some((to.to_owned(), format!("ts{}", posts.len()))))
    }

    async fn update(&self, _: &HoldDetail, conversation: &str, _: &str) -> Result<(), SiemError> {
        self.updates.lock().unwrap().push(conversation.to_owned());
        Ok(())
    }
}

async fn each_message_of_a_hold_is_posted_once_to_whom_it_is_for(db: Db) {
    let api = Fixture::start(&db).await;
    let store = api.running.console.store();
    let link = async |account: &str, person: &str, role| {
        store.link_chat(&ChatAccount::slack(account).unwrap(), person, role, "test").await.unwrap();
    };
    link("T0KT/U0BOB", "bob@example.com", Role::Approver).await;
    link("T0KT/U0BOB2", "Bob@example.com", Role::Approver).await;
    link("T0KT/U0VERA", "vera@example.com", Role::Viewer).await;
    link("T0KT/U0ALICE", "alice", Role::Approver).await;
    let teams = "72f988bf-86f1-41af-91ab-2d7cd011db47/00000000-0000-0000-0000-0000000000ab";
    let teams = ChatAccount::teams(teams).unwrap();
    store.link_chat(&teams, "bob@example.com", Role::Approver, "test").await.unwrap();

    let mut raised = hold("n1", 1);
    // The requester (`alice`) in another case, a viewer, someone linked to nothing.
    raised.notify =
        ["bob@example.com", "ALICE", "vera@example.com", "nobody@example.com"].map(Into::into).into();
    let id = api.raise(raised).await;
    let chat = Recording::default();
    let everything = async || store.audit_page(0, 0, i64::MAX, 1_000).await.unwrap();
    for _ in 0..2 {
        announce(&chat, store, &everything().await).await.unwrap();
    }
    let pending = |to: &str| (to.to_owned(), "pending".to_owned());
    let expected = vec![pending("C0HOLDS"), pending("D-U0BOB"), pending("D-U0BOB2")];
    assert_eq!(*chat.posts.lock().unwrap(), expected, "the channel, then each of bob's Slack accounts, once");

    let bob = api.token("bob@example.com", Role::Approver).await;
    let (status, _) =
        api.call(Method::POST, &format!("/api/holds/{id}/approve"), &As::Token(&bob), Some("{}")).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..2 {
        announce(&chat, store, &everything().await).await.unwrap();
    }
    let mut expected = expected;
    expected.push(("D-U0ALICE".into(), "approved".into()));
    assert_eq!(*chat.posts.lock().unwrap(), expected, "the requester is told the outcome once");
    let updates = chat.updates.lock().unwrap().clone();
    for to in ["C0HOLDS", "D-U0BOB", "D-U0BOB2"] {
        assert!(updates.iter().any(|u| u == to), "{to} is updated: {updates:?}");
    }
}
