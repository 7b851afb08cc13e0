//! The other members as seen from here: their Bloom filters (kept in the database so dispatch
//! works right after a restart), requests to them over mutual TLS with the certificate pinned by
//! the discovery dictionary, and a circuit breaker per peer.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use switchyard_protocol::bloom::{self, BloomFilter, BloomParams, BloomUpdate, Probe};
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
    pub breaker_open: bool,
}

pub struct Peers {
    map: RwLock<HashMap<String, Peer>>,
    /// Numbers the pulls in the order they start.
    pulls: std::sync::atomic::AtomicU64,
    breaker_failures: u32,
    breaker_open: Duration,
    timeout: Duration,
    pub encoding: Encoding,
    max_filter_bytes: u64,
}

impl Peers {
    pub fn new(config: &FederationConfig) -> Self {
        Peers {
            map: RwLock::new(HashMap::new()),
            pulls: std::sync::atomic::AtomicU64::new(0),
            breaker_failures: config.breaker_failures,
            breaker_open: Duration::from_secs(config.breaker_open_seconds),
            timeout: Duration::from_millis(config.request_timeout_ms),
            encoding: match config.encoding {
                WireEncoding::Plist => Encoding::Plist,
                WireEncoding::Json => Encoding::Json,
            },
            max_filter_bytes: config.max_filter_bytes,
        }
    }

    /// Loads the filters saved by earlier runs.
    pub async fn load(&self, db: &Db) -> Result<(), crate::db::StoreError> {
        let saved = db.peer_filters().await?;
        let mut map = self.map.write().expect("peers lock");
        for stored in saved {
            match decode_stored(&stored) {
                Ok(filter) => {
                    let peer = map.entry(stored.provider_id.clone()).or_default();
                    peer.generation = stored.generation as u64;
                    peer.filter = Some(Arc::new(filter));
                    peer.fetched_at_ms = Some(stored.fetched_at);
                }
                Err(message) => {
                    tracing::warn!(peer = %stored.provider_id, %message, "saved filter unusable; will fetch again")
                }
            }
        }
        Ok(())
    }

    /// Forgets a provider that left the federation.
    pub async fn forget(&self, db: &Db, provider_id: &str) {
        self.map.write().expect("peers lock").remove(provider_id);
        if let Err(e) = db.delete_peer_filter(provider_id).await {
            tracing::warn!(peer = provider_id, error = %e, "deleting a former member's filter failed");
        }
    }

    /// The members other than `self_id` whose filter may hold `uri`, and how many were skipped
    /// because their breaker is open.
    pub fn candidates(
        &self,
        directory: &Directory,
        self_id: &str,
        uri: &str,
    ) -> (Vec<Member>, usize) {
        let map = self.map.read().expect("peers lock");
        let now = Instant::now();
        let mut probes: HashMap<[u8; 16], Probe> = HashMap::new();
        let mut found = Vec::new();
        let mut skipped = 0;
        for member in directory
            .members
            .iter()
            .filter(|m| m.provider_id != self_id)
        {
            let Some(peer) = map.get(&member.provider_id) else {
                continue;
            };
            let Some(filter) = &peer.filter else {
                continue;
            };
            let key = filter.params().key;
            let probe = probes.entry(key).or_insert_with(|| Probe::new(uri, &key));
            if !filter.contains_probe(probe) {
                continue;
            }
            if peer.open_until.is_some_and(|until| until > now) {
                skipped += 1;
                continue;
            }
            found.push(member.clone());
        }
        (found, skipped)
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
                    bits: peer.filter.as_ref().map(|f| f.params().bits),
                    estimated_false_positive_rate: peer
                        .filter
                        .as_ref()
                        .map(|f| f.estimated_false_positive_rate()),
                    fetched_at_ms: peer.fetched_at_ms,
                    last_error: peer.last_error.clone(),
                    latency_ms: peer.latency_ms,
                    errors: peer.errors,
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
        self.check_breaker(&member.provider_id)?;
        let started = Instant::now();
        let result = self.send(identity, member, method, path, body).await;
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
        if response
            .content_length()
            .is_some_and(|len| len > self.max_filter_bytes * 2)
        {
            return Err(PeerError::Body {
                peer,
                message: "the answer is larger than federation.max_filter_bytes allows".into(),
            });
        }
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response.bytes().await.map_err(|e| PeerError::Transport {
            peer: peer.clone(),
            message: error_chain(&e),
        })?;
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
            .request(identity, member, reqwest::Method::GET, &path, None)
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
                params,
                items,
                flips,
            } => {
                let Some((held_generation, held_filter)) = held.clone() else {
                    return Err(body_error(
                        "an incremental update answered a full request".into(),
                    ));
                };
                if since != held_generation || held_filter.params() != &params {
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
        if filter.params().bits / 8 > self.max_filter_bytes {
            return Err(body_error(format!(
                "a filter of {} bytes exceeds federation.max_filter_bytes",
                filter.params().bits / 8
            )));
        }
        let stored = StoredPeerFilter {
            provider_id: member.provider_id.clone(),
            generation: generation as i64,
            bits: filter.params().bits as i64,
            hashes: i64::from(filter.params().hashes),
            key_hex: hex::encode(filter.params().key),
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
        peer.installed_pull = ticket;
        peer.generation = generation;
        peer.filter = Some(Arc::new(filter));
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
    let key: [u8; 16] = hex::decode(&stored.key_hex)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| "key is not 16 bytes".to_string())?;
    let params = BloomParams {
        bits: stored.bits as u64,
        hashes: stored.hashes as u32,
        key,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&stored.filter_base64)
        .map_err(|e| e.to_string())?;
    BloomFilter::from_bytes(params, stored.items as u64, &bytes).map_err(|e| e.to_string())
}
