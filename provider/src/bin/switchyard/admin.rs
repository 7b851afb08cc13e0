//! The commands that manage a running provider through its admin API: `users`, `endpoints`,
//! `admin` (operators) and `sip`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct AdminArgs {
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
pub enum UsersCommand {
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
pub enum EndpointsCommand {
    /// List a user's endpoints.
    List { user_id: String },
    /// Revoke an endpoint: its next request is refused and its push channel closes.
    Revoke { endpoint_id: String },
}

#[derive(Subcommand)]
pub enum SipCommand {
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
pub enum OperatorCommand {
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

/// The admin API of a running provider, with the operator's bearer token.
pub struct AdminClient {
    pub http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    pub fn new(args: AdminArgs) -> anyhow::Result<Self> {
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

    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON prints")
    );
}

pub async fn users(admin: AdminArgs, command: UsersCommand) -> anyhow::Result<ExitCode> {
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

pub async fn endpoints(admin: AdminArgs, command: EndpointsCommand) -> anyhow::Result<ExitCode> {
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

pub async fn operators(admin: AdminArgs, command: OperatorCommand) -> anyhow::Result<ExitCode> {
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

pub async fn sip(admin: AdminArgs, command: SipCommand) -> anyhow::Result<ExitCode> {
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
