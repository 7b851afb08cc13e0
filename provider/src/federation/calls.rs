//! The invitation protocol between providers: Initiate, Accept, Reject and Cancel Forwards.
//!
//! The originating provider keeps the call record that arbitrates between providers (first
//! Accept wins, all rejected); each answering provider keeps its own record for its endpoints.
//! Routing travels with the messages: the originator's sealed state (listing every provider the
//! Initiate went to) comes back in each Forward to it, and each answering provider's sealed state
//! carries the originator's id and state, so any replica can handle any message.
//!
//! Every Forward carries `timestamp` (Unix seconds) and `forward-id` (a fresh random id): one
//! outside the window, or whose id was already seen, is refused. The answer to each Forward is
//! kept, so a retried Forward (same sender, session and action, new id) gets the same answer
//! without acting twice.

use std::sync::Arc;

use axum::http::StatusCode;
use switchyard_protocol::attestation::Attestation;
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_media::Capabilities;

use super::identity::unix_now;
use super::peers::PeerError;
use super::routes::AuthPeer;
use super::Federation;
use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::db::{
    call_in, call_state, delete_call, forward_result, insert_call, now_ms, reject_and_end_if_last,
    rejection_reasons, save_forward_result, transition_call, CallChange, CallRecord, CallState,
    EndpointRecord, StoreError,
};
use crate::invite::{
    answer_push, blob_field, ca_field, call_gone, cancel_push, canonical_field, capabilities_dict,
    count_outcome, media_value, parse_media, provider_party, providers_except, rejection,
    validate_session_id, RemoteInitiate, SessionState, REJECT_REASONS,
};
use crate::push::Outbox;
use crate::relay::choice::RelayChoice;
use crate::wire::ApiError;

const MAX_TOKEN: usize = 256;
const MAX_STATE: usize = 8 * 1024;
pub const CANCEL_REASONS: &[&str] = &["cancelled", "answered-elsewhere", "ended"];

fn fed_of(app: &App) -> &Arc<Federation> {
    app.federation
        .as_ref()
        .expect("federation paths run only with federation enabled")
}

fn forward_id() -> String {
    crate::registry::random_token(16)
}

/// The fields every Forward starts with.
fn envelope(session_id: &str) -> Dict {
    Dict::new()
        .with("session-id", session_id)
        .with("timestamp", unix_now())
        .with("forward-id", forward_id())
}

fn bounded_str<'a>(dict: &'a Dict, field: &str, max: usize) -> Result<&'a str, ApiError> {
    let value = dict.str(field)?;
    if value.is_empty() || value.len() > max {
        return Err(ApiError::field(
            field,
            format!("`{field}` must be 1-{max} bytes"),
        ));
    }
    Ok(value)
}

/// Checks the envelope of a received Forward: session id, timestamp window, forward id.
struct Received {
    session_id: String,
    forward_id: String,
    timestamp: i64,
}

fn check_envelope(fed: &Federation, dict: &Dict) -> Result<Received, ApiError> {
    let session_id = dict.str("session-id")?.to_string();
    validate_session_id(&session_id)?;
    let timestamp = dict.int("timestamp")?;
    let now = unix_now();
    let window = fed.config.timestamp_window_seconds as i64;
    if (now - timestamp).abs() > window {
        return Err(ApiError::forbidden(
            "stale-forward",
            format!(
                "timestamp {timestamp} is more than {window} s from this provider's clock ({now})"
            ),
        ));
    }
    let forward_id = dict.str("forward-id")?;
    let ok = (16..=64).contains(&forward_id.len())
        && forward_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !ok {
        return Err(ApiError::field(
            "forward-id",
            "forward-id must be 16-64 letters, digits, `-` or `_`",
        ));
    }
    Ok(Received {
        session_id,
        forward_id: forward_id.to_string(),
        timestamp,
    })
}

fn provider_field(dict: &Dict, field: &str, peer: &AuthPeer) -> Result<(), ApiError> {
    let claimed = dict.str(field)?;
    if claimed != peer.provider_id {
        return Err(ApiError::forbidden(
            "provider-mismatch",
            format!(
                "`{field}` is `{claimed}`, but the request comes from `{}`",
                peer.provider_id
            ),
        ));
    }
    Ok(())
}

type Tx = crate::db::WriteTx;

/// Records the Forward's id, refusing a replayed one. Done on its own, before the Forward is
/// acted on: an id stays used even when the Forward is then refused, so it can never be
/// replayed once circumstances change.
async fn claim_forward_id(app: &App, peer: &AuthPeer, received: &Received) -> Result<(), ApiError> {
    if app
        .db
        .record_forward_nonce(&peer.provider_id, &received.forward_id)
        .await?
    {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "replayed-forward",
            format!(
                "forward-id {} from `{}` was already received",
                received.forward_id, peer.provider_id
            ),
        ))
    }
}

/// Claims the Forward's id and opens the transaction that acts on it; answers a retried Forward
/// from what was answered before (`Err(Ok(answer))` then).
async fn begin(
    app: &App,
    peer: &AuthPeer,
    received: &Received,
    action: &str,
) -> Result<Tx, Result<Dict, ApiError>> {
    claim_forward_id(app, peer, received).await.map_err(Err)?;
    begin_claimed(app, peer, received, action).await
}

async fn begin_claimed(
    app: &App,
    peer: &AuthPeer,
    received: &Received,
    action: &str,
) -> Result<Tx, Result<Dict, ApiError>> {
    let store = |e: StoreError| Err(ApiError::from(e));
    let mut tx = app.db.begin_write().await.map_err(store)?;
    let earlier = forward_result(&mut tx, &peer.provider_id, &received.session_id, action)
        .await
        .map_err(store)?;
    if let Some((_, body)) = earlier {
        let answer = Dict::decode(body.as_bytes(), Encoding::Json)
            .map_err(|e| Err(ApiError::internal(e)))?;
        tx.commit().await.map_err(|e| store(e.into()))?;
        return Err(Ok(answer));
    }
    Ok(tx)
}

async fn finish(
    mut tx: Tx,
    peer: &AuthPeer,
    session_id: &str,
    action: &str,
    reply: Dict,
) -> Result<Dict, ApiError> {
    let body = String::from_utf8(reply.encode(Encoding::Json)).map_err(ApiError::internal)?;
    save_forward_result(&mut tx, &peer.provider_id, session_id, action, 200, &body).await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(reply)
}

fn capabilities_of(dict: &Dict) -> Result<Capabilities, ApiError> {
    let Some(caps) = dict.opt_dict("caller-capabilities")? else {
        return Ok(Capabilities::default());
    };
    let defaults = Capabilities::default();
    let caps = Capabilities {
        audio: caps.opt_bool("audio")?.unwrap_or(true),
        video: caps.opt_bool("video")?.unwrap_or(true),
        audio_codecs: caps
            .opt_string_array("audio-codecs")?
            .unwrap_or(defaults.audio_codecs),
        video_codecs: caps
            .opt_string_array("video-codecs")?
            .unwrap_or(defaults.video_codecs),
    };
    caps.validate()
        .map_err(|e| ApiError::field("caller-capabilities", e.to_string()))?;
    Ok(caps)
}

/// What one candidate said to an Initiate Forward.
enum Outcome {
    Ringing(i64),
    /// Hosts the URI but rang nobody.
    Refused {
        reason: String,
        text: Option<String>,
    },
    FalsePositive,
    Failed(String),
}

/// An Initiate Request for a URI not hosted here: forward it to every member whose filter may
/// hold the callee, in parallel, and tell the caller how many endpoints ring.
pub async fn initiate_remote(
    app: &Arc<App>,
    fed: &Arc<Federation>,
    auth: &AuthEndpoint,
    request: RemoteInitiate,
) -> Result<Dict, ApiError> {
    let caller = &auth.endpoint;
    let not_hosted = |extra: &str| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-peer",
            format!(
                "{} is not hosted here nor by any member of the federation{extra}",
                request.callee_uri
            ),
        )
    };
    let Some(directory) = fed.directory.current() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "peers-unavailable",
            format!(
                "{} is not hosted here, and the federation is suspended: no valid discovery dictionary is in force",
                request.callee_uri
            ),
        ));
    };
    let (candidates, skipped) =
        fed.peers
            .candidates(&directory, &fed.provider_id, &request.callee_uri);
    metrics::histogram!("switchyard_protocol_dispatch_candidates")
        .record(candidates.len() as f64);
    if candidates.is_empty() {
        if skipped > 0 {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "peers-unavailable",
                format!(
                    "{skipped} member(s) that may host {} are failing (circuit breaker open); try again later",
                    request.callee_uri
                ),
            ));
        }
        return Err(not_hosted(""));
    }

    let now = now_ms();
    let deadline = now + (app.config.invitation.ring_timeout_seconds * 1000) as i64;
    let mut providers = vec![fed.provider_id.clone()];
    providers.extend(candidates.iter().map(|m| m.provider_id.clone()));
    let state = SessionState {
        sid: request.session_id.clone(),
        caller_uri: request.caller_uri.clone(),
        caller_token: caller.push_token.clone(),
        caller_endpoint: caller.id.clone(),
        callee_uri: request.callee_uri.clone(),
        rung: Vec::new(),
        media: request.media.clone(),
        providers: providers.clone(),
        deadline,
        origin: None,
        origin_state: None,
        relay_choice: app.config.relay.calls_use,
    };
    let sealed = app.sealer.seal(&state);
    let record = CallRecord {
        session_id: request.session_id.clone(),
        caller_uri: request.caller_uri.clone(),
        callee_uri: request.callee_uri.clone(),
        caller_endpoint: caller.id.clone(),
        rung_endpoints: Vec::new(),
        rung_count: candidates.len() as i64,
        rejections: 0,
        media: request
            .media
            .iter()
            .map(|m| m.as_str().to_string())
            .collect(),
        state: CallState::Ringing,
        reason: None,
        answered_by: None,
        providers,
        initiated_at: now,
        ring_deadline: deadline,
        answered_at: None,
        ended_at: None,
    };
    let mut tx = app.db.begin_write().await?;
    insert_call(&mut tx, &record).await.map_err(|e| match e {
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "duplicate-session", m),
        other => other.into(),
    })?;
    tx.commit().await.map_err(StoreError::from)?;

    let identity = fed.identity.current();
    let forward = envelope(&request.session_id);
    let timestamp = forward.int("timestamp").expect("set by envelope");
    let attestation = Attestation {
        session_id: request.session_id.clone(),
        caller_uri: request.caller_uri.clone(),
        callee_uri: request.callee_uri.clone(),
        provider_id: fed.provider_id.clone(),
        timestamp,
    }
    .sign(&identity.signing_key)
    .map_err(ApiError::internal)?;
    let forward = forward
        .with("originating-provider", fed.provider_id.as_str())
        .with("origin-state", sealed.as_str())
        .with("caller-uri", request.caller_uri.as_str())
        .with("caller-token", caller.push_token.as_str())
        .with("callee-uri", request.callee_uri.as_str())
        .with("caller-blob", request.blob.clone())
        .with(
            "caller-capabilities",
            capabilities_dict(&caller.capabilities),
        )
        .with("caller-ca", app.ca.cert_pem())
        .with("media", media_value(&request.media))
        .with("ring-deadline", deadline)
        .with("relay-choice", state.relay_choice.as_str())
        .with("attestation", attestation);
    let sends = candidates.iter().map(|member| {
        let identity = identity.clone();
        let forward = &forward;
        async move {
            let result = fed
                .peers
                .request(&identity, member, reqwest::Method::POST, "/federation/v1/initiate", Some(forward))
                .await;
            let outcome = match result {
                Ok(answer) => match answer.int("rung") {
                    Ok(n) if n > 0 => Outcome::Ringing(n),
                    Ok(_) => Outcome::Refused {
                        reason: answer
                            .opt_str("reason")
                            .ok()
                            .flatten()
                            .filter(|r| REJECT_REASONS.contains(r))
                            .unwrap_or("unavailable")
                            .to_string(),
                        text: answer.opt_str("reason-text").ok().flatten().map(str::to_string),
                    },
                    Err(e) => Outcome::Failed(format!("{}: {e}", member.provider_id)),
                },
                Err(PeerError::Refused { status: 404, code, .. }) if code == "unknown-peer" => {
                    metrics::counter!("switchyard_protocol_false_positives_total", "peer" => member.provider_id.clone())
                        .increment(1);
                    Outcome::FalsePositive
                }
                Err(e) => Outcome::Failed(e.to_string()),
            };
            (member.provider_id.clone(), outcome)
        }
    });
    let outcomes = futures_util::future::join_all(sends).await;

    let mut ringing = Vec::new();
    let mut rung_total = 0;
    let mut refusal: Option<(String, Option<String>)> = None;
    let mut failures = Vec::new();
    let mut false_positives = 0;
    let mut outbox = Outbox::default();
    let mut tx = app.db.begin_write().await?;
    let mut ended = false;
    for (provider, outcome) in &outcomes {
        let reason = match outcome {
            Outcome::Ringing(n) => {
                ringing.push(provider.clone());
                rung_total += n;
                continue;
            }
            Outcome::Refused { reason, text } => {
                refusal.get_or_insert((reason.clone(), text.clone()));
                reason.as_str()
            }
            Outcome::FalsePositive => {
                false_positives += 1;
                "unavailable"
            }
            Outcome::Failed(message) => {
                failures.push(message.clone());
                "unavailable"
            }
        };
        let final_reason = match (&refusal, failures.is_empty()) {
            (Some((r, _)), _) => r.as_str(),
            (None, false) => "unreachable",
            (None, true) => "not-found",
        };
        let (ended_here, _) = reject_and_end_if_last(
            &mut tx,
            &request.session_id,
            &provider_party(provider),
            reason,
            final_reason,
        )
        .await?;
        ended |= ended_here;
    }
    // Nobody hosts the callee or nobody answered: the Request is refused, and a refused Request
    // leaves nothing behind (the session id can be used again).
    let refused_request = ringing.is_empty() && refusal.is_none();
    if refused_request {
        delete_call(&mut tx, &request.session_id).await?;
        ended = false;
    }
    // The call ended here: every candidate said no, possibly after one that rang already sent
    // its Reject. The caller hears one Reject, with the reason of a provider that rang if any.
    let tell_caller = ended && (!ringing.is_empty() || refusal.is_some());
    if tell_caller {
        let rang: Vec<String> = ringing.iter().map(|p| provider_party(p)).collect();
        let from_ringing = rejection_reasons(&mut tx, &request.session_id)
            .await?
            .into_iter()
            .find(|(party, _)| rang.contains(party))
            .map(|(_, reason)| (reason, None));
        let (reason, text) = from_ringing
            .or_else(|| refusal.clone())
            .unwrap_or_else(|| ("unavailable".to_string(), None));
        let push = Dict::new()
            .with("action", "reject")
            .with("session-id", request.session_id.as_str())
            .with("self-uri", request.caller_uri.as_str())
            .with("self-token", caller.push_token.as_str())
            .with("peer-uri", request.callee_uri.as_str())
            .with("reason", reason.as_str())
            .with(
                "reason-text",
                text.unwrap_or_else(|| "no endpoint of the callee can take the call".into()),
            )
            .with("state", sealed.as_str());
        outbox
            .push(&mut tx, &caller.id, &push, app.push_ttl_ms())
            .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    outbox.wake(&app.hub);
    if ended {
        count_outcome(CallState::Rejected);
    }
    if refused_request {
        if !failures.is_empty() {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "peers-unreachable",
                format!(
                    "no provider that may host {} answered: {}",
                    request.callee_uri,
                    failures.join("; ")
                ),
            ));
        }
        return Err(not_hosted(&format!(
            " ({false_positives} filter false positive(s))"
        )));
    }
    Ok(Dict::new()
        .with("session-id", request.session_id.as_str())
        .with("state", sealed.as_str())
        .with("rung", rung_total)
        .with("ring-deadline", deadline)
        .with(
            "providers",
            switchyard_protocol::dict::Value::Array(
                ringing.iter().map(|p| p.as_str().into()).collect(),
            ),
        ))
}

/// `POST /federation/v1/initiate`: ring this provider's endpoints of the callee.
pub async fn receive_initiate(
    app: &Arc<App>,
    fed: &Arc<Federation>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let received = check_envelope(fed, dict)?;
    provider_field(dict, "originating-provider", peer)?;
    let origin_state = bounded_str(dict, "origin-state", MAX_STATE)?.to_string();
    let caller_uri = canonical_field(app, dict, "caller-uri")?;
    let callee_uri = canonical_field(app, dict, "callee-uri")?;
    let caller_token = bounded_str(dict, "caller-token", MAX_TOKEN)?.to_string();
    let caller_blob = blob_field(dict, "caller-blob")?;
    let caller_caps = capabilities_of(dict)?;
    let caller_ca = ca_field(dict, "caller-ca")?;
    let media = parse_media(dict)?;
    let relay_choice = RelayChoice::from_field(dict)?;
    let ring_deadline = dict.int("ring-deadline")?;
    let now = now_ms();
    if ring_deadline <= now {
        return Err(ApiError::field("ring-deadline", "ring-deadline has passed"));
    }
    let deadline =
        ring_deadline.min(now + (app.config.invitation.ring_timeout_seconds * 1000) as i64);
    let verified = match dict.opt_data("attestation")? {
        None => false,
        Some(signature) => {
            Attestation {
                session_id: received.session_id.clone(),
                caller_uri: caller_uri.clone(),
                callee_uri: callee_uri.clone(),
                provider_id: peer.provider_id.clone(),
                timestamp: received.timestamp,
            }
            .verify(
                &signature,
                &peer.cert_der,
                unix_now(),
                fed.config.timestamp_window_seconds as i64,
            )
            .map_err(|e| ApiError::forbidden("bad-attestation", e.to_string()))?;
            true
        }
    };

    claim_forward_id(app, peer, &received).await?;
    // Read before the transaction: a transaction waiting for a second pooled connection could
    // exhaust the pool under load.
    if app.db.user_id_for_uri(&callee_uri).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-peer",
            format!("{callee_uri} is not hosted here"),
        ));
    }
    let mut unsupported = None;
    let rung: Vec<EndpointRecord> = app
        .db
        .endpoints_for_uri(&callee_uri)
        .await?
        .into_iter()
        .filter(|e| match e.capabilities.can_answer(&caller_caps, &media) {
            Ok(()) => true,
            Err(why) => {
                unsupported.get_or_insert(why);
                false
            }
        })
        .collect();
    let mut tx = match begin_claimed(app, peer, &received, "initiate").await {
        Ok(tx) => tx,
        Err(answer) => return answer,
    };
    let refusal = if rung.is_empty() {
        Some(match &unsupported {
            Some(why) => ("unsupported-media", why.to_string()),
            None => (
                "unavailable",
                "no endpoint of the callee is registered".to_string(),
            ),
        })
    } else {
        None
    };
    let state = SessionState {
        sid: received.session_id.clone(),
        caller_uri: caller_uri.clone(),
        caller_token: caller_token.clone(),
        caller_endpoint: String::new(),
        callee_uri: callee_uri.clone(),
        rung: rung.iter().map(|e| e.id.clone()).collect(),
        media: media.clone(),
        providers: vec![peer.provider_id.clone(), fed.provider_id.clone()],
        deadline,
        origin: Some(peer.provider_id.clone()),
        origin_state: Some(origin_state),
        relay_choice,
    };
    let relay_provider = relay_choice.provider(app, &peer.provider_id, &fed.provider_id);
    let sealed = app.sealer.seal(&state);
    let record = CallRecord {
        session_id: received.session_id.clone(),
        caller_uri: caller_uri.clone(),
        callee_uri: callee_uri.clone(),
        caller_endpoint: String::new(),
        rung_endpoints: state.rung.clone(),
        rung_count: state.rung.len() as i64,
        rejections: 0,
        media: media.iter().map(|m| m.as_str().to_string()).collect(),
        state: if refusal.is_some() {
            CallState::Rejected
        } else {
            CallState::Ringing
        },
        reason: refusal.as_ref().map(|(r, _)| r.to_string()),
        answered_by: None,
        providers: state.providers.clone(),
        initiated_at: now,
        ring_deadline: deadline,
        answered_at: None,
        ended_at: refusal.as_ref().map(|_| now),
    };
    insert_call(&mut tx, &record).await.map_err(|e| match e {
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "duplicate-session", m),
        other => other.into(),
    })?;
    let mut outbox = Outbox::default();
    let ttl = app.push_ttl_ms().min(deadline - now);
    for callee in &rung {
        let push = Dict::new()
            .with("action", "initiate")
            .with("session-id", received.session_id.as_str())
            .with("self-uri", callee_uri.as_str())
            .with("self-token", callee.push_token.as_str())
            .with("peer-uri", caller_uri.as_str())
            .with("peer-token", caller_token.as_str())
            .with("peer-blob", caller_blob.clone())
            .with("peer-capabilities", capabilities_dict(&caller_caps))
            .with("peer-verified", verified)
            .with("peer-provider", peer.provider_id.as_str())
            .with("relay-provider", relay_provider.as_str())
            .with("media", media_value(&media))
            .with("ring-deadline", deadline)
            .with("state", sealed.as_str());
        let push = match &caller_ca {
            Some(pem) => push.with("peer-ca", pem.as_str()),
            None => push,
        };
        outbox.push(&mut tx, &callee.id, &push, ttl).await?;
    }
    let mut reply = Dict::new()
        .with("session-id", received.session_id.as_str())
        .with("answering-provider", fed.provider_id.as_str())
        .with("rung", rung.len() as i64);
    if let Some((reason, text)) = &refusal {
        reply.insert("reason", *reason);
        reply.insert("reason-text", text.as_str());
    }
    let reply = finish(tx, peer, &received.session_id, "initiate", reply).await?;
    outbox.wake(&app.hub);
    if refusal.is_some() {
        count_outcome(CallState::Rejected);
    }
    Ok(reply)
}

/// Opens the originator's state handed back by an answering provider, and checks that provider
/// was one the Initiate went to and speaks of this call's callee.
fn returned_state(
    app: &App,
    dict: &Dict,
    received: &Received,
    peer: &AuthPeer,
) -> Result<SessionState, ApiError> {
    let token = bounded_str(dict, "origin-state", MAX_STATE)?;
    let state: SessionState = app
        .sealer
        .open(token)
        .map_err(|e| ApiError::field("origin-state", e.to_string()))?;
    if state.sid != received.session_id {
        return Err(ApiError::field(
            "origin-state",
            "origin-state belongs to another session",
        ));
    }
    if state.origin.is_some() || !state.providers.contains(&peer.provider_id) {
        return Err(ApiError::forbidden(
            "not-authorized",
            format!("this call was not forwarded to `{}`", peer.provider_id),
        ));
    }
    Ok(state)
}

/// `POST /federation/v1/accept`: a callee endpoint at the sender answered. The first Accept
/// wins; the other providers are told to stop ringing.
pub async fn receive_accept(
    app: &Arc<App>,
    fed: &Arc<Federation>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let received = check_envelope(fed, dict)?;
    provider_field(dict, "answering-provider", peer)?;
    let state = returned_state(app, dict, &received, peer)?;
    let callee_uri = canonical_field(app, dict, "callee-uri")?;
    if callee_uri != state.callee_uri {
        return Err(ApiError::field(
            "callee-uri",
            "callee-uri is not this call's callee",
        ));
    }
    let callee_token = bounded_str(dict, "callee-token", MAX_TOKEN)?.to_string();
    let callee_blob = blob_field(dict, "callee-blob")?;
    let callee_ca = ca_field(dict, "callee-ca")?;
    let origin_state = dict.str("origin-state")?.to_string();

    let mut tx = match begin(app, peer, &received, "accept").await {
        Ok(tx) => tx,
        Err(answer) => return answer,
    };
    let party = provider_party(&peer.provider_id);
    if rejection_reasons(&mut tx, &state.sid)
        .await?
        .iter()
        .any(|(p, _)| *p == party)
    {
        return Err(ApiError::forbidden(
            "not-authorized",
            format!(
                "`{}` did not ring this call (it refused the Initiate or does not host the callee)",
                peer.provider_id
            ),
        ));
    }
    let won = transition_call(
        &mut tx,
        &state.sid,
        &[CallState::Ringing],
        CallState::Answered,
        CallChange {
            answered_by: Some(&party),
            ..Default::default()
        },
    )
    .await?;
    if !won {
        let current = call_state(&mut tx, &state.sid).await?;
        return Err(call_gone(current));
    }
    let relay_provider = state
        .relay_choice
        .provider(app, &fed.provider_id, &peer.provider_id);
    let mut push = answer_push("accept", &state, &callee_token, callee_blob)
        .with("state", origin_state.as_str())
        .with("peer-provider", peer.provider_id.as_str())
        .with("relay-provider", relay_provider.as_str());
    if let Some(pem) = &callee_ca {
        push.insert("peer-ca", pem.as_str());
    }
    let mut outbox = Outbox::default();
    outbox
        .push(&mut tx, &state.caller_endpoint, &push, app.push_ttl_ms())
        .await?;
    let reply = Dict::new().with("session-id", state.sid.as_str());
    let reply = finish(tx, peer, &state.sid, "accept", reply).await?;
    outbox.wake(&app.hub);
    let losers = providers_except(&state, &[&fed.provider_id, &peer.provider_id]);
    if !losers.is_empty() {
        let app = app.clone();
        let sid = state.sid.clone();
        tokio::spawn(async move {
            cancel_to_providers(&app, &sid, &losers, "answered-elsewhere").await;
        });
    }
    Ok(reply)
}

/// `POST /federation/v1/reject`: every endpoint rung at the sender rejected. When all the
/// providers that rang have rejected, the caller hears it.
pub async fn receive_reject(
    app: &Arc<App>,
    fed: &Arc<Federation>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let received = check_envelope(fed, dict)?;
    provider_field(dict, "answering-provider", peer)?;
    let state = returned_state(app, dict, &received, peer)?;
    let (reason, text) = rejection(dict)?;
    let mut tx = match begin(app, peer, &received, "reject").await {
        Ok(tx) => tx,
        Err(answer) => return answer,
    };
    let current = call_state(&mut tx, &state.sid).await?;
    if current != Some(CallState::Ringing) {
        return Err(call_gone(current));
    }
    let (all_rejected, remaining) = reject_and_end_if_last(
        &mut tx,
        &state.sid,
        &provider_party(&peer.provider_id),
        reason,
        reason,
    )
    .await?;
    let mut outbox = Outbox::default();
    if all_rejected {
        let mut push = Dict::new()
            .with("action", "reject")
            .with("session-id", state.sid.as_str())
            .with("self-uri", state.caller_uri.as_str())
            .with("self-token", state.caller_token.as_str())
            .with("peer-uri", state.callee_uri.as_str())
            .with("peer-provider", peer.provider_id.as_str())
            .with("reason", reason);
        if let Some(text) = text {
            push.insert("reason-text", text);
        }
        outbox
            .push(&mut tx, &state.caller_endpoint, &push, app.push_ttl_ms())
            .await?;
    }
    let reply = Dict::new()
        .with("session-id", state.sid.as_str())
        .with("remaining", remaining);
    let reply = finish(tx, peer, &state.sid, "reject", reply).await?;
    outbox.wake(&app.hub);
    if all_rejected {
        count_outcome(CallState::Rejected);
    }
    Ok(reply)
}

/// `POST /federation/v1/cancel`: from the originator (`origin-state` absent) the caller cancelled,
/// hung up, or another provider answered; from an answering provider (`origin-state` present)
/// its callee cancelled or hung up.
pub async fn receive_cancel(
    app: &Arc<App>,
    fed: &Arc<Federation>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let received = check_envelope(fed, dict)?;
    provider_field(dict, "from-provider", peer)?;
    let reason = dict.str("reason")?;
    if !CANCEL_REASONS.contains(&reason) {
        return Err(ApiError::field(
            "reason",
            format!("reason must be one of {}", CANCEL_REASONS.join(", ")),
        ));
    }
    let from_answerer = if dict.contains_key("origin-state") {
        Some(returned_state(app, dict, &received, peer)?)
    } else {
        None
    };
    let mut tx = match begin(app, peer, &received, "cancel").await {
        Ok(tx) => tx,
        Err(answer) => return answer,
    };
    let Some(call) = call_in(&mut tx, &received.session_id).await? else {
        return Err(call_gone(None));
    };
    let (to, why) = match &from_answerer {
        Some(_) => match call.state {
            CallState::Ringing => (CallState::Cancelled, "callee-cancelled"),
            CallState::Answered
                if call.answered_by.as_deref()
                    == Some(provider_party(&peer.provider_id).as_str()) =>
            {
                (CallState::Ended, "callee-hung-up")
            }
            other => return Err(call_gone(Some(other))),
        },
        None => {
            if call.providers.first() != Some(&peer.provider_id) || !call.caller_endpoint.is_empty()
            {
                return Err(ApiError::forbidden(
                    "not-authorized",
                    format!("`{}` did not forward this call here", peer.provider_id),
                ));
            }
            match call.state {
                CallState::Ringing if reason == "answered-elsewhere" => {
                    (CallState::Cancelled, "answered-elsewhere")
                }
                CallState::Ringing => (CallState::Cancelled, "caller-cancelled"),
                // Its Accept Forward lost the race at the originator and is still on its way.
                CallState::Answered if reason == "answered-elsewhere" => {
                    (CallState::Cancelled, "answered-elsewhere")
                }
                CallState::Answered => (CallState::Ended, "caller-hung-up"),
                other => return Err(call_gone(Some(other))),
            }
        }
    };
    if !transition_call(
        &mut tx,
        &call.session_id,
        &[call.state],
        to,
        CallChange {
            reason: Some(why),
            ..Default::default()
        },
    )
    .await?
    {
        let current = call_state(&mut tx, &call.session_id).await?;
        return Err(call_gone(current));
    }
    let ttl = app.push_ttl_ms();
    let mut outbox = Outbox::default();
    let mut others = Vec::new();
    // A hang-up is `ended` to the other side; a call that never got going keeps the reason given.
    let push_reason = if to == CallState::Ended {
        "ended"
    } else if from_answerer.is_some() {
        "cancelled"
    } else {
        reason
    };
    match &from_answerer {
        Some(state) => {
            let push = cancel_push(state, &state.caller_uri, &state.callee_uri, push_reason);
            outbox
                .push(&mut tx, &state.caller_endpoint, &push, ttl)
                .await?;
            if call.state == CallState::Ringing {
                others = providers_except(state, &[&fed.provider_id, &peer.provider_id]);
            }
        }
        None => {
            let targets: Vec<String> = match call.state {
                CallState::Answered => call.answered_by.iter().cloned().collect(),
                _ => call.rung_endpoints.clone(),
            };
            for target in targets {
                let push = Dict::new()
                    .with("action", "cancel")
                    .with("session-id", call.session_id.as_str())
                    .with("self-uri", call.callee_uri.as_str())
                    .with("peer-uri", call.caller_uri.as_str())
                    .with("reason", push_reason);
                outbox.push(&mut tx, &target, &push, ttl).await?;
            }
        }
    }
    let reply = Dict::new().with("session-id", call.session_id.as_str());
    let reply = finish(tx, peer, &call.session_id, "cancel", reply).await?;
    outbox.wake(&app.hub);
    count_outcome(to);
    if !others.is_empty() {
        cancel_to_providers(app, &call.session_id, &others, "cancelled").await;
    }
    Ok(reply)
}

/// Sends a Forward to one member; the caller decides what a failure means.
async fn send_forward(
    fed: &Federation,
    provider_id: &str,
    path: &str,
    dict: &Dict,
) -> Result<Dict, ForwardError> {
    let member = fed
        .member(provider_id)
        .ok_or_else(|| ForwardError::NotAMember(provider_id.to_string()))?;
    let identity = fed.identity.current();
    Ok(fed
        .peers
        .request(&identity, &member, reqwest::Method::POST, path, Some(dict))
        .await?)
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("`{0}` is no longer a member of the federation")]
    NotAMember(String),
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// After a local endpoint won the race here: ask the originator, which arbitrates between
/// providers. If another provider won (or the originator cannot be reached) the call is over
/// here too.
pub async fn accept_forwarded(
    app: &Arc<App>,
    state: &SessionState,
    me: &EndpointRecord,
    blob: Vec<u8>,
) -> Result<(), ApiError> {
    let fed = fed_of(app);
    let origin = state.origin.as_deref().expect("forwarded call");
    let dict = envelope(&state.sid)
        .with("answering-provider", fed.provider_id.as_str())
        .with(
            "origin-state",
            state.origin_state.as_deref().unwrap_or_default(),
        )
        .with("callee-uri", state.callee_uri.as_str())
        .with("callee-token", me.push_token.as_str())
        .with("callee-blob", blob)
        .with("callee-ca", app.ca.cert_pem());
    let result = send_forward(fed, origin, "/federation/v1/accept", &dict).await;
    let ttl = app.push_ttl_ms();
    let mut outbox = Outbox::default();
    let mut tx = app.db.begin_write().await?;
    let mut unconfirmed = false;
    let error = match &result {
        Ok(_) => None,
        Err(ForwardError::Peer(PeerError::Refused { code, .. })) if code == "already-answered" => {
            Some((
                "answered-elsewhere",
                ApiError::new(
                    StatusCode::CONFLICT,
                    "already-answered",
                    "the call was answered by another endpoint",
                ),
            ))
        }
        Err(ForwardError::Peer(PeerError::Refused {
            status: 410,
            message,
            ..
        })) => Some((
            "cancelled",
            ApiError::new(StatusCode::GONE, "call-ended", message.clone()),
        )),
        Err(ForwardError::Peer(e @ PeerError::Refused { .. })) => Some((
            "cancelled",
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "origin-refused",
                format!("the caller's provider refused the answer: {e}"),
            ),
        )),
        Err(e) => {
            unconfirmed = true;
            Some((
                "cancelled",
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "origin-unreachable",
                    format!("the caller's provider did not confirm the answer: {e}"),
                ),
            ))
        }
    };
    let push_reason = match &error {
        None => "answered-elsewhere",
        Some((reason, _)) => reason,
    };
    if let Some((reason, _)) = &error {
        transition_call(
            &mut tx,
            &state.sid,
            &[CallState::Answered],
            CallState::Cancelled,
            CallChange {
                reason: Some(reason),
                ..Default::default()
            },
        )
        .await?;
    }
    for other in state.rung.iter().filter(|id| **id != me.id) {
        let push = cancel_push(state, &state.callee_uri, &state.caller_uri, push_reason);
        outbox.push(&mut tx, other, &push, ttl).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    outbox.wake(&app.hub);
    if unconfirmed {
        // The originator may have taken the Accept before the answer was lost: end the call
        // there too, so the caller is not left in a call nobody is in.
        let (app, state) = (app.clone(), state.clone());
        tokio::spawn(async move { cancel_to_origin(&app, &state, "ended").await });
    }
    match error {
        None => Ok(()),
        Some((_, e)) => Err(e),
    }
}

/// Every endpoint rung here rejected: tell the originator.
pub async fn reject_forwarded(
    app: &Arc<App>,
    state: &SessionState,
    reason: &str,
    text: Option<&str>,
) {
    let fed = fed_of(app);
    let origin = state.origin.as_deref().expect("forwarded call");
    let mut dict = envelope(&state.sid)
        .with("answering-provider", fed.provider_id.as_str())
        .with(
            "origin-state",
            state.origin_state.as_deref().unwrap_or_default(),
        )
        .with("reason", reason);
    if let Some(text) = text {
        dict.insert("reason-text", text);
    }
    if let Err(e) = send_forward(fed, origin, "/federation/v1/reject", &dict).await {
        tracing::warn!(session = %state.sid, error = %e, "the Reject Forward was not delivered; the caller's provider will time the call out");
    }
}

/// A callee here cancelled or hung up: tell the originator.
pub async fn cancel_to_origin(app: &Arc<App>, state: &SessionState, reason: &str) {
    let fed = fed_of(app);
    let origin = state.origin.as_deref().expect("forwarded call");
    let dict = envelope(&state.sid)
        .with("from-provider", fed.provider_id.as_str())
        .with(
            "origin-state",
            state.origin_state.as_deref().unwrap_or_default(),
        )
        .with("reason", reason);
    if let Err(e) = send_forward(fed, origin, "/federation/v1/cancel", &dict).await {
        tracing::warn!(session = %state.sid, error = %e, "the Cancel Forward to the caller's provider was not delivered");
    }
}

/// The caller cancelled, hung up, or another provider answered: tell the providers that rang.
pub async fn cancel_to_providers(
    app: &Arc<App>,
    session_id: &str,
    providers: &[String],
    reason: &str,
) {
    let fed = fed_of(app);
    let dict = envelope(session_id)
        .with("from-provider", fed.provider_id.as_str())
        .with("reason", reason);
    let sends = providers.iter().map(|provider| {
        let dict = &dict;
        async move {
            match send_forward(fed, provider, "/federation/v1/cancel", dict).await {
                Ok(_) => {}
                // It never rang (false positive) or the call already ended there.
                Err(ForwardError::Peer(PeerError::Refused { status: 404 | 409 | 410, .. })) => {}
                Err(e) => {
                    tracing::warn!(session = session_id, peer = %provider, error = %e, "a Cancel Forward was not delivered; the peer's ring timeout ends the call")
                }
            }
        }
    });
    futures_util::future::join_all(sends).await;
}

/// An Update from an endpoint here, for a call that crosses providers: to the originator (when
/// this provider answered) or to `providers` (when the caller is here).
pub async fn update_forwarded(
    fed: &Arc<Federation>,
    state: &SessionState,
    providers: &[String],
    sender_token: &str,
    blob: Vec<u8>,
) -> Result<(), ApiError> {
    let mut dict = envelope(&state.sid)
        .with("from-provider", fed.provider_id.as_str())
        .with("sender-token", sender_token)
        .with("blob", blob);
    let targets: Vec<String> = match (&state.origin, &state.origin_state) {
        (Some(origin), Some(origin_state)) => {
            dict.insert("origin-state", origin_state.as_str());
            vec![origin.clone()]
        }
        _ => providers.to_vec(),
    };
    let sends = targets.iter().map(|provider| {
        let dict = &dict;
        async move {
            (
                provider,
                send_forward(fed, provider, "/federation/v1/update", dict).await,
            )
        }
    });
    let results = futures_util::future::join_all(sends).await;
    let delivered = results.iter().filter(|(_, r)| r.is_ok()).count();
    for (provider, result) in &results {
        if let Err(e) = result {
            tracing::warn!(session = %state.sid, peer = %provider, error = %e, "an Update Forward was not delivered");
        }
    }
    if delivered == 0 {
        let reasons: Vec<String> = results
            .iter()
            .filter_map(|(p, r)| r.as_ref().err().map(|e| format!("{p}: {e}")))
            .collect();
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "update-undelivered",
            format!(
                "the Update reached no provider of the call: {}",
                reasons.join("; ")
            ),
        ));
    }
    Ok(())
}

/// `POST /federation/v1/update`: the other party's new blob, for this provider's endpoint of the
/// call. Several Updates per call are normal, so none is answered from an earlier one; the
/// forward id alone guards against replays.
pub async fn receive_update(
    app: &Arc<App>,
    fed: &Arc<Federation>,
    peer: &AuthPeer,
    dict: &Dict,
) -> Result<Dict, ApiError> {
    let received = check_envelope(fed, dict)?;
    provider_field(dict, "from-provider", peer)?;
    let sender_token = bounded_str(dict, "sender-token", MAX_TOKEN)?.to_string();
    let blob = blob_field(dict, "blob")?;
    if blob.is_empty() {
        return Err(ApiError::field("blob", "an Update needs a blob"));
    }
    let from_answerer = if dict.contains_key("origin-state") {
        Some(returned_state(app, dict, &received, peer)?)
    } else {
        None
    };
    claim_forward_id(app, peer, &received).await?;
    let Some(call) = app.db.call(&received.session_id).await? else {
        return Err(call_gone(None));
    };
    if call.state.is_final() {
        return Err(call_gone(Some(call.state)));
    }
    let (targets, self_uri, peer_uri) = match &from_answerer {
        Some(_) => {
            if call.answered_by.as_deref() != Some(provider_party(&peer.provider_id).as_str()) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not-answered",
                    format!("`{}` has not answered this call", peer.provider_id),
                ));
            }
            (
                vec![call.caller_endpoint.clone()],
                &call.caller_uri,
                &call.callee_uri,
            )
        }
        None => {
            if call.providers.first() != Some(&peer.provider_id) || !call.caller_endpoint.is_empty()
            {
                return Err(ApiError::forbidden(
                    "not-authorized",
                    format!("`{}` did not forward this call here", peer.provider_id),
                ));
            }
            let targets = match (&call.state, &call.answered_by) {
                (CallState::Answered, Some(answerer)) => vec![answerer.clone()],
                _ => call.rung_endpoints.clone(),
            };
            (targets, &call.callee_uri, &call.caller_uri)
        }
    };
    let mut outbox = Outbox::default();
    let mut tx = app.db.begin_write().await?;
    for target in &targets {
        let push = Dict::new()
            .with("action", "update")
            .with("session-id", call.session_id.as_str())
            .with("self-uri", self_uri.as_str())
            .with("peer-uri", peer_uri.as_str())
            .with("peer-token", sender_token.as_str())
            .with("peer-blob", blob.clone())
            .with("peer-provider", peer.provider_id.as_str());
        outbox
            .push(&mut tx, target, &push, app.push_ttl_ms())
            .await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    outbox.wake(&app.hub);
    Ok(Dict::new()
        .with("session-id", call.session_id.as_str())
        .with("delivered", targets.len() as i64))
}
