//! A federation on loopback for the cross-provider tests: a fresh federation CA, a directory
//! server publishing the signed discovery dictionary over HTTP, and providers (each a
//! [`Harness`] with its own database) with federation certificates from that CA.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use switchyard_endpoint::client::{EndpointClient, PushChannel, PushMode};
use switchyard_protocol::dict::Encoding;
use switchyard_protocol::discovery::{Directory, Member};
use switchyard_protocol::invitation::RelayChoice;
use switchyard_protocol::pki::{self, FederationCa};
use switchyard_provider::config::WireEncoding;
use switchyard_provider::federation::Federation;
use switchyard_provider::Config;

use crate::{test_config, Harness};

pub const ALICE: &str = "tel:+16502530000";
pub const BOB: &str = "mailto:bob@b.example";

/// Alice ([`ALICE`]) at `a.test` and Bob ([`BOB`]) at `b.test` of a running federation,
/// registered (Bob's endpoint speaking `bob_encoding`), with push channels, filters exchanged.
pub struct AliceAndBob {
    pub fed: TestFederation,
    pub alice: EndpointClient,
    pub bob: EndpointClient,
    pub alice_push: PushChannel,
    pub bob_push: PushChannel,
}

impl AliceAndBob {
    pub async fn join(
        fed: TestFederation,
        bob_encoding: Encoding,
        bob_push: PushMode,
    ) -> anyhow::Result<AliceAndBob> {
        let a = fed.provider("a.test");
        let b = fed.provider("b.test");
        let alice_user = a.add_user("Alice", &[ALICE]).await?;
        let bob_user = b.add_user("Bob", &[BOB]).await?;
        let alice = a
            .endpoint(&alice_user, ALICE, None, Encoding::Plist)
            .await?;
        let bob = b.endpoint(&bob_user, BOB, None, bob_encoding).await?;
        fed.sync().await?;
        let alice_push = alice.push_channel(PushMode::WebSocket).await?;
        let bob_push = bob.push_channel(bob_push).await?;
        Ok(AliceAndBob {
            fed,
            alice,
            bob,
            alice_push,
            bob_push,
        })
    }
}

pub struct TestFederation {
    pub dir: tempfile::TempDir,
    pub ca: FederationCa,
    pub directory_addr: SocketAddr,
    directory_task: tokio::task::JoinHandle<()>,
    pub providers: Vec<Harness>,
    pub version: u64,
    /// The member named as the federation-wide relay in the dictionaries this writes.
    pub federation_relay: Option<String>,
    /// The filter limit the dictionaries this writes carry.
    pub filter_max_false_positive_ppm: Option<u32>,
}

/// How one provider of a test federation is set up.
#[derive(Clone)]
pub struct ProviderSpec {
    pub id: &'static str,
    pub encoding: WireEncoding,
    pub false_positive_rate: f64,
    /// Whose relay the calls of this provider's endpoints use.
    pub calls_use: RelayChoice,
    /// Whether the provider runs its SIP edge (UDP, TCP and TLS on loopback, port 0).
    pub sip: bool,
    /// Last changes to the provider's configuration.
    pub tune: Option<fn(&mut Config)>,
}

impl ProviderSpec {
    pub fn plist(id: &'static str) -> Self {
        ProviderSpec {
            id,
            encoding: WireEncoding::Plist,
            false_positive_rate: 0.001,
            calls_use: RelayChoice::CallerProvider,
            sip: false,
            tune: None,
        }
    }

    pub fn tune(self, tune: fn(&mut Config)) -> Self {
        ProviderSpec {
            tune: Some(tune),
            ..self
        }
    }

    pub fn with_sip(self) -> Self {
        ProviderSpec { sip: true, ..self }
    }

    pub fn calls_use(self, calls_use: RelayChoice) -> Self {
        ProviderSpec { calls_use, ..self }
    }

    pub fn json(id: &'static str) -> Self {
        ProviderSpec {
            encoding: WireEncoding::Json,
            ..ProviderSpec::plist(id)
        }
    }
}

impl TestFederation {
    /// Starts the directory and one provider per spec, publishes a dictionary listing them all,
    /// and lets every provider fetch it and every filter.
    pub async fn start(specs: &[ProviderSpec]) -> anyhow::Result<TestFederation> {
        switchyard_provider::server::install_crypto_provider();
        let dir = tempfile::tempdir()?;
        let ca = FederationCa::init(
            &dir.path().join("ca.pem"),
            &dir.path().join("ca.key"),
            "test",
        )?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let directory_addr = listener.local_addr()?;
        let router = switchyard_provider::federation::directory_host::directory_router(
            dir.path().join("directory.plist"),
        );
        let directory_task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let mut federation = TestFederation {
            dir,
            ca,
            directory_addr,
            directory_task,
            providers: Vec::new(),
            version: 0,
            federation_relay: None,
            filter_max_false_positive_ppm: None,
        };
        for spec in specs {
            federation.add_provider(spec).await?;
        }
        let ids: Vec<&str> = specs.iter().map(|s| s.id).collect();
        federation.publish(&ids).await?;
        federation.sync().await?;
        Ok(federation)
    }

    pub fn cert_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("{id}.pem")),
            self.dir.path().join(format!("{id}.key")),
        )
    }

    /// Issues a certificate for `id` and starts a provider with it (not yet in the directory).
    pub async fn add_provider(&mut self, spec: &ProviderSpec) -> anyhow::Result<&Harness> {
        let issued =
            self.ca
                .issue_provider(spec.id, &["localhost".into(), "127.0.0.1".into()], 30)?;
        let (cert, key) = self.cert_paths(spec.id);
        std::fs::write(&cert, &issued.cert_pem)?;
        std::fs::write(&key, &issued.key_pem)?;
        let (config, dir) = self.provider_config(spec, cert, key).await?;
        self.providers.push(Harness::start_with(config, dir).await?);
        Ok(self.providers.last().expect("just pushed"))
    }

    /// The configuration `add_provider` starts a provider with, for the given certificate files.
    pub async fn provider_config(
        &self,
        spec: &ProviderSpec,
        cert: PathBuf,
        key: PathBuf,
    ) -> anyhow::Result<(Config, tempfile::TempDir)> {
        let (mut config, dir) = test_config().await?;
        config.provider_id = spec.id.to_string();
        let f = &mut config.federation;
        f.enabled = true;
        f.listen = "127.0.0.1:0".parse()?;
        f.ca_cert = Some(self.dir.path().join("ca.pem"));
        f.cert = Some(cert);
        f.key = Some(key);
        f.bootstrap_uri = Some(format!(
            "http://{}/federation/v1/directory",
            self.directory_addr
        ));
        f.encoding = spec.encoding;
        f.bloom_false_positive_rate = spec.false_positive_rate;
        // The tests refresh and sync explicitly; the periodic work stays out of the way.
        f.directory_refresh_seconds = 3600;
        f.bloom_pull_seconds = 3600;
        f.bloom_rebuild_seconds = 3600;
        f.bloom_rebuild_changes = 1;
        f.request_timeout_ms = 2000;
        f.cert_check_seconds = 1;
        // Every test provider runs its TURN relay; everything is on loopback.
        let relay = &mut config.relay;
        relay.enabled = true;
        relay.listen = "127.0.0.1:0".parse()?;
        relay.allow_loopback_peers = true;
        relay.allow_private_peers = true;
        relay.calls_use = spec.calls_use;
        if spec.sip {
            crate::enable_sip_on_loopback(&mut config)?;
        }
        if let Some(tune) = spec.tune {
            tune(&mut config);
        }
        Ok((config, dir))
    }

    pub fn provider(&self, id: &str) -> &Harness {
        self.providers
            .iter()
            .find(|h| h.provider.app.config.provider_id == id)
            .unwrap_or_else(|| panic!("no provider {id}"))
    }

    pub fn fed(&self, id: &str) -> &std::sync::Arc<Federation> {
        self.provider(id)
            .provider
            .app
            .federation
            .as_ref()
            .expect("federation enabled")
    }

    /// The directory entry of a running provider, as `switchyard federation sign` would make it.
    pub fn member(&self, id: &str) -> anyhow::Result<Member> {
        let h = self.provider(id);
        let cert = pki::load_certs(&self.cert_paths(id).0)?;
        Ok(Member {
            provider_id: id.to_string(),
            display_name: format!("Provider {id}"),
            base_uri: format!(
                "https://127.0.0.1:{}",
                h.provider
                    .federation_addr
                    .context("federation listener")?
                    .port()
            ),
            relay_addresses: h
                .provider
                .relay_addr
                .map(|a| vec![a.to_string()])
                .unwrap_or_default(),
            certificate_sha256: pki::certificate_fingerprint(&cert[0]),
            endpoint_ca_sha256: pki::pem_fingerprint(
                &h.provider.app.call_settings.endpoint_ca_pem,
            )?,
        })
    }

    /// Signs a new version listing `members` and writes it where the directory serves it.
    pub fn write_directory(
        &mut self,
        members: Vec<Member>,
        valid_seconds: i64,
    ) -> anyhow::Result<()> {
        self.version += 1;
        let now = now_seconds();
        let directory = Directory {
            federation: "test".into(),
            version: self.version,
            issued_at: now,
            expires: now + valid_seconds,
            members,
            federation_relay: self.federation_relay.clone(),
            filter_max_false_positive_ppm: self.filter_max_false_positive_ppm,
        };
        let envelope = directory.sign(&self.ca)?;
        std::fs::write(
            self.dir.path().join("directory.plist"),
            envelope.encode(switchyard_protocol::dict::Encoding::Plist),
        )?;
        Ok(())
    }

    /// Publishes a dictionary listing `ids` (running providers) and has every provider fetch it.
    pub async fn publish(&mut self, ids: &[&str]) -> anyhow::Result<()> {
        let members = ids
            .iter()
            .map(|id| self.member(id))
            .collect::<anyhow::Result<Vec<_>>>()?;
        self.write_directory(members, 86_400)?;
        self.refresh_all().await
    }

    pub async fn refresh_all(&self) -> anyhow::Result<()> {
        for h in &self.providers {
            let fed = h
                .provider
                .app
                .federation
                .as_ref()
                .expect("federation enabled");
            fed.refresh_directory()
                .await
                .with_context(|| format!("{} refreshing the directory", fed.provider_id))?;
        }
        Ok(())
    }

    /// Rebuilds every provider's filter, then has every provider pull every other's.
    pub async fn sync(&self) -> anyhow::Result<()> {
        for h in &self.providers {
            let fed = h
                .provider
                .app
                .federation
                .as_ref()
                .expect("federation enabled");
            fed.rebuild_filter().await?;
        }
        for h in &self.providers {
            let fed = h
                .provider
                .app
                .federation
                .as_ref()
                .expect("federation enabled");
            fed.pull_all().await;
        }
        Ok(())
    }

    pub async fn shutdown(self) {
        for h in self.providers {
            h.provider.shutdown().await;
        }
        self.directory_task.abort();
    }
}

pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Fault-injection helpers: stopping and restarting providers, and talking to a federation
/// listener as a (possibly misbehaving) peer.
impl TestFederation {
    /// Removes a provider from the federation's list; the caller stops it (or keeps its files).
    pub fn take(&mut self, id: &str) -> Harness {
        let index = self
            .providers
            .iter()
            .position(|h| h.provider.app.config.provider_id == id)
            .unwrap_or_else(|| panic!("no provider {id}"));
        self.providers.remove(index)
    }

    /// Stops a provider and starts it again on the same data directory and configuration, on the
    /// same federation and endpoint addresses (so the directory entry and the endpoint clients
    /// stay valid). `edit` may change the configuration first.
    pub async fn restart(
        &mut self,
        id: &str,
        edit: impl FnOnce(&mut Config),
    ) -> anyhow::Result<&Harness> {
        let Harness { provider, dir, .. } = self.take(id);
        let mut config = provider.app.config.clone();
        config.federation.listen = provider.federation_addr.context("federation listener")?;
        config.endpoint_api.listen = provider.endpoint_addr;
        provider.shutdown().await;
        edit(&mut config);
        self.providers.push(Harness::start_with(config, dir).await?);
        Ok(self.providers.last().expect("just pushed"))
    }

    /// `https://127.0.0.1:<port>` of a provider's federation listener.
    pub fn federation_url(&self, id: &str) -> String {
        let addr = self
            .provider(id)
            .provider
            .federation_addr
            .expect("federation listener");
        format!("https://127.0.0.1:{}", addr.port())
    }

    /// A client that speaks mutual TLS to federation listeners as the holder of `cert_pem` /
    /// `key_pem` (whatever issued them), trusting any server certificate from the federation CA.
    pub fn peer_client(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<reqwest::Client> {
        use rustls::pki_types::pem::PemObject;
        let chain = pki::certs_from_pem(cert_pem)?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .context("parsing the key")?;
        let tls = pki::client_config(self.ca.cert_pem(), chain, key)?;
        Ok(reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(std::time::Duration::from_secs(10))
            .build()?)
    }

    /// The client of a provider's own certificate files (as `cert_paths` holds them).
    pub fn peer_client_of(&self, id: &str) -> anyhow::Result<reqwest::Client> {
        let (cert, key) = self.cert_paths(id);
        self.peer_client(
            &std::fs::read_to_string(cert)?,
            &std::fs::read_to_string(key)?,
        )
    }
}
