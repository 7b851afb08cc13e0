use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use switchyard_endpoint::call::{
    self, Accepted, Answer, Call, CallEnd, CallEvent, Incoming, IncomingCall, OutgoingCall,
};
use switchyard_endpoint::client::{self, EndpointClient, EndpointIdentity, PushChannel, PushMode};
use switchyard_endpoint::http_relay::TunnelMode;
use switchyard_endpoint::media::MediaOptions;
use switchyard_media::session::{CallStats, MediaEvent, StreamStats};
use switchyard_protocol::capabilities::{Capabilities, MediaKind};
use switchyard_protocol::dict::{Dict, Encoding};
use switchyard_protocol::invitation::RejectReason;
use switchyard_provider::config::{Config, LogFormat};
use switchyard_provider::Provider;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Switchyard: federate user namespaces between service providers"
)]
struct Cli {
    /// Log format (overrides `log.format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the provider daemon.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage users through the admin API of a running provider.
    Users {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manage endpoints through the admin API of a running provider.
    Endpoints {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: EndpointsCommand,
    },
    /// Manage the operators of the admin API and web pages, through the admin API.
    Admin {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: OperatorCommand,
    },
    /// Manage SIP accounts (for SIP phones and trunks) through the admin API.
    Sip {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: SipCommand,
    },
    /// Act as an endpoint (device): register, call, answer.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Manage the federation CA and provider certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Sign and check the federation's discovery dictionary.
    #[command(subcommand)]
    Federation(FederationCommand),
    /// Start a federation on loopback: a directory and three providers (A, B, C) with a demo user
    /// each; no setup needed. The addresses are provider A's; B and C take the next two ports (port
    /// 0: free ports chosen by the system).
    Demo {
        /// Endpoint API (mutual TLS) of provider A.
        #[arg(long, default_value = "127.0.0.1:7443")]
        endpoint_listen: std::net::SocketAddr,
        /// Admin API and `/metrics` of provider A.
        #[arg(long, default_value = "127.0.0.1:7080")]
        admin_listen: std::net::SocketAddr,
        /// Federation listener (mutual TLS between providers) of provider A.
        #[arg(long, default_value = "127.0.0.1:7543")]
        federation_listen: std::net::SocketAddr,
        /// The directory serving the signed discovery dictionary (plain HTTP).
        #[arg(long, default_value = "127.0.0.1:7090")]
        directory_listen: std::net::SocketAddr,
        /// Provider A's SIP edge, UDP and TCP (TLS on the port 100 above); B and C take the
        /// next two ports.
        #[arg(long, default_value = "127.0.0.1:7060")]
        sip_listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Report every problem in a configuration file (with environment overrides applied).
    Check { file: PathBuf },
    /// Print every key with its default value.
    Defaults,
}

#[derive(Args)]
struct CaFiles {
    /// The federation CA certificate (PEM).
    #[arg(long)]
    ca_cert: PathBuf,
    /// The federation CA private key (PEM, mode 0600).
    #[arg(long)]
    ca_key: PathBuf,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a federation CA (refuses to overwrite existing files).
    Init {
        #[command(flatten)]
        files: CaFiles,
        /// The federation's name, put in the CA certificate.
        #[arg(long, default_value = "switchyard")]
        name: String,
    },
    /// Issue a provider's federation certificate and key.
    IssueProvider {
        #[command(flatten)]
        files: CaFiles,
        #[arg(long)]
        provider_id: String,
        /// DNS names (or IP addresses) of the provider's federation endpoint.
        #[arg(long = "dns", required = true)]
        dns_names: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: u32,
        #[arg(long)]
        cert_out: PathBuf,
        #[arg(long)]
        key_out: PathBuf,
    },
}

#[derive(Subcommand)]
enum FederationCommand {
    /// Make the signed discovery dictionary from a members file.
    Sign {
        #[command(flatten)]
        files: CaFiles,
        /// The members file (TOML; see docs/protocol.md).
        #[arg(long)]
        members: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Write JSON instead of an XML property list.
        #[arg(long)]
        json: bool,
    },
    /// Verify a discovery dictionary against the federation certificate and list its members.
    Verify {
        #[arg(long)]
        ca_cert: PathBuf,
        file: PathBuf,
    },
    /// Show a running provider's federation: dictionary in force, own filter, peers.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a running provider fetch the dictionary and exchange filters now.
    Resync {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct AdminArgs {
    /// Base URL of the provider's admin API.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_URL",
        default_value = "http://127.0.0.1:7080",
        global = true
    )]
    admin_url: String,
    /// Admin bearer token (or use --admin-token-file).
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    admin_token: Option<String>,
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN_FILE", global = true)]
    admin_token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user with one or more URIs.
    Add {
        #[arg(long = "uri", required = true)]
        uris: Vec<String>,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Remove a user (and revoke its endpoints).
    Remove { user_id: String },
    /// List users, optionally searching names and URIs.
    List {
        #[arg(long)]
        search: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Import users from CSV (`display_name,uris`); all-or-nothing.
    Import { file: PathBuf },
    /// Issue a one-time provisioning code for a user's new endpoint.
    Code {
        user_id: String,
        #[arg(long)]
        ttl_seconds: Option<u64>,
    },
}

#[derive(Subcommand)]
enum EndpointsCommand {
    /// List a user's endpoints.
    List { user_id: String },
    /// Revoke an endpoint: its next request is refused and its push channel closes.
    Revoke { endpoint_id: String },
}

#[derive(Subcommand)]
enum SipCommand {
    /// Give a user a SIP account: its phones register as AOR with digest authentication.
    Add {
        user_id: String,
        /// The address of record, `sip:user@domain` in one of `sip.domains`.
        aor: String,
        /// Digest username; default: the AoR's user part.
        #[arg(long)]
        username: Option<String>,
        /// File holding the password (its first line), or `-` for standard input.
        #[arg(long)]
        password_file: PathBuf,
    },
    /// A user's SIP accounts and their registered contacts.
    List { user_id: String },
    /// Remove a SIP account and its registrations.
    Remove { aor: String },
}

#[derive(Subcommand)]
enum OperatorCommand {
    /// Add an operator (may change things) or a viewer (may only look).
    Add {
        name: String,
        #[arg(long, value_parser = ["operator", "viewer"])]
        role: String,
        /// File holding the password (its first line; at least 12 bytes), or `-` for standard
        /// input.
        #[arg(long)]
        password_file: PathBuf,
    },
    /// The operators and their roles.
    List,
    /// Remove an operator and end its sessions.
    Remove { name: String },
    /// The audit log of changes, newest first.
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// The first line of a password file, or of standard input for `-`.
fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_line(&mut text)
            .context("reading the password from standard input")?;
        text
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    };
    Ok(text.lines().next().unwrap_or("").to_string())
}

#[derive(Args)]
struct EndpointArgs {
    /// Folder holding this endpoint's identity (key, certificate, push token).
    #[arg(long)]
    state: PathBuf,
    /// Use JSON instead of XML property lists.
    #[arg(long)]
    json: bool,
    /// How pushes arrive.
    #[arg(long, value_enum, default_value = "web-socket")]
    push: PushMode,
}

#[derive(Args)]
struct MediaArgs {
    /// The address of this device's media port (one UDP port for STUN, DTLS, SIP and SRTP).
    #[arg(long, default_value = "127.0.0.1")]
    media_address: std::net::IpAddr,
    /// Offer only the provider's relay as a path (no direct one).
    #[arg(long)]
    relay_only: bool,
    /// Mute video this many seconds into the call, and unmute as many seconds later.
    #[arg(long)]
    mute_video_after: Option<u64>,
    /// For a network that lets no UDP out: media only through the provider's HTTP relay.
    #[arg(long, value_enum)]
    http_relay: Option<TunnelMode>,
}

impl MediaArgs {
    fn options(&self) -> MediaOptions {
        MediaOptions {
            address: self.media_address,
            relay_only: self.relay_only,
            mute_video_after: self.mute_video_after,
            http_relay: self.http_relay,
        }
    }
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Register this device with a provisioning code.
    Register {
        #[arg(long)]
        provider: String,
        /// The provider's endpoint CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        uri: String,
        /// The one-time provisioning code (it may begin with `-`).
        #[arg(long, allow_hyphen_values = true)]
        code: String,
        #[arg(long)]
        state: PathBuf,
        #[arg(long, default_value = "switchyard-cli")]
        name: String,
        /// Register as an audio-only device.
        #[arg(long)]
        audio_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// Call a URI and wait for the answer.
    Call {
        uri: String,
        #[command(flatten)]
        endpoint: EndpointArgs,
        /// Ask for video as well as audio.
        #[arg(long)]
        video: bool,
        /// Hang up this many seconds after the call is answered (default: on Ctrl-C).
        #[arg(long)]
        hangup_after: Option<u64>,
        #[command(flatten)]
        media: MediaArgs,
    },
    /// Wait for calls and answer them.
    Answer {
        #[command(flatten)]
        endpoint: EndpointArgs,
        #[arg(long, conflicts_with = "auto_reject")]
        auto_accept: bool,
        /// Reject every call with this reason.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(RejectReason::ALL.iter().map(|r| r.as_str()))
            .try_map(|reason| RejectReason::parse(&reason).ok_or("not a reject reason")))]
        auto_reject: Option<RejectReason>,
        /// Exit after the first call ends.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        media: MediaArgs,
    },
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    switchyard_provider::server::install_crypto_provider();
    match cli.command {
        Command::Serve { config } => {
            let config =
                Config::load(&config).with_context(|| format!("loading {}", config.display()))?;
            init_logging(
                cli.log_format.unwrap_or(config.log.format),
                &config.log.level,
            );
            let provider = Provider::start(config).await?;
            switchyard_provider::demo::shutdown_signal().await;
            tracing::info!("shutting down: draining in-flight requests");
            provider.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check { file }) => match Config::load(&file) {
            Ok(_) => {
                println!("{}: OK", file.display());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Config(ConfigCommand::Defaults) => {
            print!("{}", Config::default().to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            endpoint_listen,
            admin_listen,
            federation_listen,
            directory_listen,
            sip_listen,
        } => {
            init_logging(cli.log_format.unwrap_or(LogFormat::Text), "warn");
            switchyard_provider::demo::run(switchyard_provider::demo::Listen {
                endpoint: endpoint_listen,
                admin: admin_listen,
                federation: federation_listen,
                directory: directory_listen,
                sip: sip_listen,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Ca(command) => ca(command),
        Command::Federation(command) => federation(command).await,
        Command::Users { admin, command } => users(admin, command).await,
        Command::Endpoints { admin, command } => endpoints(admin, command).await,
        Command::Sip { admin, command } => sip(admin, command).await,
        Command::Admin { admin, command } => operators(admin, command).await,
        Command::Endpoint(command) => {
            init_logging(cli.log_format.unwrap_or(LogFormat::Text), "warn");
            endpoint(command).await
        }
    }
}

fn unix_now() -> i64 {
    switchyard_provider::shared::now_ms() / 1000
}

fn ca(command: CaCommand) -> anyhow::Result<ExitCode> {
    use switchyard_protocol::pki::FederationCa;
    match command {
        CaCommand::Init { files, name } => {
            FederationCa::init(&files.ca_cert, &files.ca_key, &name)?;
            println!(
                "federation CA created: {} (key {})",
                files.ca_cert.display(),
                files.ca_key.display()
            );
        }
        CaCommand::IssueProvider {
            files,
            provider_id,
            dns_names,
            days,
            cert_out,
            key_out,
        } => {
            let ca = FederationCa::load(&files.ca_cert, &files.ca_key)?;
            let issued = ca.issue_provider(&provider_id, &dns_names, days)?;
            switchyard_provider::pki::write_file(&key_out, issued.key_pem.as_bytes(), true)?;
            switchyard_provider::pki::write_file(&cert_out, issued.cert_pem.as_bytes(), false)?;
            println!(
                "issued `{provider_id}`: {} (key {})",
                cert_out.display(),
                key_out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn federation(command: FederationCommand) -> anyhow::Result<ExitCode> {
    use switchyard_protocol::discovery::Directory;
    use switchyard_protocol::pki::{self, FederationCa};
    match command {
        FederationCommand::Sign {
            files,
            members,
            out,
            json,
        } => {
            let ca = FederationCa::load(&files.ca_cert, &files.ca_key)?;
            let directory =
                switchyard_provider::members::directory_from_file(&members, unix_now())?;
            let envelope = directory.sign(&ca)?;
            let bytes = envelope.encode(encoding(json));
            std::fs::write(&out, bytes).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "signed version {} of `{}` with {} member(s), expires at {}: {}",
                directory.version,
                directory.federation,
                directory.members.len(),
                directory.expires,
                out.display()
            );
        }
        FederationCommand::Verify { ca_cert, file } => {
            let ca = pki::load_certs(&ca_cert)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let encoding = if bytes.first() == Some(&b'{') {
                Encoding::Json
            } else {
                Encoding::Plist
            };
            let envelope = Dict::decode(&bytes, encoding)?;
            let directory = Directory::verify(&envelope, &ca[0], unix_now(), None)?;
            println!(
                "`{}` version {}, expires at {}",
                directory.federation, directory.version, directory.expires
            );
            for member in &directory.members {
                println!(
                    "  {}  {}  {}",
                    member.provider_id, member.base_uri, member.display_name
                );
            }
        }
        FederationCommand::Status { admin } => {
            let admin = AdminClient::new(admin)?;
            let value = admin
                .send(admin.http.get(admin.url("/admin/v1/federation")))
                .await?;
            print_json(&value);
        }
        FederationCommand::Resync { admin } => {
            let admin = AdminClient::new(admin)?;
            let value = admin
                .send(admin.http.post(admin.url("/admin/v1/federation/resync")))
                .await?;
            print_json(&value);
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    fn new(args: AdminArgs) -> anyhow::Result<Self> {
        let token = match (args.admin_token, args.admin_token_file) {
            (Some(t), _) => t,
            (None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string(),
            (None, None) => bail!("give the admin token with --admin-token, --admin-token-file or SWITCHYARD_ADMIN_TOKEN"),
        };
        Ok(AdminClient {
            http: reqwest::Client::builder().build()?,
            base: args.admin_url.trim_end_matches('/').to_string(),
            token,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .context("reaching the admin API")?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .context("reading the admin API's answer")?;
        if !status.is_success() {
            bail!(
                "{} ({}): {}",
                body["error"].as_str().unwrap_or("error"),
                status.as_u16(),
                body["message"].as_str().unwrap_or("")
            );
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON prints")
    );
}

async fn users(admin: AdminArgs, command: UsersCommand) -> anyhow::Result<ExitCode> {
    let admin = AdminClient::new(admin)?;
    match command {
        UsersCommand::Add { uris, name } => {
            let body = serde_json::json!({"display_name": name, "uris": uris});
            print_json(
                &admin
                    .send(admin.http.post(admin.url("/admin/v1/users")).json(&body))
                    .await?,
            );
        }
        UsersCommand::Remove { user_id } => {
            print_json(
                &admin
                    .send(
                        admin
                            .http
                            .delete(admin.url(&format!("/admin/v1/users/{user_id}"))),
                    )
                    .await?,
            );
        }
        UsersCommand::List { search, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(q) = search {
                query.push(("q", q));
            }
            let url = reqwest::Url::parse_with_params(&admin.url("/admin/v1/users"), &query)?;
            print_json(&admin.send(admin.http.get(url)).await?);
        }
        UsersCommand::Code {
            user_id,
            ttl_seconds,
        } => {
            let body = serde_json::json!({"ttl_seconds": ttl_seconds});
            let url = admin.url(&format!("/admin/v1/users/{user_id}/provisioning-codes"));
            print_json(&admin.send(admin.http.post(url).json(&body)).await?);
        }
        UsersCommand::Import { file } => return import(&admin, &file).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn import(admin: &AdminClient, file: &Path) -> anyhow::Result<ExitCode> {
    use futures_util::StreamExt;
    let handle = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("opening {}", file.display()))?;
    let response = admin
        .http
        .post(admin.url("/admin/v1/import"))
        .bearer_auth(&admin.token)
        .header(reqwest::header::CONTENT_TYPE, "text/csv")
        .body(reqwest::Body::from(handle))
        .send()
        .await
        .context("reaching the admin API")?;
    if !response.status().is_success() {
        let status = response.status();
        bail!(
            "import refused ({status}): {}",
            response.text().await.unwrap_or_default()
        );
    }
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    let mut outcome = ExitCode::FAILURE;
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk?);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let event: serde_json::Value = serde_json::from_slice(&line)?;
            if let Some(p) = event.get("progress") {
                eprintln!("imported {} rows…", p["rows"]);
            } else if let Some(done) = event.get("done") {
                println!(
                    "imported {} users ({} URIs) in {:.1} s: {:.0} rows/s",
                    done["users"],
                    done["uris"],
                    done["seconds"].as_f64().unwrap_or(0.0),
                    done["rows_per_second"].as_f64().unwrap_or(0.0)
                );
                outcome = ExitCode::SUCCESS;
            } else if let Some(failed) = event.get("failed") {
                eprintln!(
                    "import failed: {}",
                    failed["message"].as_str().unwrap_or("")
                );
                for e in failed["errors"].as_array().into_iter().flatten() {
                    eprintln!(
                        "  line {}: {}",
                        e["line"],
                        e["message"].as_str().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(outcome)
}

async fn endpoints(admin: AdminArgs, command: EndpointsCommand) -> anyhow::Result<ExitCode> {
    let admin = AdminClient::new(admin)?;
    let value = match command {
        EndpointsCommand::List { user_id } => {
            admin
                .send(
                    admin
                        .http
                        .get(admin.url(&format!("/admin/v1/users/{user_id}/endpoints"))),
                )
                .await?
        }
        EndpointsCommand::Revoke { endpoint_id } => {
            admin
                .send(
                    admin
                        .http
                        .post(admin.url(&format!("/admin/v1/endpoints/{endpoint_id}/revoke"))),
                )
                .await?
        }
    };
    print_json(&value);
    Ok(ExitCode::SUCCESS)
}

async fn operators(admin: AdminArgs, command: OperatorCommand) -> anyhow::Result<ExitCode> {
    let admin = AdminClient::new(admin)?;
    let value = match command {
        OperatorCommand::Add {
            name,
            role,
            password_file,
        } => {
            let body = serde_json::json!({
                "name": name,
                "role": role,
                "password": read_password(&password_file)?,
            });
            admin
                .send(
                    admin
                        .http
                        .post(admin.url("/admin/v1/operators"))
                        .json(&body),
                )
                .await?
        }
        OperatorCommand::List => {
            admin
                .send(admin.http.get(admin.url("/admin/v1/operators")))
                .await?
        }
        OperatorCommand::Remove { name } => {
            let path = format!(
                "/admin/v1/operators/{}",
                percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC)
            );
            admin.send(admin.http.delete(admin.url(&path))).await?
        }
        OperatorCommand::Audit { limit } => {
            admin
                .send(
                    admin
                        .http
                        .get(admin.url(&format!("/admin/v1/audit?limit={limit}"))),
                )
                .await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(ExitCode::SUCCESS)
}

async fn sip(admin: AdminArgs, command: SipCommand) -> anyhow::Result<ExitCode> {
    let admin = AdminClient::new(admin)?;
    let value = match command {
        SipCommand::Add {
            user_id,
            aor,
            username,
            password_file,
        } => {
            let password = read_password(&password_file)?;
            let body = serde_json::json!({
                "aor": aor,
                "username": username,
                "password": password,
            });
            admin
                .send(
                    admin
                        .http
                        .post(admin.url(&format!("/admin/v1/users/{user_id}/sip-accounts")))
                        .json(&body),
                )
                .await?
        }
        SipCommand::List { user_id } => {
            admin
                .send(
                    admin
                        .http
                        .get(admin.url(&format!("/admin/v1/users/{user_id}/sip-accounts"))),
                )
                .await?
        }
        SipCommand::Remove { aor } => {
            admin
                .send(
                    admin
                        .http
                        .delete(admin.url(&format!("/admin/v1/sip-accounts/{aor}"))),
                )
                .await?
        }
    };
    print_json(&value);
    Ok(ExitCode::SUCCESS)
}

fn encoding(json: bool) -> Encoding {
    if json {
        Encoding::Json
    } else {
        Encoding::Plist
    }
}

async fn endpoint(command: EndpointCommand) -> anyhow::Result<ExitCode> {
    match command {
        EndpointCommand::Register {
            provider,
            ca,
            uri,
            code,
            state,
            name,
            audio_only,
            json,
        } => {
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading {}", ca.display()))?;
            let capabilities = audio_only.then(|| Capabilities {
                video: false,
                ..Capabilities::default()
            });
            let identity = client::register(
                &provider,
                &ca_pem,
                &uri,
                &code,
                &name,
                capabilities,
                encoding(json),
            )
            .await?;
            identity.save(&state)?;
            println!(
                "registered endpoint {} for {}",
                identity.endpoint_id,
                identity.uris.join(", ")
            );
            println!("identity saved in {}", state.display());
            Ok(ExitCode::SUCCESS)
        }
        EndpointCommand::Call {
            uri,
            endpoint,
            video,
            hangup_after,
            media,
        } => {
            let client = EndpointClient::new(
                EndpointIdentity::load(&endpoint.state)?,
                encoding(endpoint.json),
            )?;
            let mut pushes = client.push_channel(endpoint.push).await?;
            let kinds = if video {
                vec![MediaKind::Audio, MediaKind::Video]
            } else {
                vec![MediaKind::Audio]
            };
            let outgoing =
                OutgoingCall::place(&client, &mut pushes, &uri, kinds, media.options()).await?;
            println!(
                "calling {uri} (session {}); ringing {} device(s)",
                outgoing.session_id(),
                outgoing.rung()
            );
            let code = match outgoing.wait_for_answer().await? {
                Answer::Accepted(call) => {
                    hold_call(*call, hangup_after).await?;
                    ExitCode::SUCCESS
                }
                Answer::Rejected(reject) => {
                    println!(
                        "rejected: {}{}",
                        reject.reason,
                        reject
                            .reason_text
                            .map(|t| format!(" ({t})"))
                            .unwrap_or_default()
                    );
                    ExitCode::from(3)
                }
                Answer::Ended(cancel) => {
                    println!("call ended: {}", cancel.reason);
                    ExitCode::from(4)
                }
            };
            pushes.ack().await?;
            Ok(code)
        }
        EndpointCommand::Answer {
            endpoint,
            auto_accept,
            auto_reject,
            once,
            media,
        } => {
            let client = EndpointClient::new(
                EndpointIdentity::load(&endpoint.state)?,
                encoding(endpoint.json),
            )?;
            let options = media.options();
            let mut pushes = client.push_channel(endpoint.push).await?;
            println!("waiting for calls to {}", client.identity.uris.join(", "));
            let decision = if auto_accept {
                Decision::Accept
            } else if let Some(reason) = auto_reject {
                Decision::Reject(reason)
            } else {
                Decision::Ask
            };
            loop {
                let settled = match call::next_incoming(&mut pushes).await? {
                    Incoming::Call(incoming) => {
                        take_call(incoming, &client, &mut pushes, decision, &options).await?
                    }
                    Incoming::Ended(cancel) => {
                        println!("call {} ended: {}", cancel.session_id, cancel.reason);
                        true
                    }
                    Incoming::Other(push) => {
                        println!("push: {}", push.action());
                        false
                    }
                };
                if once && settled {
                    pushes.ack().await?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
}

/// What `endpoint answer` does with a call: its `--auto-accept` or `--auto-reject`, or ask.
#[derive(Clone, Copy)]
enum Decision {
    Accept,
    Reject(RejectReason),
    Ask,
}

/// The caller's side of an answered call, printed, until the hang-up time (or Ctrl-C), or until
/// the other side ends it.
async fn hold_call(mut call: Call<'_>, hangup_after: Option<u64>) -> anyhow::Result<()> {
    println!("answered by {}", call.peer_uri());
    let hang_up = async {
        match hangup_after {
            Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
            None => switchyard_provider::demo::shutdown_signal().await,
        }
    };
    tokio::pin!(hang_up);
    let mut hanging_up = false;
    let end = loop {
        tokio::select! {
            _ = &mut hang_up, if !hanging_up => {
                hanging_up = true;
                call.hang_up();
            }
            event = call.next_event() => {
                if let Some(end) = print_event(event?) {
                    break end;
                }
            }
        }
    };
    match end {
        CallEnd::HungUp => println!("hung up"),
        CallEnd::Cancelled(_) | CallEnd::RemoteHangUp => println!("the other side hung up"),
    }
    if let Some(stats) = call.close().await {
        println!("{}", stats_line(&stats));
    }
    Ok(())
}

/// Takes up a call ringing here, printed, as `decision` says; false when it was not settled (the
/// provider refused the Accept), so `--once` waits for the next one.
async fn take_call(
    incoming: IncomingCall,
    client: &EndpointClient,
    pushes: &mut PushChannel,
    decision: Decision,
    options: &MediaOptions,
) -> anyhow::Result<bool> {
    let ring = incoming.push();
    let session_id = ring.session_id.to_string();
    println!(
        "incoming call from {} (session {session_id}){}",
        ring.peer_uri,
        if ring.peer_verified {
            ", caller identity verified by its provider"
        } else {
            ", caller identity NOT verified"
        }
    );
    let reject = match decision {
        Decision::Accept => None,
        Decision::Reject(reason) => Some(reason),
        Decision::Ask => (!ask("accept? [y/N] ").await?).then_some(RejectReason::Declined),
    };
    if let Some(reason) = reject {
        incoming.reject(client, reason, None).await?;
        println!("rejected ({reason})");
        return Ok(true);
    }
    let mut call = match incoming.accept(client, pushes, options).await? {
        Accepted::Answered(call) => *call,
        Accepted::Unsupported(why) => {
            println!("rejected (unsupported-media): {why}");
            return Ok(true);
        }
        Accepted::Refused(e) => {
            println!("could not accept: {e}");
            return Ok(false);
        }
    };
    println!("accepted");
    let end = loop {
        if let Some(end) = print_event(call.next_event().await?) {
            break end;
        }
    };
    println!("call {session_id} ended: {}", end.reason());
    if let Some(stats) = call.close().await {
        println!("{}", stats_line(&stats));
    }
    Ok(true)
}

/// Prints what happened in a call; its end, which each side words in its own way, is returned
/// instead.
fn print_event(event: CallEvent) -> Option<CallEnd> {
    match event {
        CallEvent::Media(event) => print_media_event(&event),
        CallEvent::RelayAdded { provider } => {
            println!("media: relay of {provider} allocated after the answer; update sent")
        }
        CallEvent::NoRelay(why) => println!("media: no relay for the call: {why}"),
        CallEvent::PeerUpdated { candidates } => {
            println!("the other side updated its media: {candidates} new candidate(s)")
        }
        CallEvent::PeerUpdateRefused(why) => {
            println!("the other side's media update was refused: {why}")
        }
        CallEvent::Stats(stats) => println!("{}", stats_line(&stats)),
        CallEvent::VideoMuted(true) => println!("muted video"),
        CallEvent::VideoMuted(false) => println!("unmuted video"),
        CallEvent::Ended(end) => return Some(end),
    }
    None
}

fn print_media_event(event: &MediaEvent) {
    match event {
        MediaEvent::PathSelected {
            local,
            remote,
            remote_address,
        } => println!("media path: {local} -> {remote} ({remote_address})"),
        MediaEvent::Secured { profile } => println!("media secured end to end: {profile}"),
        MediaEvent::Negotiated { audio, video } => println!(
            "media negotiated: audio {}, video {}",
            audio.as_deref().unwrap_or("none"),
            video.as_deref().unwrap_or("none")
        ),
        MediaEvent::RemoteVideoMuted(true) => println!("the other side muted its video"),
        MediaEvent::RemoteVideoMuted(false) => println!("the other side unmuted its video"),
        MediaEvent::RemoteHangUp => println!("media: the other side hung up (SIP BYE)"),
        MediaEvent::Ended => println!("media: ended"),
        MediaEvent::Failed(why) => println!("media failed: {why}"),
    }
}

fn stats_line(stats: &CallStats) -> String {
    let stream = |name: &str, s: &StreamStats| {
        format!(
            "{name} sent {} received {} lost {} jitter {:.1} ms",
            s.packets_sent, s.packets_received, s.packets_lost, s.jitter_ms
        )
    };
    format!(
        "stats: {} | {} | rtt {} | srtp failures {}",
        stream("audio", &stats.audio),
        stream("video", &stats.video),
        stats
            .round_trip
            .map(|rtt| format!("{:.1} ms", rtt.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into()),
        stats.srtp_failures
    )
}

async fn ask(prompt: &str) -> anyhow::Result<bool> {
    use tokio::io::AsyncBufReadExt;
    print!("{prompt}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let mut line = String::new();
    tokio::io::BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;
    use switchyard_provider::config::is_env_override;

    use super::Cli;

    fn variables(command: &clap::Command, names: &mut BTreeSet<String>) {
        names.extend(
            command
                .get_arguments()
                .filter_map(|arg| arg.get_env())
                .map(|name| name.to_string_lossy().into_owned()),
        );
        for subcommand in command.get_subcommands() {
            variables(subcommand, names);
        }
    }

    /// An operator exports the admin variables in the shell that also starts `switchyard serve`.
    #[test]
    fn no_command_line_variable_is_a_configuration_override() {
        let mut names = BTreeSet::new();
        variables(&Cli::command(), &mut names);
        assert!(names.contains("SWITCHYARD_ADMIN_TOKEN"), "{names:?}");
        let overrides: Vec<&String> = names.iter().filter(|name| is_env_override(name)).collect();
        assert!(
            overrides.is_empty(),
            "read as configuration by the daemon: {overrides:?}"
        );
    }
}
