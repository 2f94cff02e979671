//! Approving in Slack, end to end: the real daemon holds a real process, the console (in
//! this process, SQLite) posts the hold to a Slack stand-in written from Slack's published
//! protocols, and a click there is decided as the person the clicking account is linked to.
//! Every message keyturn sends is also judged by Slack's own SDK (`slack-sdk` from the Python package index),
//! so that the stand-in is never the only judge of keyturn's Block Kit or signatures.

use std::{process::Output, time::Duration};

use console::{
    Role,
    chat::slack::{SlackConfig, linking, message},
};
use serde_json::{Value, json};
use tests::{
    daemon::{Daemon, HOLD_FLAGGED, finish, keyturn_path, stderr},
    held,
    slack::{self, Message, SlackStandIn},
    web::ConsoleHere,
};

/// The name the test daemons give themselves at the console.
const HOST: &str = "slack-host";
/// The Slack workspace of every account here.
const TEAM: &str = "T0KEYTURN";
/// The channel holds are posted to.
const CHANNEL: &str = "C0HOLDS";
/// Request-URL mode's signing secret.
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// A console with Slack, its stand-in, and a daemon linked to the console.
struct Linked {
    here: ConsoleHere,
    slack: SlackStandIn,
}

impl std::ops::Deref for Linked {
    type Target = ConsoleHere;

    fn deref(&self) -> &ConsoleHere {
        &self.here
    }
}

impl Linked {
    /// In Socket Mode, or in request-URL mode with `signed_requests`; the daemon holds as
    /// `policy` says.
    fn start(policy: &str, signed_requests: bool) -> Self {
        Self::start_with(policy, signed_requests, Some("https://keyturn.example/"))
    }

    /// The same, with the web UI at `console_url` (for **Open in console** and link offers).
    fn start_with(policy: &str, signed_requests: bool, console_url: Option<&str>) -> Self {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let slack = rt.block_on(SlackStandIn::start());
        let mode = if signed_requests {
            json!({"signing_secret": SIGNING_SECRET})
        } else {
            json!({"app_token": slack::APP_TOKEN})
        };
        let mut config = json!({
            "bot_token": slack::BOT_TOKEN, "channel": CHANNEL, "api_url": slack.api_url(),
            "console_url": console_url,
        });
        config.as_object_mut().expect("object").extend(mode.as_object().expect("object").clone());
        let config: SlackConfig = serde_json::from_value(config).expect("a [slack] section");
        let here = ConsoleHere::start(rt, "slack", policy, HOST, |console, api| {
            let (slack, tasks) = console::chat::slack::start(console, &config).expect("Slack starts");
            (api.with_slack(slack), tasks)
        });
        if !signed_requests {
            here.rt.block_on(slack.wait_connected(1));
        }
        Self { here, slack }
    }

    /// `keyturn console ARGS… --config` this console's file.
    fn console_cli(&self, args: &[&str]) -> Output {
        std::process::Command::new(keyturn_path())
            .arg("console")
            .args(args)
            .arg("--config")
            .arg(self.dir.join("console.toml"))
            .output()
            .expect("run keyturn console")
    }

    /// Links Slack user `user` to `person` with `role`, as an admin does.
    fn link(&self, user: &str, person: &str, role: &str) {
        let out = self.console_cli(&["link", person, "--slack", &format!("{TEAM}/{user}"), "--role", role]);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    /// The message that announced hold `id` in the channel, once it is posted.
    fn message_of(&self, id: &str) -> Message {
        self.message_in(CHANNEL, id, |_| true)
    }

    /// `user`'s click on button `action` of hold `id`'s message, over Socket Mode:
    /// acknowledged within Slack's 3 seconds.
    fn click(&self, user: &str, action: &str, id: &str) {
        self.click_on(&self.message_of(id), user, action, id);
    }

    /// `user`'s click on button `action` of `message`, hold `id`'s, as [`Self::click`].
    fn click_on(&self, message: &Message, user: &str, action: &str, id: &str) {
        let payload = slack::block_action(TEAM, user, action, &format!("{id}@{HOST}"), message);
        let envelope = self.rt.block_on(self.slack.interact(payload));
        let ack = self.rt.block_on(self.slack.wait_acked(&envelope));
        assert!(ack.within_3s, "acknowledged after {:?}", ack.after);
    }

    /// The `n`th modal keyturn opened (from 0), once it is open.
    fn modal(&self, n: usize) -> slack::View {
        self.rt.block_on(self.slack.wait_for(&format!("modal {n}"), |slack| slack.views().into_iter().nth(n)))
    }

    /// Submits `view` with `values` as its user, over Socket Mode: acknowledged within 3 s.
    fn submit(&self, view: &slack::View, values: Value) {
        let envelope = self.rt.block_on(self.slack.submit(view, values));
        assert!(self.rt.block_on(self.slack.wait_acked(&envelope)).within_3s);
    }

    /// What Slack told `user` alone, the `n`th time (from 0).
    fn told(&self, user: &str, n: usize) -> String {
        self.rt.block_on(self.slack.wait_for(&format!("message {n} to {user}"), |slack| {
            slack.ephemerals().into_iter().filter(|e| e.user == user).nth(n).map(|e| e.text)
        }))
    }

    /// Hold `id`'s message in the channel once `shown` holds of its text.
    fn updated(&self, id: &str, shown: impl Fn(&str) -> bool) -> Message {
        self.message_in(CHANNEL, id, shown)
    }

    /// Hold `id`'s message in `conversation` (the channel, or a user's id for a direct
    /// message) once it is posted and `shown` holds of its text.
    fn message_in(&self, conversation: &str, id: &str, shown: impl Fn(&str) -> bool) -> Message {
        let marker = format!("hold {id} ");
        self.rt.block_on(self.slack.wait_for(&format!("hold {id}'s message in {conversation}"), |slack| {
            slack.messages().into_iter().find(|m| {
                let text = m.blocks.to_string();
                m.channel == conversation && text.contains(&marker) && shown(&text)
            })
        }))
    }

    /// The messages posted to `conversation` so far.
    fn posted_to(&self, conversation: &str) -> usize {
        self.slack.messages().iter().filter(|m| m.channel == conversation).count()
    }

    /// `verb` (`approve`, `deny`) on hold `id` with `body`, by ada@example.com through the
    /// console's HTTP API, as its web UI does.
    fn decide_in_the_console(&self, verb: &str, id: &str, body: &Value) {
        let store = self.console.store();
        let token =
            store.create_api_token("ada@example.com", Role::Approver, "t", "t", Duration::from_hours(1));
        let (_, token) = self.rt.block_on(token).expect("an API token");
        let request = reqwest::Client::new()
            .post(format!("http://{}/api/holds/{id}@{HOST}/{verb}", self.http))
            .bearer_auth(token)
            .json(body)
            .send();
        let status = self.rt.block_on(request).expect("the console's API").status();
        assert!(status.is_success(), "{verb} {id}: {status}");
    }

    /// Every message and update so far, judged by Slack's SDK: nothing it would refuse or
    /// drop, and no call the stand-in refused.
    fn judged_clean(&self) {
        let sent: Vec<Value> = self
            .slack
            .messages()
            .into_iter()
            .chain(self.slack.updates())
            .map(|m| json!({"text": m.text, "blocks": m.blocks}))
            .chain(self.slack.ephemerals().into_iter().map(|e| json!({"text": e.text, "blocks": e.blocks})))
            .collect();
        assert!(!sent.is_empty());
        assert_eq!(slack::judge("blocks", &Value::Array(sent))["findings"], json!([]));
        assert_eq!(self.slack.refusals(), Vec::<String>::new());
    }
}

/// The buttons of a pending hold's message.
const BUTTONS: [&str; 4] = [message::APPROVE, message::APPROVE_FOR, message::DENY, message::OPEN];

/// The buttons `message` shows, by action id.
fn buttons(message: &Message) -> Vec<&str> {
    let blocks = message.blocks.as_array().expect("blocks");
    let elements = blocks.iter().flat_map(|b| b["elements"].as_array().into_iter().flatten());
    elements.filter_map(|e| e["action_id"].as_str()).collect()
}

fn id_of(hold: &Value) -> String {
    hold["id"].as_str().expect("id").to_owned()
}

fn pid_of(hold: &Value) -> u32 {
    u32::try_from(hold["pid"].as_u64().expect("pid")).expect("pid")
}

/// The daemon's `decision` records of hold `id`.
fn decisions(daemon: &Daemon, id: &str) -> Vec<Value> {
    daemon.audit().into_iter().filter(|e| e["type"] == "decision" && e["id"] == id).collect()
}

/// A held program run with a hostile command line is posted with it shown as text; clicks
/// by an unlinked account, a viewer and the agent's own requester decide nothing and are
/// told why; the linked approver's click releases the process, which completes; every
/// copy of the message then shows the outcome; a second click is told it was decided.
#[test]
fn a_click_in_slack_releases_a_held_process_as_the_linked_approver() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    let hostile = ["<!channel>", "<https://x.example|Approve>", "\u{202E}txt.exe", "a & b"];
    let agent = linked.daemon.run_agent_for("carol@example.com", &linked.daemon.flagged(), &hostile);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);

    let posted = linked.message_of(&id);
    assert_eq!(posted.channel, CHANNEL);
    let shown = posted.blocks.to_string();
    for raw in ["<!channel>", "<https://x.example", "\u{202E}", "a & b"] {
        assert!(!shown.contains(raw) && !posted.text.contains(raw), "{raw:?} reached Slack as is: {shown}");
    }
    for escaped in
        ["&lt;!channel&gt;", "&lt;https://x.example|Approve&gt;", "\\\\u{202e}txt.exe", "a &amp; b"]
    {
        assert!(shown.contains(escaped), "{escaped} not in {shown}");
    }
    assert!(shown.contains("carol@example.com") && shown.contains(&linked.daemon.flagged()), "{shown}");
    assert_eq!(buttons(&posted), BUTTONS);

    linked.click("U0STRANGER", message::APPROVE, &id);
    let told = linked.told("U0STRANGER", 0);
    assert!(told.contains("not linked") && told.contains(&format!("{TEAM}/U0STRANGER")), "{told}");
    linked.link("U0VIEWER", "vera@example.com", "viewer");
    linked.click("U0VIEWER", message::APPROVE, &id);
    assert!(linked.told("U0VIEWER", 0).contains("needs the approver role"), "{}", linked.told("U0VIEWER", 0));
    linked.link("U0CAROL", "carol@example.com", "approver");
    linked.click("U0CAROL", message::APPROVE, &id);
    assert!(linked.told("U0CAROL", 0).contains("cannot approve"), "{}", linked.told("U0CAROL", 0));
    assert!(held(pid_of(&hold)), "refused clicks leave the process held");
    assert!(decisions(&linked.daemon, &id).is_empty());

    linked.link("U0BOB", "bob@example.com", "approver");
    linked.click("U0BOB", message::APPROVE, &id);
    let (code, printed) = finish(agent);
    assert_eq!((code, printed), (0, hostile.join(" ") + "\n"));
    let decision = &decisions(&linked.daemon, &id)[0];
    assert_eq!(
        (decision["verdict"].as_str(), decision["by"].as_str()),
        (Some("approve"), Some("bob@example.com"))
    );

    let decided =
        linked.updated(&id, |text| text.contains("Approved once") && text.contains("bob@example.com"));
    assert!(
        !decided.blocks.to_string().contains(message::APPROVE),
        "the buttons are gone: {}",
        decided.blocks
    );
    assert_eq!(decided.channel, CHANNEL);
    // The agent's requester is told, in a direct message to their linked account, once.
    let told = linked.rt.block_on(linked.slack.wait_for("a direct message to the requester", |slack| {
        slack.messages().into_iter().find(|m| m.channel == "U0CAROL")
    }));
    assert!(told.blocks.to_string().contains("Approved once"), "{}", told.blocks);
    linked.click("U0BOB", message::APPROVE, &id);
    assert!(linked.told("U0BOB", 0).contains("already decided"), "{}", linked.told("U0BOB", 0));
    assert_eq!(
        linked.refused(),
        [
            json!(["slack:T0KEYTURN/U0STRANGER", "not_linked"]),
            json!(["vera@example.com", "forbidden"]),
            json!(["carol@example.com", "self_approval"])
        ],
        "every refused click on a hold is audited"
    );
    assert_eq!(linked.slack.messages().len(), 2, "one in the channel, one to the requester");
    linked.judged_clean();
}

/// A quorum of two needs two linked people: the first click is told it counts as 1 of 2
/// and the message says so; the second releases. A hold decided elsewhere (the web UI, the
/// API) has its message updated all the same.
#[test]
fn a_quorum_needs_two_linked_people_and_a_decision_elsewhere_updates_the_message() {
    let policy = HOLD_FLAGGED.replacen("action = \"hold\"", "action = \"hold\"\nquorum = 2", 1);
    let linked = Linked::start(&policy, false);
    linked.link("U0BOB", "bob@example.com", "approver");
    linked.link("U0DAVE", "dave@example.com", "approver");
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["by-two"]);
    let id = id_of(&linked.daemon.pending_one());
    linked.click("U0BOB", message::APPROVE, &id);
    assert!(linked.told("U0BOB", 0).contains("1 of 2"), "{}", linked.told("U0BOB", 0));
    let partial = linked.updated(&id, |text| text.contains("Approved by 1 of 2"));
    assert!(partial.blocks.to_string().contains(message::APPROVE), "still open for the second approver");
    linked.click("U0DAVE", message::APPROVE, &id);
    assert_eq!(finish(agent), (0, "by-two\n".to_owned()));
    linked.updated(&id, |text| {
        text.contains("Approved once") && text.contains("bob@example.com, dave@example.com")
    });

    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["never"]);
    let second = linked.daemon.pending_matching(|hold| hold["id"] != id.as_str());
    let second_id = id_of(&second);
    linked.message_of(&second_id);
    linked.decide_in_the_console("deny", &second_id, &json!({"reason": "not <today>"}));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    let denied =
        linked.updated(&second_id, |text| text.contains("Denied") && text.contains("ada@example.com"));
    assert!(denied.blocks.to_string().contains("not &lt;today&gt;"), "{}", denied.blocks);
    linked.judged_clean();
}

/// A rule that names people to tell (`notify`): the hold is sent directly, with its
/// buttons, to the approver account linked to one of them, and to no one else it names (the
/// agent's requester, a viewer, a person linked to nothing); a click in that direct message
/// releases the process, both copies then show the outcome, and the requester is told once.
/// A hold decided in the console updates the direct copy too.
#[test]
fn the_approvers_a_policy_names_are_sent_the_hold_directly_and_approve_there() {
    let named = ["bob@example.com", "carol@example.com", "vera@example.com", "nobody@example.com"];
    let notify = format!("action = \"hold\"\nnotify = {}", json!(named));
    let linked = Linked::start(&HOLD_FLAGGED.replacen("action = \"hold\"", &notify, 1), false);
    linked.link("U0BOB", "bob@example.com", "approver");
    linked.link("U0CAROL", "carol@example.com", "approver");
    linked.link("U0VERA", "vera@example.com", "viewer");
    let agent = linked.daemon.run_agent_for("carol@example.com", &linked.daemon.flagged(), &["told"]);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);
    assert_eq!(hold["notify"], json!(named), "keyturn pending --json");
    assert_eq!(buttons(&linked.message_of(&id)), BUTTONS);
    let raised = linked.rt.block_on(linked.console.store().hold_detail(HOST, &id)).expect("store");
    assert_eq!(raised.expect("the hold at the console").raised.notify, named, "carried to the console");
    let direct = linked.message_in("U0BOB", &id, |_| true);
    assert_eq!(buttons(&direct), BUTTONS, "the direct copy asks as the channel's does");
    linked.click_on(&direct, "U0BOB", message::APPROVE, &id);
    assert_eq!(finish(agent), (0, "told\n".to_owned()));
    let decision = &decisions(&linked.daemon, &id)[0];
    assert_eq!(
        (decision["verdict"].as_str(), decision["by"].as_str()),
        (Some("approve"), Some("bob@example.com"))
    );
    for conversation in [CHANNEL, "U0BOB"] {
        let decided = linked.message_in(conversation, &id, |text| {
            text.contains("Approved once") && text.contains("bob@example.com")
        });
        assert_eq!(buttons(&decided), [message::OPEN], "the buttons are gone in {conversation}");
    }
    linked.message_in("U0CAROL", &id, |text| text.contains("Approved once"));

    // Decided elsewhere: the direct copy is updated as the channel's is.
    let agent = linked.daemon.run_agent_for("carol@example.com", &linked.daemon.flagged(), &["never"]);
    let second = id_of(&linked.daemon.pending_matching(|hold| hold["id"] != id.as_str()));
    linked.message_in("U0BOB", &second, |_| true);
    linked.decide_in_the_console("deny", &second, &json!({"reason": "not today"}));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    linked.message_in("U0BOB", &second, |text| text.contains("Denied") && text.contains("ada@example.com"));
    linked.message_in("U0CAROL", &second, |text| text.contains("Denied"));
    linked.updated(&second, |text| text.contains("Denied"));
    let counts: Vec<usize> = [CHANNEL, "U0BOB", "U0CAROL", "U0VERA"].map(|to| linked.posted_to(to)).into();
    assert_eq!(counts, [2, 2, 2, 0], "per hold: the channel, the approver, the requester's outcome once");
    assert_eq!(linked.slack.messages().len(), 6, "no one else is written to");
    linked.judged_clean();
}

/// A rule that says `approve_in = "console"`: its hold is announced with **Open in
/// console** only, a click in Slack on it (forged: there is no button) decides nothing and
/// is audited, and a decision in the console updates the message.
#[test]
fn a_hold_decided_in_the_console_only_is_not_decided_in_slack() {
    let policy = HOLD_FLAGGED.replacen("action = \"hold\"", "action = \"hold\"\napprove_in = \"console\"", 1);
    let linked = Linked::start(&policy, false);
    linked.link("U0BOB", "bob@example.com", "approver");
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["in-the-console"]);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);
    assert_eq!(hold["in_console"], true);
    let posted = linked.message_of(&id).blocks.to_string();
    assert!(posted.contains("decided in the console only") && posted.contains(message::OPEN), "{posted}");
    assert!(!posted.contains(message::APPROVE) && !posted.contains(message::DENY), "{posted}");
    linked.click("U0BOB", message::APPROVE, &id);
    assert!(linked.told("U0BOB", 0).contains("decided in the console only"), "{}", linked.told("U0BOB", 0));
    assert!(held(pid_of(&hold)) && decisions(&linked.daemon, &id).is_empty());
    linked.decide_in_the_console("approve", &id, &json!({}));
    assert_eq!(finish(agent), (0, "in-the-console\n".to_owned()));
    linked.updated(&id, |text| text.contains("Approved once") && text.contains("ada@example.com"));
    assert_eq!(linked.refused(), [json!(["bob@example.com", "console_only"])]);
}

/// The Socket Mode connection cut mid-run is opened again; a click made meanwhile arrives
/// on the new one and is applied once; the same click delivered again decides nothing.
#[test]
fn a_cut_socket_reconnects_and_no_click_is_lost_or_applied_twice() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    linked.link("U0BOB", "bob@example.com", "approver");
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["after-the-cut"]);
    let id = id_of(&linked.daemon.pending_one());
    let posted = linked.message_of(&id);
    linked.rt.block_on(linked.slack.drop_socket());
    let click = slack::block_action(TEAM, "U0BOB", message::APPROVE, &format!("{id}@{HOST}"), &posted);
    let envelope = linked.rt.block_on(linked.slack.interact(click.clone()));
    linked.rt.block_on(linked.slack.wait_connected(2));
    linked.rt.block_on(linked.slack.wait_acked(&envelope));
    assert_eq!(finish(agent), (0, "after-the-cut\n".to_owned()));
    let again = linked.rt.block_on(linked.slack.interact(click));
    linked.rt.block_on(linked.slack.wait_acked(&again));
    assert!(linked.told("U0BOB", 0).contains("already decided"), "{}", linked.told("U0BOB", 0));
    assert_eq!(decisions(&linked.daemon, &id).len(), 1, "applied once");
}

/// A message Slack refuses for its content (a limit keyturn did not know) is posted again
/// without anything the agent chose and with no **Approve** (no one approves what they
/// cannot see): **Deny** still decides; the holds after it are announced as ever, never
/// stalled behind it.
#[test]
fn a_message_slack_refuses_is_announced_bare_and_stalls_nothing() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    linked.slack.refuse_blocks_containing("too-much-for-slack");
    linked.link("U0BOB", "bob@example.com", "approver");
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["too-much-for-slack"]);
    let id = id_of(&linked.daemon.pending_one());
    let bare = linked.message_of(&id);
    assert!(bare.text.contains("see them in the console"), "{}", bare.text);
    assert!(
        !bare.blocks.to_string().contains(&linked.daemon.flagged()),
        "nothing the agent chose: {}",
        bare.blocks
    );
    assert!(!bare.blocks.to_string().contains(message::APPROVE), "{}", bare.blocks);
    assert_eq!(linked.slack.refusals().len(), 1, "{:?}", linked.slack.refusals());
    linked.click("U0BOB", message::DENY, &id);
    linked
        .submit(&linked.modal(0), json!({"reason": {"reason": {"type": "plain_text_input", "value": null}}}));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    linked.updated(&id, |text| text.contains("Denied"));

    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["next"]);
    let next = id_of(&linked.daemon.pending_matching(|hold| hold["id"] != id.as_str()));
    assert!(linked.message_of(&next).blocks.to_string().contains(&linked.daemon.flagged()), "shown in full");
    linked.click("U0BOB", message::APPROVE, &next);
    assert_eq!(finish(agent), (0, "next\n".to_owned()));
}

/// Request-URL mode: Slack's POST is decided only with a valid `v0` signature, sent within
/// five minutes; a tampered, stale or unsigned one is refused before it is read.
#[test]
fn in_request_url_mode_only_signed_clicks_decide() {
    let linked = Linked::start(HOLD_FLAGGED, true);
    linked.link("U0BOB", "bob@example.com", "approver");
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["signed"]);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);
    let click = slack::block_action(
        TEAM,
        "U0BOB",
        message::APPROVE,
        &format!("{id}@{HOST}"),
        &linked.message_of(&id),
    );
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &click.to_string())
        .finish();
    let now = console::store::now_ms().cast_unsigned() / 1000;
    let post = |body: &str, timestamp: u64, signature: Option<String>| {
        let mut request = reqwest::Client::new()
            .post(format!("http://{}/api/slack/interactions", linked.http))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", timestamp.to_string())
            .body(body.to_owned());
        if let Some(signature) = signature {
            request = request.header("x-slack-signature", signature);
        }
        linked.rt.block_on(request.send()).expect("POST").status().as_u16()
    };
    let sign = |body: &str, timestamp| {
        Some(console::signature::sign(SIGNING_SECRET.as_bytes(), timestamp, body.as_bytes()))
    };
    let tampered = body.replacen("U0BOB", "U0EVE", 1);
    assert_eq!(post(&tampered, now, sign(&body, now)), 401);
    assert_eq!(post(&body, now - 301, sign(&body, now - 301)), 401);
    assert_eq!(post(&body, now, None), 401);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        held(pid_of(&hold)) && decisions(&linked.daemon, &id).is_empty(),
        "refused requests decide nothing"
    );
    assert_eq!(post(&body, now, sign(&body, now)), 200);
    assert_eq!(finish(agent), (0, "signed\n".to_owned()));
    assert_eq!(decisions(&linked.daemon, &id)[0]["by"], "bob@example.com");
}

/// keyturn and Slack's SDK agree on which requests are signed: over Slack's published
/// example and random bodies, signed, tampered, stale and forged.
#[test]
fn keyturn_and_slack_s_sdk_agree_on_signatures() {
    let secret = SIGNING_SECRET.as_bytes();
    let mut cases = Vec::new();
    for n in 0..60u64 {
        let body: String = (0..(n * 7 % 300))
            .map(|i| char::from(b' ' + u8::try_from((i * 31 + n) % 94).expect("byte")))
            .collect();
        let timestamp = 1_700_000_000 + n * 977;
        let signature = console::signature::sign(secret, timestamp, body.as_bytes());
        let (body, timestamp_sent, signature, now) = match n % 6 {
            0 => (body, timestamp, signature, timestamp),
            1 => (format!("{body}x"), timestamp, signature, timestamp),
            2 => (body, timestamp + 1, signature, timestamp),
            3 => (body, timestamp, signature, timestamp + 301),
            4 => (body, timestamp, signature.replace('a', "b"), timestamp + 299),
            _ => (body, timestamp, format!("v1={}", &signature[3..]), timestamp),
        };
        cases.push((body, timestamp_sent.to_string(), signature, now));
    }
    let published = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let example = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    cases.push((published.to_owned(), "1531420618".to_owned(), example.to_owned(), 1_531_420_618));
    let ours: Vec<bool> = cases
        .iter()
        .map(|(body, timestamp, signature, now)| {
            console::signature::verify(secret, timestamp, signature, body.as_bytes(), *now).is_ok()
        })
        .collect();
    let input = json!({"secret": SIGNING_SECRET, "cases": cases.iter().map(|(body, timestamp, signature, now)| {
        json!({"body": body, "timestamp": timestamp, "signature": signature, "now": now})
    }).collect::<Vec<_>>()});
    let sdk: Vec<bool> =
        serde_json::from_value(slack::judge("signatures", &input)["valid"].take()).expect("verdicts");
    assert_eq!(ours, sdk);
    assert!(ours.last() == Some(&true) && ours.iter().filter(|valid| **valid).count() == 11, "{ours:?}");
}

/// `keyturn console link` and `unlink` refuse what is not a Slack account, an admin role
/// and an account not linked, each with one clear line; every link is audited.
#[test]
fn linking_refuses_bad_input_with_one_clear_line() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    let refused = |args: &[&str], says: &str| {
        let out = linked.console_cli(args);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    };
    refused(&["link", "bob@example.com", "--slack", "U0BOB"], "is not TEAM/USER");
    refused(&["link", "bob@example.com", "--slack", "T0/U0 BOB"], "is not TEAM/USER");
    refused(
        &["link", "bob@example.com", "--slack", "T0KEYTURN/U0BOB", "--role", "admin"],
        "viewer or an approver",
    );
    refused(&["unlink", "--slack", "T0KEYTURN/U0BOB"], "was not linked");
    refused(&["link", " bob@example.com", "--slack", "T0KEYTURN/U0BOB"], "without spaces");
    refused(&["link", "bob@example.com\u{200B}", "--slack", "T0KEYTURN/U0BOB"], "invisible");
    linked.link("U0BOB", "bob@example.com", "approver");
    assert!(linked.console_cli(&["unlink", "--slack", "T0KEYTURN/U0BOB"]).status.success());
    let events: Vec<Value> = linked.trail().into_iter().map(|event| event["type"].clone()).collect();
    let chat: Vec<&Value> =
        events.iter().filter(|kind| kind.as_str().is_some_and(|k| k.starts_with("chat_"))).collect();
    assert_eq!(chat, [&json!("chat_linked"), &json!("chat_unlinked")]);
}

/// The link offered to `user` the `n`th time they were told something: the secret in the
/// fragment of its button's URL, on the console's address.
fn offered_secret(linked: &Linked, user: &str, n: usize) -> String {
    let told = linked.rt.block_on(linked.slack.wait_for(&format!("message {n} to {user}"), |slack| {
        slack.ephemerals().into_iter().filter(|e| e.user == user).nth(n)
    }));
    let button =
        told.blocks.as_array().expect("blocks").iter().find_map(|b| {
            b["elements"].as_array()?.iter().find(|e| e["action_id"] == linking::LINK).cloned()
        });
    let url = button.expect("a link button")["url"].as_str().expect("a URL").to_owned();
    let secret = url.strip_prefix("https://keyturn.example/#chat-link=").expect("the console's address");
    assert!(secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");
    assert!(!told.text.contains(secret), "the secret is in the button only: {}", told.text);
    secret.to_owned()
}

/// A click by an account linked to no one is offered, to its user alone, a one-time link
/// to the console; opened in a browser session and confirmed, it links the account to that
/// person (capped at approver), audited and announced in the channel; the next click
/// approves as them. The link is refused without the web UI's header, tampered, used again
/// (by anyone), or past its ten minutes, each with its own answer.
#[test]
fn an_unlinked_click_is_offered_a_link_that_its_person_confirms_once() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["linked-by-offer"]);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);
    // Slack vouches that U0NEW's email is bob's: the offer is for bob alone.
    linked.slack.set_email("U0NEW", "bob@example.com");
    linked.click("U0NEW", message::APPROVE, &id);
    let secret = offered_secret(&linked, "U0NEW", 0);
    let told = &linked.slack.ephemerals()[0];
    assert!(told.text.contains("T0KEYTURN/U0NEW") && told.text.contains("10 minutes"), "{}", told.text);
    assert!(held(pid_of(&hold)), "an offer decides nothing");
    assert_eq!(linked.refused(), [json!(["slack:T0KEYTURN/U0NEW", "not_linked"])]);

    // The web UI (its page shows offers), then what it calls, in bob's browser session.
    let page = linked.rt.block_on(async {
        reqwest::get(format!("http://{}/", linked.http)).await.expect("/").text().await.expect("a page")
    });
    assert!(page.contains("view-chatlink") && page.contains("Confirm only if this is your own"), "{page}");
    let bob = linked.signed_in("bob@example.com");
    let read = json!({"secret": secret});
    // Forwarded to another approver, the link links nothing, and stays bob's to use.
    let vera = linked.signed_in("vera@example.com");
    let (status, forwarded) = linked.web_post("/api/chat-link-offers/confirm", Some(&vera), true, &read);
    assert_eq!((status, &forwarded["error"]["code"]), (403, &json!("not_yours")), "{forwarded}");
    assert_eq!(
        linked.web_post("/api/chat-link-offers/read", Some(&bob), false, &read).0,
        403,
        "no CSRF header"
    );
    assert_eq!(linked.web_post("/api/chat-link-offers/confirm", None, true, &read).0, 401, "signed in only");
    let (status, offer) = linked.web_post("/api/chat-link-offers/read", Some(&bob), true, &read);
    assert_eq!(status, 200, "{offer}");
    assert_eq!(
        (&offer["account"], &offer["team"], &offer["user"], &offer["name"], &offer["person"], &offer["role"]),
        (
            &json!("slack:T0KEYTURN/U0NEW"),
            &json!(TEAM),
            &json!("U0NEW"),
            &json!("u0new"),
            &json!("bob@example.com"),
            &json!("approver")
        ),
        "an admin's session links as an approver"
    );
    let mut tampered = secret.clone().into_bytes();
    tampered[0] = if tampered[0] == b'0' { b'1' } else { b'0' };
    let tampered = json!({"secret": String::from_utf8(tampered).expect("hex")});
    let (status, refused) = linked.web_post("/api/chat-link-offers/confirm", Some(&bob), true, &tampered);
    assert_eq!((status, &refused["error"]["code"]), (410, &json!("unknown_link")), "{refused}");
    let (status, done) = linked.web_post("/api/chat-link-offers/confirm", Some(&bob), true, &read);
    assert_eq!(
        (status, &done["person"], &done["role"]),
        (200, &json!("bob@example.com"), &json!("approver")),
        "{done}"
    );

    // Used: by no one else, and not twice.
    for (who, path) in [(&vera, "confirm"), (&bob, "confirm"), (&vera, "read")] {
        let (status, refused) =
            linked.web_post(&format!("/api/chat-link-offers/{path}"), Some(who), true, &read);
        assert_eq!((status, &refused["error"]["code"]), (410, &json!("link_used")), "{refused}");
        assert!(
            refused["error"]["message"].as_str().is_some_and(|m| m.contains("used already")),
            "{refused}"
        );
    }
    let linked_events: Vec<Value> =
        linked.trail().into_iter().filter(|e| e["type"] == "chat_linked").collect();
    assert_eq!(linked_events.len(), 1, "{linked_events:?}");
    assert_eq!(
        (&linked_events[0]["account"], &linked_events[0]["by"], &linked_events[0]["how"]),
        (&json!("slack:T0KEYTURN/U0NEW"), &json!("bob@example.com"), &json!("offer"))
    );
    let notice = linked.rt.block_on(linked.slack.wait_for("the link announced", |slack| {
        slack.messages().into_iter().find(|m| m.channel == CHANNEL && m.text.contains("<@U0NEW>"))
    }));
    assert!(
        notice.text.contains("bob@example.com") && notice.text.contains("unlink --slack T0KEYTURN/U0NEW"),
        "{}",
        notice.text
    );

    linked.click("U0NEW", message::APPROVE, &id);
    assert_eq!(finish(agent), (0, "linked-by-offer\n".to_owned()));
    assert_eq!(decisions(&linked.daemon, &id)[0]["by"], "bob@example.com");

    linked.judged_clean();
}

/// A newer offer voids the older; an offer past its ten minutes is refused as expired and
/// links no one.
#[test]
fn an_offer_expires_and_a_newer_one_voids_the_older() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    let vera = linked.signed_in("vera@example.com");
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["late"]);
    let late = id_of(&linked.daemon.pending_one());
    linked.slack.set_email("U0LATE", "vera@example.com");
    linked.click("U0LATE", message::APPROVE, &late);
    let voided = offered_secret(&linked, "U0LATE", 0);
    linked.click("U0LATE", message::APPROVE, &late);
    let fresh = offered_secret(&linked, "U0LATE", 1);
    let (status, refused) =
        linked.web_post("/api/chat-link-offers/read", Some(&vera), true, &json!({"secret": voided}));
    assert_eq!((status, &refused["error"]["code"]), (410, &json!("unknown_link")), "{refused}");
    linked.rt.block_on(async {
        let database = format!("sqlite://{}", linked.dir.join("console.db").display());
        let db = sqlx::SqlitePool::connect(&database).await.expect("the console's database");
        sqlx::query("UPDATE chat_link_offers SET created_at_ms = created_at_ms - 600001")
            .execute(&db)
            .await
            .expect("age the offers");
    });
    let (status, refused) =
        linked.web_post("/api/chat-link-offers/confirm", Some(&vera), true, &json!({"secret": fresh}));
    assert_eq!((status, &refused["error"]["code"]), (410, &json!("link_expired")), "{refused}");
    assert!(
        linked
            .rt
            .block_on(
                linked
                    .console
                    .store()
                    .chat_link(&console::chat::ChatAccount::slack("T0KEYTURN/U0LATE").expect("an account"))
            )
            .expect("read")
            .is_none()
    );
    linked.decide_in_the_console("deny", &late, &json!({}));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    linked.judged_clean();
}

/// The modals open with the click's trigger and submitting one decides: **Approve for…**
/// for an hour releases the process and the same action again is not held; **Deny** with a
/// reason kills it and the reason is the decision's. Every modal is judged by Slack's SDK; a
/// submission with a duration keyturn did not offer decides nothing, and one by an account
/// linked to no one is refused as a click is.
#[test]
fn the_modals_approve_for_an_hour_and_deny_with_a_reason() {
    let linked = Linked::start(HOLD_FLAGGED, false);
    linked.link("U0BOB", "bob@example.com", "approver");
    // As the daemon's own test of an approval's scope: the agent runs the same action twice.
    let flagged = linked.daemon.flagged();
    let agent =
        linked.daemon.run_agent("/bin/sh", &["-c", &format!("{flagged} for-an-hour; {flagged} for-an-hour")]);
    let hold = linked.daemon.pending_one();
    let id = id_of(&hold);
    let buttons = linked.message_of(&id).blocks.to_string();
    for action in [message::APPROVE, message::APPROVE_FOR, message::DENY, message::OPEN] {
        assert!(buttons.contains(action), "{action} in {buttons}");
    }
    let approve_for = |secs: &str, reason: &str| {
        json!({"duration": {"duration": {"type": "static_select", "selected_option": {"value": secs, "text": {"type": "plain_text", "text": secs}}}},
               "reason": {"reason": {"type": "plain_text_input", "value": reason}}})
    };

    linked.click("U0BOB", message::APPROVE_FOR, &id);
    let modal = linked.modal(0);
    assert_eq!((modal.user.as_str(), &modal.view["callback_id"]), ("U0BOB", &json!(message::APPROVE_FOR)));
    eprintln!("the modal opened {:?} after its click was delivered (Slack allows 3 s)", modal.after);
    linked.submit(&modal, approve_for("99999999", "forged"));
    assert!(linked.told("U0BOB", 0).contains("did not offer"), "{}", linked.told("U0BOB", 0));
    assert!(held(pid_of(&hold)));
    // A stranger submitting the same modal (a forged submission) is offered a link, nothing more.
    let stranger = slack::View { user: "U0EVE".into(), ..modal.clone() };
    linked.slack.set_email("U0EVE", "eve@example.com");
    linked.submit(&stranger, approve_for("3600", "mine"));
    offered_secret(&linked, "U0EVE", 0);
    assert!(held(pid_of(&hold)));
    linked.submit(&modal, approve_for("3600", "release week"));
    assert_eq!(
        finish(agent),
        (0, "for-an-hour\nfor-an-hour\n".to_owned()),
        "the second exec needs no new approval"
    );
    let decision = &decisions(&linked.daemon, &id)[0];
    assert_eq!((&decision["by"], &decision["verdict"]), (&json!("bob@example.com"), &json!("approve")));
    let released: Vec<Value> = linked.daemon.audit().into_iter().filter(|e| e["type"] == "release").collect();
    assert!(
        released.iter().any(|e| e["by"] == "keyturn" && e["why"] == "an earlier approval's scope covers it"),
        "{released:?}"
    );
    linked.updated(&id, |text| text.contains("Approved for 3600 s") && text.contains("release week"));
    assert_eq!(linked.refused(), [json!(["slack:T0KEYTURN/U0EVE", "not_linked"])]);

    let agent = linked.daemon.run_agent(&flagged, &["deny-me"]);
    let denied = id_of(&linked.daemon.pending_matching(|hold| hold["id"] != id.as_str()));
    linked.click("U0BOB", message::DENY, &denied);
    let modal = linked.modal(1);
    assert_eq!(modal.view["callback_id"], message::DENY);
    linked
        .submit(&modal, json!({"reason": {"reason": {"type": "plain_text_input", "value": "not <today>"}}}));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
    let detail = linked
        .rt
        .block_on(linked.console.store().hold_detail(HOST, &denied))
        .expect("read")
        .expect("the hold");
    let decision = detail.decision.expect("a decision");
    assert_eq!((decision.reason.as_str(), decision.decided_by.as_str()), ("not <today>", "bob@example.com"));
    linked.updated(&denied, |text| text.contains("Denied") && text.contains("not &lt;today&gt;"));

    let views: Vec<Value> = linked.slack.views().into_iter().map(|v| v.view).collect();
    assert_eq!(slack::judge("views", &Value::Array(views))["findings"], json!([]));
    linked.judged_clean();
}

/// The stand-in opens a modal as Slack does, and refuses what Slack refuses: a trigger
/// unknown, used or older than 3 s, a title over 24 characters, over 100 blocks,
/// `private_metadata` over 3,000 characters; Slack's SDK finds the same limits broken.
#[test]
fn the_stand_in_and_slack_s_sdk_refuse_modals_beyond_slack_s_limits() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let slack = rt.block_on(SlackStandIn::start());
    let posted = Message {
        channel: CHANNEL.into(),
        ts: "1.0".into(),
        text: String::new(),
        blocks: json!([]),
        at: std::time::Instant::now(),
    };
    let trigger = || {
        let click = slack::block_action(TEAM, "U0BOB", message::DENY, "h@host", &posted);
        rt.block_on(slack.interact(click.clone()));
        click["trigger_id"].as_str().expect("a trigger").to_owned()
    };
    let open = |trigger: &str, view: &Value| -> Value {
        let request = reqwest::Client::new()
            .post(format!("{}views.open", slack.api_url()))
            .bearer_auth(slack::BOT_TOKEN)
            .json(&json!({"trigger_id": trigger, "view": view}));
        rt.block_on(async { request.send().await.expect("views.open").json().await.expect("JSON") })
    };
    let plain = |text: &str| json!({"type": "plain_text", "text": text});
    let section = json!({"type": "section", "text": {"type": "mrkdwn", "text": "x"}});
    let modal = |title: &str, blocks: usize, metadata: usize| {
        json!({"type": "modal", "title": plain(title), "close": plain("Cancel"),
               "private_metadata": "m".repeat(metadata), "blocks": vec![section.clone(); blocks]})
    };
    let good = modal(&"t".repeat(24), 100, 3_000);
    let first = trigger();
    assert_eq!(open(&first, &good)["ok"], true);
    assert_eq!(open(&first, &good)["error"], "invalid_trigger_id", "a trigger opens one modal");
    assert_eq!(open("1.2.forged", &good)["error"], "invalid_trigger_id");
    let late = trigger();
    std::thread::sleep(Duration::from_millis(3_100));
    assert_eq!(open(&late, &good)["error"], "expired_trigger_id");
    let bad = [modal(&"t".repeat(25), 1, 1), modal("t", 101, 1), modal("t", 1, 3_001)];
    for view in &bad {
        let answer = open(&trigger(), view);
        assert_eq!(answer["error"], "invalid_arguments", "{answer}");
    }
    assert_eq!(slack.views().len(), 1);
    assert_eq!(slack::judge("views", &json!([good]))["findings"], json!([]));
    let findings = slack::judge("views", &Value::Array(bad.to_vec()))["findings"].to_string();
    for said in [
        "view 0: (the block): title",
        "view 1: (the block): views must contain",
        "view 2: (the block): private_metadata",
    ] {
        assert!(findings.contains(said), "{said} not in {findings}");
    }
}

/// Without `console_url`, nothing links itself: a click by an account linked to no one is
/// told the command an admin runs, and no link is offered.
#[test]
fn without_a_console_url_an_unlinked_click_is_told_what_an_admin_runs() {
    let linked = Linked::start_with(HOLD_FLAGGED, false, None);
    let agent = linked.daemon.run_agent(&linked.daemon.flagged(), &["admins-link"]);
    let id = id_of(&linked.daemon.pending_one());
    let buttons = linked.message_of(&id).blocks.to_string();
    assert!(buttons.contains(message::APPROVE) && !buttons.contains(message::OPEN), "{buttons}");
    linked.click("U0STRANGER", message::APPROVE, &id);
    linked.told("U0STRANGER", 0);
    let told = &linked.slack.ephemerals()[0];
    let says = format!("keyturn console link PERSON --slack {TEAM}/U0STRANGER");
    assert!(told.text.contains(&says) && told.blocks.is_null(), "{told:?}");
    assert_eq!(linked.refused(), [json!(["slack:T0KEYTURN/U0STRANGER", "not_linked"])]);
    linked.decide_in_the_console("deny", &id, &json!({}));
    assert_eq!(finish(agent).0, 128 + libc::SIGKILL);
}
