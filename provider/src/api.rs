//! The endpoint API (mutual TLS): registration, the four invitation Requests, and the push
//! channel as a WebSocket (`GET /v1/push`) or an HTTP long-poll (`GET /v1/push/poll`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use switchyard_protocol::capabilities::Capabilities;
use switchyard_protocol::dict::{Dict, Encoding, Value};
use switchyard_protocol::invitation::Push;

use crate::app::App;
use crate::auth::AuthEndpoint;
use crate::invitation;
use crate::push::delivered_form;
use crate::registry::RegistryError;
use crate::wire::{encoding_of, observe, ApiError, DictBody, Reply};

const PUSH_BATCH: i64 = 100;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/register", post(register))
        .route("/v1/initiate", post(initiate))
        .route("/v1/accept", post(accept))
        .route("/v1/reject", post(reject))
        .route("/v1/cancel", post(cancel))
        .route("/v1/update", post(update))
        .route("/v1/push", get(push_websocket))
        .route("/v1/push/poll", get(push_poll))
        .route(
            "/v1/relay-credentials",
            post(crate::relay::choice::credentials_route),
        )
        .route(
            "/v1/media-relay",
            get(crate::relay::http::websocket_route).post(crate::relay::http::create_route),
        )
        .route(
            "/v1/media-relay/{id}",
            axum::routing::delete(crate::relay::http::delete_route),
        )
        .route(
            "/v1/media-relay/{id}/send",
            post(crate::relay::http::send_route),
        )
        .route(
            "/v1/media-relay/{id}/recv",
            get(crate::relay::http::recv_route),
        )
        .with_state(app)
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid { field, message } => ApiError::field(&field, message),
            RegistryError::InvalidCode => ApiError::forbidden("invalid-code", e.to_string()),
            RegistryError::Store(s) => s.into(),
            RegistryError::Pki(p) => ApiError::internal(p),
        }
    }
}

async fn register(State(app): State<Arc<App>>, body: DictBody) -> Reply {
    let result = async {
        let dict = &body.dict;
        let uri = dict.str("uri")?;
        let code = dict.str("code")?;
        let csr = dict.str("csr")?;
        let name = dict.opt_str("name")?.unwrap_or("endpoint");
        let capabilities = Capabilities::from_dict(dict.opt_dict("capabilities")?)?;
        let registration = app
            .registry()
            .register_endpoint(uri, code, csr, name, capabilities)
            .await?;
        Ok(Dict::new()
            .with("endpoint-id", registration.endpoint.id.as_str())
            .with("push-token", registration.endpoint.push_token.as_str())
            .with("certificate", registration.certificate_pem)
            .with("ca-certificate", app.ca.cert_pem())
            .with("uris", registration.uris))
    }
    .await;
    observe("register", &result);
    Reply {
        encoding: body.encoding,
        result,
    }
}

macro_rules! invitation_action {
    ($name:ident, $label:literal) => {
        async fn $name(State(app): State<Arc<App>>, auth: AuthEndpoint, body: DictBody) -> Reply {
            let result = invitation::$name(&app, &auth, &body.dict).await;
            observe($label, &result);
            Reply {
                encoding: body.encoding,
                result,
            }
        }
    };
}

invitation_action!(initiate, "initiate");
invitation_action!(accept, "accept");
invitation_action!(reject, "reject");
invitation_action!(cancel, "cancel");
invitation_action!(update, "update");

#[derive(Deserialize)]
pub struct PollParams {
    /// Everything up to this push id is acknowledged.
    #[serde(default)]
    after: Option<i64>,
    /// Seconds to wait for a push when none is queued.
    #[serde(default)]
    wait: Option<u64>,
    #[serde(default)]
    encoding: Option<String>,
}

fn query_encoding(param: Option<&str>, headers: &HeaderMap) -> Result<Encoding, ApiError> {
    match param {
        Some("json") => Ok(Encoding::Json),
        Some("plist") => Ok(Encoding::Plist),
        Some(other) => Err(ApiError::field(
            "encoding",
            format!("encoding `{other}` is neither `plist` nor `json`"),
        )),
        None => Ok(encoding_of(headers)),
    }
}

/// Long-poll: acknowledges up to `after`, then answers with what is queued, waiting up to
/// `wait` seconds for something to arrive.
async fn push_poll(
    State(app): State<Arc<App>>,
    auth: AuthEndpoint,
    headers: HeaderMap,
    params: Result<Query<PollParams>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let fallback = encoding_of(&headers);
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => {
            return Reply {
                encoding: fallback,
                result: Err(ApiError::field("query", e.body_text())),
            }
        }
    };
    let encoding = match query_encoding(params.encoding.as_deref(), &headers) {
        Ok(e) => e,
        Err(e) => {
            return Reply {
                encoding: fallback,
                result: Err(e),
            }
        }
    };
    let result = poll_once(&app, &auth, params.after, params.wait).await;
    observe("poll", &result);
    Reply { encoding, result }
}

async fn poll_once(
    app: &Arc<App>,
    auth: &AuthEndpoint,
    after: Option<i64>,
    wait: Option<u64>,
) -> Result<Dict, ApiError> {
    let endpoint_id = auth.endpoint.id.as_str();
    let max_wait = app.config.push.long_poll_max_seconds;
    let wait = wait.unwrap_or(max_wait);
    if wait > max_wait {
        return Err(ApiError::field(
            "wait",
            format!("wait is at most {max_wait} seconds"),
        ));
    }
    let after = match after {
        Some(after) if after < 0 => {
            return Err(ApiError::field("after", "after must not be negative"))
        }
        Some(after) => {
            ack(app, endpoint_id, after, "poll").await?;
            after
        }
        None => app.db.push_acked(endpoint_id).await?,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    let mut signal = app.hub.subscribe(endpoint_id);
    let mut shutdown = app.shutdown.clone();
    // What other replicas queue or revoke comes through the hub too (`push::replicas`).
    let result = loop {
        signal.borrow_and_update();
        let pending = app
            .db
            .pending_pushes(endpoint_id, after, PUSH_BATCH)
            .await?;
        if !pending.is_empty() || tokio::time::Instant::now() >= deadline {
            let last = pending.last().map(|p| p.seq).unwrap_or(after);
            let pushes = pending
                .iter()
                .map(|p| delivered_form(p).map(Value::Dict))
                .collect::<Result<Vec<_>, _>>()?;
            break Ok(Dict::new()
                .with("pushes", pushes)
                .with("last-push-id", last));
        }
        tokio::select! {
            changed = signal.changed() => {
                if changed.is_err() || signal.borrow().revoked {
                    break Err(revoked());
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            _ = crate::shared::shutting_down(&mut shutdown) => {
                break Ok(Dict::new().with("pushes", Vec::<Value>::new()).with("last-push-id", after));
            }
        }
    };
    drop(signal);
    app.hub.release(endpoint_id);
    result
}

fn revoked() -> ApiError {
    ApiError::forbidden("endpoint-revoked", "this endpoint was revoked")
}

async fn ack(
    app: &App,
    endpoint_id: &str,
    upto: i64,
    channel: &'static str,
) -> Result<(), ApiError> {
    let removed = app.db.ack_pushes(endpoint_id, upto).await?;
    metrics::counter!("switchyard_pushes_delivered_total", "channel" => channel).increment(removed);
    Ok(())
}

#[derive(Deserialize)]
pub struct WsParams {
    #[serde(default)]
    encoding: Option<String>,
}

/// The push WebSocket's initial read buffer: an acknowledgement fits.
const WS_READ_BUFFER: usize = 256;

async fn push_websocket(
    State(app): State<Arc<App>>,
    auth: AuthEndpoint,
    headers: HeaderMap,
    Query(params): Query<WsParams>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let encoding = match query_encoding(params.encoding.as_deref(), &headers) {
        Ok(e) => e,
        Err(e) => {
            return Reply {
                encoding: encoding_of(&headers),
                result: Err(e),
            }
            .into_response()
        }
    };
    // The channel keeps only its endpoint's id, not the whole record: it lives as long as the
    // channel.
    let endpoint_id = auth.endpoint.id;
    // tungstenite's read buffer is resident in full from the first read (128 KiB by default:
    // 147 KB a channel in bench/push/idle.sh); an idle push channel receives only
    // acknowledgements, a few dozen bytes each, and the buffer grows for a larger message.
    upgrade
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(app.config.endpoint_api.max_body_bytes)
        .on_upgrade(move |socket| async move {
            metrics::gauge!("switchyard_push_channels_open").increment(1.0);
            if let Err(e) = serve_websocket(&app, &endpoint_id, socket, encoding).await {
                tracing::debug!(endpoint = %endpoint_id, error = %e.message, "push channel closed");
            }
            metrics::gauge!("switchyard_push_channels_open").decrement(1.0);
            app.hub.release(&endpoint_id);
        })
}

/// Sends every queued push in order, then each new one as it is queued; the endpoint answers
/// with `{ack: N}` dictionaries. Unacknowledged pushes are sent again on the next connection.
async fn serve_websocket(
    app: &Arc<App>,
    endpoint_id: &str,
    mut socket: WebSocket,
    encoding: Encoding,
) -> Result<(), ApiError> {
    // The database calls below are boxed: their futures are large, and inline they would make
    // every idle channel's task as large as the largest of them.
    let mut signal = app.hub.subscribe(endpoint_id);
    // Opened before the queue is first read: a push made from here on comes to the inbox, one
    // made before is in the queue.
    let mut direct = app.hub.open_direct(endpoint_id);
    let mut shutdown = app.shutdown.clone();
    let mut last_sent = Box::pin(app.db.push_acked(endpoint_id)).await?;
    let mut read_queue = true;
    let mut from_memory: Option<Box<Push>> = None;
    loop {
        if read_queue {
            signal.borrow_and_update();
            loop {
                let pending =
                    Box::pin(app.db.pending_pushes(endpoint_id, last_sent, PUSH_BATCH)).await?;
                for push in &pending {
                    if !send_push(&mut socket, &delivered_form(push)?, encoding).await {
                        return Ok(());
                    }
                    last_sent = push.seq;
                }
                // A short batch emptied the queue as it stood; what is queued after the read
                // changes the signal, which was marked seen before it.
                if (pending.len() as i64) < PUSH_BATCH {
                    break;
                }
            }
            read_queue = false;
        }
        if let Some(push) = from_memory.take() {
            if !send_push(&mut socket, &push.to_dict(), encoding).await {
                return Ok(());
            }
        }
        tokio::select! {
            changed = signal.changed() => {
                if changed.is_err() || signal.borrow().revoked {
                    close(&mut socket, 4003, "endpoint revoked").await;
                    return Ok(());
                }
                read_queue = true;
            }
            pushed = direct.inbox.recv() => match pushed {
                Some(push) => {
                    // A push queued before this one was made woke the signal before this one
                    // arrived: the queue is read first, so that they go out in order.
                    read_queue = signal.has_changed().unwrap_or(true);
                    from_memory = Some(push);
                }
                // The hub closes the inboxes of a revoked endpoint.
                None => {
                    close(&mut socket, 4003, "endpoint revoked").await;
                    return Ok(());
                }
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => Box::pin(handle_ack(app, endpoint_id, text.as_bytes(), encoding, &mut socket)).await?,
                Some(Ok(Message::Binary(bytes))) => Box::pin(handle_ack(app, endpoint_id, &bytes, encoding, &mut socket)).await?,
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok(()),
            },
            _ = crate::shared::shutting_down(&mut shutdown) => {
                close(&mut socket, 1001, "provider shutting down").await;
                return Ok(());
            }
        }
    }
}

/// Sends one push as a text message; false once the socket is gone.
async fn send_push(socket: &mut WebSocket, push: &Dict, encoding: Encoding) -> bool {
    let frame = String::from_utf8(push.encode(encoding)).expect("encodings are UTF-8");
    socket.send(Message::Text(frame.into())).await.is_ok()
}

async fn handle_ack(
    app: &App,
    endpoint_id: &str,
    bytes: &[u8],
    encoding: Encoding,
    socket: &mut WebSocket,
) -> Result<(), ApiError> {
    let parsed = Dict::decode(bytes, encoding)
        .map_err(ApiError::from)
        .and_then(|d| d.int("ack").map_err(ApiError::from));
    match parsed {
        Ok(upto) if upto >= 0 => ack(app, endpoint_id, upto, "websocket").await,
        Ok(_) => {
            close(socket, 4000, "ack must not be negative").await;
            Err(ApiError::field("ack", "negative"))
        }
        Err(e) => {
            let reason = e.message.chars().take(100).collect::<String>();
            close(socket, 4000, &reason).await;
            Err(e)
        }
    }
}

async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code,
            reason: reason.to_string().into(),
        })))
        .await;
}

pub async fn not_found(headers: HeaderMap) -> Reply {
    Reply {
        encoding: encoding_of(&headers),
        result: Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "no such path",
        )),
    }
}
