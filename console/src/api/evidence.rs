//! Evidence packs over HTTP: an admin downloads the signed pack of a period as a zip.

use axum::{
    extract::{Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
};
use serde::Deserialize;

use super::{Api, ApiError, auth::require};
use crate::{
    evidence::{self, EvidenceError, Period},
    people::{Principal, Role},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvidenceQuery {
    from: String,
    to: String,
}

pub async fn export(
    State(api): State<Api>,
    principal: Principal,
    q: Result<Query<EvidenceQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    require(&principal, Role::Admin)?;
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    let bad = |e: EvidenceError| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
    let period = Period::parse(&q.from, &q.to).map_err(bad)?;
    let console = &api.console;
    let zip = evidence::export(console.store(), console.signer(), period, &principal.person).await.map_err(
        |e| match e {
            EvidenceError::Store(e) => ApiError::from(e),
            other => {
                tracing::error!(error = %other, "evidence export failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the console failed; see its log",
                )
            }
        },
    )?;
    let name = format!(
        "attachment; filename=\"keyturn-evidence-{}-{}.zip\"",
        evidence::utc(period.from_ms).replace(':', ""),
        evidence::utc(period.to_ms).replace(':', "")
    );
    Ok(([(header::CONTENT_TYPE, "application/zip".to_owned()), (header::CONTENT_DISPOSITION, name)], zip)
        .into_response())
}
