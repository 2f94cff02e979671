//! The audit trail exported over HTTP: JSON lines, OCSF events or keyturn records, for a
//! period; admins only, and only from a chain that verifies whole.

use axum::{
    body::{Body, Bytes},
    extract::{Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
};
use serde::Deserialize;
use tokio::sync::mpsc::{self, Sender};
use tokio_stream::wrappers::ReceiverStream;

use super::{Api, ApiError, auth::require, holds::query};
use crate::{
    audit::AuditEvent,
    export::{Exporter, Format},
    people::{Principal, Role},
    store::{Store, StoreError},
};

/// Records read, mapped and sent at a time.
const PAGE: i64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    format: Option<Format>,
    /// From this time on (RFC 3339, or milliseconds since the epoch).
    since: Option<String>,
    /// Before this time.
    until: Option<String>,
}

/// `text` as milliseconds since the epoch.
fn time(name: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .and_then(|since| i64::try_from(since.as_millis()).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{name} {text:?}: RFC 3339 (2025-01-31T12:00:00Z) or milliseconds since the epoch"),
            )
        })
}

/// The trail's records in `[since, until)` as JSON lines. Admins only: it is every host's
/// command lines and destinations and every person's actions at once, in bulk; viewers
/// read the trail a page at a time (`/api/audit`). The chain is verified first (409 when
/// broken), the export itself is audited, and records appended meanwhile are left out.
pub async fn export(
    State(api): State<Api>,
    principal: Principal,
    q: Result<Query<ExportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require(&principal, Role::Admin)?;
    let q = query(q)?;
    let format = q.format.unwrap_or_default();
    let since = q.since.as_deref().map(|t| time("since", t)).transpose()?;
    let until = q.until.as_deref().map(|t| time("until", t)).transpose()?;
    let store = api.console.store().clone();
    let head = store.verify_audit().await?;
    let by = principal.person.clone();
    store
        .record(&AuditEvent::AuditExported {
            by,
            format: format.as_str().into(),
            since_ms: since,
            until_ms: until,
        })
        .await?;
    let (lines, body) = mpsc::channel(2);
    tokio::spawn(async move {
        if let Err(e) = send(&store, format, (since, until), head.records, &lines).await {
            tracing::error!(error = %e, "audit export failed");
            let _ = lines.send(Err(std::io::Error::other(e.to_string()))).await;
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(ReceiverStream::new(body)))
        .into_response())
}

/// Sends the records before `end` in `[since, until)` down `lines`, a page at a time.
async fn send(
    store: &Store,
    format: Format,
    (since, until): (Option<i64>, Option<i64>),
    end: i64,
    lines: &Sender<Result<Bytes, std::io::Error>>,
) -> Result<(), StoreError> {
    let exporter = Exporter::new(store.clone(), format);
    let mut from = 0;
    while from < end {
        let mut page = store.audit_page(from, since.unwrap_or(0), until.unwrap_or(i64::MAX), PAGE).await?;
        page.retain(|record| record.seq < end);
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        let chunk = exporter
            .lines(&page)
            .await?
            .into_iter()
            .fold(String::new(), |text, line| text + &line.text + "\n");
        if lines.send(Ok(Bytes::from(chunk))).await.is_err() {
            break;
        }
    }
    Ok(())
}
