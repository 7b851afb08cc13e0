//! The edge itself: its sockets ([`Sockets`]), the non-INVITE server transactions (a
//! retransmitted request is answered again from the stored response, RFC 3261 §17.2.2), and the
//! dispatch of what comes in: REGISTER to the registrar, OPTIONS answered here, a phone's
//! INVITE to a new call leg ([`start::outgoing`]), the rest of a call's messages to its leg
//! (through the calls table), responses to the edge's client transactions. It starts the
//! gateways' push intake ([`gateway::watch_gateways`]) and the purge of expired contacts.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rsip::{Header, Method};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::accounts::gateway_capabilities;
use super::calls::{Calls, Event, InviteKey};
use super::expiry::ExpiringMap;
use super::gateway;
use super::handle::EdgeHandle;
use super::message::{self, tag_of, Inbound, InboundResponse, Limits, Received, Transport};
use super::outbound::{Flow, BRANCH_PREFIX, T1, T2, TRANSACTION_TIMEOUT};
use super::registrar::Registrar;
use super::sockets::{Handler, Sockets};
use super::start;
use super::status::Refusal;
use crate::app::App;
use crate::client_limits::{retry_after_seconds, ClientLimits, ClientLimitsConfig, Refused};

/// RFC 3261 Timer J (64 × T1): how long a completed non-INVITE transaction absorbs
/// retransmissions over UDP.
const TIMER_J: Duration = Duration::from_secs(32);

/// A server transaction, by its top Via branch, method and source.
type TransactionKey = (String, String, SocketAddr);

/// What a server transaction has got to: still being handled (retransmissions are absorbed), or
/// answered (they get the answer again).
enum TransactionState {
    Proceeding,
    Completed(Vec<u8>),
}

pub struct SipEdge {
    /// What the call legs share with the edge: the app, the configuration, the calls table and
    /// the sockets.
    handle: Arc<EdgeHandle>,
    registrar: Registrar,
    limits: Limits,
    transactions: Mutex<ExpiringMap<TransactionKey, TransactionState>>,
    /// Each source's request rate (connections are the TCP and TLS listeners' business).
    sources: Arc<ClientLimits>,
}

/// The running edge: its bound addresses and tasks.
pub struct SipListeners {
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
    pub edge: Arc<SipEdge>,
    tasks: Vec<JoinHandle<()>>,
}

impl SipListeners {
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl SipEdge {
    pub fn new(app: Arc<App>) -> anyhow::Result<SipEdge> {
        let config = app.config.sip.clone();
        let registrar = Registrar::new(app.clone())?;
        let limits = Limits {
            max_message_bytes: config.max_message_bytes,
        };
        // Completed transactions remembered for retransmissions, the oldest forgotten first, and
        // their answers' bytes: an answer echoes its request's Vias, so 100,000 of them could
        // otherwise take gigabytes.
        let (max_transactions, max_transaction_bytes) = (
            config.max_completed_transactions,
            config.max_completed_transaction_bytes,
        );
        let sources = ClientLimits::new(ClientLimitsConfig {
            max_connections: usize::MAX,
            requests_per_second: f64::from(config.requests_per_second_per_source),
            burst: f64::from(config.request_burst_per_source),
        });
        Ok(SipEdge {
            sources,
            handle: Arc::new(EdgeHandle {
                app,
                sockets: Arc::new(Sockets::new(
                    limits.max_message_bytes,
                    config.tcp_write_queue_messages,
                )),
                calls: Calls::new(config.max_invites_in_progress),
                config,
            }),
            registrar,
            limits,
            transactions: Mutex::new(ExpiringMap::with_budget(
                TIMER_J,
                max_transactions,
                max_transaction_bytes,
                |state| match state {
                    TransactionState::Completed(answer) => answer.len(),
                    TransactionState::Proceeding => 0,
                },
            )),
        })
    }

    fn calls(&self) -> &Calls {
        &self.handle.calls
    }

    /// Binds `sip.udp_listen`, `sip.tcp_listen` and `sip.tls_listen` (as `sip.transports` says)
    /// and serves them; TLS with `tls`, the server side only (phones present no certificate).
    pub async fn start(self, tls: Arc<rustls::ServerConfig>) -> anyhow::Result<SipListeners> {
        let edge = Arc::new(self);
        let handle = edge.handle.clone();
        let (bound, mut tasks) = handle
            .sockets
            .listen(edge.clone(), &handle.config, tls)
            .await?;
        let made = handle
            .app
            .db
            .ensure_sip_gateways(&gateway_capabilities())
            .await
            .context("giving SIP accounts their gateway endpoints")?;
        if made > 0 {
            tracing::info!(made, "SIP accounts given gateway endpoints");
        }
        tasks.push(tokio::spawn(purge_contacts(handle.app.clone())));
        tasks.push(tokio::spawn(gateway::watch_gateways(handle.clone())));
        let (udp_addr, tcp_addr, tls_addr) = (bound.udp, bound.tcp, bound.tls);
        tracing::info!(?udp_addr, ?tcp_addr, ?tls_addr, domains = ?edge.registrar.domains(), realm = edge.registrar.realm(), "SIP edge started");
        Ok(SipListeners {
            udp_addr,
            tcp_addr,
            tls_addr,
            edge,
            tasks,
        })
    }

    /// One message in, at most one answer out.
    pub async fn handle(
        self: &Arc<Self>,
        bytes: &[u8],
        source: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let inbound = match message::receive(bytes, source, transport, self.limits) {
            Received::Request(inbound) => inbound,
            Received::Response(response) => {
                self.on_response(*response);
                return None;
            }
            Received::Answered(answer) => {
                metrics::counter!("switchyard_sip_refused_total", "reason" => "front-door")
                    .increment(1);
                return Some(answer);
            }
            Received::Dropped(why) => {
                tracing::debug!(%source, why, "SIP message dropped");
                return None;
            }
        };
        if inbound.method != Method::Ack {
            if let Err(Refused::Rate(wait)) = self.sources.request(source.ip(), Instant::now()) {
                metrics::counter!("switchyard_sip_refused_total", "reason" => "source-rate")
                    .increment(1);
                return Some(unavailable(&inbound, retry_after_seconds(wait)));
            }
        }
        metrics::counter!("switchyard_sip_requests_total", "method" => inbound.method.to_string())
            .increment(1);
        match inbound.method {
            Method::Invite => return self.on_invite(inbound).await,
            Method::Ack => {
                self.on_ack(inbound);
                return None;
            }
            _ => {}
        }
        let key = match message::top_branch(&inbound) {
            Some(branch) => (branch, inbound.method.to_string(), source),
            None => return None,
        };
        {
            let mut transactions = self.transactions.lock().expect("transactions lock");
            let now = Instant::now();
            match transactions.get(&key, now) {
                Some(TransactionState::Proceeding) => return None,
                Some(TransactionState::Completed(answer)) => return Some(answer.clone()),
                None => {}
            }
            transactions.insert(key.clone(), TransactionState::Proceeding, now);
        }
        let answer = self.dispatch(&inbound).await;
        {
            let mut transactions = self.transactions.lock().expect("transactions lock");
            if transport.is_stream() {
                // Reliable transports retransmit nothing (Timer J is 0).
                transactions.remove(&key);
            } else {
                transactions.insert(
                    key,
                    TransactionState::Completed(answer.clone()),
                    Instant::now(),
                );
            }
        }
        if inbound.method == Method::Cancel && answer.starts_with(b"SIP/2.0 200") {
            // The CANCEL's 200 goes out before the INVITE's 487 that its call task sends next.
            let flow = Flow {
                transport,
                addr: source,
            };
            self.handle.send(flow, &answer).await;
            self.cancel_invite(inbound);
            return None;
        }
        Some(answer)
    }

    async fn dispatch(&self, inbound: &Inbound) -> Vec<u8> {
        match inbound.method {
            Method::Register => self.registrar.register(inbound).await,
            Method::Cancel | Method::Bye | Method::Update => self.on_call_request(inbound).await,
            Method::Options => message::response(
                &inbound.request,
                inbound.source,
                200,
                "OK",
                &message::new_tag(6),
                vec![message::allow_header()],
            ),
            // The front door lets through only the methods in `message::ALLOWED`.
            _ => message::response(
                &inbound.request,
                inbound.source,
                405,
                "Method Not Allowed",
                &message::new_tag(6),
                vec![message::allow_header()],
            ),
        }
    }

    /// A new INVITE from a phone (the transaction layer saw it first): answered with 100 Trying
    /// here, and by its call's task from then on.
    async fn on_invite(self: &Arc<Self>, inbound: Box<Inbound>) -> Option<Vec<u8>> {
        let branch = message::top_branch(&inbound)?;
        let key = (branch, inbound.source);
        if let Some(last) = self.calls().invite_answer(&key) {
            // A retransmission: the last response again (nothing yet: absorbed).
            return last;
        }
        let to_tag = inbound
            .fields
            .first("To")
            .and_then(tag_of)
            .map(str::to_string);
        if let Some(tag) = to_tag {
            let call_id = inbound.fields.first("Call-ID").unwrap_or("").to_string();
            let session = self.calls().dialog_leg(call_id, tag);
            let refusal = self.refuse(&inbound, 481, "Call/Transaction Does Not Exist");
            return match session {
                Some(session)
                    if self
                        .calls()
                        .send_event(&session, Event::Request(inbound, None)) =>
                {
                    None
                }
                _ => Some(refusal),
            };
        }
        if self.is_loop(&inbound) {
            return Some(self.refuse(&inbound, 482, "Loop Detected"));
        }
        // No To tag: 100 Trying comes from no dialog (RFC 3261 §8.2.6.2).
        let trying = message::response(&inbound.request, inbound.source, 100, "Trying", "", vec![]);
        if !self.calls().try_add_invite(key.clone(), trying.clone()) {
            metrics::counter!("switchyard_sip_refused_total", "reason" => "invites-full")
                .increment(1);
            return Some(unavailable(&inbound, 5));
        }
        let edge = self.clone();
        tokio::spawn(async move {
            let (refusal, authenticated) =
                match edge.start_outgoing(inbound.clone(), key.clone()).await {
                    Ok(()) => return,
                    Err(InviteRefusal::Unauthenticated(refusal)) => (refusal, false),
                    Err(InviteRefusal::Authenticated(refusal)) => (refusal, true),
                };
            let Refusal(status, reason, extra) = refusal;
            let bytes = message::response(
                &inbound.request,
                inbound.source,
                status,
                &reason,
                &message::new_tag(6),
                extra,
            );
            tracing::info!(source = %inbound.source, status, reason, "SIP INVITE refused");
            if authenticated {
                edge.answer_invite_failure(&inbound, key, bytes).await;
            } else {
                edge.answer_once(&inbound, key, bytes).await;
            }
        });
        Some(trying)
    }

    /// The phone's INVITE, authenticated (as its proxy), starts a call leg.
    async fn start_outgoing(
        &self,
        inbound: Box<Inbound>,
        key: InviteKey,
    ) -> Result<(), InviteRefusal> {
        let account = self
            .registrar
            .authenticate(&inbound, true)
            .await
            .map_err(InviteRefusal::Unauthenticated)?;
        start::outgoing(&self.handle, account, inbound, key)
            .await
            .map_err(InviteRefusal::Authenticated)
    }

    /// Answers an INVITE whose sender has not proved who it is (a challenge, or a refusal of
    /// its credentials) once, statelessly, as Kamailio's `sl` replies do: its source may be
    /// spoofed, and RFC 3261's retransmissions of the answer until an ACK would make the edge
    /// a reflector sending about ten datagrams for one. A phone that misses the answer
    /// retransmits its INVITE and is answered again.
    async fn answer_once(&self, inbound: &Inbound, key: InviteKey, bytes: Vec<u8>) {
        let flow = Flow {
            transport: inbound.transport,
            addr: inbound.source,
        };
        self.calls().forget_invite(&key);
        self.handle.send(flow, &bytes).await;
    }

    /// Whether this request went through this edge already (a branch of ours in its Vias).
    fn is_loop(&self, inbound: &Inbound) -> bool {
        inbound
            .fields
            .values("Via")
            .flat_map(|v| v.split(','))
            .any(|via| via.contains(&format!("branch={BRANCH_PREFIX}")))
    }

    fn refuse(&self, inbound: &Inbound, status: u16, reason: &str) -> Vec<u8> {
        message::response(
            &inbound.request,
            inbound.source,
            status,
            reason,
            &message::new_tag(6),
            vec![],
        )
    }

    /// Sends a failure for an INVITE that never got a call task, and retransmits it on UDP
    /// until its ACK (Timer G) or Timer H.
    async fn answer_invite_failure(&self, inbound: &Inbound, key: InviteKey, bytes: Vec<u8>) {
        let flow = Flow {
            transport: inbound.transport,
            addr: inbound.source,
        };
        self.calls().add_invite(key.clone(), bytes.clone());
        self.handle.send(flow, &bytes).await;
        if flow.transport.is_stream() {
            self.handle.calls.forget_invite_later(key);
            return;
        }
        let mut interval = T1;
        let give_up = Instant::now() + TRANSACTION_TIMEOUT;
        while Instant::now() < give_up {
            tokio::time::sleep(interval).await;
            if !self.calls().invite_unacknowledged(&key) {
                break;
            }
            self.handle.send(flow, &bytes).await;
            interval = (interval * 2).min(T2);
        }
        self.calls().forget_invite(&key);
    }

    /// An ACK: for a failure of an INVITE transaction (same branch) it ends that transaction's
    /// retransmissions; otherwise it belongs to a dialog (the ACK of a 2xx).
    fn on_ack(&self, inbound: Box<Inbound>) {
        if let Some(branch) = message::top_branch(&inbound) {
            if let Some(leg) = self.calls().acknowledge_invite(&(branch, inbound.source)) {
                if !leg.is_empty() {
                    self.calls().send_event(&leg, Event::Request(inbound, None));
                }
                return;
            }
        }
        let Some(session) = self.dialog_of(&inbound) else {
            return;
        };
        self.calls()
            .send_event(&session, Event::Request(inbound, None));
    }

    fn dialog_of(&self, inbound: &Inbound) -> Option<String> {
        let call_id = inbound.fields.first("Call-ID")?.to_string();
        let tag = tag_of(inbound.fields.first("To")?)?.to_string();
        self.calls().dialog_leg(call_id, tag)
    }

    /// The call a CANCEL's INVITE started (by the INVITE's branch and source).
    fn cancelled_session(&self, inbound: &Inbound) -> Option<String> {
        let branch = message::top_branch(inbound)?;
        self.calls().invite_leg(&(branch, inbound.source))
    }

    /// CANCEL, BYE and UPDATE. A CANCEL is answered here (200 when its INVITE is known; the
    /// call's task then ends the INVITE, see [`SipEdge::cancel_invite`]); BYE and UPDATE are
    /// answered by their call's task.
    async fn on_call_request(&self, inbound: &Inbound) -> Vec<u8> {
        if inbound.method == Method::Cancel {
            return match self.cancelled_session(inbound) {
                Some(_) => message::response(
                    &inbound.request,
                    inbound.source,
                    200,
                    "OK",
                    &message::new_tag(6),
                    vec![],
                ),
                None => self.refuse(inbound, 481, "Call/Transaction Does Not Exist"),
            };
        }
        let Some(session) = self.dialog_of(inbound) else {
            tracing::debug!(call_id = ?inbound.fields.first("Call-ID"), to = ?inbound.fields.first("To"), method = %inbound.method, "SIP request for no dialog");
            return self.refuse(inbound, 481, "Call/Transaction Does Not Exist");
        };
        let (reply, answer) = oneshot::channel();
        if !self.calls().send_event(
            &session,
            Event::Request(Box::new(inbound.clone()), Some(reply)),
        ) {
            return self.refuse(inbound, 481, "Call/Transaction Does Not Exist");
        }
        match tokio::time::timeout(TRANSACTION_TIMEOUT, answer).await {
            Ok(Ok(bytes)) => bytes,
            _ => self.refuse(inbound, 500, "Call Ended While Answering"),
        }
    }

    /// Tells a cancelled INVITE's call task, once the CANCEL is answered.
    fn cancel_invite(&self, inbound: Box<Inbound>) {
        if let Some(session) = self.cancelled_session(&inbound) {
            self.calls()
                .send_event(&session, Event::Request(inbound, None));
        }
    }

    /// A response to one of the edge's requests: to its client transaction.
    fn on_response(&self, response: InboundResponse) {
        let Some(branch) = response.branch() else {
            return;
        };
        // A CANCEL shares its INVITE's branch; their responses differ in the CSeq method.
        let key = if response.cseq_method() == Some("CANCEL") {
            format!("{branch} CANCEL")
        } else {
            branch.to_string()
        };
        let status = response.status;
        if !self.calls().client_response(&key, response) {
            tracing::debug!(transaction = key, status, "SIP response to no transaction");
        }
    }
}

impl Handler for SipEdge {
    fn handle(
        self: Arc<Self>,
        bytes: Vec<u8>,
        source: SocketAddr,
        transport: Transport,
    ) -> Pin<Box<dyn Future<Output = Option<Vec<u8>>> + Send>> {
        Box::pin(async move { SipEdge::handle(&self, &bytes, source, transport).await })
    }
}

/// Deletes expired contacts once a minute.
async fn purge_contacts(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        if let Err(e) = app
            .db
            .purge_expired_sip_contacts(crate::shared::now_ms())
            .await
        {
            tracing::warn!(error = %e, "purging expired SIP contacts failed");
        }
    }
}

/// Why an INVITE started no call: refused before its sender authenticated (answered once), or
/// after (answered as RFC 3261 says, retransmitted on UDP until the ACK).
enum InviteRefusal {
    Unauthenticated(Refusal),
    Authenticated(Refusal),
}

/// `503 Service Unavailable` with `Retry-After` in seconds.
fn unavailable(inbound: &Inbound, retry_after: u64) -> Vec<u8> {
    message::response(
        &inbound.request,
        inbound.source,
        503,
        "Service Unavailable",
        &message::new_tag(6),
        vec![Header::Other("Retry-After".into(), retry_after.to_string())],
    )
}
