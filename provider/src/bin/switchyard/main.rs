//! The `switchyard` command: the daemon (`serve`), its configuration, the demo, and the command
//! lines over the admin API, the key files and the endpoint crate.

mod admin;
mod endpoint;
mod keys;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use switchyard_provider::config::{Config, LogFormat};
use switchyard_provider::Provider;

use admin::{
    endpoints, operators, sip, users, AdminArgs, EndpointsCommand, OperatorCommand, SipCommand,
    UsersCommand,
};
use endpoint::{endpoint, EndpointCommand};

/// glibc's malloc was 18% of the SIP edge's CPU under load (`perf`, `docs/benchmarks.md`): a
/// call's messages, dictionaries and SQL rows are many small, short-lived allocations made and
/// freed on different threads, which mimalloc's per-thread free lists serve far cheaper.
/// `--cfg switchyard_system_allocator` (given to this crate alone: `cargo rustc --release -p
/// switchyard-provider --bin switchyard -- --cfg switchyard_system_allocator`) leaves the system
/// allocator in place, for heap profilers that hook malloc (heaptrack, valgrind).
#[cfg(not(switchyard_system_allocator))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use keys::{ca, federation, CaCommand, FederationCommand};

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
