//! Approving in Microsoft Teams, end to end: the real daemon holds a real process, the
//! console (in this process, SQLite) has its bot post the hold as an Adaptive Card to a
//! Teams stand-in written from Microsoft's published protocols, and a click there (an
//! `invoke` with a Bot Framework token) is decided as the person the clicking Teams user is
//! linked to. Every card is also judged by Microsoft's own Adaptive Cards library (npm).

use std::time::Duration;

use console::{Role, chat::teams::TeamsConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tests::{
    daemon::{HOLD_FLAGGED, finish, stderr},
    held,
    teams::{self, TENANT, TeamsStandIn},
    web::ConsoleHere,
};

const HOST: &str = "teams-host";
/// Where holds are posted.
const CHANNEL: &str = "19:holds@thread.tacv2";
/// Teams users, by their Entra ID object ids.
const BOB: &str = "00000000-0000-0000-0000-00000000b0b0";
const CAROL: &str = "00000000-0000-0000-0000-0000000ca401";
const STRANGER: &str = "00000000-0000-0000-0000-00000000dead";

/// A console with a Teams bot (or a notify-only webhook), its stand-in, and a daemon.
struct Linked {
    here: ConsoleHere,
    teams: TeamsStandIn,
}

impl std::ops::Deref for Linked {
    type Target = ConsoleHere;

    fn deref(&self) -> &ConsoleHere {
        &self.here
    }
}

impl Linked {
    fn start(policy: &str, webhook: bool) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let teams = rt.block_on(TeamsStandIn::start());
        let config = if webhook {
            json!({"webhook_url": teams.webhook_url(), "console_url": "https://keyturn.example/"})
        } else {
            json!({"app_id": teams::APP_ID, "app_secret": teams::APP_SECRET, "tenant_id": TENANT,
                   "channel": CHANNEL, "service_url": teams.service_url(), "token_url": teams.token_url(),
                   "openid_metadata": teams.openid_metadata(), "console_url": "https://keyturn.example/"})
        };
        let config: TeamsConfig = serde_json::from_value(config).expect("a [teams] section");
        let here = ConsoleHere::start(rt, "teams", policy, HOST, |console, api| {
            let (teams, announcements) = console::chat::teams::start(console, &config).expect("Teams starts");
            (api.with_teams(teams), vec![announcements])
        });
        Self { here, teams }
    }

    /// Links Teams user `user` to `person` with `role`, as an admin does.
    fn link(&self, user: &str, person: &str, role: Role) {
        let account = console::chat::ChatAccount::teams(&format!("{TENANT}/{user}")).expect("an account");
        self.rt.block_on(self.console.store().link_chat(&account, person, role, "unix:root")).expect("link");
    }

    /// The card that announced hold `id`, once it shows `shown`.
    fn card_of(&self, id: &str, shown: impl Fn(&str) -> bool) -> teams::Card {
        let marker = format!("hold {id} ");
        self.teams.wait_for(&format!("hold {id}'s card"), |teams| {
            teams.cards().into_iter().find(|c| {
                let text = c.card.to_string();
                text.contains(&marker) && shown(&text)
            })
        })
    }

    /// `user`'s click (of `tenant`) on button `verb` of hold `id`, with a valid token.
    fn click(&self, (tenant, user): (&str, &str), verb: &str, id: &str) -> (StatusCode, Value) {
        let token = self.teams.token(&self.teams.service_url(), &json!({}));
        self.click_with(&format!("Bearer {token}"), (tenant, user), verb, id)
    }

    fn click_with(
        &self,
        authorization: &str,
        who: (&str, &str),
        verb: &str,
        id: &str,
    ) -> (StatusCode, Value) {
        self.rt.block_on(self.teams.click(self.http, authorization, who, verb, &format!("{id}@{HOST}")))
    }

    /// What the clicker alone was told.
    fn told(&self, who: (&str, &str), verb: &str, id: &str) -> String {
        let (status, reply) = self.click(who, verb, id);
        assert_eq!(status, StatusCode::OK, "{reply}");
        assert_eq!(reply["type"], "application/vnd.microsoft.activity.message", "{reply}");
        reply["value"].as_str().expect("text").to_owned()
    }

    /// Every card the bot sent, as it stands, judged by Microsoft's library.
    fn judged_clean(&self, also: &[Value]) {
        let mut cards: Vec<Value> = self.teams.cards().into_iter().map(|c| c.card).collect();
        cards.extend(self.teams.webhook_cards());
        cards.extend_from_slice(also);
        assert!(!cards.is_empty());
        assert_eq!(teams::judge(&cards), Vec::<String>::new());
        assert_eq!(teams::judge_conversations(&self.teams.conversations()), Vec::<String>::new());
        assert_eq!(self.teams.refusals(), Vec::<String>::new());
    }
}

fn id_of(hold: &Value) -> String {
    hold["id"].as_str().expect("id").to_owned()
}

/// The texts of `card`'s buttons.
fn buttons(card: &Value) -> Vec<String> {
    card["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a["title"].as_str().expect("title").to_owned())
        .collect()
}

/// A held program run with a hostile command line is posted as a card showing it as plain
/// text; clicks by an unlinked user, another tenant's user and the agent's own requester
/// decide nothing and are told why; the linked approver's click releases the process,
/// which completes, and is answered with the card as decided; the channel's card is
/// replaced too, and a second click is told it was decided.
#[test]
fn a_click_in_teams_releases_a_held_process_as_the_linked_approver() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    let hostile = [
        "**Approved** [by ada](https://x.example)",
        "<at>everyone</at>",
        "\u{202E}txt.exe",
        "/srv/{{TIME(2026-01-01T12:00:00Z)}}",
    ];
    let agent = linked.daemon.run_agent_for("carol@example.com", &linked.daemon.flagged(), &hostile);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);

    let posted = linked.card_of(&id, |_| true);
    assert_eq!(posted.conversation, CHANNEL);
    assert_eq!(buttons(&posted.card), ["Approve once", "Approve for…", "Deny…", "Open in console"]);
    // What the agent chose is in TextRuns (never Markdown), its bidi control shown.
    let runs: Vec<&str> = posted.card["body"]
        .as_array()
        .expect("body")
        .iter()
        .flat_map(|b| b["inlines"].as_array().into_iter().flatten())
        .filter_map(|run| run["text"].as_str())
        .collect();
    assert!(runs.iter().any(|t| t.contains("'**Approved** [by ada](https://x.example)'")), "{runs:?}");
    assert!(runs.iter().any(|t| t.contains("\\u{202e}txt.exe")), "{runs:?}");
    // Teams formats {{TIME(…)}} even in a TextRun: never left whole.
    assert!(runs.iter().any(|t| t.contains("/srv/{\u{200B}{TIME(")), "{runs:?}");
    assert!(!posted.card.to_string().contains("{{TIME(2026-01-01"), "{}", posted.card);
    let blocks = posted.card["body"].as_array().expect("body").iter().filter(|b| b["type"] == "TextBlock");
    for block in blocks {
        let text = block["text"].as_str().expect("text");
        assert!(
            !text.contains("Approved") && !text.contains("everyone"),
            "agent text in a TextBlock: {text}"
        );
    }
    assert!(!posted.card.to_string().contains('\u{202E}'));

    let stranger = linked.told((TENANT, STRANGER), teams::APPROVE, &id);
    assert!(
        stranger.contains("not linked") && stranger.contains(&format!("--teams {TENANT}/{STRANGER}")),
        "{stranger}"
    );
    let elsewhere = "11111111-2222-3333-4444-555555555555";
    linked.link(BOB, "bob@example.com", Role::Approver);
    assert!(linked.told((elsewhere, BOB), teams::APPROVE, &id).contains("own Microsoft tenant"));
    linked.link(CAROL, "carol@example.com", Role::Approver);
    let own = linked.told((TENANT, CAROL), teams::APPROVE, &id);
    assert!(own.contains("cannot approve"), "{own}");
    assert!(held(u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid")));

    let (status, decided) = linked.click((TENANT, BOB), teams::APPROVE, &id);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(decided["type"], "application/vnd.microsoft.card.adaptive", "{decided}");
    let shown = decided["value"].to_string();
    assert!(shown.contains("Approved once by") && shown.contains("bob@example.com"), "{shown}");
    assert_eq!(buttons(&decided["value"]), ["Open in console"]);
    assert_eq!(finish(agent), (0, hostile.join(" ") + "\n"));

    let replaced = linked.card_of(&id, |text| text.contains("Approved once by"));
    assert_eq!(replaced.conversation, CHANNEL);
    // The requester is told in the bot's personal conversation with their linked account.
    let told = linked.teams.wait_for("the requester's card", |teams| {
        teams.cards().into_iter().find(|c| c.conversation == TeamsStandIn::personal(CAROL))
    });
    assert!(told.card.to_string().contains("Approved once by"), "{}", told.card);
    assert_eq!(buttons(&told.card), ["Open in console"]);
    assert_eq!(linked.teams.conversations().len(), 1, "{:?}", linked.teams.conversations());
    assert!(linked.told((TENANT, BOB), teams::DENY, &id).contains("already decided"));
    assert_eq!(
        linked.refused(),
        [
            json!([format!("teams:{TENANT}/{STRANGER}"), "not_linked"]),
            json!(["carol@example.com", "self_approval"]),
        ]
    );
    assert_eq!(
        linked.teams.cards().len(),
        2,
        "one card in the channel, replaced in place; one to the requester"
    );
    linked.judged_clean(&[decided["value"].clone()]);
}

/// An activity is taken only with a Bot Framework token that names the bot, is signed by a
/// key of the metadata's, is in date, and names the activity's own service URL; the hold
/// stays held through every refusal, and a denial in the console replaces the card.
#[test]
fn activities_without_a_valid_bot_framework_token_are_refused() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    linked.link(BOB, "bob@example.com", Role::Approver);
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["never"]);
    let id = id_of(&linked.daemon.pending_one());
    linked.card_of(&id, |_| true);
    let service = linked.teams.service_url();
    let hour_ago =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() - 3_600;
    let forged = [
        ("no token", String::new()),
        (
            "another app",
            format!(
                "Bearer {}",
                linked.teams.token(&service, &json!({"aud": "00000000-0000-0000-0000-000000000001"}))
            ),
        ),
        (
            "another issuer",
            format!("Bearer {}", linked.teams.token(&service, &json!({"iss": "https://sts.example"}))),
        ),
        ("expired", format!("Bearer {}", linked.teams.token(&service, &json!({"exp": hour_ago})))),
        (
            "another service URL",
            format!("Bearer {}", linked.teams.token("https://attacker.example/", &json!({}))),
        ),
        ("no service URL", format!("Bearer {}", linked.teams.token(&service, &json!({"serviceurl": null})))),
    ];
    for (what, authorization) in forged {
        let (status, reply) = linked.click_with(&authorization, (TENANT, BOB), teams::APPROVE, &id);
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {reply}");
    }
    assert!(linked.refused().is_empty(), "a forged activity decides nothing, and is not a person's refusal");

    let out = linked.daemon.cli(&["deny", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    // Decided on the host: the console is told the hold closed, and why.
    let denied = linked
        .card_of(&id, |text| text.contains("with no decision here") && text.contains("denied on the host"));
    assert_eq!(buttons(&denied.card), ["Open in console"]);
    linked.judged_clean(&[]);
}

/// Without a bot, a Workflows webhook is sent each hold's card with **Open in console**
/// only, once, and the messaging endpoint takes nothing.
#[test]
fn a_workflows_webhook_is_told_of_holds_with_open_in_console_only() {
    let linked = Linked::start(HOLD_FLAGGED, true);
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["notified"]);
    let id = id_of(&linked.daemon.pending_one());
    let card = linked.teams.wait_for("the webhook's card", |teams| teams.webhook_cards().into_iter().next());
    assert!(card.to_string().contains(&format!("hold {id} ")), "{card}");
    assert_eq!(buttons(&card), ["Open in console"]);
    let (status, _) = linked.click((TENANT, BOB), teams::APPROVE, &id);
    assert_eq!(status, StatusCode::NOT_FOUND);
    let out = linked.daemon.cli(&["approve", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(agent), (0, "notified\n".to_owned()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(linked.teams.webhook_cards().len(), 1, "a webhook's card is sent once");
    linked.judged_clean(&[]);
}

/// What the Bot Connector alone sets is checked: the tenant named twice must agree, the
/// click must be sent to this bot, from Teams, and from the Bot Connector's own host (a
/// token minted for another service URL is refused even where it matches the activity).
#[test]
fn a_click_that_names_another_tenant_bot_channel_or_host_decides_nothing() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    linked.link(BOB, "bob@example.com", Role::Approver);
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["never"]);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);
    let value = format!("{id}@{HOST}");
    let token = format!("Bearer {}", linked.teams.token(&linked.teams.service_url(), &json!({})));
    let send = |activity: &Value, authorization: &str| {
        linked.rt.block_on(linked.teams.send(linked.http, authorization, activity))
    };
    let twisted = |change: &dyn Fn(&mut Value)| {
        let mut activity = linked.teams.activity((TENANT, BOB), teams::APPROVE, &value);
        change(&mut activity);
        activity
    };
    let other_tenant = "11111111-2222-3333-4444-555555555555";
    let refused = [
        (
            "tenants disagree",
            twisted(&|a| a["channelData"]["tenant"]["id"] = json!(other_tenant)),
            "own Microsoft tenant",
        ),
        (
            "another bot",
            twisted(&|a| a["recipient"]["id"] = json!("28:someone-else")),
            "not sent to keyturn's bot",
        ),
        ("another channel", twisted(&|a| a["channelId"] = json!("webchat")), "Microsoft Teams only"),
    ];
    for (what, activity, said) in refused {
        let (status, reply) = send(&activity, &token);
        assert_eq!(status, StatusCode::OK, "{what}");
        assert!(reply["value"].as_str().is_some_and(|text| text.contains(said)), "{what}: {reply}");
    }
    let elsewhere = "http://127.0.0.2:9/";
    let activity = twisted(&|a| a["serviceUrl"] = json!(elsewhere));
    let minted = format!("Bearer {}", linked.teams.token(elsewhere, &json!({})));
    assert_eq!(
        send(&activity, &minted).0,
        StatusCode::UNAUTHORIZED,
        "a service URL off the Bot Connector's host"
    );
    assert!(held(u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid")));
    assert!(linked.refused().is_empty());
    let out = linked.daemon.cli(&["deny", &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
}

/// A card a person deleted cannot be replaced (Teams answers 403), a requester the bot is
/// not installed for cannot be told (403 again), nor one who blocked the bot: that hold's
/// end is not shown, and the next hold is announced all the same.
#[test]
fn a_deleted_card_holds_up_no_later_announcement() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    linked.link(CAROL, "carol@example.com", Role::Approver);
    linked.teams.uninstall_for(CAROL);
    linked.link(BOB, "bob@example.com", Role::Approver);
    linked.teams.blocked_by(BOB);
    let first = linked.daemon.run_agent_for("carol@example.com", &linked.daemon.flagged(), &["first"]);
    let first_id = id_of(&linked.daemon.pending_one());
    let card = linked.card_of(&first_id, |_| true);
    linked.teams.delete(&card.id);
    let out = linked.daemon.cli(&["deny", &first_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(first).0, 128 + libc::SIGKILL);
    let second = linked.daemon.run_agent_for("bob@example.com", &linked.daemon.flagged(), &["second"]);
    let second_id = id_of(&linked.daemon.pending_matching(|hold| hold["id"] != first_id.as_str()));
    linked.card_of(&second_id, |_| true);
    let out = linked.daemon.cli(&["approve", &second_id]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(finish(second), (0, "second\n".to_owned()));
    linked.card_of(&second_id, |text| text.contains("approved on the host"));
    let third = linked.daemon.run_agent(&linked.daemon.flagged(), &["third"]);
    let third_id = id_of(&linked.daemon.pending_matching(|hold| hold["id"] != second_id.as_str()));
    linked.card_of(&third_id, |_| true);
    assert!(linked.daemon.cli(&["deny", &third_id]).status.success());
    assert_eq!(finish(third).0, 128 + libc::SIGKILL);
    let asked: Vec<_> = linked.teams.conversations().iter().map(|c| c["members"][0]["id"].clone()).collect();
    assert_eq!(asked, [json!(CAROL), json!(BOB)], "each requester was asked for, and refused");
    assert!(linked.teams.cards().iter().all(|c| c.conversation == CHANNEL));
}

/// **Approve for…** sends a duration Teams was offered and a reason: the approval covers the
/// agent's same action again for that long; a duration keyturn did not offer decides
/// nothing; **Deny…** carries its reason to the decision.
#[test]
fn approve_for_an_hour_and_deny_with_a_reason_in_teams() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    linked.link(BOB, "bob@example.com", Role::Approver);
    let flagged = linked.daemon.flagged();
    let agent =
        linked.daemon.run_agent("/bin/sh", &["-c", &format!("{flagged} for-an-hour; {flagged} for-an-hour")]);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);
    let posted = linked.card_of(&id, |_| true);
    let token = format!("Bearer {}", linked.teams.token(&linked.teams.service_url(), &json!({})));
    let decide = |verb: &str, id: &str, inputs: &Value| {
        let mut activity = linked.teams.activity((TENANT, BOB), verb, &format!("{id}@{HOST}"));
        let data = activity["value"]["action"]["data"].as_object_mut().expect("data");
        data.extend(inputs.as_object().expect("inputs").clone());
        linked.rt.block_on(linked.teams.send(linked.http, &token, &activity))
    };
    // What the card offers: its durations are what the click may send.
    let offered = posted.card["actions"][1]["card"]["body"][0]["choices"].to_string();
    assert!(offered.contains("\"3600\"") && offered.contains("1 hour"), "{offered}");
    let (_, forged) = decide(teams::APPROVE_FOR, &id, &json!({"duration": "99999999", "reason": "forged"}));
    assert!(forged["value"].as_str().is_some_and(|t| t.contains("did not offer")), "{forged}");
    assert!(held(u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid")));
    let (status, decided) =
        decide(teams::APPROVE_FOR, &id, &json!({"duration": "3600", "reason": "release week"}));
    assert_eq!(status, StatusCode::OK);
    let shown = decided["value"].to_string();
    assert!(shown.contains("Approved for 3600 s by") && shown.contains("release week"), "{shown}");
    assert_eq!(
        finish(agent),
        (0, "for-an-hour\nfor-an-hour\n".to_owned()),
        "the second exec needs no new approval"
    );

    let agent = linked.daemon.run_agent(&flagged, &["deny-me"]);
    let denied = id_of(&linked.daemon.pending_matching(|hold| hold["id"] != id.as_str()));
    linked.card_of(&denied, |_| true);
    decide(teams::DENY, &denied, &json!({"reason": "not {{TIME(2026-01-01T00:00:00Z)}} today"}));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    let detail = linked
        .rt
        .block_on(linked.console.store().hold_detail(HOST, &denied))
        .expect("read")
        .expect("the hold");
    let decision = detail.decision.expect("a decision");
    assert_eq!(
        (decision.reason.as_str(), decision.decided_by.as_str()),
        ("not {{TIME(2026-01-01T00:00:00Z)}} today", "bob@example.com")
    );
    let card = linked.card_of(&denied, |text| text.contains("Denied by"));
    assert!(
        card.card.to_string().contains("not {\u{200b}{TIME("),
        "a reason is shown, never formatted: {}",
        card.card
    );
    linked.judged_clean(&[]);
}

/// The approvers a policy names get the hold's card with its buttons in the bot's personal
/// conversation with them (the requester does not, though named); a click there approves,
/// and the copy is replaced with the outcome like the channel's.
#[test]
fn the_approvers_a_policy_names_are_sent_the_card_directly_and_approve_there() {
    let notify = format!("action = \"hold\"\nnotify = {}", json!(["bob@example.com", "carol@example.com"]));
    let linked = Linked::start(&HOLD_FLAGGED.replacen("action = \"hold\"", &notify, 1), false);
    linked.link(BOB, "bob@example.com", Role::Approver);
    linked.link(CAROL, "carol@example.com", Role::Approver);
    let agent = linked.daemon.run_agent_for("carol@example.com", &linked.daemon.flagged(), &["named"]);
    let id = id_of(&linked.daemon.pending_one());
    let marker = format!("hold {id} ");
    let in_conversation = |conversation: String, shown: &'static str| {
        linked.teams.wait_for(&format!("hold {id}'s card in {conversation}"), |teams| {
            teams.cards().into_iter().find(|c| {
                let text = c.card.to_string();
                c.conversation == conversation && text.contains(&marker) && text.contains(shown)
            })
        })
    };
    let direct = in_conversation(TeamsStandIn::personal(BOB), "");
    assert_eq!(buttons(&direct.card), ["Approve once", "Approve for…", "Deny…", "Open in console"]);
    let (status, decided) = linked.click((TENANT, BOB), teams::APPROVE, &id);
    assert_eq!(
        (status, decided["type"].as_str()),
        (StatusCode::OK, Some("application/vnd.microsoft.card.adaptive"))
    );
    assert_eq!(finish(agent), (0, "named\n".to_owned()));
    for conversation in [CHANNEL.to_owned(), TeamsStandIn::personal(BOB)] {
        assert_eq!(buttons(&in_conversation(conversation, "Approved once by").card), ["Open in console"]);
    }
    // Carol started the agent: told its outcome, never asked to approve it.
    in_conversation(TeamsStandIn::personal(CAROL), "Approved once by");
    let to_carol =
        linked.teams.cards().into_iter().filter(|c| c.conversation == TeamsStandIn::personal(CAROL));
    assert_eq!(to_carol.count(), 1);
    linked.judged_clean(&[decided["value"].clone()]);
}
