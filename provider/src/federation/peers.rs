//! The other members as seen from here: their Bloom filters (kept in the database so dispatch
//! works right after a restart, and in one bit-sliced index so a dispatch hashes the callee once
//! for all of them), requests to them over mutual TLS with the certificate pinned by the
//! discovery dictionary, and a circuit breaker per peer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use switchyard_protocol::bloom::{self, BloomFilter, BloomUpdate, FilterIndex};
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::discovery::{Directory, Member};

use super::directory::error_chain;
use super::identity::Identity;
use crate::config::{FederationConfig, WireEncoding};
use crate::db::records::StoredPeerFilter;
use crate::db::Db;
use crate::shared::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "{peer} is skipped: its circuit breaker is open after {failures} consecutive failures"
    )]
    Open { peer: String, failures: u32 },
    #[error("{peer} is not reachable: {message}")]
    Transport { peer: String, message: String },
    #[error("{peer} did not answer within {timeout_ms} ms")]
    Timeout { peer: String, timeout_ms: u64 },
    #[error("{peer} answered HTTP {status} ({code}): {message}")]
    Refused {
        peer: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{peer} answered with an unusable body: {message}")]
    Body { peer: String, message: String },
    #[error("{peer}'s filter implies a false-positive rate of {rate:.4}, above the limit of {limit}; its previous filter stays in force")]
    SaturatedFilter { peer: String, rate: f64, limit: f64 },
}

impl PeerError {
    /// The peer is alive and said no; such answers do not count towards its breaker.
    fn is_refusal(&self) -> bool {
        matches!(self, PeerError::Refused { status, .. } if *status < 500)
    }
}

#[derive(Default)]
struct Peer {
    generation: u64,
    /// The pull whose filter is held (see [`Peers::pull`]).
    installed_pull: u64,
    filter: Option<Arc<BloomFilter>>,
    /// The held filter's estimated false-positive rate, counted once when it is installed.
    false_positive_rate: f64,
    fetched_at_ms: Option<i64>,
    last_error: Option<String>,
    latency_ms: Option<u64>,
    errors: u64,
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

/// One peer's figures, for the admin API.
#[derive(Debug, Clone)]
pub struct PeerStatus {
    pub provider_id: String,
    pub generation: Option<u64>,
    pub items: Option<u64>,
    pub bits: Option<u64>,
    pub estimated_false_positive_rate: Option<f64>,
    pub fetched_at_ms: Option<i64>,
    pub last_error: Option<String>,
    pub latency_ms: Option<u64>,
    pub errors: u64,
    /// Failures since the last answer; the breaker opens at `federation.breaker_failures`.
    pub consecutive_failures: u32,
    pub breaker_open: bool,
}

/// Every held peer filter in one index, by slot. Kept equal to the filters in `Peers::map`: it is
/// changed only with that map's write lock held, and taken after it (never before).
#[derive(Default)]
struct Dispatch {
    index: FilterIndex,
    slots: HashMap<String, usize>,
    /// The peer of each slot; a freed slot is reused.
    owners: Vec<Option<String>>,
}

impl Dispatch {
    fn slot(&mut self, peer: &str) -> usize {
        if let Some(&slot) = self.slots.get(peer) {
            return slot;
        }
        let slot = match self.owners.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.owners.push(None);
                self.owners.len() - 1
            }
        };
        self.owners[slot] = Some(peer.to_string());
        self.slots.insert(peer.to_string(), slot);
        slot
    }

    /// Makes `peer`'s column `filter`: by the bits that differ from the filter it held when the
    /// size is the same (an incremental pull changes a few), else in full.
    fn install(&mut self, peer: &str, held: Option<&BloomFilter>, filter: &BloomFilter) {
        let slot = self.slot(peer);
        if let Some(flips) = held.and_then(|held| filter.diff(held).ok()) {
            self.index
                .apply(slot, &flips)
                .expect("a diff's flips are in range and ascending");
        } else {
            self.index.insert(slot, filter);
        }
    }

    fn forget(&mut self, peer: &str) {
        if let Some(slot) = self.slots.remove(peer) {
            self.index.remove(slot);
            self.owners[slot] = None;
        }
    }
}

pub struct Peers {
    map: RwLock<HashMap<String, Peer>>,
    dispatch: RwLock<Dispatch>,
    /// Numbers the pulls in the order they start.
    pulls: std::sync::atomic::AtomicU64,
    breaker_failures: u32,
    breaker_open: Duration,
    timeout: Duration,
    pub encoding: Encoding,
    max_filter_bytes: u64,
    max_answer_bytes: usize,
    max_false_positive_rate: f64,
    max_candidates: usize,
}

impl Peers {
    pub fn new(config: &FederationConfig) -> Self {
        Peers {
            map: RwLock::new(HashMap::new()),
            dispatch: RwLock::new(Dispatch::default()),
            pulls: std::sync::atomic::AtomicU64::new(0),
            breaker_failures: config.breaker_failures,
            breaker_open: Duration::from_secs(config.breaker_open_seconds),
            timeout: Duration::from_millis(config.request_timeout_ms),
            encoding: match config.encoding {
                WireEncoding::Plist => Encoding::Plist,
                WireEncoding::Json => Encoding::Json,
            },
            max_filter_bytes: config.max_filter_bytes,
            max_answer_bytes: config.max_answer_bytes,
            max_false_positive_rate: config.peer_filter_max_false_positive_rate,
            max_candidates: config.max_dispatch_candidates,
        }
    }

    /// The false-positive rate above which a member's filter is refused: the federation's, when
    /// the dictionary in force sets one, else this provider's.
    pub fn false_positive_limit(&self, directory: Option<&Directory>) -> f64 {
        directory
            .and_then(|d| d.filter_max_false_positive_ppm)
            .map_or(self.max_false_positive_rate, |ppm| {
                f64::from(ppm) / 1_000_000.0
            })
    }

    /// The most bytes read of a filter answer: what a filter of `max_filter_bytes` encodes to
    /// (base64 in XML or JSON), plus room for the dictionary around it.
    fn filter_answer_bytes(&self) -> usize {
        usize::try_from(self.max_filter_bytes.saturating_mul(4) / 3)
            .unwrap_or(usize::MAX)
            .saturating_add(64 << 10)
    }

    /// Loads the filters saved by earlier runs.
    pub async fn load(&self, db: &Db) -> Result<(), crate::db::StoreError> {
        let saved = db.peer_filters().await?;
        for stored in saved {
            // Decoded and counted before the lock: a filter can be hundreds of MiB.
            let filter = match decode_stored(&stored) {
                Ok(filter) => filter,
                Err(message) => {
                    tracing::warn!(peer = %stored.provider_id, %message, "saved filter unusable; will fetch again");
                    continue;
                }
            };
            let rate = filter.estimated_false_positive_rate();
            if rate > self.max_false_positive_rate {
                tracing::warn!(peer = %stored.provider_id, rate, "saved filter is above federation.peer_filter_max_false_positive_rate; will fetch again");
                continue;
            }
            let mut map = self.map.write().expect("peers lock");
            let peer = map.entry(stored.provider_id.clone()).or_default();
            self.hold(&stored.provider_id, peer, filter);
            peer.generation = stored.generation as u64;
            peer.false_positive_rate = rate;
            peer.fetched_at_ms = Some(stored.fetched_at);
        }
        Ok(())
    }

    /// Makes `filter` the one held for `id`: in its entry of the map (whose write lock the caller
    /// holds) and in the dispatch index together, so the two never disagree.
    fn hold(&self, id: &str, peer: &mut Peer, filter: BloomFilter) {
        self.dispatch
            .write()
            .expect("dispatch lock")
            .install(id, peer.filter.as_deref(), &filter);
        peer.filter = Some(Arc::new(filter));
    }

    /// Forgets a provider that left the federation.
    pub async fn forget(&self, db: &Db, provider_id: &str) {
        {
            let mut map = self.map.write().expect("peers lock");
            map.remove(provider_id);
            self.dispatch
                .write()
                .expect("dispatch lock")
                .forget(provider_id);
        }
        if let Err(e) = db.delete_peer_filter(provider_id).await {
            tracing::warn!(peer = provider_id, error = %e, "deleting a former member's filter failed");
        }
    }

    /// Whether `member`'s filter in force may hold `uri`; false without a filter.
    pub fn may_host(&self, member: &str, uri: &str) -> bool {
        self.map
            .read()
            .expect("peers lock")
            .get(member)
            .and_then(|peer| peer.filter.as_ref())
            .is_some_and(|filter| filter.contains(uri))
    }

    /// The members of `directory` other than `self_id` whose filter may hold `uri`, in the
    /// directory's order, and how many were skipped because their breaker is open.
    pub fn candidates(
        &self,
        directory: &Directory,
        self_id: &str,
        uri: &str,
    ) -> (Vec<Member>, usize) {
        let map = self.map.read().expect("peers lock");
        let dispatch = self.dispatch.read().expect("dispatch lock");
        let now = Instant::now();
        let mut found = Vec::new();
        let mut skipped = 0;
        dispatch.index.candidates(uri, |slot| {
            let Some(id) = dispatch.owners[slot].as_deref().filter(|id| *id != self_id) else {
                return;
            };
            let Some(position) = directory.members.iter().position(|m| m.provider_id == id) else {
                return;
            };
            let Some(peer) = map.get(id) else {
                return;
            };
            if peer.open_until.is_some_and(|until| until > now) {
                skipped += 1;
                return;
            }
            found.push((position, peer.false_positive_rate));
        });
        found.sort_unstable_by_key(|&(position, _)| position);
        if found.len() > self.max_candidates {
            // The most specific filters are the likeliest to really host the callee.
            found.sort_by(|a, b| a.1.total_cmp(&b.1));
            let dropped = found.len() - self.max_candidates;
            found.truncate(self.max_candidates);
            metrics::counter!("switchyard_dispatch_candidates_dropped_total")
                .increment(dropped as u64);
        }
        (
            found
                .into_iter()
                .map(|(position, _)| directory.members[position].clone())
                .collect(),
            skipped,
        )
    }

    pub fn status(&self, directory: Option<&Directory>, self_id: &str) -> Vec<PeerStatus> {
        let map = self.map.read().expect("peers lock");
        let now = Instant::now();
        let empty = Peer::default();
        directory
            .map(|d| d.members.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|m| m.provider_id != self_id)
            .map(|m| {
                let peer = map.get(&m.provider_id).unwrap_or(&empty);
                PeerStatus {
                    provider_id: m.provider_id.clone(),
                    generation: peer.filter.as_ref().map(|_| peer.generation),
                    items: peer.filter.as_ref().map(|f| f.items()),
                    bits: peer.filter.as_ref().map(|f| f.bits()),
                    estimated_false_positive_rate: peer
                        .filter
                        .as_ref()
                        .map(|_| peer.false_positive_rate),
                    fetched_at_ms: peer.fetched_at_ms,
                    last_error: peer.last_error.clone(),
                    latency_ms: peer.latency_ms,
                    errors: peer.errors,
                    consecutive_failures: peer.consecutive_failures,
                    breaker_open: peer.open_until.is_some_and(|until| until > now),
                }
            })
            .collect()
    }

    fn check_breaker(&self, peer_id: &str) -> Result<(), PeerError> {
        let map = self.map.read().expect("peers lock");
        match map.get(peer_id) {
            Some(peer) if peer.open_until.is_some_and(|until| until > Instant::now()) => {
                Err(PeerError::Open {
                    peer: peer_id.to_string(),
                    failures: peer.consecutive_failures,
                })
            }
            _ => Ok(()),
        }
    }

    fn record(&self, peer_id: &str, started: Instant, result: Result<(), &PeerError>) {
        let mut map = self.map.write().expect("peers lock");
        let peer = map.entry(peer_id.to_string()).or_default();
        let elapsed = started.elapsed();
        metrics::histogram!("switchyard_federation_peer_latency_seconds", "peer" => peer_id.to_string())
            .record(elapsed.as_secs_f64());
        match result {
            Ok(()) => {
                peer.latency_ms = Some(elapsed.as_millis() as u64);
                peer.consecutive_failures = 0;
                peer.open_until = None;
            }
            Err(e) if e.is_refusal() => {
                peer.latency_ms = Some(elapsed.as_millis() as u64);
                peer.consecutive_failures = 0;
                peer.open_until = None;
            }
            Err(e) => {
                peer.errors += 1;
                peer.last_error = Some(e.to_string());
                peer.consecutive_failures += 1;
                metrics::counter!("switchyard_federation_peer_errors_total", "peer" => peer_id.to_string())
                    .increment(1);
                if peer.consecutive_failures >= self.breaker_failures {
                    if peer.open_until.is_none() {
                        tracing::warn!(
                            peer = peer_id,
                            failures = peer.consecutive_failures,
                            "circuit breaker opened"
                        );
                    }
                    peer.open_until = Some(Instant::now() + self.breaker_open);
                }
            }
        }
    }

    /// Sends one request to a member and reads the dictionary it answers with.
    pub async fn request(
        &self,
        identity: &Identity,
        member: &Member,
        method: reqwest::Method,
        path: &str,
        body: Option<&Dict>,
    ) -> Result<Dict, PeerError> {
        self.request_within(identity, member, method, path, body, self.max_answer_bytes)
            .await
    }

    /// [`Peers::request`] with an answer of at most `limit` bytes.
    async fn request_within(
        &self,
        identity: &Identity,
        member: &Member,
        method: reqwest::Method,
        path: &str,
        body: Option<&Dict>,
        limit: usize,
    ) -> Result<Dict, PeerError> {
        self.check_breaker(&member.provider_id)?;
        let started = Instant::now();
        let result = self.send(identity, member, method, path, body, limit).await;
        self.record(&member.provider_id, started, result.as_ref().map(|_| ()));
        result
    }

    async fn send(
        &self,
        identity: &Identity,
        member: &Member,
        method: reqwest::Method,
        path: &str,
        body: Option<&Dict>,
        limit: usize,
    ) -> Result<Dict, PeerError> {
        let peer = member.provider_id.clone();
        let url = format!("{}{path}", member.base_uri.trim_end_matches('/'));
        // Pinned to the certificate the directory lists; a changed listing gets a client (and
        // connections) of its own.
        let http = identity
            .client_for(&member.certificate_sha256)
            .map_err(|e| PeerError::Transport {
                peer: peer.clone(),
                message: e.to_string(),
            })?;
        let mut request = http
            .request(method, &url)
            .header(reqwest::header::ACCEPT, self.encoding.content_type());
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, self.encoding.content_type())
                .body(body.encode(self.encoding));
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                PeerError::Timeout {
                    peer: peer.clone(),
                    timeout_ms: self.timeout.as_millis() as u64,
                }
            } else {
                PeerError::Transport {
                    peer: peer.clone(),
                    message: error_chain(&e),
                }
            }
        })?;
        let too_long = || PeerError::Body {
            peer: peer.clone(),
            message: format!("the answer is longer than the {limit} bytes allowed"),
        };
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(too_long());
        }
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // Read chunk by chunk: a peer that sends no Content-Length (or a false one) is cut off
        // at the limit, not buffered.
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| PeerError::Transport {
            peer: peer.clone(),
            message: error_chain(&e),
        })? {
            if bytes.len() + chunk.len() > limit {
                return Err(too_long());
            }
            bytes.extend_from_slice(&chunk);
        }
        let dict = Encoding::from_content_type(content_type.as_deref())
            .and_then(|encoding| Dict::decode(&bytes, encoding))
            .map_err(|e| PeerError::Body {
                peer: peer.clone(),
                message: format!("HTTP {status}: {e}"),
            })?;
        if status.is_success() {
            Ok(dict)
        } else {
            Err(PeerError::Refused {
                peer,
                status: status.as_u16(),
                code: dict
                    .opt_str("error")
                    .ok()
                    .flatten()
                    .unwrap_or("")
                    .to_string(),
                message: dict
                    .opt_str("message")
                    .ok()
                    .flatten()
                    .unwrap_or("")
                    .to_string(),
            })
        }
    }

    /// Pulls a member's filter (incrementally when this provider holds an earlier generation),
    /// saves it, and returns its generation. Of pulls of one member that overlap, the one that
    /// started last wins: an answer that took longer never puts an older filter back.
    pub async fn pull(
        &self,
        db: &Db,
        identity: &Identity,
        member: &Member,
        false_positive_limit: f64,
    ) -> Result<u64, PeerError> {
        let ticket = self
            .pulls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let superseded = |map: &HashMap<String, Peer>| {
            map.get(&member.provider_id)
                .filter(|p| p.installed_pull > ticket)
                .map(|p| p.generation)
        };
        let held = {
            let map = self.map.read().expect("peers lock");
            map.get(&member.provider_id)
                .and_then(|p| p.filter.clone().map(|f| (p.generation, f)))
        };
        let path = match &held {
            Some((generation, _)) => format!("/federation/v1/bloom?since={generation}"),
            None => "/federation/v1/bloom".to_string(),
        };
        let dict = self
            .request_within(
                identity,
                member,
                reqwest::Method::GET,
                &path,
                None,
                self.filter_answer_bytes(),
            )
            .await?;
        let body_error = |message: String| PeerError::Body {
            peer: member.provider_id.clone(),
            message,
        };
        let update = bloom::from_dict(&dict).map_err(|e| body_error(e.to_string()))?;
        let (generation, filter) = match update {
            BloomUpdate::Full { generation, filter } => (generation, filter),
            BloomUpdate::Incremental {
                since,
                generation,
                bits,
                items,
                flips,
            } => {
                let Some((held_generation, held_filter)) = held.clone() else {
                    return Err(body_error(
                        "an incremental update answered a full request".into(),
                    ));
                };
                if since != held_generation || held_filter.bits() != bits {
                    return Err(body_error(format!(
                        "an update since generation {since} does not apply to generation {held_generation}"
                    )));
                }
                let mut filter = (*held_filter).clone();
                filter
                    .apply(&flips, items)
                    .map_err(|e| body_error(e.to_string()))?;
                (generation, filter)
            }
        };
        if filter.bits() / 8 > self.max_filter_bytes {
            return Err(body_error(format!(
                "a filter of {} bytes exceeds federation.max_filter_bytes",
                filter.bits() / 8
            )));
        }
        let false_positive_rate = filter.estimated_false_positive_rate();
        if false_positive_rate > false_positive_limit {
            metrics::counter!("switchyard_peer_filters_refused_total", "peer" => member.provider_id.clone())
                .increment(1);
            return Err(PeerError::SaturatedFilter {
                peer: member.provider_id.clone(),
                rate: false_positive_rate,
                limit: false_positive_limit,
            });
        }
        let stored = StoredPeerFilter {
            provider_id: member.provider_id.clone(),
            generation: generation as i64,
            algorithm: bloom::ALGORITHM.to_string(),
            bits: filter.bits() as i64,
            items: filter.items() as i64,
            filter_base64: base64::engine::general_purpose::STANDARD.encode(filter.bytes()),
            fetched_at: now_ms(),
        };
        if let Some(newer) = superseded(&self.map.read().expect("peers lock")) {
            return Ok(newer);
        }
        if held.as_ref().map(|(g, _)| *g) != Some(generation) {
            db.save_peer_filter(&stored)
                .await
                .map_err(|e| body_error(format!("saving the filter: {e}")))?;
            tracing::debug!(peer = %member.provider_id, generation, items = filter.items(), "peer filter updated");
        }
        let mut map = self.map.write().expect("peers lock");
        if let Some(newer) = superseded(&map) {
            return Ok(newer);
        }
        let peer = map.entry(member.provider_id.clone()).or_default();
        self.hold(&member.provider_id, peer, filter);
        peer.installed_pull = ticket;
        peer.generation = generation;
        peer.false_positive_rate = false_positive_rate;
        peer.fetched_at_ms = Some(stored.fetched_at);
        peer.last_error = None;
        Ok(generation)
    }

    pub fn note_pull_error(&self, provider_id: &str, error: &PeerError) {
        let mut map = self.map.write().expect("peers lock");
        map.entry(provider_id.to_string()).or_default().last_error = Some(error.to_string());
    }
}

fn decode_stored(stored: &StoredPeerFilter) -> Result<BloomFilter, String> {
    if stored.algorithm != bloom::ALGORITHM {
        return Err(format!(
            "saved as `{}`, not `{}`",
            stored.algorithm,
            bloom::ALGORITHM
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&stored.filter_base64)
        .map_err(|e| e.to_string())?;
    BloomFilter::from_bytes(stored.bits as u64, stored.items as u64, &bytes)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            provider_id: id.into(),
            display_name: id.into(),
            base_uri: format!("https://{id}"),
            relay_addresses: Vec::new(),
            certificate_sha256: "ab".repeat(32),
            endpoint_ca_sha256: "cd".repeat(32),
        }
    }

    /// A filter holding `uri` and `extra` other URIs, sized for 64 URIs at 1%.
    fn filter(uri: &str, extra: usize) -> BloomFilter {
        let mut filter = BloomFilter::with_capacity(64, 0.01).unwrap();
        filter.insert(uri);
        for i in 0..extra {
            filter.insert(&format!("tel:+1555000{i:04}"));
        }
        filter
    }

    #[test]
    fn a_dispatch_asks_at_most_the_cap_preferring_the_most_specific_filters() {
        let config = FederationConfig {
            max_dispatch_candidates: 2,
            ..FederationConfig::default()
        };
        let peers = Peers::new(&config);
        let uri = "tel:+14155550100";
        let directory = Directory {
            federation: "test".into(),
            version: 1,
            issued_at: 0,
            expires: 1,
            members: ["self", "full", "half", "sparse"]
                .into_iter()
                .map(member)
                .collect(),
            federation_relay: None,
            filter_max_false_positive_ppm: None,
        };
        {
            let mut map = peers.map.write().unwrap();
            let mut dispatch = peers.dispatch.write().unwrap();
            for (id, extra) in [("full", 60), ("half", 30), ("sparse", 0), ("gone", 0)] {
                let filter = filter(uri, extra);
                dispatch.install(id, None, &filter);
                let peer = map.entry(id.to_string()).or_default();
                peer.false_positive_rate = filter.estimated_false_positive_rate();
                peer.filter = Some(Arc::new(filter));
            }
        }
        let (found, skipped) = peers.candidates(&directory, "self", uri);
        let ids: Vec<&str> = found.iter().map(|m| m.provider_id.as_str()).collect();
        assert_eq!(ids, ["sparse", "half"]);
        assert_eq!(skipped, 0);

        // A newer filter of the same size goes in by the bits that differ; a forgotten peer is
        // no candidate.
        {
            let mut map = peers.map.write().unwrap();
            let mut dispatch = peers.dispatch.write().unwrap();
            let peer = map.get_mut("half").unwrap();
            let newer = filter("tel:+14155550199", 30);
            assert_eq!(newer.bits(), peer.filter.as_ref().unwrap().bits());
            dispatch.install("half", peer.filter.as_deref(), &newer);
            peer.filter = Some(Arc::new(newer));
            dispatch.forget("sparse");
        }
        let (found, _) = peers.candidates(&directory, "self", uri);
        let ids: Vec<&str> = found.iter().map(|m| m.provider_id.as_str()).collect();
        assert_eq!(ids, ["full"]);
        let (found, _) = peers.candidates(&directory, "self", "tel:+14155550199");
        let ids: Vec<&str> = found.iter().map(|m| m.provider_id.as_str()).collect();
        assert_eq!(ids, ["half"]);
    }

    #[test]
    fn the_dictionarys_limit_takes_precedence_over_the_configured_one() {
        let peers = Peers::new(&FederationConfig::default());
        assert_eq!(peers.false_positive_limit(None), 0.01);
        let directory = Directory {
            federation: "test".into(),
            version: 1,
            issued_at: 0,
            expires: 1,
            members: Vec::new(),
            federation_relay: None,
            filter_max_false_positive_ppm: Some(2_500),
        };
        assert_eq!(peers.false_positive_limit(Some(&directory)), 0.0025);
    }
}
