//! `switchyard demo`: a federation on loopback, in one process, with no setup. A fresh federation
//! CA, a directory serving the signed discovery dictionary over plain HTTP, and three providers
//! (A, B and C), each with its own SQLite database in a temporary directory, its own federation
//! certificate and one demo user with provisioning codes, ready for `switchyard endpoint ...` in
//! other terminals and for calls from one provider to another.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use switchyard_protocol::dict::Encoding;
use switchyard_protocol::discovery::{Directory, Member};
use switchyard_protocol::pki::{self as fed_pki, FederationCa};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{Config, SipTransport};
use crate::server::Provider;

/// The federation's name, in its CA certificate and discovery dictionary.
pub const FEDERATION: &str = "switchyard-demo";

pub struct DemoUser {
    pub name: &'static str,
    pub uris: [&'static str; 2],
}

/// One provider of the demo federation and its user.
pub struct DemoProvider {
    pub letter: &'static str,
    pub provider_id: &'static str,
    pub user: DemoUser,
}

pub const DEMO_PROVIDERS: [DemoProvider; 3] = [
    DemoProvider {
        letter: "A",
        provider_id: "a.demo.switchyard.test",
        user: DemoUser {
            name: "Alice",
            uris: ["tel:+16502530000", "mailto:alice@demo.example"],
        },
    },
    DemoProvider {
        letter: "B",
        provider_id: "b.demo.switchyard.test",
        user: DemoUser {
            name: "Bob",
            uris: ["tel:+442079460958", "mailto:bob@demo.example"],
        },
    },
    DemoProvider {
        letter: "C",
        provider_id: "c.demo.switchyard.test",
        user: DemoUser {
            name: "Carol",
            // A number Australia reserves for fiction.
            uris: ["tel:+61491570156", "mailto:carol@demo.example"],
        },
    },
];

/// Devices (provisioning codes) per demo user.
pub const DEVICES_PER_USER: usize = 2;

/// Where the demo listens. The addresses are provider A's; B and C take the next two ports. Port
/// 0 lets the system choose a free port for each provider.
#[derive(Debug, Clone, Copy)]
pub struct Listen {
    pub endpoint: SocketAddr,
    pub admin: SocketAddr,
    pub federation: SocketAddr,
    /// The directory (plain HTTP).
    pub directory: SocketAddr,
    /// The SIP edge, UDP and TCP on the same port (TLS on the port 100 above).
    pub sip: SocketAddr,
}

/// A demo user as registered: canonical URIs and one provisioning code per device.
pub struct Account {
    pub name: &'static str,
    pub uris: Vec<String>,
    pub codes: Vec<String>,
    /// The user's SIP account (`sip:<name>@<provider id>`), its password, and a sipp injection
    /// file holding both.
    pub sip_aor: String,
    pub sip_password: String,
    pub sipp_accounts: PathBuf,
}

/// The running demo federation.
pub struct Demo {
    /// Everything lives here: CA, dictionary, each provider's data directory, device states.
    pub dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    /// The bootstrap URI of the federation.
    pub directory_url: String,
    /// A, B and C, in [`DEMO_PROVIDERS`] order.
    pub providers: Vec<Provider>,
    /// The demo user of each provider.
    pub accounts: Vec<Account>,
    /// The directory server, once it serves.
    directory_server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// The `i`th provider's address: `base` with its port moved up by `i`, or port 0 as it is.
fn nth(base: SocketAddr, i: usize, flag: &str) -> anyhow::Result<SocketAddr> {
    if base.port() == 0 {
        return Ok(base);
    }
    let port = u16::try_from(usize::from(base.port()) + i)
        .ok()
        .with_context(|| format!("{flag} {base}: providers B and C take the next two ports"))?;
    Ok(SocketAddr::new(base.ip(), port))
}

/// Where a listener bound to `addr` is reached: an unspecified address means loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// The certificate names for a listener on `addr`: localhost, 127.0.0.1 and its own address.
fn server_names(addr: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let own = reachable(addr).ip().to_string();
    if !names.contains(&own) {
        names.push(own);
    }
    names
}

/// Signs a dictionary listing `members` and writes it where the directory serves it.
fn publish(ca: &FederationCa, file: &Path, members: Vec<Member>) -> anyhow::Result<()> {
    let now = crate::federation::identity::unix_now();
    let envelope = Directory {
        federation: FEDERATION.into(),
        version: 1,
        issued_at: now,
        expires: now + 30 * 86_400,
        members,
        federation_relay: None,
        filter_max_false_positive_ppm: None,
    }
    .sign(ca)
    .context("signing the discovery dictionary")?;
    std::fs::write(file, envelope.encode(Encoding::Plist))
        .with_context(|| format!("writing {}", file.display()))
}

impl Demo {
    /// Sets up and starts the whole federation; when it returns, every provider holds the
    /// dictionary and every other provider's filter, so cross-provider calls work at once.
    pub async fn start(listen: Listen) -> anyhow::Result<Demo> {
        crate::server::install_crypto_provider();
        // The first phone number parsed loads the numbering plans (a second or more in a debug
        // build): done now, not while the providers wait for the directory.
        let canonicalizer = switchyard_protocol::uri::Canonicalizer::new(None);
        for spec in &DEMO_PROVIDERS {
            for uri in spec.user.uris {
                canonicalizer.canonicalize(uri)?;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("switchyard-demo-")
            .tempdir()?;
        let root = dir.path().to_path_buf();
        let ca_cert = root.join("federation-ca.pem");
        let ca = FederationCa::init(&ca_cert, &root.join("federation-ca.key"), FEDERATION)
            .context("creating the federation CA")?;

        // The directory's listener first: its URL is every provider's bootstrap URI. It is bound
        // now and serves once every provider is up and holds the dictionary (see `bring_up`).
        let directory_file = root.join("directory.plist");
        let listener = tokio::net::TcpListener::bind(listen.directory)
            .await
            .with_context(|| {
                format!(
                    "binding the directory to {} (choose another address with --directory-listen)",
                    listen.directory
                )
            })?;
        let directory_url = format!(
            "http://{}/federation/v1/directory",
            reachable(listener.local_addr()?)
        );
        // Federation certificates and configurations.
        let mut fingerprints = Vec::new();
        let mut configs = Vec::new();
        for (i, spec) in DEMO_PROVIDERS.iter().enumerate() {
            let data_dir = root.join(spec.letter.to_lowercase());
            let federation_listen = nth(listen.federation, i, "--federation-listen")?;
            let issued = ca
                .issue_provider(spec.provider_id, &server_names(federation_listen), 30)
                .with_context(|| format!("issuing provider {}'s certificate", spec.letter))?;
            let (cert, key) = (
                data_dir.join("federation-cert.pem"),
                data_dir.join("federation-key.pem"),
            );
            crate::pki::write_file(&cert, issued.cert_pem.as_bytes(), false)?;
            crate::pki::write_file(&key, issued.key_pem.as_bytes(), true)?;
            let chain = fed_pki::load_certs(&cert)?;
            fingerprints.push(fed_pki::certificate_fingerprint(&chain[0]));

            let mut config = Config {
                data_dir,
                provider_id: spec.provider_id.into(),
                ..Config::default()
            };
            config.endpoint_api.listen = nth(listen.endpoint, i, "--endpoint-listen")?;
            config.endpoint_api.server_names = server_names(config.endpoint_api.listen);
            config.admin.listen = nth(listen.admin, i, "--admin-listen")?;
            let f = &mut config.federation;
            f.enabled = true;
            f.listen = federation_listen;
            f.ca_cert = Some(ca_cert.clone());
            f.cert = Some(cert);
            f.key = Some(key);
            f.bootstrap_uri = Some(directory_url.clone());
            // Users added while the demo runs are reachable from the other providers at once.
            f.bloom_rebuild_changes = 1;
            // Each provider relays media (TURN, and HTTP for endpoints without UDP); on loopback,
            // the endpoints' addresses are loopback ones.
            let relay = &mut config.relay;
            relay.enabled = true;
            relay.listen = std::net::SocketAddr::new(config.endpoint_api.listen.ip(), 0);
            relay.allow_loopback_peers = true;
            // The demo may also run on a private network (the network-namespace tests do).
            relay.allow_private_peers = true;
            // Each provider's SIP edge registers SIP phones of its user.
            let sip = &mut config.sip;
            sip.enabled = true;
            sip.transports = vec![SipTransport::Udp, SipTransport::Tcp, SipTransport::Tls];
            sip.udp_listen = nth(listen.sip, i, "--sip-listen")?;
            sip.tcp_listen = sip.udp_listen;
            sip.tls_listen = match sip.udp_listen.port() {
                0 => sip.udp_listen,
                port => SocketAddr::new(
                    sip.udp_listen.ip(),
                    port.checked_add(100)
                        .context("--sip-listen: TLS takes the port 100 above")?,
                ),
            };
            configs.push(config);
        }
        let mut demo = Demo {
            dir,
            ca_cert,
            directory_url,
            providers: Vec::new(),
            accounts: Vec::new(),
            directory_server: None,
        };
        let started = demo
            .bring_up(configs, fingerprints, &ca, listener, directory_file)
            .await;
        match started {
            Ok(()) => Ok(demo),
            Err(e) => {
                demo.shutdown().await;
                Err(e)
            }
        }
    }

    /// Starts the providers, publishes the dictionary listing them, serves it, adds the demo
    /// users and syncs the filters.
    async fn bring_up(
        &mut self,
        configs: Vec<Config>,
        fingerprints: Vec<String>,
        ca: &FederationCa,
        listener: tokio::net::TcpListener,
        directory_file: PathBuf,
    ) -> anyhow::Result<()> {
        self.start_providers(configs).await?;
        // The dictionary lists the addresses the providers actually listen on.
        let members = DEMO_PROVIDERS
            .iter()
            .zip(&self.providers)
            .zip(fingerprints)
            .map(
                |((spec, provider), certificate_sha256)| -> anyhow::Result<Member> {
                    Ok(Member {
                        provider_id: spec.provider_id.to_string(),
                        display_name: format!("Provider {}", spec.letter),
                        base_uri: format!(
                            "https://{}",
                            reachable(provider.federation_addr.expect("federation enabled"))
                        ),
                        relay_addresses: provider
                            .relay()
                            .map(|relay| vec![relay.public_addr.to_string()])
                            .unwrap_or_default(),
                        certificate_sha256,
                        endpoint_ca_sha256: fed_pki::pem_fingerprint(
                            &provider.app.call_settings.endpoint_ca_pem,
                        )?,
                    })
                },
            )
            .collect::<anyhow::Result<Vec<_>>>()?;
        publish(ca, &directory_file, members)?;
        self.install_directory(&directory_file).await?;
        self.directory_server = Some(serve_directory(listener, directory_file));
        self.add_users().await?;
        self.sync().await
    }

    /// Starts the three providers, at once. Their own first fetch of the dictionary waits for the
    /// directory to serve (its listener is bound, not yet accepting), so that no provider learns
    /// of members that are not up yet and fails to reach them.
    async fn start_providers(&mut self, configs: Vec<Config>) -> anyhow::Result<()> {
        let starts = configs
            .into_iter()
            .zip(&DEMO_PROVIDERS)
            .map(|(config, spec)| {
                let ports = format!(
                    "endpoint API {}, admin API {}, federation {}",
                    config.endpoint_api.listen, config.admin.listen, config.federation.listen
                );
                async move {
                    Provider::start(config).await.with_context(|| {
                        format!(
                            "starting provider {} ({ports}; choose other addresses with \
                         --endpoint-listen, --admin-listen and --federation-listen)",
                            spec.letter
                        )
                    })
                }
            });
        let mut failed = None;
        for started in futures_util::future::join_all(starts).await {
            match started {
                Ok(provider) => self.providers.push(provider),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Each provider's demo user, with a provisioning code per device.
    async fn add_users(&mut self) -> anyhow::Result<()> {
        for (spec, provider) in DEMO_PROVIDERS.iter().zip(&self.providers) {
            let app = &provider.app;
            let user = &spec.user;
            let uris: Vec<String> = user.uris.iter().map(|u| u.to_string()).collect();
            let created = app.registry().add_user(user.name, &uris).await?;
            let mut codes = Vec::new();
            for _ in 0..DEVICES_PER_USER {
                let (code, _) = app
                    .registry()
                    .issue_provisioning_code(&created.id, None)
                    .await?;
                codes.push(code);
            }
            let sip_user = user.name.to_lowercase();
            let sip_password = crate::shared::random_token(12);
            let sip_account = crate::sip::accounts::new_account(
                &app.config,
                &created.id,
                &format!("sip:{sip_user}@{}", spec.provider_id),
                None,
                &sip_password,
            )?;
            app.db
                .add_sip_account(&sip_account, crate::sip::gateway_capabilities())
                .await?;
            let sipp_accounts = self.dir.path().join(format!("sipp-{sip_user}.csv"));
            std::fs::write(
                &sipp_accounts,
                format!(
                    "SEQUENTIAL\n{sip_user};[authentication username={sip_user} password={sip_password}]\n"
                ),
            )
            .with_context(|| format!("writing {}", sipp_accounts.display()))?;
            self.accounts.push(Account {
                name: user.name,
                uris,
                codes,
                sip_aor: sip_account.aor,
                sip_password,
                sipp_accounts,
            });
        }
        Ok(())
    }

    /// Has every provider fetch the dictionary from a private listener serving the same file,
    /// before the directory itself serves: fetched there, it is only installed, while a
    /// provider's own fetch from the bootstrap URI would also pull every new member's filter at
    /// once, before those members hold the dictionary (they refuse until they do). Their own
    /// fetch then finds no new member. Only a provider's periodic pull, if it first runs just
    /// between two of these installs, can still be refused (logged, and repaired by `sync`).
    async fn install_directory(&self, file: &Path) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let url = format!("http://{}/federation/v1/directory", listener.local_addr()?);
        let (stop, task) = serve_directory(listener, file.to_path_buf());
        // At once: a provider holding the dictionary may pull the others' filters any moment.
        let fetches = DEMO_PROVIDERS
            .iter()
            .zip(&self.providers)
            .map(|(spec, provider)| {
                let fed = federation(provider);
                let url = &url;
                async move {
                    fed.directory
                        .fetch(&fed.identity.current(), url)
                        .await
                        .with_context(|| {
                            format!("provider {} fetching the discovery dictionary", spec.letter)
                        })
                }
            });
        let result = futures_util::future::join_all(fetches)
            .await
            .into_iter()
            .try_for_each(|fetched| fetched.map(drop));
        let _ = stop.send(());
        let _ = task.await;
        result
    }

    /// Every provider fetches the dictionary and builds its filter, then pulls everyone else's.
    async fn sync(&self) -> anyhow::Result<()> {
        for (spec, provider) in DEMO_PROVIDERS.iter().zip(&self.providers) {
            let fed = federation(provider);
            fed.refresh_directory().await.with_context(|| {
                format!(
                    "provider {} fetching the discovery dictionary from {}",
                    spec.letter, self.directory_url
                )
            })?;
            fed.rebuild_filter().await?;
        }
        for provider in &self.providers {
            federation(provider).pull_all().await;
        }
        for (spec, provider) in DEMO_PROVIDERS.iter().zip(&self.providers) {
            let fed = federation(provider);
            let directory = fed.directory.current();
            for peer in fed.peers.status(directory.as_deref(), &fed.provider_id) {
                if peer.generation.is_none() {
                    bail!(
                        "provider {} could not pull {}'s filter: {}",
                        spec.letter,
                        peer.provider_id,
                        peer.last_error.as_deref().unwrap_or("no error recorded")
                    );
                }
            }
        }
        Ok(())
    }

    /// The folder for device `device` (1-based) of a demo user, for `--state`.
    pub fn state_dir(&self, user: &str, device: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}-{device}", user.to_lowercase()))
    }

    /// What the demo prints once everything is running.
    pub fn instructions(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let root = self.dir.path();
        let _ = writeln!(
            out,
            "Switchyard demo: a federation of three providers on loopback, in this one process."
        );
        let _ = writeln!(
            out,
            "  temporary directory : {}   (databases, certificates, device states; removed on exit)",
            shell_word(root)
        );
        let _ = writeln!(out, "  federation CA       : {}", shell_word(&self.ca_cert));
        let _ = writeln!(
            out,
            "  directory           : {}   (the signed discovery dictionary listing A, B and C)",
            self.directory_url
        );
        for ((spec, provider), account) in DEMO_PROVIDERS
            .iter()
            .zip(&self.providers)
            .zip(&self.accounts)
        {
            let app = &provider.app;
            let provider_url = format!("https://{}", reachable(provider.endpoint_addr));
            let admin = reachable(provider.admin_addr);
            let (ca_path, _) = app.config.endpoint_ca_paths();
            let _ = writeln!(out);
            let _ = writeln!(out, "Provider {} ({}):", spec.letter, spec.provider_id);
            let _ = writeln!(
                out,
                "  endpoint API : {provider_url}   (mutual TLS; CA certificate {})",
                shell_word(&ca_path)
            );
            let _ = writeln!(
                out,
                "  admin API    : http://{admin}   (Authorization: Bearer {})",
                app.admin_token
            );
            let _ = writeln!(out, "  metrics      : http://{admin}/metrics");
            let _ = writeln!(
                out,
                "  admin pages  : http://{admin}/admin/   (log in as an operator: switchyard admin add NAME --role operator --password-file - --admin-url http://{admin} --admin-token={})",
                app.admin_token
            );
            if let Some(addr) = provider.federation_addr {
                let _ = writeln!(
                    out,
                    "  federation   : https://{}   (mutual TLS with the other providers)",
                    reachable(addr)
                );
            }
            if let (Some(udp), Some(tcp), Some(tls)) = (
                provider.sip_udp_addr,
                provider.sip_tcp_addr,
                provider.sip_tls_addr,
            ) {
                // With port 0 each listener gets a port of its own: say which is which.
                let edge = if udp == tcp {
                    format!("{} (UDP and TCP)", reachable(udp))
                } else {
                    format!("{} (UDP), {} (TCP)", reachable(udp), reachable(tcp))
                };
                let _ = writeln!(
                    out,
                    "  SIP edge     : {edge}, {} (TLS)   (a registrar for SIP phones)",
                    reachable(tls)
                );
                let _ = writeln!(
                    out,
                    "  SIP account  : {} password {}   (register a phone with it, then call across the federation)",
                    account.sip_aor, account.sip_password
                );
                let _ = writeln!(
                    out,
                    "    sipp {udp} -sf tests/interop/sipp/register.xml -inf {} -key domain {id} -auth_uri {id} -m 1 -nostdin",
                    shell_word(&account.sipp_accounts),
                    id = spec.provider_id
                );
            }
            let _ = writeln!(
                out,
                "  {} ({}), one code per device:",
                account.name,
                account.uris.join(", ")
            );
            for (device, code) in account.codes.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "    switchyard endpoint register --provider {provider_url} --ca {} --uri {} --code={code} --state {}",
                    shell_word(&ca_path),
                    account.uris[0],
                    shell_word(&self.state_dir(account.name, device + 1))
                );
            }
        }
        let (alice, bob) = (&self.accounts[0], &self.accounts[1]);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Each code registers one device. Then, in two more terminals, {} answers at provider B:",
            bob.name
        );
        let _ = writeln!(
            out,
            "  switchyard endpoint answer --state {} --auto-accept",
            shell_word(&self.state_dir(bob.name, 1))
        );
        let _ = writeln!(
            out,
            "and {} calls him from provider A (A finds B through B's Bloom filter and forwards the call):",
            alice.name
        );
        let _ = writeln!(
            out,
            "  switchyard endpoint call {} --state {}",
            bob.uris[1],
            shell_word(&self.state_dir(alice.name, 1))
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Press Ctrl-C to stop (the temporary directory is removed)."
        );
        out
    }

    /// Stops the providers (all at once) and the directory.
    pub async fn shutdown(self) {
        futures_util::future::join_all(self.providers.into_iter().map(Provider::shutdown)).await;
        if let Some((stop, task)) = self.directory_server {
            let _ = stop.send(());
            let _ = task.await;
        }
        drop(self.dir);
    }
}

/// Serves the signed dictionary in `file` on `listener` until told to stop.
fn serve_directory(
    listener: tokio::net::TcpListener,
    file: PathBuf,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let router = crate::federation::directory_host::directory_router(file);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "directory listener failed");
        }
    });
    (stop, task)
}

fn federation(provider: &Provider) -> &std::sync::Arc<crate::federation::Federation> {
    provider
        .app
        .federation
        .as_ref()
        .expect("the demo enables federation")
}

/// A path as one shell word, quoted only when it needs to be.
fn shell_word(path: &Path) -> String {
    let text = path.display().to_string();
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,".contains(&b));
    if plain && !text.is_empty() {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// Runs the demo until Ctrl-C or SIGTERM.
pub async fn run(listen: Listen) -> anyhow::Result<()> {
    let demo = Demo::start(listen).await?;
    print!("{}", demo.instructions());
    shutdown_signal().await;
    println!("stopping…");
    demo.shutdown().await;
    Ok(())
}

/// Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
