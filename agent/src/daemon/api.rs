//! The local API: one JSON request and one JSON reply per connection on the daemon's Unix
//! socket. The caller's identity is the socket peer's credentials, never what it says.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream as AsyncUnixStream},
    sync::{mpsc, oneshot},
};

use crate::console_link::embedded::SignInLinks;

/// How far an approval reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// This action only.
    Once,
    /// This action, and the same action by the same agent for this many seconds.
    For(u64),
    /// This action, and the same action by the same agent for the life of its cgroup.
    Always,
}

/// What a tag is of: a cgroup (path relative to the cgroup v2 root), or a systemd unit.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Path(String),
    Unit(String),
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Tag a cgroup by its path, or a systemd unit (whose cgroup the tag then follows).
    Tag {
        #[serde(flatten)]
        target: Target,
        policy: String,
        name: Option<String>,
        /// Who launched the agent; `None`: the caller, as `unix:NAME`.
        requester: Option<String>,
    },
    Untag {
        #[serde(flatten)]
        target: Target,
    },
    /// The tagged service `unit` is starting (its drop-in, as root): tag its new cgroup
    /// before anything of it runs.
    UnitStarting {
        unit: String,
    },
    Tags,
    /// Put process `pid`, a child of the caller, into a new tagged cgroup.
    Run {
        pid: u32,
        policy: String,
        name: Option<String>,
        /// Who launched the agent; `None`: the caller, as `unix:NAME`.
        requester: Option<String>,
    },
    Pending,
    Approve {
        id: String,
        scope: Scope,
        reason: Option<String>,
    },
    Deny {
        id: String,
        reason: Option<String>,
    },
    Status,
    /// A one-time link that signs the caller in to the embedded console as an admin
    /// (`keyturn console login`): for approvers outside agents' cgroups only.
    ConsoleLogin,
}

/// The reply to [`Request::ConsoleLogin`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SignInLink {
    /// The web UI's address with the link's secret in its fragment.
    pub url: String,
    /// Whom it signs in.
    pub person: String,
    /// How long it stays valid; it works once.
    pub valid_secs: u64,
}

pub type Reply = Result<serde_json::Value, String>;

/// The reply carrying `value`.
pub fn reply(value: impl Serialize) -> Reply {
    serde_json::to_value(value).map_err(|e| format!("an unserializable reply: {e}"))
}

/// Longest requester identity, in bytes.
pub const REQUESTER_BYTES: usize = 256;

/// Checks a requester identity (the person or service account that launched an agent,
/// such as an email address): not blank, at most [`REQUESTER_BYTES`], and printable as
/// itself, since approvers read it and the console compares it with theirs.
pub fn check_requester(who: &str) -> Result<(), String> {
    if who.trim().is_empty() {
        return Err("requester is empty".into());
    }
    if who.len() > REQUESTER_BYTES {
        return Err(format!("requester is {} bytes, more than {REQUESTER_BYTES}", who.len()));
    }
    if who.chars().any(|c| c.is_control() || crate::hold::context::hides_text(c)) {
        return Err(format!("requester {who:?} has control or invisible characters"));
    }
    Ok(())
}

/// Sends `request` to the daemon at `socket` and waits for its reply.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!("the keyturn daemon is not running (no listener at {})", socket.display())
        }
        std::io::ErrorKind::PermissionDenied => {
            format!(
                "permission denied on {}: approvers are root and members of the approver group",
                socket.display()
            )
        }
        _ => format!("connecting to {}: {e}", socket.display()),
    })?;
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| format!("sending to the daemon: {e}"))?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(|e| format!("reading the daemon's reply: {e}"))?;
    serde_json::from_str::<Reply>(&reply).map_err(|e| format!("the daemon's reply is malformed: {e}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_names_a_path_or_a_unit_in_one_field() {
        let request: Request = serde_json::from_str(
            r#"{"op":"tag","unit":"claude.service","policy":"default","name":null,"requester":null}"#,
        )
        .unwrap();
        assert!(
            matches!(request, Request::Tag { target: Target::Unit(unit), .. } if unit == "claude.service")
        );
        let json = serde_json::to_value(Request::Untag { target: Target::Path("a/b".into()) }).unwrap();
        assert_eq!(json, serde_json::json!({"op": "untag", "path": "a/b"}));
        assert!(serde_json::from_str::<Request>(r#"{"op":"untag"}"#).is_err(), "a target is required");
    }

    #[test]
    fn a_requester_is_a_printable_identity_of_at_most_256_bytes() {
        for good in
            ["alice@example.com", "unix:root", "svc/ci-runner 7", "DOMAIN\\ci", "é".repeat(128).as_str()]
        {
            assert_eq!(check_requester(good), Ok(()), "{good:?}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("  ", "empty"),
            (&"a".repeat(257), "257 bytes, more than 256"),
            ("alice\n@example.com", "control or invisible"),
            ("alice\u{1b}[2J", "control or invisible"),
            ("bob\u{202e}moc.elpmaxe", "control or invisible"),
        ] {
            let error = check_requester(bad).expect_err(bad);
            assert!(error.contains(says), "{bad:?}: {error}");
        }
    }
}

// The daemon's side.

/// Who is calling, from the socket's peer credentials.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// What the daemon's owner task is asked.
pub(super) enum Ask {
    Api(Request, Peer),
    Metrics,
}

/// A question for the owner task, with where its answer goes.
pub(super) struct Command {
    pub ask: Ask,
    pub reply: oneshot::Sender<Reply>,
}

/// Answers the local API's connections, each through the owner task; `sign_in` makes the
/// embedded console's sign-in links, if it runs.
pub(super) async fn serve_api(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    sign_in: Option<SignInLinks>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(answer(stream, commands.clone(), sign_in.clone()));
    }
}

/// One request, one reply. Requests are bounded in size; malformed ones get an error.
async fn answer(stream: AsyncUnixStream, commands: mpsc::Sender<Command>, sign_in: Option<SignInLinks>) {
    let Ok(cred) = stream.peer_cred() else { return };
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
    };
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let reply = match tokio::io::BufReader::new(read.take(64 << 10)).read_line(&mut line).await {
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            // The owner checks and names the operator; the link is made here, off its loop.
            Ok(Request::ConsoleLogin) => {
                let operator = ask(&commands, Ask::Api(Request::ConsoleLogin, peer)).await;
                super::sign_in::sign_in_link_for(operator, sign_in.as_ref()).await
            }
            Ok(request) => ask(&commands, Ask::Api(request, peer)).await,
            Err(e) => Err(format!("malformed request: {e}")),
        },
        Err(e) => Err(format!("reading the request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

/// Asks the owner task and waits for its answer.
pub(super) async fn ask(commands: &mpsc::Sender<Command>, ask: Ask) -> Reply {
    let (reply, answer) = oneshot::channel();
    commands.send(Command { ask, reply }).await.map_err(|_| "the daemon is stopping".to_owned())?;
    answer.await.map_err(|_| "the daemon is stopping".to_owned())?
}
