//! Call detail records: the list, the CSV export and the live stream.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::{page_limit, AdminError, AdminResult, ErrorBody};
use crate::app::App;
use switchyard_calls::CallRecord;

fn call_json(c: &CallRecord) -> Value {
    json!({
        "session_id": c.session_id,
        "from": c.caller_uri,
        "to": c.callee_uri,
        "caller_endpoint": c.caller_endpoint,
        "rung_endpoints": c.rung_endpoints,
        "answered_by": c.answered_by,
        "media": c.media,
        "state": c.state.as_str(),
        "outcome_reason": c.reason,
        "providers": c.providers,
        "initiated_at": c.initiated_at,
        "answered_at": c.answered_at,
        "ended_at": c.ended_at,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallParams {
    /// Calls initiated before this time (ms since the epoch).
    before: Option<i64>,
    /// Only calls in this state: ringing, answered, rejected, cancelled, timeout or ended.
    state: Option<String>,
    /// Only calls whose caller or callee URI contains this text (case-insensitively).
    party: Option<String>,
    /// 1 to 1000; default 100.
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/admin/v1/calls", tag = "calls", security(("token" = []), ("session" = [])), params(CallParams), responses((status = 200, description = "calls: call detail records, newest first", body = Object), (status = 400, description = "Invalid limit", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn list_calls(
    State(app): State<Arc<App>>,
    Query(params): Query<CallParams>,
) -> AdminResult {
    let limit = page_limit(params.limit, 100, 1000)?;
    let calls = filtered_calls(&app, &params, limit).await?;
    Ok(Json(
        json!({"calls": calls.iter().map(call_json).collect::<Vec<_>>()}),
    ))
}

/// The columns of the CDR export, in order.
const CDR_COLUMNS: [&str; 12] = [
    "session_id",
    "from",
    "to",
    "caller_endpoint",
    "answered_by",
    "media",
    "state",
    "outcome_reason",
    "providers",
    "initiated_at",
    "answered_at",
    "ended_at",
];

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180), and defused when
/// a spreadsheet would take it for a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

fn time_field(ms: Option<i64>) -> String {
    ms.and_then(|ms| {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
    })
    .and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

/// Call detail records as CSV, newest first (times in RFC 3339, UTC).
#[utoipa::path(get, path = "/admin/v1/calls.csv", tag = "calls", security(("token" = []), ("session" = [])), params(CallParams), responses((status = 200, description = "A header line, then one record per call", content_type = "text/csv", body = String), (status = 400, description = "Invalid limit", body = ErrorBody), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn calls_csv(
    State(app): State<Arc<App>>,
    Query(params): Query<CallParams>,
) -> Result<Response, AdminError> {
    let limit = page_limit(params.limit, 10_000, 100_000)?;
    let calls = filtered_calls(&app, &params, limit).await?;
    let mut csv = CDR_COLUMNS.join(",");
    csv.push_str("\r\n");
    for c in &calls {
        let fields = [
            c.session_id.clone(),
            c.caller_uri.clone(),
            c.callee_uri.clone(),
            c.caller_endpoint.clone(),
            c.answered_by.clone().unwrap_or_default(),
            c.media.join(" "),
            c.state.as_str().to_string(),
            c.reason.clone().unwrap_or_default(),
            c.providers.join(" "),
            time_field(Some(c.initiated_at)),
            time_field(c.answered_at),
            time_field(c.ended_at),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&line.join(","));
        csv.push_str("\r\n");
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"calls.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

/// Calls in progress as server-sent events: an event `calls` (`{"calls": [...]}`, the
/// records as `GET /admin/v1/calls` has them) at once and whenever the set changes, read from
/// the database every second, so every replica's calls show.
#[utoipa::path(get, path = "/admin/v1/calls/live", tag = "calls", security(("token" = []), ("session" = [])), responses((status = 200, description = "text/event-stream of `calls` events", content_type = "text/event-stream", body = String), (status = 401, description = "No or wrong credentials", body = ErrorBody)))]
pub(super) async fn live_calls(State(app): State<Arc<App>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream =
        futures_util::stream::unfold((app, None::<String>), |(app, mut last)| async move {
            let mut shutdown = app.shutdown.clone();
            loop {
                if *shutdown.borrow() {
                    return None;
                }
                let current = match app.db.calls_in_progress(500).await {
                    Ok(calls) => json!({"calls": calls.iter().map(call_json).collect::<Vec<_>>()})
                        .to_string(),
                    Err(e) => {
                        tracing::warn!(error = %e, "live calls: reading the database");
                        String::new()
                    }
                };
                if !current.is_empty() && last.as_deref() != Some(current.as_str()) {
                    last = Some(current.clone());
                    let event = Event::default().event("calls").data(current);
                    return Some((Ok::<_, std::convert::Infallible>(event), (app, last)));
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    _ = crate::shared::shutting_down(&mut shutdown) => return None,
                }
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

const CALL_STATES: [&str; 6] = [
    "ringing",
    "answered",
    "rejected",
    "cancelled",
    "timeout",
    "ended",
];

/// The calls `params` asks for; an unknown state is refused rather than matching nothing.
async fn filtered_calls(
    app: &App,
    params: &CallParams,
    limit: i64,
) -> Result<Vec<CallRecord>, AdminError> {
    let state = params.state.as_deref().filter(|s| !s.is_empty());
    if let Some(state) = state {
        if !CALL_STATES.contains(&state) {
            return Err(AdminError::new(
                StatusCode::BAD_REQUEST,
                "invalid-field",
                format!("state must be one of {}", CALL_STATES.join(", ")),
            ));
        }
    }
    let party = params.party.as_deref().filter(|p| !p.is_empty());
    Ok(app
        .db
        .list_calls(params.before, state, party, limit)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("+1,2"), "\"'+1,2\"");
    }
}
