//! The pushes of the SIP accounts' gateway endpoints, into the calls at this edge: an Initiate
//! starts a call to the account's phones ([`start::incoming`]); the rest go to the call leg
//! they belong to.
//!
//! A push this process makes for a gateway whose account this edge serves is handed over in
//! memory, after its write unit commits, when the edge can act on it ([`GatewaySink`], see
//! [`crate::push::PushSink`]): an Initiate, or a push for a leg this edge holds (or reserved for
//! an Initiate it took, or that ended lately). Such a push is never queued, so it costs no
//! queue write, read, decode or claim on the call path. Any other push (another replica's, one
//! for a leg held elsewhere, one made while no sink is registered) is queued as for any
//! endpoint, and read here from the queue: all gateways' queues in one query a second, by the
//! time the pushes were made (looking back [`QUEUE_LOOKBACK_MS`] before the previous read), every
//! push claimed ([`crate::db::Db::claim_push`]) before it is acted on, one for a call held
//! elsewhere left for its replica. A push left longer than that look-back unclaimed is not read
//! again here; it expires in the queue.
//!
//! Durability: a push handed over in memory lives only as long as the leg it drives, whose
//! dialog, transactions and timers are in this process's memory and die with it anyway. An
//! Initiate taken so is lost if the process dies before the leg rings the phones: the call then
//! ends at its ring deadline, as it would had the process died a moment later with the phones
//! ringing. Ordering: a unit's pushes are handed over in the order it made them, as it
//! commits; a push another replica queued for the same leg is read within a second, and so may
//! come after a later one handed over here.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::invitation::Push;

use super::calls::{leg_key, Calls, Event};
use super::handle::EdgeHandle;
use super::start;
use crate::db::records::{GatewayPushKey, SipAccount};
use crate::push::{PushSink, SinkRegistration};
use crate::shared::now_ms;

/// How far before the previous read of the gateways' queues each read begins: a push becomes
/// visible when its unit commits, a moment after the time it was made with, and replicas' clocks
/// differ a little.
const QUEUE_LOOKBACK_MS: i64 = 10_000;
/// One read of the queues takes at most this many pages of this many pushes, so that a backlog
/// cannot hold the loop; what is left is read the next second.
const QUEUE_PAGE: i64 = 500;
const QUEUE_PAGES_PER_READ: usize = 20;
/// Gateways looked at each second for a revocation on this replica (which dropped their sink).
const REVOKED_CHECKS_PER_TICK: usize = 256;

/// A gateway this edge acts for: its account, and its sink on the hub while it is held.
struct Gateway {
    /// Shared with its sink: one copy an account.
    account: Arc<SipAccount>,
    _sink: SinkRegistration,
}

/// Acts for every SIP account's gateway endpoint, and for accounts added later (looked for
/// once a second): a sink for each on the hub takes this process's pushes in memory, and once a
/// second one query reads what is queued for any of them (another replica's pushes, or this
/// one's made while no sink took them). The cost of an idle account is its sink, not a task or
/// a read of its own.
pub async fn watch_gateways(handle: Arc<EdgeHandle>) {
    let hub = handle.app.hub.clone();
    let mut gateways: HashMap<String, Gateway> = HashMap::new();
    let mut revocation_checks: VecDeque<String> = VecDeque::new();
    let mut since = i64::MIN;
    // The first read takes everything still queued.
    let mut read_from = i64::MIN;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut shutdown = handle.app.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = crate::shared::shutting_down(&mut shutdown) => return,
        }
        // The database closes once the provider has shut down: stop reading before that.
        if *shutdown.borrow() {
            return;
        }
        match Box::pin(handle.app.db.sip_gateways_since(since)).await {
            Ok(accounts) => {
                for account in accounts {
                    since = since.max(account.created_at - 1);
                    let Some(endpoint) = account.endpoint_id.clone() else {
                        continue;
                    };
                    if gateways.contains_key(&endpoint) {
                        continue;
                    }
                    let account = Arc::new(account);
                    let sink = hub.attach(
                        &endpoint,
                        Arc::new(GatewaySink {
                            handle: Arc::downgrade(&handle),
                            account: account.clone(),
                            endpoint: endpoint.clone(),
                        }),
                    );
                    revocation_checks.push_back(endpoint.clone());
                    gateways.insert(
                        endpoint,
                        Gateway {
                            account,
                            _sink: sink,
                        },
                    );
                }
            }
            Err(_) if *shutdown.borrow() => return,
            Err(e) => tracing::warn!(error = %e, "SIP edge: reading gateway endpoints"),
        }
        // A revocation here drops the sink: the gateway is forgotten, a few each second.
        for _ in 0..REVOKED_CHECKS_PER_TICK.min(revocation_checks.len()) {
            let Some(endpoint) = revocation_checks.pop_front() else {
                break;
            };
            if hub.has_sink(&endpoint) {
                revocation_checks.push_back(endpoint);
            } else {
                gateways.remove(&endpoint);
            }
        }
        let started = now_ms();
        if Box::pin(read_queued(&handle, &gateways, read_from)).await {
            read_from = started.saturating_sub(QUEUE_LOOKBACK_MS);
        }
    }
}

/// Reads the gateways' queued pushes made from `from` (ms) on and acts on those of `gateways`;
/// false when the database could not be read (the next read starts from the same time).
async fn read_queued(
    handle: &Arc<EdgeHandle>,
    gateways: &HashMap<String, Gateway>,
    from: i64,
) -> bool {
    let mut after = GatewayPushKey {
        created_at: from,
        endpoint_id: String::new(),
        seq: i64::MIN,
    };
    for _ in 0..QUEUE_PAGES_PER_READ {
        let page = match handle.app.db.gateway_pushes_after(&after, QUEUE_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "SIP edge: reading the gateways' pushes");
                return false;
            }
        };
        let full = page.len() as i64 == QUEUE_PAGE;
        for (key, stored) in page {
            if let Some(gateway) = gateways.get(&key.endpoint_id) {
                if let Ok(push) = Dict::decode(stored.body.as_bytes(), Encoding::Plist) {
                    on_queued_push(handle, &gateway.account, &key.endpoint_id, stored.seq, push)
                        .await;
                }
            }
            after = key;
        }
        if !full {
            return true;
        }
    }
    tracing::warn!(
        pushes = QUEUE_PAGE * QUEUE_PAGES_PER_READ as i64,
        "SIP edge: more gateway pushes queued than one read takes; the rest wait a second"
    );
    true
}

/// A push read off the gateway's queue: claimed, then acted on, unless it is for a call this
/// edge does not hold.
async fn on_queued_push(
    handle: &Arc<EdgeHandle>,
    account: &SipAccount,
    endpoint: &str,
    seq: i64,
    push: Dict,
) {
    let session = push.str("session-id").unwrap_or_default();
    let leg = leg_key(session, endpoint);
    let initiate = push.str("action") == Ok("initiate");
    if !initiate && !handle.calls.has_leg(&leg) {
        return;
    }
    match handle.app.db.claim_push(endpoint, seq).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(error = %e, "SIP edge: claiming a push");
            return;
        }
    }
    if initiate {
        // Its own task, as for a push handed over in memory: ringing the phones must not hold
        // the reading of the other gateways' pushes.
        let (handle, account) = (handle.clone(), account.clone());
        tokio::spawn(async move { start::incoming(&handle, account, push).await });
    } else {
        handle.calls.send_event(&leg, Event::Push(push));
    }
}

/// Whether the edge whose calls are `calls` takes `push` for its gateway `endpoint` in memory:
/// an Initiate (its leg is reserved at once, so that the pushes committed after it find the
/// leg even before its task starts), or a push for a leg it holds, reserved or ended lately.
pub fn takes(calls: &Calls, endpoint: &str, push: &Push) -> bool {
    let leg = leg_key(push.session_id().as_str(), endpoint);
    match push {
        Push::Initiate(_) => {
            calls.reserve(&leg);
            true
        }
        _ => calls.has_leg(&leg),
    }
}

/// One gateway endpoint's pushes made by this process, handed to the edge in memory.
struct GatewaySink {
    /// Weak: the hub that holds the sink belongs to the app the edge holds.
    handle: Weak<EdgeHandle>,
    account: Arc<SipAccount>,
    endpoint: String,
}

impl PushSink for GatewaySink {
    fn take(&self, push: &Push) -> bool {
        match self.handle.upgrade() {
            Some(handle) => takes(&handle.calls, &self.endpoint, push),
            // The edge is gone: queued, for whoever reads the queue next.
            None => false,
        }
    }

    fn deliver(&self, push: Push) {
        let Some(handle) = self.handle.upgrade() else {
            return;
        };
        let leg = leg_key(push.session_id().as_str(), &self.endpoint);
        let initiate = matches!(push, Push::Initiate(_));
        // The dictionary the queue would have held (without its `push-id`).
        let push = push.to_dict();
        if initiate {
            let account = SipAccount::clone(&self.account);
            tokio::spawn(async move { start::incoming(&handle, account, push).await });
        } else {
            handle.calls.send_event(&leg, Event::Push(push));
        }
    }

    fn abandon(&self, push: &Push) {
        if let (Push::Initiate(_), Some(handle)) = (push, self.handle.upgrade()) {
            handle
                .calls
                .release(&leg_key(push.session_id().as_str(), &self.endpoint));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::tests::cancel;
    use switchyard_protocol::attestation::Level;
    use switchyard_protocol::capabilities::{Capabilities, MediaKind};
    use switchyard_protocol::invitation::{InitiatePush, SessionId, UpdatePush};

    fn initiate(session: &str) -> Push {
        Push::Initiate(InitiatePush {
            session_id: SessionId::parse(session).unwrap(),
            self_uri: "tel:+15551230001".into(),
            self_token: "a".into(),
            peer_uri: "tel:+15551230002".into(),
            peer_token: "b".into(),
            peer_blob: vec![1],
            peer_capabilities: Capabilities::default(),
            peer_ca: None,
            peer_attestation: Some(Level::Full),
            peer_provider: None,
            relay_provider: "a.test".into(),
            media: vec![MediaKind::Audio],
            ring_deadline: 0,
            state: "s".into(),
        })
    }

    fn update(session: &str) -> Push {
        Push::Update(UpdatePush {
            session_id: SessionId::parse(session).unwrap(),
            self_uri: "tel:+15551230001".into(),
            peer_uri: "tel:+15551230002".into(),
            peer_token: "t".into(),
            peer_blob: vec![1],
            peer_provider: None,
        })
    }

    #[test]
    fn a_gateway_takes_the_pushes_of_its_own_legs_only() {
        let calls = Calls::new(100);
        assert!(
            !takes(&calls, "gw1", &cancel("session-0001")),
            "no such leg"
        );
        calls.add_leg(&leg_key("session-0001", "gw1"));
        assert!(takes(&calls, "gw1", &cancel("session-0001")));
        assert!(takes(&calls, "gw1", &update("session-0001")));
        // The same session at another gateway of this edge (a call between two of its phones)
        // is another leg.
        assert!(!takes(&calls, "gw2", &cancel("session-0001")));
        calls.finish(&leg_key("session-0001", "gw1"), None);
        assert!(
            takes(&calls, "gw1", &cancel("session-0001")),
            "a late push for a leg that ended here is taken, to be dropped"
        );
    }

    #[test]
    fn an_initiate_is_taken_and_reserves_its_leg_for_the_pushes_after_it() {
        let calls = Calls::new(100);
        assert!(takes(&calls, "gw1", &initiate("session-0002")));
        // A Cancel committed before the leg's task started still finds it, and waits for it.
        assert!(takes(&calls, "gw1", &cancel("session-0002")));
        assert!(calls.send_event(
            &leg_key("session-0002", "gw1"),
            Event::Push(cancel("session-0002").to_dict())
        ));
        // Its unit did not commit: the reservation goes, and pushes for it are queued again.
        calls.release(&leg_key("session-0002", "gw1"));
        assert!(!takes(&calls, "gw1", &cancel("session-0002")));
    }
}
