//! Where the daemon and the console log: stderr, or under systemd the journal itself.

/// Logs to stderr; under systemd, whose journal reads stderr, to the journal itself, with
/// each field of an event as a field of its record (`journalctl -o json`: `KEYTURN_ID`).
pub(crate) fn init() {
    use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let journal = to_journal().then(|| tracing_journald::layer().ok()).flatten().map(|layer| {
        layer.with_field_prefix(Some("KEYTURN".into())).with_syslog_identifier("keyturn".into())
    });
    let stderr = journal.is_none().then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    tracing_subscriber::registry().with(filter).with(journal).with(stderr).init();
}

/// Whether systemd connected stderr to the journal: `JOURNAL_STREAM` names its device and
/// inode (a child that inherited the variable but not the stream must not believe it).
pub(crate) fn to_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else { return false };
    stream.to_str() == Some(&format!("{}:{}", stat.st_dev, stat.st_ino))
}
