//! A Slack for the tests, written from Slack's published protocols: Socket Mode
//! (`apps.connections.open`, the WebSocket, envelopes and acks) and the Web API methods
//! keyturn calls, strict about Block Kit's limits; and `judge`, Slack's own SDK in Python.
//!
//! Words: an *envelope* is one interactive payload the stand-in owes the app; a *delivery* is
//! one sending of it on a socket (the first, or a retry); an *ack* is the app's answer naming
//! the envelope; a *refusal* is a call the stand-in answered `ok: false`.
//!
//! Where the limits come from (Slack's docs, read 2026): the Block Kit reference
//! (docs.slack.dev/reference/block-kit/blocks/…, block-elements/button-element,
//! composition-objects/…): 50 blocks in a message; section text 3,000 and fields 10 × 2,000;
//! header 150; actions 25 elements; context 10; `block_id` 255; button text 75, value 2,000,
//! `action_id` 255, url 3,000, accessibility label 75; confirmation dialog title 100, text 300,
//! buttons 30. Message `text`: Slack truncates past 40,000 characters (api.slack.com
//! changelog 2018-04-truncating-really-long-messages) and asks for 4,000 at most; this
//! stand-in refuses past 4,000. Socket Mode (api.slack.com/apis/connections/socket-implement):
//! ack an envelope within 3 seconds by sending back its `envelope_id`.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    process::Command,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path as UrlPath, Query, State,
        ws::{self, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::WAIT;

/// The bot token (`xoxb-`) the Web API methods take.
pub const BOT_TOKEN: &str = "xoxb-standin-bot";
/// The app-level token (`xapp-`, scope `connections:write`) `apps.connections.open` takes.
pub const APP_TOKEN: &str = "xapp-standin-app";
/// The app every envelope and payload names.
pub const APP_ID: &str = "A0STANDIN";
/// The bot user that posts keyturn's messages.
pub const BOT_USER: &str = "U0STANDINBOT";

/// How often `wait_for` looks again.
const POLL: Duration = Duration::from_millis(20);
/// Socket Mode: an envelope not acked within this is delivered again.
const ACK_WINDOW: Duration = Duration::from_secs(3);
/// Deliveries after the first, each `retry_reason: "timeout"`.
const RETRIES: u32 = 3;

/// Message `text` longer than this is refused (`msg_too_long`).
const MAX_TEXT: usize = 4_000;
const MAX_BLOCKS: usize = 50;
const MAX_BLOCK_ID: usize = 255;
const MAX_SECTION_TEXT: usize = 3_000;
const MAX_FIELDS: usize = 10;
const MAX_FIELD_TEXT: usize = 2_000;
const MAX_HEADER_TEXT: usize = 150;
const MAX_ACTIONS: usize = 25;
const MAX_CONTEXT: usize = 10;
/// A text object anywhere else (context elements): the text object's own maximum.
const MAX_TEXT_OBJECT: usize = 3_000;
const MAX_BUTTON_TEXT: usize = 75;
const MAX_BUTTON_VALUE: usize = 2_000;
const MAX_ACTION_ID: usize = 255;
const MAX_BUTTON_URL: usize = 3_000;
const MAX_ACCESSIBILITY_LABEL: usize = 75;
const MAX_IMAGE_URL: usize = 3_000;
const MAX_ALT_TEXT: usize = 2_000;
const MAX_CONFIRM_TITLE: usize = 100;
const MAX_CONFIRM_TEXT: usize = 300;
const MAX_CONFIRM_BUTTON: usize = 30;
/// Modals (`views.open`): Slack's documented limits.
const MAX_VIEW_BLOCKS: usize = 100;
const MAX_VIEW_TITLE: usize = 24;
const MAX_CALLBACK_ID: usize = 255;
const MAX_PRIVATE_METADATA: usize = 3_000;
const MAX_INPUT_LABEL: usize = 2_000;
const MAX_INPUT_LENGTH: u64 = 3_000;
const MAX_OPTIONS: usize = 100;
const MAX_OPTION_TEXT: usize = 75;
const MAX_OPTION_VALUE: usize = 150;
/// How long a click's `trigger_id` opens a modal.
const TRIGGER_WINDOW: Duration = Duration::from_secs(3);

/// A message as the stand-in keeps it: `blocks` is `Value::Null` when none were sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub channel: String,
    pub ts: String,
    pub text: String,
    pub blocks: Value,
    /// When the stand-in took it (posted; for an update, updated).
    pub at: Instant,
}

/// A `chat.postEphemeral`, as received.
#[derive(Clone, Debug, PartialEq)]
pub struct Ephemeral {
    pub channel: String,
    pub user: String,
    pub text: String,
    pub blocks: Value,
}

/// A modal opened with `views.open`.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    pub id: String,
    /// The user whose click's trigger opened it.
    pub user: String,
    pub team: String,
    /// As the app sent it.
    pub view: Value,
    /// Since the click whose trigger opened it was delivered.
    pub after: Duration,
}

/// One ack the app sent on a socket.
#[derive(Clone, Debug)]
pub struct Ack {
    pub envelope_id: String,
    /// When it arrived.
    pub at: Instant,
    /// Since the latest delivery of its envelope (`Duration::MAX`: an envelope never sent).
    pub after: Duration,
    /// Within Socket Mode's 3 seconds of that delivery.
    pub within_3s: bool,
    /// Deliveries of the envelope when it arrived (1: the first; 0: an envelope never sent).
    pub attempts: u32,
    /// The response payload, if the ack carried one.
    pub payload: Option<Value>,
}

/// The fake Slack: one axum server on loopback, alive while this is.
pub struct SlackStandIn {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

struct Shared {
    port: u16,
    state: Mutex<Record>,
    /// Bumped on every ack and every socket opened or closed: what envelope drivers wait on.
    changed: watch::Sender<()>,
}

#[derive(Default)]
struct Record {
    tickets: HashSet<String>,
    issued: u64,
    connections: usize,
    live: Option<Live>,
    next_ts: u64,
    messages: Vec<Message>,
    updates: Vec<Message>,
    ephemerals: Vec<Ephemeral>,
    refusals: Vec<String>,
    warnings: Vec<String>,
    envelopes: HashMap<String, Envelope>,
    acks: Vec<Ack>,
    /// Each click's `trigger_id`: when it was delivered, whose it is (user, team).
    triggers: HashMap<String, (Instant, String, String)>,
    views: Vec<View>,
    /// Posts whose blocks hold this are refused (`refuse_blocks_containing`).
    refused_blocks: Option<String>,
    /// Users' profile emails, as `users.info` gives them (`set_email`).
    emails: HashMap<String, String>,
}

/// The socket envelopes go to: the latest opened, while it lasts.
struct Live {
    connection: usize,
    frames: mpsc::UnboundedSender<Frame>,
}

enum Frame {
    Text(String),
    /// Drop the connection without a close frame.
    Cut,
}

struct Envelope {
    payload: Value,
    deliveries: u32,
    last_sent: Option<Instant>,
}

/// Socket Mode's first frame on a connection.
#[derive(Serialize)]
struct Hello {
    r#type: &'static str,
    num_connections: usize,
    debug_info: DebugInfo,
    connection_info: ConnectionInfo,
}

#[derive(Serialize)]
struct DebugInfo {
    host: &'static str,
    build_number: u32,
    approximate_connection_time: u32,
}

#[derive(Serialize)]
struct ConnectionInfo {
    app_id: &'static str,
}

#[derive(Serialize)]
struct Disconnect<'a> {
    r#type: &'static str,
    reason: &'a str,
    debug_info: DebugInfo,
}

/// An interactive envelope as Socket Mode delivers it.
#[derive(Serialize)]
struct Delivery<'a> {
    envelope_id: &'a str,
    r#type: &'static str,
    accepts_response_payload: bool,
    payload: &'a Value,
    retry_attempt: u32,
    retry_reason: &'static str,
}

/// What the app sends back on the socket.
#[derive(Deserialize)]
struct AckFrame {
    envelope_id: String,
    payload: Option<Value>,
}

#[derive(Deserialize)]
struct TicketQuery {
    ticket: Option<String>,
}

/// The arguments of the chat methods (JSON bodies).
#[derive(Deserialize)]
struct Args {
    channel: Option<String>,
    text: Option<String>,
    blocks: Option<Value>,
    ts: Option<String>,
    user: Option<String>,
    trigger_id: Option<String>,
    view: Option<Value>,
}

/// Every Web API answer: HTTP 200, `ok` saying how it went.
#[derive(Serialize, Default)]
struct Reply {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_ts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    view: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_metadata: Option<ResponseMetadata>,
}

#[derive(Serialize)]
struct ResponseMetadata {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    messages: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<&'static str>,
}

/// A call answered `ok: false`: Slack's error code, and for `invalid_blocks` each problem
/// as Slack words it (`… [json-pointer:/blocks/0/text/text]`).
struct Refusal {
    error: &'static str,
    errors: Vec<String>,
}

impl From<&'static str> for Refusal {
    fn from(error: &'static str) -> Self {
        Self { error, errors: Vec::new() }
    }
}

impl SlackStandIn {
    /// Serves on 127.0.0.1 (a free port) on the current tokio runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the Slack stand-in");
        let port = listener.local_addr().expect("its address").port();
        let shared =
            Arc::new(Shared { port, state: Mutex::new(Record::default()), changed: watch::Sender::new(()) });
        let app = Router::new()
            .route("/api/{method}", any(api))
            .route("/socket", get(socket))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the Slack stand-in");
        });
        Self { shared, server }
    }

    /// The Web API's base, with its trailing slash: `http://127.0.0.1:PORT/api/`.
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/", self.shared.port)
    }

    /// The current state of each posted message, in the order they were posted.
    pub fn messages(&self) -> Vec<Message> {
        self.shared.lock().messages.clone()
    }

    /// The messages posted after the first `n`, as they are now.
    pub fn messages_after(&self, n: usize) -> Vec<Message> {
        self.shared.lock().messages.get(n..).map(<[Message]>::to_vec).unwrap_or_default()
    }

    /// Every accepted `chat.update` as received (a field not sent is empty), in order.
    pub fn updates(&self) -> Vec<Message> {
        self.shared.lock().updates.clone()
    }

    /// Every accepted `chat.postEphemeral`, in order.
    pub fn ephemerals(&self) -> Vec<Ephemeral> {
        self.shared.lock().ephemerals.clone()
    }

    /// Every refused call, `method: error[: details]`, in order (sockets refused and
    /// stray acks too, as `socket: …`).
    pub fn refusals(&self) -> Vec<String> {
        self.shared.lock().refusals.clone()
    }

    /// Warnings Slack would have answered with, `method: warning` (e.g. `missing_charset`).
    pub fn warnings(&self) -> Vec<String> {
        self.shared.lock().warnings.clone()
    }

    /// Sockets opened so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Every ack received, in order.
    pub fn acks(&self) -> Vec<Ack> {
        self.shared.lock().acks.clone()
    }

    /// How many times the envelope has been sent.
    pub fn deliveries(&self, envelope_id: &str) -> u32 {
        self.shared.lock().envelopes.get(envelope_id).map_or(0, |e| e.deliveries)
    }

    /// Until `n` sockets have been opened and the latest is live (its hello sent).
    pub async fn wait_connected(&self, n: usize) {
        self.wait_for(&format!("{n} Socket Mode connections, the latest live"), |slack| {
            let state = slack.shared.lock();
            (state.connections >= n && state.live.as_ref().is_some_and(|l| l.connection == state.connections))
                .then_some(())
        })
        .await;
    }

    /// Queues one interactive envelope (`payload`, e.g. from `block_action`) and returns its
    /// `envelope_id`. If a socket is live, returns once the envelope has been sent on it;
    /// otherwise it goes on the next socket opened. Unacked, it is sent again every 3 s,
    /// 3 times at most.
    pub async fn interact(&self, payload: Value) -> String {
        let envelope_id = {
            let mut state = self.shared.lock();
            if let Some(trigger) = payload["trigger_id"].as_str() {
                let (user, team) = (&payload["user"]["id"], &payload["user"]["team_id"]);
                let whose = (user.as_str().unwrap_or("").to_owned(), team.as_str().unwrap_or("").to_owned());
                state.triggers.insert(trigger.to_owned(), (Instant::now(), whose.0, whose.1));
            }
            let envelope_id = format!("e5e0a1d5-0000-4000-8000-{:012x}", state.envelopes.len() + 1);
            state.envelopes.insert(envelope_id.clone(), Envelope { payload, deliveries: 0, last_sent: None });
            envelope_id
        };
        let live = self.shared.lock().live.is_some();
        tokio::spawn(deliver(self.shared.clone(), envelope_id.clone()));
        if live {
            self.wait_for(&format!("the first delivery of {envelope_id}"), |slack| {
                (slack.deliveries(&envelope_id) > 0).then_some(())
            })
            .await;
        }
        envelope_id
    }

    /// The modals opened so far.
    pub fn views(&self) -> Vec<View> {
        self.shared.lock().views.clone()
    }

    /// Submits modal `view` as its user, with `values` (`state.values`, as Slack keys them by
    /// block and action id): the `view_submission` envelope's id.
    pub async fn submit(&self, view: &View, values: Value) -> String {
        self.interact(view_submission(view, &values)).await
    }

    /// Until the envelope is acked: its first ack.
    pub async fn wait_acked(&self, envelope_id: &str) -> Ack {
        self.wait_for(&format!("an ack of {envelope_id}"), |slack| {
            slack.shared.lock().acks.iter().find(|a| a.envelope_id == envelope_id).cloned()
        })
        .await
    }

    /// Closes the live socket abruptly, as a network cut would (no close frame), and
    /// returns once it is gone.
    pub async fn drop_socket(&self) {
        let connection = {
            let state = self.shared.lock();
            let live = state.live.as_ref().expect("a live socket to drop");
            let _ = live.frames.send(Frame::Cut);
            live.connection
        };
        self.wait_for(&format!("socket {connection} to close"), |slack| {
            let state = slack.shared.lock();
            state.live.as_ref().is_none_or(|l| l.connection != connection).then_some(())
        })
        .await;
    }

    /// Sends Socket Mode's `disconnect` frame on the live socket (`reason`: `warning`,
    /// `refresh_requested` or `link_disabled`) and leaves the socket open, as Slack does
    /// for a while before it closes one.
    pub fn send_disconnect(&self, reason: &str) {
        let frame =
            serde_json::to_string(&Disconnect { r#type: "disconnect", reason, debug_info: debug_info() })
                .expect("a disconnect frame");
        let state = self.shared.lock();
        let live = state.live.as_ref().expect("a live socket to warn");
        live.frames.send(Frame::Text(frame)).expect("the live socket");
    }

    /// Refuses, from now on, every post whose blocks hold `needle`, as Slack refuses
    /// messages past limits it does not document (`msg_blocks_too_long`, reported at about
    /// 13,000 characters of blocks in all).
    /// Gives user `user` the profile email `email` (`users.info`, with `users:read.email`).
    pub fn set_email(&self, user: &str, email: &str) {
        self.shared.lock().emails.insert(user.to_owned(), email.to_owned());
    }

    pub fn refuse_blocks_containing(&self, needle: &str) {
        self.shared.lock().refused_blocks = Some(needle.to_owned());
    }

    /// Polls `f` every 20 ms until it gives something, for 15 s; then panics naming `what`.
    pub async fn wait_for<T>(&self, what: &str, f: impl Fn(&Self) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = f(self) {
                return found;
            }
            assert!(Instant::now() < deadline, "waited {WAIT:?} for {what}");
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for SlackStandIn {
    fn drop(&mut self) {
        self.server.abort();
        if let Some(live) = self.shared.lock().live.take() {
            let _ = live.frames.send(Frame::Cut);
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn refuse(&self, what: String) {
        self.lock().refusals.push(what);
    }

    /// Sends the envelope on the live socket; when it was sent, or `None` with no socket.
    fn send_envelope(&self, envelope_id: &str, retry_attempt: u32) -> Option<Instant> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let live = state.live.as_ref()?;
        let envelope = state.envelopes.get_mut(envelope_id)?;
        let frame = Delivery {
            envelope_id,
            r#type: "interactive",
            accepts_response_payload: false,
            payload: &envelope.payload,
            retry_attempt,
            retry_reason: if retry_attempt == 0 { "" } else { "timeout" },
        };
        let frame = serde_json::to_string(&frame).expect("an envelope");
        live.frames.send(Frame::Text(frame)).ok()?;
        let now = Instant::now();
        envelope.deliveries += 1;
        envelope.last_sent = Some(now);
        Some(now)
    }

    fn acked(&self, envelope_id: &str) -> bool {
        self.lock().acks.iter().any(|a| a.envelope_id == envelope_id)
    }

    /// A text frame from the app: an ack, or a refusal.
    fn received(&self, connection: usize, text: &str) {
        let at = Instant::now();
        let Ok(frame) = serde_json::from_str::<AckFrame>(text) else {
            self.refuse(format!("socket: connection {connection} sent what is not an ack: {text}"));
            return;
        };
        let mut state = self.lock();
        let (attempts, after) = if let Some(Envelope { deliveries, last_sent: Some(sent), .. }) =
            state.envelopes.get(&frame.envelope_id)
        {
            (*deliveries, at - *sent)
        } else {
            state.refusals.push(format!("socket: ack of an envelope never sent: {}", frame.envelope_id));
            (0, Duration::MAX)
        };
        state.acks.push(Ack {
            envelope_id: frame.envelope_id,
            at,
            after,
            within_3s: after <= ACK_WINDOW,
            attempts,
            payload: frame.payload,
        });
        drop(state);
        self.changed.send_replace(());
    }
}

/// Sends one envelope until it is acked: on the live socket (waiting for one if none is),
/// again after each 3 s without an ack, `RETRIES` times at most.
async fn deliver(shared: Arc<Shared>, envelope_id: String) {
    let mut changed = shared.changed.subscribe();
    for retry_attempt in 0..=RETRIES {
        let sent = loop {
            if shared.acked(&envelope_id) {
                return;
            }
            if let Some(sent) = shared.send_envelope(&envelope_id, retry_attempt) {
                break sent;
            }
            if changed.changed().await.is_err() {
                return;
            }
        };
        let deadline = tokio::time::Instant::from_std(sent + ACK_WINDOW);
        loop {
            if shared.acked(&envelope_id) {
                return;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => break,
            }
        }
    }
}

fn debug_info() -> DebugInfo {
    DebugInfo { host: "applink-standin", build_number: 1, approximate_connection_time: 18_060 }
}

/// `GET /socket?ticket=N`: a ticket from `apps.connections.open`, once.
async fn socket(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<TicketQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let ticket = query.ticket.unwrap_or_default();
    if !shared.lock().tickets.remove(&ticket) {
        shared.refuse(format!("socket: unknown or used ticket {ticket:?}"));
        return StatusCode::UNAUTHORIZED.into_response();
    }
    upgrade.on_upgrade(move |socket| serve_socket(shared, socket))
}

async fn serve_socket(shared: Arc<Shared>, mut socket: WebSocket) {
    let (frames, mut outgoing) = mpsc::unbounded_channel();
    let connection = {
        let mut state = shared.lock();
        state.connections += 1;
        state.connections
    };
    let hello = Hello {
        r#type: "hello",
        num_connections: 1,
        debug_info: debug_info(),
        connection_info: ConnectionInfo { app_id: APP_ID },
    };
    let hello = serde_json::to_string(&hello).expect("a hello");
    if socket.send(ws::Message::Text(hello.into())).await.is_err() {
        return;
    }
    shared.lock().live = Some(Live { connection, frames });
    shared.changed.send_replace(());
    loop {
        tokio::select! {
            frame = outgoing.recv() => match frame {
                Some(Frame::Text(text)) => {
                    if socket.send(ws::Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Frame::Cut) | None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(ws::Message::Text(text))) => shared.received(connection, text.as_str()),
                Some(Ok(ws::Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    // Dropping the socket closes the TCP connection, without a close frame.
    drop(socket);
    {
        let mut state = shared.lock();
        if state.live.as_ref().is_some_and(|l| l.connection == connection) {
            state.live = None;
        }
    }
    shared.changed.send_replace(());
}

/// `POST /api/METHOD`: the Web API.
async fn api(
    State(shared): State<Arc<Shared>>,
    UrlPath(method): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Reply> {
    let mut warning = None;
    let result = match method.as_str() {
        "apps.connections.open" => {
            authorize(&headers, APP_TOKEN, BOT_TOKEN).map(|()| connections_open(&shared))
        }
        // A read method: its arguments in the URL (it takes no JSON).
        "users.info" => authorize(&headers, BOT_TOKEN, APP_TOKEN).and_then(|()| {
            let user = query.get("user").ok_or_else(|| Refusal::from("invalid_arguments"))?;
            let email = shared.lock().emails.get(user).cloned();
            let profile = email.map_or_else(|| json!({}), |email| json!({"email": email}));
            Ok(Reply { ok: true, user: Some(json!({"id": user, "profile": profile})), ..Reply::default() })
        }),
        "views.open" => authorize(&headers, BOT_TOKEN, APP_TOKEN)
            .and_then(|()| arguments(&headers, &body, &mut warning))
            .and_then(|args| views_open(&shared, args)),
        "chat.postMessage" | "chat.update" | "chat.postEphemeral" => {
            authorize(&headers, BOT_TOKEN, APP_TOKEN)
                .and_then(|()| arguments(&headers, &body, &mut warning))
                .and_then(|args| match method.as_str() {
                    "chat.postMessage" => post_message(&shared, args),
                    "chat.update" => update(&shared, args),
                    _ => post_ephemeral(&shared, args),
                })
        }
        _ => Err(Refusal::from("unknown_method")),
    };
    if let Some(warning) = warning {
        shared.lock().warnings.push(format!("{method}: {warning}"));
    }
    let metadata = |messages: Vec<String>| {
        (!messages.is_empty() || warning.is_some())
            .then(|| ResponseMetadata { messages, warnings: warning.into_iter().collect() })
    };
    Json(match result {
        Ok(reply) => Reply { warning, response_metadata: metadata(Vec::new()), ..reply },
        Err(Refusal { error, errors }) => {
            let details = if errors.is_empty() { String::new() } else { format!(": {}", errors.join("; ")) };
            shared.refuse(format!("{method}: {error}{details}"));
            let messages = errors.iter().map(|e| format!("[ERROR] {e}")).collect();
            Reply {
                ok: false,
                error: Some(error),
                response_metadata: metadata(messages),
                errors,
                warning,
                ..Reply::default()
            }
        }
    })
}

/// `Authorization: Bearer TOKEN`: `wanted`, or Slack's error for what came instead.
fn authorize(headers: &HeaderMap, wanted: &str, other_kind: &str) -> Result<(), Refusal> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        None | Some("") => Err("not_authed".into()),
        Some(token) if token == wanted => Ok(()),
        Some(token) if token == other_kind => Err("not_allowed_token_type".into()),
        Some(_) => Err("invalid_auth".into()),
    }
}

/// A JSON body (`application/json; charset=utf-8`) with the chat methods' arguments.
fn arguments(headers: &HeaderMap, body: &[u8], warning: &mut Option<&'static str>) -> Result<Args, Refusal> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let content_type = content_type.to_ascii_lowercase();
    if !content_type.starts_with("application/json") {
        return Err("invalid_post_type".into());
    }
    if !content_type.replace(' ', "").contains("charset=utf-8") {
        *warning = Some("missing_charset");
    }
    let body: Value = serde_json::from_slice(body).map_err(|_| Refusal::from("invalid_json"))?;
    if !body.is_object() {
        return Err("json_not_object".into());
    }
    serde_json::from_value(body).map_err(|_| "invalid_arguments".into())
}

fn connections_open(shared: &Shared) -> Reply {
    let mut state = shared.lock();
    state.issued += 1;
    let ticket = state.issued.to_string();
    state.tickets.insert(ticket.clone());
    Reply {
        ok: true,
        url: Some(format!("ws://127.0.0.1:{}/socket?ticket={ticket}", shared.port)),
        ..Reply::default()
    }
}

fn post_message(shared: &Shared, args: Args) -> Result<Reply, Refusal> {
    let channel = args.channel.clone().filter(|c| !c.is_empty()).ok_or("channel_not_found")?;
    check_content(&args)?;
    let mut state = shared.lock();
    if let Some(needle) = &state.refused_blocks
        && args.blocks.as_ref().is_some_and(|blocks| blocks.to_string().contains(needle.as_str()))
    {
        return Err("msg_blocks_too_long".into());
    }
    let ts = next_ts(&mut state);
    let message = Message {
        channel: channel.clone(),
        ts: ts.clone(),
        text: args.text.unwrap_or_default(),
        blocks: args.blocks.unwrap_or(Value::Null),
        at: Instant::now(),
    };
    let echo = echo(&message);
    state.messages.push(message);
    Ok(Reply { ok: true, channel: Some(channel), ts: Some(ts), message: Some(echo), ..Reply::default() })
}

fn update(shared: &Shared, args: Args) -> Result<Reply, Refusal> {
    let channel = args.channel.clone().filter(|c| !c.is_empty()).ok_or("channel_not_found")?;
    let ts = args.ts.clone().ok_or("message_not_found")?;
    check_content(&args)?;
    let mut state = shared.lock();
    let stored =
        state.messages.iter_mut().find(|m| m.channel == channel && m.ts == ts).ok_or("message_not_found")?;
    if let Some(text) = &args.text {
        stored.text.clone_from(text);
    }
    if let Some(blocks) = &args.blocks {
        stored.blocks = blocks.clone();
    }
    let echo = echo(stored);
    state.updates.push(Message {
        channel: channel.clone(),
        ts: ts.clone(),
        text: args.text.unwrap_or_default(),
        blocks: args.blocks.unwrap_or(Value::Null),
        at: Instant::now(),
    });
    Ok(Reply { ok: true, channel: Some(channel), ts: Some(ts), message: Some(echo), ..Reply::default() })
}

fn post_ephemeral(shared: &Shared, args: Args) -> Result<Reply, Refusal> {
    let channel = args.channel.clone().filter(|c| !c.is_empty()).ok_or("channel_not_found")?;
    let user = args.user.clone().filter(|u| !u.is_empty()).ok_or("user_not_found")?;
    check_content(&args)?;
    let mut state = shared.lock();
    let message_ts = next_ts(&mut state);
    state.ephemerals.push(Ephemeral {
        channel,
        user,
        text: args.text.unwrap_or_default(),
        blocks: args.blocks.unwrap_or(Value::Null),
    });
    Ok(Reply { ok: true, message_ts: Some(message_ts), ..Reply::default() })
}

/// `views.open`: a modal, with a click's `trigger_id` used once within 3 s of the click.
fn views_open(shared: &Shared, args: Args) -> Result<Reply, Refusal> {
    let trigger = args.trigger_id.ok_or("invalid_arguments")?;
    let view = args.view.ok_or("invalid_arguments")?;
    let mut check = Check::default();
    check.view(&view);
    if !check.errors.is_empty() {
        return Err(Refusal { error: "invalid_arguments", errors: check.errors });
    }
    let mut state = shared.lock();
    let (at, user, team) = state.triggers.remove(&trigger).ok_or("invalid_trigger_id")?;
    if at.elapsed() > TRIGGER_WINDOW {
        return Err("expired_trigger_id".into());
    }
    let id = format!("V0STANDIN{}", state.views.len() + 1);
    let mut echoed = view.clone();
    echoed["id"] = json!(id);
    echoed["team_id"] = json!(team);
    state.views.push(View { id, user, team, view, after: at.elapsed() });
    Ok(Reply { ok: true, view: Some(echoed), ..Reply::default() })
}

/// Unique and increasing: `1700000000.000100`, `1700000000.000200`, …
fn next_ts(state: &mut Record) -> String {
    state.next_ts += 1;
    let micros = state.next_ts * 100;
    format!("{}.{:06}", 1_700_000_000 + micros / 1_000_000, micros % 1_000_000)
}

/// The `message` Slack echoes in its answer.
fn echo(message: &Message) -> Value {
    let mut echo = json!({
        "type": "message",
        "user": BOT_USER,
        "bot_id": "B0STANDIN",
        "app_id": APP_ID,
        "text": message.text,
        "ts": message.ts,
    });
    if !message.blocks.is_null() {
        echo["blocks"] = message.blocks.clone();
    }
    echo
}

/// `text` and/or `blocks`, each within Slack's limits.
fn check_content(args: &Args) -> Result<(), Refusal> {
    let text = args.text.as_deref().unwrap_or("");
    if text.is_empty() && args.blocks.is_none() {
        return Err("no_text".into());
    }
    if text.chars().count() > MAX_TEXT {
        return Err("msg_too_long".into());
    }
    let Some(blocks) = &args.blocks else { return Ok(()) };
    let Some(blocks) = blocks.as_array() else { return Err("invalid_blocks_format".into()) };
    let mut check = Check::default();
    check.blocks(blocks, Surface::Message);
    if check.errors.is_empty() {
        Ok(())
    } else {
        Err(Refusal { error: "invalid_blocks", errors: check.errors })
    }
}

/// Where blocks are shown: a message, or a modal (more blocks, and inputs).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Surface {
    Message,
    Modal,
}

/// Block Kit's rules for the blocks and elements keyturn uses; anything else is refused, so
/// that a block the stand-in does not know cannot pass unchecked.
#[derive(Default)]
struct Check {
    errors: Vec<String>,
}

impl Check {
    fn fail(&mut self, at: &str, why: impl std::fmt::Display) {
        self.errors.push(format!("{why} [json-pointer:{at}]"));
    }

    /// A modal (`views.open`'s `view`).
    fn view(&mut self, view: &Value) {
        let Some(view) = view.as_object() else {
            self.fail("/view", "must be an object");
            return;
        };
        if view.get("type").and_then(Value::as_str) != Some("modal") {
            self.fail("/view/type", "must be modal");
        }
        self.text_object("/view/title", view.get("title"), MAX_VIEW_TITLE, true);
        for button in ["submit", "close"] {
            if view.contains_key(button) {
                self.text_object(&format!("/view/{button}"), view.get(button), MAX_VIEW_TITLE, true);
            }
        }
        for (field, max) in [("callback_id", MAX_CALLBACK_ID), ("private_metadata", MAX_PRIVATE_METADATA)] {
            if view.contains_key(field) {
                self.string(&format!("/view/{field}"), view.get(field), max);
            }
        }
        let Some(blocks) = view.get("blocks") else {
            self.fail("/view/blocks", "is required");
            return;
        };
        let blocks = self.array("/view/blocks", blocks, usize::MAX);
        self.blocks(blocks, Surface::Modal);
        let inputs = blocks.iter().any(|b| b["type"] == "input");
        if inputs && !view.contains_key("submit") {
            self.fail("/view/submit", "a modal with inputs must have a submit button");
        }
        self.known_fields(
            "/view",
            view,
            &[
                "type",
                "title",
                "submit",
                "close",
                "callback_id",
                "private_metadata",
                "blocks",
                "clear_on_close",
                "notify_on_close",
                "external_id",
            ],
        );
    }

    fn blocks(&mut self, blocks: &[Value], surface: Surface) {
        let max = if surface == Surface::Modal { MAX_VIEW_BLOCKS } else { MAX_BLOCKS };
        if blocks.len() > max {
            self.fail("/blocks", format!("no more than {max} items allowed"));
        }
        let mut block_ids = HashSet::new();
        for (i, block) in blocks.iter().enumerate() {
            let at = format!("/blocks/{i}");
            let Some(block) = block.as_object() else {
                self.fail(&at, "must be an object");
                continue;
            };
            if let Some(id) = block.get("block_id") {
                self.string(&format!("{at}/block_id"), Some(id), MAX_BLOCK_ID);
                if !block_ids.insert(id.to_string()) {
                    self.fail(&format!("{at}/block_id"), "block_id must be unique in a message");
                }
            }
            let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
            let fields: &[&str] = match kind {
                "section" => {
                    self.section(&at, block);
                    &["text", "fields", "accessory", "expand"]
                }
                "header" => {
                    self.text_object(&format!("{at}/text"), block.get("text"), MAX_HEADER_TEXT, true);
                    &["text"]
                }
                "actions" => {
                    self.actions(&at, block);
                    &["elements"]
                }
                "context" => {
                    self.context(&at, block);
                    &["elements"]
                }
                "divider" => &[],
                "input" if surface == Surface::Modal => {
                    self.input(&at, block);
                    &["label", "element", "optional", "hint", "dispatch_action"]
                }
                _ => {
                    self.fail(&format!("{at}/type"), format!("unsupported block type {kind:?}"));
                    continue;
                }
            };
            self.known_fields(&at, block, &[&["type", "block_id"], fields].concat());
        }
    }

    fn section(&mut self, at: &str, block: &Map<String, Value>) {
        let (text, fields) = (block.get("text"), block.get("fields"));
        if text.is_none() && fields.is_none() {
            self.fail(at, "must provide text or fields");
        }
        if text.is_some() {
            self.text_object(&format!("{at}/text"), text, MAX_SECTION_TEXT, false);
        }
        if let Some(fields) = fields {
            let fields = self.array(&format!("{at}/fields"), fields, MAX_FIELDS);
            for (i, field) in fields.iter().enumerate() {
                self.text_object(&format!("{at}/fields/{i}"), Some(field), MAX_FIELD_TEXT, false);
            }
        }
        if let Some(accessory) = block.get("accessory") {
            self.button(&format!("{at}/accessory"), accessory);
        }
        if let Some(expand) = block.get("expand").filter(|e| !e.is_boolean()) {
            self.fail(&format!("{at}/expand"), format!("must be a boolean, not {expand}"));
        }
    }

    fn actions(&mut self, at: &str, block: &Map<String, Value>) {
        let Some(elements) = block.get("elements") else {
            self.fail(at, "must provide elements");
            return;
        };
        let elements = self.array(&format!("{at}/elements"), elements, MAX_ACTIONS);
        let mut action_ids = HashSet::new();
        for (i, element) in elements.iter().enumerate() {
            let at = format!("{at}/elements/{i}");
            self.button(&at, element);
            if let Some(id) = element.get("action_id").and_then(Value::as_str)
                && !action_ids.insert(id)
            {
                self.fail(&format!("{at}/action_id"), "action_id must be unique in its block");
            }
        }
    }

    fn context(&mut self, at: &str, block: &Map<String, Value>) {
        let Some(elements) = block.get("elements") else {
            self.fail(at, "must provide elements");
            return;
        };
        let elements = self.array(&format!("{at}/elements"), elements, MAX_CONTEXT);
        for (i, element) in elements.iter().enumerate() {
            let at = format!("{at}/elements/{i}");
            if element.get("type").and_then(Value::as_str) == Some("image") {
                self.string(&format!("{at}/image_url"), element.get("image_url"), MAX_IMAGE_URL);
                self.string(&format!("{at}/alt_text"), element.get("alt_text"), MAX_ALT_TEXT);
                self.known_fields(
                    &at,
                    element.as_object().expect("an object"),
                    &["type", "image_url", "alt_text"],
                );
            } else {
                self.text_object(&at, Some(element), MAX_TEXT_OBJECT, false);
            }
        }
    }

    fn button(&mut self, at: &str, element: &Value) {
        let Some(button) = element.as_object() else {
            self.fail(at, "must be an object");
            return;
        };
        if button.get("type").and_then(Value::as_str) != Some("button") {
            self.fail(
                &format!("{at}/type"),
                format!("unsupported element type {}", button.get("type").unwrap_or(&Value::Null)),
            );
            return;
        }
        self.text_object(&format!("{at}/text"), button.get("text"), MAX_BUTTON_TEXT, true);
        for (field, max) in [
            ("action_id", MAX_ACTION_ID),
            ("value", MAX_BUTTON_VALUE),
            ("url", MAX_BUTTON_URL),
            ("accessibility_label", MAX_ACCESSIBILITY_LABEL),
        ] {
            if button.contains_key(field) {
                self.string(&format!("{at}/{field}"), button.get(field), max);
            }
        }
        if let Some(style) = button.get("style").filter(|s| !matches!(s.as_str(), Some("primary" | "danger")))
        {
            self.fail(&format!("{at}/style"), format!("must be primary or danger, not {style}"));
        }
        if let Some(confirm) = button.get("confirm") {
            self.confirm(&format!("{at}/confirm"), confirm);
        }
        self.known_fields(
            at,
            button,
            &["type", "text", "action_id", "value", "url", "style", "confirm", "accessibility_label"],
        );
    }

    /// An input block: a label and one of the elements keyturn uses.
    fn input(&mut self, at: &str, block: &Map<String, Value>) {
        self.text_object(&format!("{at}/label"), block.get("label"), MAX_INPUT_LABEL, true);
        if let Some(optional) = block.get("optional").filter(|o| !o.is_boolean()) {
            self.fail(&format!("{at}/optional"), format!("must be a boolean, not {optional}"));
        }
        let at = format!("{at}/element");
        let Some(element) = block.get("element").and_then(Value::as_object) else {
            self.fail(&at, "must be an object");
            return;
        };
        self.string(&format!("{at}/action_id"), element.get("action_id"), MAX_ACTION_ID);
        match element.get("type").and_then(Value::as_str) {
            Some("plain_text_input") => {
                for field in ["min_length", "max_length"] {
                    if let Some(n) =
                        element.get(field).filter(|n| n.as_u64().is_none_or(|n| n > MAX_INPUT_LENGTH))
                    {
                        self.fail(
                            &format!("{at}/{field}"),
                            format!("must be 0 to {MAX_INPUT_LENGTH}, not {n}"),
                        );
                    }
                }
                self.known_fields(
                    &at,
                    element,
                    &[
                        "type",
                        "action_id",
                        "multiline",
                        "min_length",
                        "max_length",
                        "initial_value",
                        "placeholder",
                    ],
                );
            }
            Some("static_select") => {
                let options = element
                    .get("options")
                    .map(|o| self.array(&format!("{at}/options"), o, MAX_OPTIONS))
                    .unwrap_or_default();
                for (i, option) in options.iter().chain(element.get("initial_option")).enumerate() {
                    let at = format!("{at}/options/{i}");
                    self.text_object(&format!("{at}/text"), option.get("text"), MAX_OPTION_TEXT, true);
                    self.string(&format!("{at}/value"), option.get("value"), MAX_OPTION_VALUE);
                }
                if let Some(initial) = element.get("initial_option")
                    && !options.contains(initial)
                {
                    self.fail(&format!("{at}/initial_option"), "must be one of the options");
                }
                self.known_fields(
                    &at,
                    element,
                    &["type", "action_id", "options", "initial_option", "placeholder"],
                );
            }
            other => self.fail(&format!("{at}/type"), format!("unsupported element type {other:?}")),
        }
    }

    fn confirm(&mut self, at: &str, confirm: &Value) {
        let Some(dialog) = confirm.as_object() else {
            self.fail(at, "must be an object");
            return;
        };
        self.text_object(&format!("{at}/title"), dialog.get("title"), MAX_CONFIRM_TITLE, true);
        self.text_object(&format!("{at}/text"), dialog.get("text"), MAX_CONFIRM_TEXT, false);
        self.text_object(&format!("{at}/confirm"), dialog.get("confirm"), MAX_CONFIRM_BUTTON, true);
        self.text_object(&format!("{at}/deny"), dialog.get("deny"), MAX_CONFIRM_BUTTON, true);
        if let Some(style) = dialog.get("style").filter(|s| !matches!(s.as_str(), Some("primary" | "danger")))
        {
            self.fail(&format!("{at}/style"), format!("must be primary or danger, not {style}"));
        }
        self.known_fields(at, dialog, &["title", "text", "confirm", "deny", "style"]);
    }

    /// A text object: `plain_text` (with `emoji`) or, unless `plain` only, `mrkdwn` (with
    /// `verbatim`); its `text` 1 to `max` characters.
    fn text_object(&mut self, at: &str, object: Option<&Value>, max: usize, plain: bool) {
        let Some(object) = object.and_then(Value::as_object) else {
            self.fail(at, "must be a text object");
            return;
        };
        let extra = match object.get("type").and_then(Value::as_str) {
            Some("plain_text") => "emoji",
            Some("mrkdwn") if !plain => "verbatim",
            _ => {
                let allowed = if plain { "plain_text" } else { "plain_text or mrkdwn" };
                let kind = object.get("type").unwrap_or(&Value::Null);
                self.fail(&format!("{at}/type"), format!("must be {allowed}, not {kind}"));
                return;
            }
        };
        self.string(&format!("{at}/text"), object.get("text"), max);
        if let Some(flag) = object.get(extra).filter(|f| !f.is_boolean()) {
            self.fail(&format!("{at}/{extra}"), format!("must be a boolean, not {flag}"));
        }
        self.known_fields(at, object, &["type", "text", extra]);
    }

    /// A string of 1 to `max` characters.
    fn string(&mut self, at: &str, value: Option<&Value>, max: usize) {
        match value.map(|v| v.as_str().map(|s| s.chars().count())) {
            None => self.fail(at, "is required"),
            Some(None) => self.fail(at, "must be a string"),
            Some(Some(0)) => self.fail(at, "must be more than 0 characters"),
            Some(Some(n)) if n > max => self.fail(at, format!("must be less than {} characters", max + 1)),
            Some(Some(_)) => {}
        }
    }

    /// An array of 1 to `max` items; its items (none if it is not an array).
    fn array<'v>(&mut self, at: &str, value: &'v Value, max: usize) -> &'v [Value] {
        let Some(items) = value.as_array() else {
            self.fail(at, "must be an array");
            return &[];
        };
        if items.is_empty() {
            self.fail(at, "must provide at least 1 item");
        } else if items.len() > max {
            self.fail(at, format!("no more than {max} items allowed"));
        }
        items
    }

    fn known_fields(&mut self, at: &str, object: &Map<String, Value>, known: &[&str]) {
        for field in object.keys().filter(|k| !known.contains(&k.as_str())) {
            self.fail(at, format!("invalid additional property: {field}"));
        }
    }
}

/// A `block_actions` payload as Slack sends it when `user` of `team` clicks the button
/// `action_id` on `message` (its `block_id` and text found in the message; a button the
/// message does not have gets block `standin` and its `action_id` as text, for forgeries).
/// `response_url` points at `.invalid`, so that nothing can reach a real Slack.
pub fn block_action(team: &str, user: &str, action_id: &str, value: &str, message: &Message) -> Value {
    let (block_id, text) = find_button(&message.blocks, action_id).unwrap_or_else(|| {
        ("standin".to_owned(), json!({ "type": "plain_text", "text": action_id, "emoji": true }))
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    let action_ts = format!("{}.{:06}", now.as_secs(), now.subsec_micros());
    let name = user.to_lowercase();
    let mut echoed = echo(message);
    echoed["team"] = json!(team);
    json!({
        "type": "block_actions",
        "user": { "id": user, "username": name, "name": name, "team_id": team },
        "api_app_id": APP_ID,
        "token": "standin-verification-token",
        "container": {
            "type": "message",
            "message_ts": message.ts,
            "channel_id": message.channel,
            "is_ephemeral": false,
        },
        "trigger_id": format!("{}.{}.{:032x}", now.as_secs(), now.subsec_nanos(), now.as_nanos()),
        "team": { "id": team, "domain": "standin" },
        "enterprise": null,
        "is_enterprise_install": false,
        "channel": { "id": message.channel, "name": "standin" },
        "message": echoed,
        "state": { "values": {} },
        "response_url": format!("https://hooks.slack.invalid/actions/{team}/{}/standin", now.as_secs()),
        "actions": [{
            "action_id": action_id,
            "block_id": block_id,
            "text": text,
            "value": value,
            "type": "button",
            "action_ts": action_ts,
        }],
    })
}

/// A `view_submission` payload as Slack sends it when the user of `view` submits it with
/// `values`: the view as the app opened it (its `callback_id`, `private_metadata`), and
/// its state.
fn view_submission(view: &View, values: &Value) -> Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    let name = view.user.to_lowercase();
    let mut shown = view.view.clone();
    shown["id"] = json!(view.id);
    shown["team_id"] = json!(view.team);
    shown["state"] = json!({"values": values});
    shown["hash"] = json!(format!("{}.standin", now.as_secs()));
    shown["app_id"] = json!(APP_ID);
    shown["bot_id"] = json!("B0STANDIN");
    json!({
        "type": "view_submission",
        "team": { "id": view.team, "domain": "standin" },
        "user": { "id": view.user, "username": name, "name": name, "team_id": view.team },
        "api_app_id": APP_ID,
        "token": "standin-verification-token",
        "trigger_id": format!("{}.{}.{:032x}", now.as_secs(), now.subsec_nanos(), now.as_nanos()),
        "view": shown,
        "response_urls": [],
        "is_enterprise_install": false,
        "enterprise": null,
    })
}

/// The `block_id` and `text` of the button `action_id` in `blocks`.
fn find_button(blocks: &Value, action_id: &str) -> Option<(String, Value)> {
    blocks.as_array()?.iter().enumerate().find_map(|(i, block)| {
        let mut buttons = block
            .get("elements")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .chain(block.get("accessory"));
        let button = buttons.find(|b| b.get("action_id").and_then(Value::as_str) == Some(action_id))?;
        // Slack makes up a block_id where the app gave none.
        let block_id = block
            .get("block_id")
            .and_then(Value::as_str)
            .map_or_else(|| format!("standin{i}"), str::to_owned);
        Some((block_id, button.get("text").cloned().unwrap_or(Value::Null)))
    })
}

/// Runs Slack's own Python SDK on `input` (`tests/python/slack_judge.py` `mode`: `blocks` or
/// `signatures`) and returns its verdict (`{"findings": […]}` or `{"valid": […]}`).
pub fn judge(mode: &str, input: &Value) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `cargo xtask setup`", python.display());
    let mut judge = Command::new(python);
    judge.arg(dir.join("slack_judge.py")).arg(mode);
    crate::judged(judge, input)
}
