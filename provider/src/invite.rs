//! The invitation protocol within a provider: Initiate, Accept, Reject and Cancel Requests from
//! endpoints, turned into Pushes to the other party's endpoints.
//!
//! No routing state is kept per call: the provider seals what it will need later (who called,
//! which endpoints rang, the deadline) into the `state` token that travels in every message. The
//! call detail record doubles as the arbiter of races (first Accept wins, everyone rejected, ring
//! timeout), which is what lets any replica handle any message.

use std::sync::Arc;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use switchyard_protocol::dict::{Dict, Value};
use switchyard_media::{Capabilities, MediaKind, Unsupported};

use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::db::{
    call_answered_by, call_state, insert_call, now_ms, reject_and_end_if_last, transition_call,
    CallChange, CallRecord, CallState, EndpointRecord,
};
use crate::push::Outbox;
use crate::relay::choice::RelayChoice;
use crate::wire::ApiError;

/// Reasons a callee may give in a Reject.
pub const REJECT_REASONS: &[&str] = &[
    "busy",
    "declined",
    "unavailable",
    "unsupported-media",
    "not-authorized",
];

const MAX_REASON_TEXT: usize = 512;
const MAX_BLOB: usize = 16 * 1024;

/// What the provider seals into `state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionState {
    pub sid: String,
    pub caller_uri: String,
    pub caller_token: String,
    pub caller_endpoint: String,
    pub callee_uri: String,
    /// Endpoint ids rung at this provider.
    pub rung: Vec<String>,
    pub media: Vec<MediaKind>,
    pub providers: Vec<String>,
    pub deadline: i64,
    /// For a call forwarded here by another provider: that provider, and its own sealed state,
    /// handed back in every Forward to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_state: Option<String>,
    /// Whose relay serves the call, as the caller's provider chose.
    #[serde(default)]
    pub relay_choice: RelayChoice,
}

/// How the provider that holds a call's record names a remote provider that rang or answered.
pub fn provider_party(provider_id: &str) -> String {
    format!("provider:{provider_id}")
}

pub fn validate_session_id(id: &str) -> Result<(), ApiError> {
    let ok = (8..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "session-id",
            "session-id must be 8-128 characters of letters, digits, `-`, `_` and `.`",
        ))
    }
}

pub(crate) fn canonical_field(app: &App, dict: &Dict, field: &str) -> Result<String, ApiError> {
    let raw = dict.str(field)?;
    app.canonicalizer
        .canonicalize(raw)
        .map(|u| u.into_string())
        .map_err(|e| ApiError::field(field, format!("`{field}`: {e}")))
}

pub(crate) fn blob_field(dict: &Dict, field: &str) -> Result<Vec<u8>, ApiError> {
    let blob = dict.opt_data(field)?.unwrap_or_default();
    if blob.len() > MAX_BLOB {
        return Err(ApiError::field(
            field,
            format!("`{field}` exceeds {MAX_BLOB} bytes"),
        ));
    }
    Ok(blob)
}

/// `self-uri` must be one of the authenticated endpoint's URIs and `self-token` its own token:
/// what the body claims is never trusted alone.
fn check_self(app: &App, auth: &AuthEndpoint, dict: &Dict) -> Result<String, ApiError> {
    let self_uri = canonical_field(app, dict, "self-uri")?;
    let token = dict.str("self-token")?;
    if !auth.owns(&self_uri) {
        return Err(ApiError::forbidden(
            "not-authorized",
            format!("this endpoint is not registered for {self_uri}"),
        ));
    }
    if token != auth.endpoint.push_token {
        return Err(ApiError::forbidden(
            "not-authorized",
            "self-token is not this endpoint's push token",
        ));
    }
    Ok(self_uri)
}

pub(crate) fn open_state(
    app: &App,
    dict: &Dict,
    session_id: &str,
) -> Result<SessionState, ApiError> {
    let token = dict.str("state")?;
    let state: SessionState = app
        .sealer
        .open(token)
        .map_err(|e| ApiError::field("state", e.to_string()))?;
    if state.sid != session_id {
        return Err(ApiError::field("state", "state belongs to another session"));
    }
    Ok(state)
}

pub(crate) fn capabilities_dict(caps: &Capabilities) -> Dict {
    Dict::new()
        .with("audio", caps.audio)
        .with("video", caps.video)
        .with("audio-codecs", caps.audio_codecs.clone())
        .with("video-codecs", caps.video_codecs.clone())
}

pub(crate) fn media_value(media: &[MediaKind]) -> Value {
    Value::Array(media.iter().map(|m| Value::from(m.as_str())).collect())
}

pub(crate) fn call_gone(state: Option<CallState>) -> ApiError {
    match state {
        Some(CallState::Answered) => ApiError::new(
            StatusCode::CONFLICT,
            "already-answered",
            "the call was answered by another endpoint",
        ),
        Some(s) => ApiError::new(
            StatusCode::GONE,
            "call-ended",
            format!("the call has ended ({})", s.as_str()),
        ),
        None => ApiError::new(StatusCode::NOT_FOUND, "unknown-session", "no such call"),
    }
}

pub(crate) fn count_outcome(state: CallState) {
    metrics::counter!("switchyard_calls_total", "outcome" => state.as_str()).increment(1);
}

/// `media`: the kinds of media asked for, audio alone when absent.
pub(crate) fn parse_media(dict: &Dict) -> Result<Vec<MediaKind>, ApiError> {
    match dict.opt_string_array("media")? {
        None => Ok(vec![MediaKind::Audio]),
        Some(list) if list.is_empty() => Err(ApiError::field("media", "media must not be empty")),
        Some(list) => {
            let mut kinds = Vec::new();
            for item in list {
                let kind: MediaKind =
                    item.parse()
                        .map_err(|e: switchyard_media::CapabilityError| {
                            ApiError::field("media", e.to_string())
                        })?;
                if !kinds.contains(&kind) {
                    kinds.push(kind);
                }
            }
            Ok(kinds)
        }
    }
}

pub async fn initiate(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let session_id = dict.str("session-id")?.to_string();
    validate_session_id(&session_id)?;
    let self_uri = check_self(app, auth, dict)?;
    let self_blob = blob_field(dict, "self-blob")?;
    let peer_uri = canonical_field(app, dict, "peer-uri")?;
    let media = parse_media(dict)?;
    if app.db.user_id_for_uri(&peer_uri).await?.is_none() {
        return match &app.federation {
            Some(fed) => {
                let request = RemoteInitiate {
                    session_id,
                    caller_uri: self_uri,
                    callee_uri: peer_uri,
                    blob: self_blob,
                    media,
                };
                crate::federation::calls::initiate_remote(app, fed, auth, request).await
            }
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown-peer",
                format!("{peer_uri} is not hosted here"),
            )),
        };
    }
    let caller = &auth.endpoint;
    let candidates: Vec<EndpointRecord> = app
        .db
        .endpoints_for_uri(&peer_uri)
        .await?
        .into_iter()
        .filter(|e| e.id != caller.id)
        .collect();
    let mut unsupported: Option<Unsupported> = None;
    let rung: Vec<EndpointRecord> = candidates
        .into_iter()
        .filter(
            |e| match e.capabilities.can_answer(&caller.capabilities, &media) {
                Ok(()) => true,
                Err(why) => {
                    unsupported.get_or_insert(why);
                    false
                }
            },
        )
        .collect();

    let now = now_ms();
    let deadline = now + (app.config.invitation.ring_timeout_seconds * 1000) as i64;
    let state = SessionState {
        sid: session_id.clone(),
        caller_uri: self_uri.clone(),
        caller_token: caller.push_token.clone(),
        caller_endpoint: caller.id.clone(),
        callee_uri: peer_uri.clone(),
        rung: rung.iter().map(|e| e.id.clone()).collect(),
        media: media.clone(),
        providers: vec![app.config.provider_id.clone()],
        deadline,
        origin: None,
        origin_state: None,
        relay_choice: app.config.relay.calls_use,
    };
    let own = &app.config.provider_id;
    let relay_provider = state.relay_choice.provider(app, own, own);
    let sealed = app.sealer.seal(&state);
    // Nobody to ring: the caller learns it as a Reject Push, as it would from a remote provider.
    let refusal = if rung.is_empty() {
        Some(if unsupported.is_some() {
            "unsupported-media"
        } else {
            "unavailable"
        })
    } else {
        None
    };
    let record = CallRecord {
        session_id: session_id.clone(),
        caller_uri: self_uri.clone(),
        callee_uri: peer_uri.clone(),
        caller_endpoint: caller.id.clone(),
        rung_endpoints: state.rung.clone(),
        rung_count: state.rung.len() as i64,
        rejections: 0,
        media: media.iter().map(|m| m.as_str().to_string()).collect(),
        state: if refusal.is_some() {
            CallState::Rejected
        } else {
            CallState::Ringing
        },
        reason: refusal.map(str::to_string),
        answered_by: None,
        providers: state.providers.clone(),
        initiated_at: now,
        ring_deadline: deadline,
        answered_at: None,
        ended_at: refusal.map(|_| now),
    };

    let ttl = app.push_ttl_ms().min(deadline - now);
    let mut outbox = Outbox::default();
    let mut tx = app.db.begin_write().await?;
    insert_call(&mut tx, &record).await.map_err(|e| match e {
        crate::db::StoreError::Conflict(m) => {
            ApiError::new(StatusCode::CONFLICT, "duplicate-session", m)
        }
        other => other.into(),
    })?;
    if let Some(reason) = refusal {
        let push = Dict::new()
            .with("action", "reject")
            .with("session-id", session_id.as_str())
            .with("self-uri", self_uri.as_str())
            .with("self-token", caller.push_token.as_str())
            .with("peer-uri", peer_uri.as_str())
            .with("reason", reason)
            .with(
                "reason-text",
                match &unsupported {
                    Some(why) => why.to_string(),
                    None => "no endpoint of the callee is registered".to_string(),
                },
            )
            .with("state", sealed.as_str());
        outbox
            .push(&mut tx, &caller.id, &push, app.push_ttl_ms())
            .await?;
    } else {
        for callee in &rung {
            let push = Dict::new()
                .with("action", "initiate")
                .with("session-id", session_id.as_str())
                .with("self-uri", peer_uri.as_str())
                .with("self-token", callee.push_token.as_str())
                .with("peer-uri", self_uri.as_str())
                .with("peer-token", caller.push_token.as_str())
                .with("peer-blob", self_blob.clone())
                .with("peer-capabilities", capabilities_dict(&caller.capabilities))
                .with("peer-ca", app.ca.cert_pem())
                .with("peer-verified", true)
                .with("relay-provider", relay_provider.as_str())
                .with("media", media_value(&media))
                .with("ring-deadline", deadline)
                .with("state", sealed.as_str());
            outbox.push(&mut tx, &callee.id, &push, ttl).await?;
        }
    }
    tx.commit().await.map_err(crate::db::StoreError::from)?;
    outbox.wake(&app.hub);
    if refusal.is_some() {
        count_outcome(CallState::Rejected);
    }
    Ok(Dict::new()
        .with("session-id", session_id.as_str())
        .with("state", sealed.as_str())
        .with("rung", rung.len() as i64)
        .with("ring-deadline", deadline))
}

/// The largest endpoint CA certificate (PEM) a Forward may carry.
pub const MAX_CA_PEM: usize = 8 * 1024;

/// An optional `field` holding the PEM certificate of a provider's endpoint CA: what the other
/// endpoint checks this side's DTLS identity certificate against.
pub(crate) fn ca_field(dict: &Dict, field: &str) -> Result<Option<String>, ApiError> {
    let Some(pem) = dict.opt_str(field)? else {
        return Ok(None);
    };
    if pem.len() > MAX_CA_PEM {
        return Err(ApiError::field(
            field,
            format!("`{field}` exceeds {MAX_CA_PEM} bytes"),
        ));
    }
    switchyard_protocol::pki::certs_from_pem(pem)
        .map_err(|e| ApiError::field(field, format!("`{field}`: {e}")))?;
    Ok(Some(pem.to_string()))
}

/// An Initiate Request for a URI hosted elsewhere, checked and canonicalized.
pub struct RemoteInitiate {
    pub session_id: String,
    pub caller_uri: String,
    pub callee_uri: String,
    pub blob: Vec<u8>,
    pub media: Vec<MediaKind>,
}

/// Checks shared by Accept and Reject: the sender is a rung endpoint of the callee, and the
/// echoed peer fields are the caller's.
fn check_callee(
    app: &App,
    auth: &AuthEndpoint,
    dict: &Dict,
) -> Result<(SessionState, Vec<u8>), ApiError> {
    let session_id = dict.str("session-id")?;
    validate_session_id(session_id)?;
    let self_uri = check_self(app, auth, dict)?;
    let self_blob = blob_field(dict, "self-blob")?;
    let peer_uri = canonical_field(app, dict, "peer-uri")?;
    let peer_token = dict.str("peer-token")?;
    blob_field(dict, "peer-blob")?;
    let state = open_state(app, dict, session_id)?;
    if state.callee_uri != self_uri || !state.rung.contains(&auth.endpoint.id) {
        return Err(ApiError::forbidden(
            "not-authorized",
            "only the callee's rung endpoints may accept or reject this call",
        ));
    }
    if state.caller_uri != peer_uri {
        return Err(ApiError::field(
            "peer-uri",
            "peer-uri is not this call's caller",
        ));
    }
    if state.caller_token != peer_token {
        return Err(ApiError::field(
            "peer-token",
            "peer-token is not this call's caller",
        ));
    }
    Ok((state, self_blob))
}

pub async fn accept(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let (state, self_blob) = check_callee(app, auth, dict)?;
    let me = &auth.endpoint;
    let mut outbox = Outbox::default();
    let mut tx = app.db.begin_write().await?;
    let won = transition_call(
        &mut tx,
        &state.sid,
        &[CallState::Ringing],
        CallState::Answered,
        CallChange {
            answered_by: Some(&me.id),
            ..Default::default()
        },
    )
    .await?;
    if !won {
        let current = call_state(&mut tx, &state.sid).await?;
        return Err(call_gone(current));
    }
    let sealed = dict.str("state")?;
    if state.origin.is_some() {
        // The originating provider arbitrates between providers; until it confirms, the
        // other endpoints here keep ringing.
        tx.commit().await.map_err(crate::db::StoreError::from)?;
        crate::federation::calls::accept_forwarded(app, &state, me, self_blob).await?;
        return Ok(Dict::new()
            .with("session-id", state.sid.as_str())
            .with("state", sealed));
    }
    let own = &app.config.provider_id;
    let accept = answer_push("accept", &state, &me.push_token, self_blob)
        .with("state", sealed)
        .with("peer-ca", app.ca.cert_pem())
        .with(
            "relay-provider",
            state.relay_choice.provider(app, own, own).as_str(),
        );
    outbox
        .push(&mut tx, &state.caller_endpoint, &accept, app.push_ttl_ms())
        .await?;
    for other in state.rung.iter().filter(|id| **id != me.id) {
        let cancel = cancel_push(
            &state,
            &state.callee_uri,
            &state.caller_uri,
            "answered-elsewhere",
        );
        outbox
            .push(&mut tx, other, &cancel, app.push_ttl_ms())
            .await?;
    }
    tx.commit().await.map_err(crate::db::StoreError::from)?;
    outbox.wake(&app.hub);
    Ok(Dict::new()
        .with("session-id", state.sid.as_str())
        .with("state", sealed))
}

/// A Reject's `reason` (one of [`REJECT_REASONS`]) and optional `reason-text`, checked: the same
/// for a Reject Request and a Reject Forward.
pub(crate) fn rejection(dict: &Dict) -> Result<(&str, Option<&str>), ApiError> {
    let reason = dict.str("reason")?;
    if !REJECT_REASONS.contains(&reason) {
        return Err(ApiError::field(
            "reason",
            format!("reason must be one of {}", REJECT_REASONS.join(", ")),
        ));
    }
    let text = dict.opt_str("reason-text")?;
    if text.is_some_and(|t| t.len() > MAX_REASON_TEXT) {
        return Err(ApiError::field(
            "reason-text",
            format!("reason-text exceeds {MAX_REASON_TEXT} bytes"),
        ));
    }
    Ok((reason, text))
}

pub async fn reject(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let (state, self_blob) = check_callee(app, auth, dict)?;
    let (reason, text) = rejection(dict)?;
    let me = &auth.endpoint;
    let mut outbox = Outbox::default();
    let mut tx = app.db.begin_write().await?;
    let current = call_state(&mut tx, &state.sid).await?;
    if current != Some(CallState::Ringing) {
        return Err(call_gone(current));
    }
    let (all_rejected, remaining) =
        reject_and_end_if_last(&mut tx, &state.sid, &me.id, reason, reason).await?;
    if all_rejected && state.origin.is_none() {
        let mut push =
            answer_push("reject", &state, &me.push_token, self_blob).with("reason", reason);
        if let Some(text) = text {
            push.insert("reason-text", text);
        }
        outbox
            .push(&mut tx, &state.caller_endpoint, &push, app.push_ttl_ms())
            .await?;
    }
    tx.commit().await.map_err(crate::db::StoreError::from)?;
    if all_rejected {
        count_outcome(CallState::Rejected);
        if state.origin.is_some() {
            crate::federation::calls::reject_forwarded(app, &state, reason, text).await;
        }
    }
    outbox.wake(&app.hub);
    Ok(Dict::new()
        .with("session-id", state.sid.as_str())
        .with("remaining", remaining))
}

/// The push telling the caller how a callee endpoint answered (`accept` or `reject`).
pub(crate) fn answer_push(
    action: &str,
    state: &SessionState,
    answerer_token: &str,
    blob: Vec<u8>,
) -> Dict {
    Dict::new()
        .with("action", action)
        .with("session-id", state.sid.as_str())
        .with("self-uri", state.caller_uri.as_str())
        .with("self-token", state.caller_token.as_str())
        .with("peer-uri", state.callee_uri.as_str())
        .with("peer-token", answerer_token)
        .with("peer-blob", blob)
}

pub(crate) fn cancel_push(
    state: &SessionState,
    self_uri: &str,
    peer_uri: &str,
    reason: &str,
) -> Dict {
    Dict::new()
        .with("action", "cancel")
        .with("session-id", state.sid.as_str())
        .with("self-uri", self_uri)
        .with("peer-uri", peer_uri)
        .with("reason", reason)
}

pub async fn cancel(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let session_id = dict.str("session-id")?;
    validate_session_id(session_id)?;
    let self_uri = check_self(app, auth, dict)?;
    let peer_uri = canonical_field(app, dict, "peer-uri")?;
    dict.opt_str("peer-token")?;
    blob_field(dict, "self-blob")?;
    blob_field(dict, "peer-blob")?;
    let state = open_state(app, dict, session_id)?;
    let me = &auth.endpoint;
    let is_caller = party(&state, me, &self_uri, &peer_uri, "cancel")?;
    let is_callee = !is_caller;

    let mut outbox = Outbox::default();
    let mut tx = app.db.begin_write().await?;
    let record = match call_state(&mut tx, session_id).await? {
        Some(s) => s,
        None => return Err(call_gone(None)),
    };
    let ttl = app.push_ttl_ms();
    let forwarded_here = state.origin.is_some();
    // Who else must hear of it, once the transaction is in.
    let mut tell_origin: Option<&str> = None;
    let mut tell_providers: Vec<String> = Vec::new();
    match record {
        CallState::Ringing => {
            transition_call(
                &mut tx,
                session_id,
                &[CallState::Ringing],
                CallState::Cancelled,
                CallChange {
                    reason: Some(if is_caller {
                        "caller-cancelled"
                    } else {
                        "callee-cancelled"
                    }),
                    ..Default::default()
                },
            )
            .await?;
            for id in state.rung.iter().filter(|id| **id != me.id) {
                let push = cancel_push(&state, &state.callee_uri, &state.caller_uri, "cancelled");
                outbox.push(&mut tx, id, &push, ttl).await?;
            }
            if is_callee && forwarded_here {
                tell_origin = Some("cancelled");
            } else if is_callee {
                let push = cancel_push(&state, &state.caller_uri, &state.callee_uri, "cancelled");
                outbox
                    .push(&mut tx, &state.caller_endpoint, &push, ttl)
                    .await?;
            } else {
                tell_providers = providers_except(&state, &[&app.config.provider_id]);
            }
        }
        CallState::Answered => {
            let answered_by = call_answered_by(&mut tx, session_id).await?;
            if is_callee && answered_by.as_deref() != Some(me.id.as_str()) {
                return Err(call_gone(Some(CallState::Answered)));
            }
            transition_call(
                &mut tx,
                session_id,
                &[CallState::Answered],
                CallState::Ended,
                CallChange {
                    reason: Some(if is_caller {
                        "caller-hung-up"
                    } else {
                        "callee-hung-up"
                    }),
                    ..Default::default()
                },
            )
            .await?;
            let answered_by = answered_by.unwrap_or_default();
            if is_caller {
                match answered_by.strip_prefix("provider:") {
                    Some(provider) => tell_providers = vec![provider.to_string()],
                    None => {
                        let push =
                            cancel_push(&state, &state.callee_uri, &state.caller_uri, "ended");
                        outbox.push(&mut tx, &answered_by, &push, ttl).await?;
                    }
                }
            } else if forwarded_here {
                tell_origin = Some("ended");
            } else {
                let push = cancel_push(&state, &state.caller_uri, &state.callee_uri, "ended");
                outbox
                    .push(&mut tx, &state.caller_endpoint, &push, ttl)
                    .await?;
            }
        }
        other => return Err(call_gone(Some(other))),
    }
    tx.commit().await.map_err(crate::db::StoreError::from)?;
    outbox.wake(&app.hub);
    count_outcome(if record == CallState::Ringing {
        CallState::Cancelled
    } else {
        CallState::Ended
    });
    if let Some(reason) = tell_origin {
        crate::federation::calls::cancel_to_origin(app, &state, reason).await;
    }
    if !tell_providers.is_empty() {
        let reason = if record == CallState::Ringing {
            "cancelled"
        } else {
            "ended"
        };
        crate::federation::calls::cancel_to_providers(app, session_id, &tell_providers, reason)
            .await;
    }
    Ok(Dict::new().with("session-id", session_id))
}

/// Which party of the call the sender is (true: the caller, false: a rung callee endpoint), after
/// checking it is one and that `peer_uri` is the other party; `verb` words the refusal.
fn party(
    state: &SessionState,
    me: &EndpointRecord,
    self_uri: &str,
    peer_uri: &str,
    verb: &str,
) -> Result<bool, ApiError> {
    let is_caller = me.id == state.caller_endpoint && self_uri == state.caller_uri;
    let is_callee = self_uri == state.callee_uri && state.rung.contains(&me.id);
    if !(is_caller || is_callee) {
        return Err(ApiError::forbidden(
            "not-authorized",
            format!("only the two parties of a call may {verb} it"),
        ));
    }
    let expected_peer = if is_caller {
        &state.callee_uri
    } else {
        &state.caller_uri
    };
    if peer_uri != expected_peer {
        return Err(ApiError::field(
            "peer-uri",
            "peer-uri is not the other party of this call",
        ));
    }
    Ok(is_caller)
}

/// Update: either party sends a new blob (a relay allocation learned late, a changed address, a
/// new path) while the call rings or after the answer; the other party gets it as an Update Push.
/// The caller's Update reaches every rung endpoint while ringing and the answering one after;
/// a callee's Update is only accepted from the endpoint that answered.
pub async fn update(app: &Arc<App>, auth: &AuthEndpoint, dict: &Dict) -> Result<Dict, ApiError> {
    let session_id = dict.str("session-id")?;
    validate_session_id(session_id)?;
    let self_uri = check_self(app, auth, dict)?;
    let peer_uri = canonical_field(app, dict, "peer-uri")?;
    let blob = blob_field(dict, "self-blob")?;
    if blob.is_empty() {
        return Err(ApiError::field(
            "self-blob",
            "an Update needs a new self-blob",
        ));
    }
    let state = open_state(app, dict, session_id)?;
    let me = &auth.endpoint;
    let is_caller = party(&state, me, &self_uri, &peer_uri, "update")?;
    let is_callee = !is_caller;
    let Some(call) = app.db.call(session_id).await? else {
        return Err(call_gone(None));
    };
    if call.state.is_final() {
        return Err(call_gone(Some(call.state)));
    }
    let answered_by = call.answered_by.clone().unwrap_or_default();
    if is_callee && answered_by != me.id {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not-answered",
            "a callee endpoint may update a call only after answering it",
        ));
    }
    let push = |recipient_uri: &str, recipient_peer: &str| {
        Dict::new()
            .with("action", "update")
            .with("session-id", session_id)
            .with("self-uri", recipient_uri)
            .with("peer-uri", recipient_peer)
            .with("peer-token", me.push_token.as_str())
            .with("peer-blob", blob.clone())
    };
    let remote = state.origin.is_some()
        || (is_caller && (answered_by.starts_with("provider:") || call.rung_endpoints.is_empty()));
    if remote {
        let fed = app
            .federation
            .as_ref()
            .ok_or_else(|| ApiError::internal("a forwarded call without federation"))?;
        let providers: Vec<String> = if state.origin.is_some() {
            Vec::new()
        } else if let Some(provider) = answered_by.strip_prefix("provider:") {
            vec![provider.to_string()]
        } else {
            providers_except(&state, &[&app.config.provider_id])
        };
        crate::federation::calls::update_forwarded(
            fed,
            &state,
            &providers,
            &me.push_token,
            blob.clone(),
        )
        .await?;
    } else {
        let targets: Vec<&str> = if is_caller {
            if call.state == CallState::Answered {
                vec![answered_by.as_str()]
            } else {
                state.rung.iter().map(String::as_str).collect()
            }
        } else {
            vec![state.caller_endpoint.as_str()]
        };
        let (recipient_uri, recipient_peer) = if is_caller {
            (&state.callee_uri, &state.caller_uri)
        } else {
            (&state.caller_uri, &state.callee_uri)
        };
        let mut outbox = Outbox::default();
        let mut tx = app.db.begin_write().await?;
        for target in targets {
            outbox
                .push(
                    &mut tx,
                    target,
                    &push(recipient_uri, recipient_peer),
                    app.push_ttl_ms(),
                )
                .await?;
        }
        tx.commit().await.map_err(crate::db::StoreError::from)?;
        outbox.wake(&app.hub);
    }
    Ok(Dict::new().with("session-id", session_id))
}

/// The providers of a call other than `except` (this one, and the peer a message came from).
pub(crate) fn providers_except(state: &SessionState, except: &[&str]) -> Vec<String> {
    state
        .providers
        .iter()
        .filter(|p| !except.contains(&p.as_str()))
        .cloned()
        .collect()
}

/// Ends ringing calls whose deadline passed, with a Cancel Push to both sides.
pub async fn expire_overdue_calls(app: &Arc<App>) -> Result<usize, crate::db::StoreError> {
    let overdue = app.db.overdue_calls(100).await?;
    let mut expired = 0;
    for call in overdue {
        let mut outbox = Outbox::default();
        let mut tx = app.db.begin_write().await?;
        let won = transition_call(
            &mut tx,
            &call.session_id,
            &[CallState::Ringing],
            CallState::Timeout,
            CallChange {
                reason: Some("timeout"),
                ..Default::default()
            },
        )
        .await?;
        if won {
            let base = |self_uri: &str, peer_uri: &str| {
                Dict::new()
                    .with("action", "cancel")
                    .with("session-id", call.session_id.as_str())
                    .with("self-uri", self_uri)
                    .with("peer-uri", peer_uri)
                    .with("reason", "timeout")
            };
            let ttl = app.push_ttl_ms();
            // A call forwarded here has its caller at another provider, which times it out itself.
            if !call.caller_endpoint.is_empty() {
                outbox
                    .push(
                        &mut tx,
                        &call.caller_endpoint,
                        &base(&call.caller_uri, &call.callee_uri),
                        ttl,
                    )
                    .await?;
            }
            for id in &call.rung_endpoints {
                outbox
                    .push(&mut tx, id, &base(&call.callee_uri, &call.caller_uri), ttl)
                    .await?;
            }
            expired += 1;
        }
        tx.commit().await?;
        outbox.wake(&app.hub);
        if won {
            count_outcome(CallState::Timeout);
        }
    }
    Ok(expired)
}
