//! `switchyard ca …` and `switchyard federation …`: the federation CA, provider certificates and
//! the signed discovery dictionary, all on local files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use switchyard_protocol::dict::{Dict, Encoding};

use crate::admin::{print_json, AdminArgs, AdminClient};

#[derive(Args)]
pub struct CaFiles {
    /// The federation CA certificate (PEM).
    #[arg(long)]
    ca_cert: PathBuf,
    /// The federation CA private key (PEM, mode 0600).
    #[arg(long)]
    ca_key: PathBuf,
}

#[derive(Subcommand)]
pub enum CaCommand {
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
pub enum FederationCommand {
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

fn unix_now() -> i64 {
    switchyard_provider::shared::now_ms() / 1000
}

pub fn ca(command: CaCommand) -> anyhow::Result<ExitCode> {
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

pub async fn federation(command: FederationCommand) -> anyhow::Result<ExitCode> {
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
            let bytes = envelope.encode(if json {
                Encoding::Json
            } else {
                Encoding::Plist
            });
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
