//! Relay credentials in the REST style of draft-uberti-behave-turn-rest: the username is
//! `<expiry unix seconds>:<endpoint id>` and the password `base64(HMAC-SHA1(secret, username))`,
//! so the relay checks them without storing anything per credential.
//!
//! `AuthHandler::auth_handle` is synchronous and runs on the server's receive loop, so it cannot
//! query the database. Instead the relay keeps, for every endpoint that obtained credentials from
//! this process (or presented some), whether it is still active; a background task re-reads that
//! from the database every `push.recheck_interval_ms` and, on a revocation, deletes the endpoint's
//! allocations. An endpoint the cache does not know (credentials issued before a restart or by
//! another replica) is refused once while its status is looked up; the client's next attempt
//! succeeds. Failing closed there means a revoked endpoint never gets an allocation.
//!
//! An endpoint of another member, whose provider fetched credentials over the federation, is the
//! principal `<provider id>/<endpoint id>`; it stays active while that provider is a member.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::hmac;
use turn::auth::AuthHandler;
use turn::Error as TurnError;

type TurnResult<T> = std::result::Result<T, TurnError>;

use super::policy::PeerPolicy;
use crate::db::{Db, StoreError};
use crate::federation::Federation;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The principal of an endpoint of member `provider_id` at this relay.
pub fn peer_principal(provider_id: &str, endpoint_id: &str) -> String {
    format!("{provider_id}/{endpoint_id}")
}

/// Where the relay learns whether a principal may still hold allocations: this provider's
/// database for its own endpoints, the discovery dictionary for other members'.
#[derive(Clone)]
pub struct Standing {
    pub db: Db,
    pub federation: Option<Arc<Federation>>,
}

impl Standing {
    pub async fn is_active(&self, principal: &str) -> Result<bool, StoreError> {
        match principal.split_once('/') {
            Some((provider, _)) => Ok(self
                .federation
                .as_ref()
                .is_some_and(|fed| fed.member(provider).is_some())),
            None => self.db.endpoint_is_active(principal).await,
        }
    }
}

/// `<expiry>:<endpoint id>`.
pub fn rest_username(expiry: u64, endpoint_id: &str) -> String {
    format!("{expiry}:{endpoint_id}")
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    base64::engine::general_purpose::STANDARD.encode(hmac::sign(&key, username.as_bytes()))
}

/// The expiry and endpoint id of a REST username.
pub fn parse_username(username: &str) -> Option<(u64, &str)> {
    let (expiry, endpoint) = username.split_once(':')?;
    if endpoint.is_empty() || expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((expiry.parse().ok()?, endpoint))
}

/// Why a username is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    WrongRealm,
    Expired,
    Revoked,
    /// Not known to this process yet; its status is being looked up.
    Unknown,
    /// Claims an expiry further ahead than any credential this relay issues: forged.
    TooFarAhead,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed-username",
            Refusal::WrongRealm => "wrong-realm",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::Unknown => "unknown-endpoint",
            Refusal::TooFarAhead => "expiry-too-far",
        }
    }
}

#[derive(Debug, Default)]
struct EndpointStatus {
    active: bool,
    /// The latest credential expiry seen; the entry is dropped after it (and its allocations).
    until: u64,
    /// Usernames that authenticated, for deleting their allocations on revocation.
    usernames: HashSet<String>,
}

#[derive(Debug, Default)]
struct Allocations {
    total: u32,
    per_endpoint: HashMap<String, u32>,
    /// Another member's endpoints' allocations, by member: each member may mint principals
    /// (`<provider id>/<endpoint id>`) at will, so its endpoints share one quota.
    per_member: HashMap<String, u32>,
    /// The traffic of each live allocation, by its relayed address.
    live: HashMap<SocketAddr, Arc<AllocationTraffic>>,
}

/// What one allocation carried: its endpoint, relayed address, start, and payload bytes each
/// way (counted by its relayed socket).
#[derive(Debug)]
pub struct AllocationTraffic {
    pub endpoint: String,
    pub relayed: SocketAddr,
    /// Unix ms.
    pub created_at: i64,
    pub to_peer: std::sync::atomic::AtomicU64,
    pub from_peer: std::sync::atomic::AtomicU64,
}

/// Live allocations allowed at once.
#[derive(Debug, Clone, Copy)]
pub struct Quotas {
    pub per_endpoint: u32,
    /// For all the endpoints of one other member together.
    pub per_member: u32,
    pub total: u32,
    /// Look-ups of unknown endpoints running at once; more unknown endpoints are refused unseen.
    pub lookups_at_once: usize,
    /// Endpoints the cache holds; past it, endpoints found inactive are not remembered.
    pub known_endpoints: usize,
}

/// The member whose endpoint a principal is, for an endpoint of another member
/// (`<provider id>/<endpoint id>`); none for this provider's own endpoints.
fn member_of(principal: &str) -> Option<&str> {
    principal.split_once('/').map(|(member, _)| member)
}

/// Everything the relay's callbacks share.
pub struct RelayState {
    secret: Vec<u8>,
    pub realm: String,
    pub policy: PeerPolicy,
    pub quotas: Quotas,
    endpoints: Mutex<HashMap<String, EndpointStatus>>,
    allocations: Mutex<Allocations>,
    last_authenticated: Mutex<Option<String>>,
    /// Set once the relay runs: used to look up endpoints the cache does not know.
    standing: Option<Standing>,
    /// The lifetime of the credentials this relay issues: no genuine username expires later
    /// than this from now (give or take [`CLOCK_SLACK`] between replicas).
    credential_ttl: u64,
    /// Endpoints being looked up, so that a flood of packets for one unknown endpoint costs one
    /// query, and a flood of made-up endpoints at most [`Quotas::lookups_at_once`] at a time.
    lookups: Mutex<HashSet<String>>,
}

/// Seconds by which replicas' clocks may differ when one checks another's credentials.
const CLOCK_SLACK: u64 = 60;

impl RelayState {
    pub fn new(
        secret: Vec<u8>,
        realm: String,
        policy: PeerPolicy,
        quotas: Quotas,
        standing: Option<Standing>,
        credential_ttl: u64,
    ) -> Self {
        RelayState {
            secret,
            realm,
            policy,
            quotas,
            endpoints: Mutex::default(),
            allocations: Mutex::default(),
            last_authenticated: Mutex::default(),
            standing,
            credential_ttl,
            lookups: Mutex::default(),
        }
    }

    /// A username and password for `endpoint_id`, valid until `expiry`. The caller has just
    /// authenticated the endpoint, so it is recorded as active.
    pub fn issue(&self, endpoint_id: &str, expiry: u64) -> (String, String) {
        let username = rest_username(expiry, endpoint_id);
        let password = rest_password(&self.secret, &username);
        let mut endpoints = self.endpoints.lock().expect("relay endpoints lock");
        let status = endpoints.entry(endpoint_id.to_string()).or_default();
        status.active = true;
        status.until = status.until.max(expiry);
        (username, password)
    }

    /// The long-term key (MD5 of `username:realm:password`) for a valid, unexpired username of an
    /// active endpoint.
    pub fn check(&self, username: &str, realm: &str, now: u64) -> Result<Vec<u8>, Refusal> {
        if realm != self.realm {
            return Err(Refusal::WrongRealm);
        }
        let (expiry, endpoint) = parse_username(username).ok_or(Refusal::Malformed)?;
        if expiry < now {
            return Err(Refusal::Expired);
        }
        if expiry > now.saturating_add(self.credential_ttl + CLOCK_SLACK) {
            return Err(Refusal::TooFarAhead);
        }
        {
            let mut endpoints = self.endpoints.lock().expect("relay endpoints lock");
            match endpoints.get_mut(endpoint) {
                Some(status) if status.active => {
                    status.until = status.until.max(expiry);
                    if !status.usernames.contains(username) {
                        status.usernames.insert(username.to_string());
                    }
                }
                Some(_) => return Err(Refusal::Revoked),
                None => return Err(Refusal::Unknown),
            }
        }
        let password = rest_password(&self.secret, username);
        Ok(turn::auth::generate_auth_key(username, realm, &password))
    }

    /// Looks up an endpoint the cache does not know, in the background: once at a time per
    /// endpoint, and at most [`Quotas::lookups_at_once`] at once. `expiry` has passed
    /// [`RelayState::check`], so the entry it makes lives no longer than a genuine credential.
    fn look_up(self: &Arc<Self>, endpoint: &str, expiry: u64) {
        let (Some(standing), Ok(runtime)) =
            (self.standing.clone(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        {
            let mut lookups = self.lookups.lock().expect("relay lookups lock");
            if lookups.contains(endpoint) {
                return;
            }
            if lookups.len() >= self.quotas.lookups_at_once {
                metrics::counter!("switchyard_relay_refused_total", "reason" => "lookups-full")
                    .increment(1);
                return;
            }
            lookups.insert(endpoint.to_string());
        }
        let state = self.clone();
        let endpoint = endpoint.to_string();
        runtime.spawn(async move {
            match standing.is_active(&endpoint).await {
                Ok(active) => {
                    let mut endpoints = state.endpoints.lock().expect("relay endpoints lock");
                    if active || endpoints.len() < state.quotas.known_endpoints {
                        let status = endpoints.entry(endpoint.clone()).or_default();
                        status.active = active;
                        status.until = status.until.max(expiry);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "relay: looking up an endpoint failed"),
            }
            state
                .lookups
                .lock()
                .expect("relay lookups lock")
                .remove(&endpoint);
        });
    }

    pub fn last_authenticated(&self) -> Option<String> {
        self.last_authenticated
            .lock()
            .expect("relay auth lock")
            .clone()
    }

    /// Counts a new allocation for `endpoint`, or says which quota is full.
    pub fn take_allocation_slot(&self, endpoint: &str) -> Result<(), &'static str> {
        let mut allocations = self.allocations.lock().expect("relay allocations lock");
        if allocations.total >= self.quotas.total {
            metrics::counter!("switchyard_relay_refused_total", "reason" => "quota-total")
                .increment(1);
            return Err("the relay's allocation quota is reached");
        }
        let mine = allocations.per_endpoint.get(endpoint).copied().unwrap_or(0);
        if mine >= self.quotas.per_endpoint {
            metrics::counter!("switchyard_relay_refused_total", "reason" => "quota-endpoint")
                .increment(1);
            return Err("the endpoint's allocation quota is reached");
        }
        if let Some(member) = member_of(endpoint) {
            let theirs = allocations.per_member.get(member).copied().unwrap_or(0);
            if theirs >= self.quotas.per_member {
                metrics::counter!("switchyard_relay_refused_total", "reason" => "quota-member")
                    .increment(1);
                return Err("the member's allocation quota is reached");
            }
            *allocations
                .per_member
                .entry(member.to_string())
                .or_default() += 1;
        }
        allocations.total += 1;
        *allocations
            .per_endpoint
            .entry(endpoint.to_string())
            .or_default() += 1;
        metrics::gauge!("switchyard_relay_allocations").set(f64::from(allocations.total));
        Ok(())
    }

    pub fn release_allocation_slot(&self, endpoint: &str) {
        let mut allocations = self.allocations.lock().expect("relay allocations lock");
        allocations.total = allocations.total.saturating_sub(1);
        if let Some(n) = allocations.per_endpoint.get_mut(endpoint) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                allocations.per_endpoint.remove(endpoint);
            }
        }
        if let Some(member) = member_of(endpoint) {
            if let Some(n) = allocations.per_member.get_mut(member) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    allocations.per_member.remove(member);
                }
            }
        }
        metrics::gauge!("switchyard_relay_allocations").set(f64::from(allocations.total));
    }

    /// Starts counting the traffic of a new allocation.
    pub fn track(&self, endpoint: &str, relayed: SocketAddr) -> Arc<AllocationTraffic> {
        let traffic = Arc::new(AllocationTraffic {
            endpoint: endpoint.to_string(),
            relayed,
            created_at: crate::shared::now_ms(),
            to_peer: Default::default(),
            from_peer: Default::default(),
        });
        self.allocations
            .lock()
            .expect("relay allocations lock")
            .live
            .insert(relayed, traffic.clone());
        traffic
    }

    pub fn untrack(&self, relayed: SocketAddr) {
        self.allocations
            .lock()
            .expect("relay allocations lock")
            .live
            .remove(&relayed);
    }

    /// The live allocations, oldest first.
    pub fn live_allocations(&self) -> Vec<Arc<AllocationTraffic>> {
        let mut live: Vec<Arc<AllocationTraffic>> = self
            .allocations
            .lock()
            .expect("relay allocations lock")
            .live
            .values()
            .cloned()
            .collect();
        live.sort_by_key(|a| (a.created_at, a.relayed));
        live
    }

    /// Live allocations: in total, and of one endpoint.
    pub fn allocation_count(&self, endpoint: Option<&str>) -> u32 {
        let allocations = self.allocations.lock().expect("relay allocations lock");
        match endpoint {
            None => allocations.total,
            Some(e) => allocations.per_endpoint.get(e).copied().unwrap_or(0),
        }
    }

    /// Re-reads the status of every endpoint still holding unexpired credentials; returns the
    /// usernames of endpoints found revoked, whose allocations must go. Entries whose credentials
    /// all expired are forgotten.
    pub async fn recheck(&self) -> Vec<String> {
        let Some(standing) = &self.standing else {
            return Vec::new();
        };
        let now = unix_now();
        let active: Vec<String> = {
            let mut endpoints = self.endpoints.lock().expect("relay endpoints lock");
            endpoints.retain(|_, s| s.until >= now);
            endpoints
                .iter()
                .filter(|(_, s)| s.active)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let mut doomed = Vec::new();
        for endpoint in active {
            match standing.is_active(&endpoint).await {
                Ok(true) => {}
                Ok(false) => {
                    let mut endpoints = self.endpoints.lock().expect("relay endpoints lock");
                    if let Some(status) = endpoints.get_mut(&endpoint) {
                        status.active = false;
                        doomed.extend(status.usernames.drain());
                    }
                    tracing::info!(%endpoint, "relay: endpoint revoked; closing its allocations");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay: re-reading endpoint status failed");
                    break;
                }
            }
        }
        doomed
    }
}

/// The `turn` server's view of [`RelayState`].
pub struct RestAuth(pub Arc<RelayState>);

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> TurnResult<Vec<u8>> {
        match self.0.check(username, realm, unix_now()) {
            Ok(key) => {
                let endpoint = parse_username(username).map(|(_, e)| e.to_string());
                *self.0.last_authenticated.lock().expect("relay auth lock") = endpoint;
                Ok(key)
            }
            Err(refusal) => {
                *self.0.last_authenticated.lock().expect("relay auth lock") = None;
                if refusal == Refusal::Unknown {
                    if let Some((expiry, endpoint)) = parse_username(username) {
                        self.0.look_up(endpoint, expiry);
                    }
                }
                metrics::counter!("switchyard_relay_refused_total", "reason" => refusal.label())
                    .increment(1);
                tracing::debug!(%src_addr, username, reason = refusal.label(), "relay: credentials refused");
                Err(turn::Error::Other(refusal.label().into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RelayState {
        state_with(256, 100_000, None)
    }

    fn state_with(
        lookups_at_once: usize,
        known_endpoints: usize,
        standing: Option<Standing>,
    ) -> RelayState {
        RelayState::new(
            b"0123456789abcdef".to_vec(),
            "example.org".into(),
            PeerPolicy::default(),
            Quotas {
                per_endpoint: 2,
                per_member: 2,
                total: 3,
                lookups_at_once,
                known_endpoints,
            },
            standing,
            600,
        )
    }

    #[test]
    fn password_is_base64_hmac_sha1_of_the_username() {
        // HMAC-SHA1("key", "The quick brown fox jumps over the lazy dog") is the RFC 2104 /
        // Wikipedia test vector de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9.
        assert_eq!(
            rest_password(b"key", "The quick brown fox jumps over the lazy dog"),
            "3nybhbi3iqa8ino29wqQcBydtNk="
        );
        assert_eq!(rest_username(1700000000, "ep-1"), "1700000000:ep-1");
        assert_eq!(
            parse_username("1700000000:ep-1"),
            Some((1700000000, "ep-1"))
        );
        for bad in [
            "",
            "ep-1",
            ":ep-1",
            "17:",
            "-5:ep",
            "1x:ep",
            "99999999999999999999999:ep",
        ] {
            assert_eq!(parse_username(bad), None, "{bad}");
        }
    }

    #[test]
    fn issued_credentials_verify_until_they_expire() {
        let state = state();
        let now = 1_000_000;
        let (username, password) = state.issue("ep-1", now + 600);
        let key = state.check(&username, "example.org", now).unwrap();
        assert_eq!(
            key,
            turn::auth::generate_auth_key(&username, "example.org", &password)
        );
        assert_eq!(
            state.check(&username, "example.org", now + 601),
            Err(Refusal::Expired)
        );
        assert_eq!(
            state.check(&username, "other.org", now),
            Err(Refusal::WrongRealm)
        );
        assert_eq!(
            state.check("garbage", "example.org", now),
            Err(Refusal::Malformed)
        );
        // A forged username for another endpoint is not known; its key would not match anyway.
        assert_eq!(
            state.check(&rest_username(now + 600, "ep-2"), "example.org", now),
            Err(Refusal::Unknown)
        );
        // No credential of this relay expires later than its lifetime (and the clock slack)
        // from now: such a username is refused before anything is looked up or cached.
        assert_eq!(
            state.check(&rest_username(now + 600 + 60, "ep-2"), "example.org", now),
            Err(Refusal::Unknown)
        );
        assert_eq!(
            state.check(&rest_username(now + 600 + 61, "ep-1"), "example.org", now),
            Err(Refusal::TooFarAhead)
        );
        assert_eq!(
            state.check(&rest_username(u64::MAX, "ep-2"), "example.org", now),
            Err(Refusal::TooFarAhead)
        );
    }

    #[test]
    fn a_tampered_username_gives_a_different_key() {
        let state = state();
        let (username, password) = state.issue("ep-1", 2_000);
        let (_, _) = state.issue("ep-1", 2_500);
        let longer = rest_username(2_500, "ep-1");
        let key = state.check(&longer, "example.org", 1_900).unwrap();
        // A client that kept the old password but changed the expiry does not pass.
        assert_ne!(
            key,
            turn::auth::generate_auth_key(&longer, "example.org", &password)
        );
        assert_ne!(username, longer);
    }

    #[test]
    fn quotas_per_endpoint_and_in_total() {
        let state = state();
        state.take_allocation_slot("a").unwrap();
        state.take_allocation_slot("a").unwrap();
        assert!(state.take_allocation_slot("a").is_err());
        state.take_allocation_slot("b").unwrap();
        assert!(state.take_allocation_slot("c").is_err(), "total is 3");
        state.release_allocation_slot("a");
        assert_eq!(state.allocation_count(Some("a")), 1);
        state.take_allocation_slot("c").unwrap();
        assert_eq!(state.allocation_count(None), 3);
    }

    #[test]
    fn another_members_endpoints_share_one_quota_however_many_it_mints() {
        let state = state();
        state.take_allocation_slot("b.test/ep-1").unwrap();
        state.take_allocation_slot("b.test/ep-2").unwrap();
        assert_eq!(
            state.take_allocation_slot("b.test/ep-3"),
            Err("the member's allocation quota is reached")
        );
        // Another member, and this provider's own endpoints, are not held up by it.
        state.take_allocation_slot("c.test/ep-1").unwrap();
        state.release_allocation_slot("b.test/ep-1");
        state.release_allocation_slot("c.test/ep-1");
        state.take_allocation_slot("b.test/ep-3").unwrap();
        state.take_allocation_slot("own-endpoint").unwrap();
    }

    /// Made-up usernames cost at most `lookups_at_once` queries at a time and, once the cache
    /// holds `known_endpoints`, are not remembered.
    #[tokio::test]
    async fn unknown_endpoints_are_looked_up_within_the_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite:{}", dir.path().join("t.db").display()), 2)
            .await
            .unwrap();
        let state = Arc::new(state_with(
            1,
            1,
            Some(Standing {
                db,
                federation: None,
            }),
        ));
        let now = unix_now();
        let username = |endpoint: &str| rest_username(now + 300, endpoint);
        let settled = || async {
            for _ in 0..500 {
                if state.lookups.lock().unwrap().is_empty() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the look-ups did not finish");
        };
        // The current-thread runtime runs no look-up before the test awaits.
        state.look_up("ghost-1", now + 300);
        state.look_up("ghost-2", now + 300);
        assert_eq!(state.lookups.lock().unwrap().len(), 1);
        settled().await;
        assert_eq!(
            state.check(&username("ghost-1"), "example.org", now),
            Err(Refusal::Revoked)
        );
        assert_eq!(
            state.check(&username("ghost-2"), "example.org", now),
            Err(Refusal::Unknown),
            "a look-up past the bound runs no query"
        );
        state.look_up("ghost-3", now + 300);
        settled().await;
        assert_eq!(
            state.check(&username("ghost-3"), "example.org", now),
            Err(Refusal::Unknown),
            "a full cache remembers no further inactive endpoint"
        );
        assert_eq!(state.endpoints.lock().unwrap().len(), 1);
    }
}
