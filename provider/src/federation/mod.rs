//! This provider as a member of a federation: the other providers are reached over mutual TLS
//! with certificates from the federation CA, listed by a signed discovery dictionary, and asked
//! about a callee only when their Bloom filter may hold its URI.
//!
//! - [`identity`]: certificate, key and TLS configurations, reloaded on SIGHUP or file change;
//! - [`directory`]: the discovery dictionary in force;
//! - [`directory_host`]: the "directory" role, publishing a signed dictionary;
//! - [`filters`]: this provider's own filter and its generations;
//! - [`peers`]: the other members' filters, requests to them, circuit breakers;
//! - [`routes`]: the `/federation/v1/...` paths peers call;
//! - [`calls`]: the Forwards of the invitation protocol, both ways.

pub mod auth;
pub mod calls;
pub mod directory;
pub mod directory_host;
pub mod filters;
pub mod identity;
pub mod peers;
pub mod routes;

use std::sync::Arc;
use std::time::Duration;

use switchyard_protocol::dict::Dict;
use switchyard_protocol::discovery::Member;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::config::FederationConfig;
use crate::db::Db;
use directory::{DirectoryCell, MemberChanges};
use filters::OwnFilter;
use identity::IdentityCell;
use peers::Peers;

pub struct Federation {
    pub config: FederationConfig,
    pub provider_id: String,
    pub identity: IdentityCell,
    pub directory: DirectoryCell,
    pub own: OwnFilter,
    pub peers: Peers,
    /// The pulls asked for (after a notification, a join, a retry or the period) and those
    /// running: one pull per member at a time, however many notifications it sends.
    pulls: std::sync::Mutex<PullQueue>,
    pull_wanted: Notify,
    rebuild_now: Notify,
    /// Failed pulls in a row, per member, for the retry back-off.
    pull_retries: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Where peers' filters are kept and this provider's URIs are read from.
    db: Db,
    /// Turns true when the provider shuts down; the background work stops on it.
    shutdown: watch::Receiver<bool>,
}

impl Federation {
    pub fn new(
        config: &crate::config::Config,
        db: Db,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Federation, identity::IdentityError> {
        let identity = IdentityCell::load(&config.federation, &config.provider_id)?;
        Ok(Federation {
            config: config.federation.clone(),
            provider_id: config.provider_id.clone(),
            identity,
            directory: DirectoryCell::new(&config.data_dir),
            own: OwnFilter::new(config.federation.bloom_false_positive_rate),
            peers: Peers::new(&config.federation),
            pulls: Default::default(),
            pull_wanted: Notify::new(),
            rebuild_now: Notify::new(),
            pull_retries: Default::default(),
            db,
            shutdown,
        })
    }

    /// The current member with this id, if it is one.
    pub fn member(&self, provider_id: &str) -> Option<Member> {
        self.directory
            .current()
            .and_then(|d| d.member(provider_id).cloned())
    }

    /// Asks for a pull of `provider_id`'s filter (after its notification, or when it joins).
    /// Asks for a member's pull while one runs coalesce into one more after it; only members
    /// of the dictionary in force are queued, so the queue holds at most one entry per member.
    pub fn pull_soon(&self, provider_id: &str) {
        if self.member(provider_id).is_none() {
            return;
        }
        let mut pulls = self.pulls.lock().expect("pull queue lock");
        if pulls.wanted.insert(provider_id.to_string()) {
            self.pull_wanted.notify_one();
        }
    }

    /// Starts the wanted pulls of members with none running.
    fn start_wanted_pulls(self: &Arc<Self>) {
        let mut pulls = self.pulls.lock().expect("pull queue lock");
        let ready: Vec<String> = pulls
            .wanted
            .iter()
            .filter(|id| !pulls.running.contains(*id))
            .cloned()
            .collect();
        for id in ready {
            pulls.wanted.remove(&id);
            pulls.running.insert(id.clone());
            let fed = self.clone();
            tokio::spawn(async move {
                fed.pull(&id).await;
                let mut pulls = fed.pulls.lock().expect("pull queue lock");
                pulls.running.remove(&id);
                if pulls.wanted.contains(&id) {
                    fed.pull_wanted.notify_one();
                }
            });
        }
    }

    /// Counts registry changes; enough of them trigger a rebuild of this provider's filter.
    pub fn registry_changed(&self, count: u64) {
        self.own.note_change(count);
        if self.own.changes.load(std::sync::atomic::Ordering::Relaxed)
            >= self.config.bloom_rebuild_changes
        {
            self.rebuild_now.notify_one();
        }
    }

    /// Fetches the discovery dictionary now and applies the member changes.
    pub async fn refresh_directory(&self) -> Result<(), directory::DirectoryError> {
        let uri = self
            .config
            .bootstrap_uri
            .clone()
            .expect("the configuration check requires bootstrap_uri");
        let result = self.directory.fetch(&self.identity.current(), &uri).await;
        match result {
            Ok(changes) => {
                self.apply(changes).await;
                Ok(())
            }
            Err(e) => {
                let changes = self.directory.expire(identity::unix_now());
                self.apply(changes).await;
                Err(e)
            }
        }
    }

    async fn apply(&self, changes: MemberChanges) {
        for removed in &changes.removed {
            self.peers.forget(&self.db, removed).await;
        }
        for added in changes.added {
            if added != self.provider_id {
                self.pull_soon(&added);
            }
        }
        if let Some(directory) = self.directory.current() {
            metrics::gauge!("switchyard_federation_directory_version")
                .set(directory.version as f64);
            metrics::gauge!("switchyard_federation_members").set(directory.members.len() as f64);
            if directory.member(&self.provider_id).is_none() {
                tracing::warn!(
                    provider = %self.provider_id,
                    "this provider is not a member in the discovery dictionary; peers will refuse it"
                );
            }
        }
    }

    /// Rebuilds this provider's filter; on a new generation, tells every member to pull it.
    pub async fn rebuild_filter(self: &Arc<Self>) -> Result<Option<u64>, crate::db::StoreError> {
        let uris = self.db.all_uris().await?;
        let generation = self.own.rebuild(&uris);
        if let Some(generation) = generation {
            tracing::debug!(generation, items = uris.len(), "own filter rebuilt");
            self.notify_members(generation);
        }
        Ok(generation)
    }

    fn notify_members(self: &Arc<Self>, generation: u64) {
        let Some(directory) = self.directory.current() else {
            return;
        };
        let body = Dict::new()
            .with("provider-id", self.provider_id.as_str())
            .with("generation", generation as i64);
        for member in directory
            .members
            .iter()
            .filter(|m| m.provider_id != self.provider_id)
        {
            let fed = self.clone();
            let member = member.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let identity = fed.identity.current();
                if let Err(e) = fed
                    .peers
                    .request(
                        &identity,
                        &member,
                        reqwest::Method::POST,
                        "/federation/v1/bloom/notify",
                        Some(&body),
                    )
                    .await
                {
                    tracing::debug!(peer = %member.provider_id, error = %e, "filter notification not delivered; the peer will pull later");
                }
            });
        }
    }

    /// Pulls one member's filter now.
    /// A failed pull is retried after 2, 4, 8... seconds (at most the pull period): members get a
    /// new dictionary at slightly different times, and one that does not list this provider yet
    /// refuses it for a moment.
    pub async fn pull(self: &Arc<Self>, provider_id: &str) {
        let Some(member) = self.member(provider_id) else {
            return;
        };
        let identity = self.identity.current();
        let limit = self
            .peers
            .false_positive_limit(self.directory.current().as_deref());
        match self.peers.pull(&self.db, &identity, &member, limit).await {
            Ok(_) => {
                self.pull_retries
                    .lock()
                    .expect("retry lock")
                    .remove(provider_id);
            }
            Err(e) => {
                self.peers.note_pull_error(provider_id, &e);
                let attempt = {
                    let mut retries = self.pull_retries.lock().expect("retry lock");
                    let attempt = retries.entry(provider_id.to_string()).or_insert(0);
                    *attempt += 1;
                    *attempt
                };
                let delay = Duration::from_secs(1 << attempt.min(16))
                    .min(Duration::from_secs(self.config.bloom_pull_seconds));
                if attempt == 1 {
                    tracing::info!(peer = provider_id, error = %e, retry_in = ?delay, "pulling the peer's filter failed; retrying");
                } else {
                    tracing::warn!(peer = provider_id, error = %e, attempt, retry_in = ?delay, "pulling the peer's filter failed again");
                }
                let (fed, id, mut shutdown) =
                    (self.clone(), provider_id.to_string(), self.shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => fed.pull_soon(&id),
                        _ = crate::shared::shutting_down(&mut shutdown) => {}
                    }
                });
            }
        }
    }

    /// Pulls every member's filter, in parallel.
    pub async fn pull_all(self: &Arc<Self>) {
        let Some(directory) = self.directory.current() else {
            return;
        };
        let pulls = directory
            .members
            .iter()
            .filter(|m| m.provider_id != self.provider_id)
            .map(|m| self.pull(&m.provider_id));
        futures_util::future::join_all(pulls).await;
    }

    /// Starts the background work: directory refresh, filter rebuilds and pulls, certificate
    /// reloads, and the purge of old Forward ids.
    pub fn spawn_tasks(self: &Arc<Self>) -> Vec<JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().directory_loop()),
            tokio::spawn(self.clone().filter_loop()),
            tokio::spawn(self.clone().pull_loop()),
            tokio::spawn(self.clone().housekeeping_loop()),
        ]
    }

    async fn directory_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let changes = self.directory.load_saved(&self.identity.current());
        self.apply(changes).await;
        let mut tick =
            tokio::time::interval(Duration::from_secs(self.config.directory_refresh_seconds));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::shared::shutting_down(&mut shutdown) => return,
            }
            if let Err(e) = self.refresh_directory().await {
                tracing::warn!(error = %e, "discovery dictionary not refreshed; running on the copy in force");
            }
        }
    }

    async fn filter_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let period = Duration::from_secs(self.config.bloom_rebuild_seconds);
        loop {
            if let Err(e) = self.rebuild_filter().await {
                tracing::warn!(error = %e, "rebuilding the filter failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.rebuild_now.notified() => {}
                _ = crate::shared::shutting_down(&mut shutdown) => return,
            }
        }
    }

    async fn pull_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        if let Err(e) = self.peers.load(&self.db).await {
            tracing::warn!(error = %e, "loading saved peer filters failed");
        }
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.bloom_pull_seconds));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(directory) = self.directory.current() {
                        for member in directory.members.iter().filter(|m| m.provider_id != self.provider_id) {
                            self.pull_soon(&member.provider_id);
                        }
                    }
                }
                _ = self.pull_wanted.notified() => {}
                _ = crate::shared::shutting_down(&mut shutdown) => return,
            }
            self.start_wanted_pulls();
        }
    }

    async fn housekeeping_loop(self: Arc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut tick = tokio::time::interval(Duration::from_secs(self.config.cert_check_seconds));
        let mut last_purge = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = crate::shared::shutting_down(&mut shutdown) => return,
            }
            match self.identity.reload_if_changed() {
                Ok(true) => tracing::info!("federation certificate files changed; reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "federation certificate files changed but do not load; keeping the previous ones")
                }
            }
            let now = identity::unix_now();
            let expires_in = self.identity.current().not_after - now;
            metrics::gauge!("switchyard_federation_certificate_expires_seconds")
                .set(expires_in as f64);
            let changes = self.directory.expire(now);
            if !changes.removed.is_empty() {
                self.apply(changes).await;
            }
            if last_purge.elapsed() >= Duration::from_secs(60) {
                last_purge = tokio::time::Instant::now();
                let window_ms = (self.config.timestamp_window_seconds * 2000) as i64;
                if let Err(e) = self
                    .db
                    .purge_forward_log(crate::shared::now_ms() - window_ms)
                    .await
                {
                    tracing::warn!(error = %e, "purging old Forward ids failed");
                }
            }
        }
    }
}

#[derive(Default)]
struct PullQueue {
    wanted: std::collections::HashSet<String>,
    running: std::collections::HashSet<String>,
}
