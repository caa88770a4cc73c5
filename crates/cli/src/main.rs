//! `meridian`: one binary for every Meridian component and for the command-line client.
//!
//! Component subcommands (`control`, `dev`) run servers; the others talk to the public API named
//! by `MERIDIAN_API` with the token in `MERIDIAN_TOKEN`. This crate only wires things together:
//! the logic lives in the library crates.

#![deny(unsafe_code)]

mod client;
mod commands;
mod definition;
mod malloc;
mod output;
mod yaml_depth;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::output::Format;

/// Meridian: run your services in several regions on machines you own.
#[derive(Parser)]
#[command(name = "meridian", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

/// How to reach the API and how to print answers.
#[derive(clap::Args, Clone)]
pub struct ClientArgs {
    /// Base URL of the public API.
    #[arg(
        long,
        env = "MERIDIAN_API",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub api: String,
    /// API token (printed by the control plane at first start, or from `meridian token create`).
    #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control plane.
    Control(Box<commands::control::ControlArgs>),
    /// Run a whole platform on this machine and deploy an example app.
    Dev(commands::dev::DevArgs),
    /// Run the data-plane proxy from a config file or an xDS control plane.
    Proxy(commands::proxy::ProxyArgs),
    /// Run a region's gateway: its ingress, following its control plane over mutual TLS.
    Gateway(commands::gateway::GatewayArgs),
    /// Serve the .internal DNS server from a table file (agents run it for their instances).
    Dns(commands::dns::DnsArgs),
    /// Run an edge: a public listener routing each host to the nearest healthy region.
    Edge(commands::edge::EdgeArgs),
    /// Run a node's agent: the instances its region assigns to this machine.
    Agent(commands::agent::AgentArgs),
    /// Make a one-time join token for a proxy or agent of a region (admin).
    JoinToken(commands::join_token::JoinTokenArgs),
    /// List a region's nodes, or drain one: move its instances elsewhere (admin).
    #[command(subcommand)]
    Node(commands::node::NodeCommand),
    /// Manage regions (admin).
    #[command(subcommand)]
    Region(commands::resources::RegionCommand),
    /// Manage orgs (admin).
    #[command(subcommand)]
    Org(commands::resources::OrgCommand),
    /// Manage an org's API tokens.
    #[command(subcommand)]
    Token(commands::resources::TokenCommand),
    /// Create or update a service from a definition file (YAML or JSON); prints the new version
    /// and, at a terminal, follows its rollout region by region until it ends.
    Deploy {
        /// The definition file; `-` reads standard input.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Return once the version is applied, without following its rollout (the default
        /// when standard output is not a terminal).
        #[arg(long, conflicts_with = "wait")]
        detach: bool,
        /// Follow the rollout until it ends even when standard output is not a terminal;
        /// exits non-zero when it failed or was rolled back.
        #[arg(long)]
        wait: bool,
    },
    /// Set, list and delete an app's secrets (referenced in env as `{secret: NAME}`).
    #[command(subcommand)]
    Secret(commands::secrets::SecretCommand),
    /// Register, list and remove a service's endpoints (where its instances listen).
    #[command(subcommand)]
    Endpoint(commands::endpoints::EndpointCommand),
    /// List the public domains of your services and the state of their certificates.
    Domains(commands::domains::DomainsArgs),
    /// Upload a certificate for a public domain.
    #[command(subcommand)]
    Cert(commands::domains::CertCommand),
    /// List resources.
    #[command(subcommand)]
    Get(commands::resources::GetCommand),
    /// Show the output of a service's instances kept by the agents on this machine.
    Logs(commands::logs::LogsArgs),
    /// Show a service's state in each of its regions.
    Status {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: commands::resources::AppScope,
    },
    /// Show the live request figures of an app's services per region (requests/s, errors,
    /// latency, connections, instances), redrawn every few seconds.
    Top(commands::top::TopArgs),
    /// Make a new version of a service equal to an earlier one.
    Rollback {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: commands::resources::AppScope,
        /// The version to go back to.
        #[arg(long)]
        to: u64,
    },
    /// Follow, list, pause, resume, promote and abort a service's rollouts.
    #[command(subcommand)]
    Rollout(commands::rollout::RolloutCommand),
    /// Delete a resource.
    #[command(subcommand)]
    Delete(commands::resources::DeleteCommand),
}

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: a log file or journal gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The proxy and the DNS server on a single CPU run on the current thread: no cross-thread scheduling on the
    // request path. Everything else (and the proxy on several CPUs) uses the multi-threaded one.
    let single_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    let runtime = if single_cpu && matches!(cli.command, Command::Proxy(_) | Command::Dns(_)) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cli.client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, args: ClientArgs) -> anyhow::Result<()> {
    use commands::{control, dev, resources};
    let format = args.output;
    if std::env::var_os(dev::children::EXIT_WITH_PARENT).is_some() {
        tokio::spawn(dev::children::exit_with_parent());
    }
    match command {
        Command::Control(control_args) => control::run(*control_args, args).await,
        Command::Dev(dev_args) => dev::run(dev_args).await,
        Command::Proxy(proxy_args) => commands::proxy::run(proxy_args).await,
        Command::Agent(agent_args) => commands::agent::run(agent_args).await,
        Command::Edge(edge_args) => commands::edge::run(edge_args).await,
        Command::Dns(dns_args) => commands::dns::run(dns_args).await,
        Command::Gateway(gateway_args) => commands::gateway::run(gateway_args).await,
        Command::Logs(logs_args) => commands::logs::run(logs_args),
        Command::JoinToken(join_args) => commands::join_token::run(join_args, args).await,
        Command::Node(cmd) => commands::node::run(cmd, args).await,
        Command::Region(cmd) => resources::region(&Client::new(&args)?, format, cmd).await,
        Command::Org(cmd) => resources::org(&Client::new(&args)?, format, cmd).await,
        Command::Token(cmd) => resources::token(&Client::new(&args)?, format, cmd).await,
        Command::Deploy { file, detach, wait } => {
            let at_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let follow = wait || (at_terminal && !detach);
            resources::deploy(&Client::new(&args)?, format, &file, follow).await
        }
        Command::Secret(cmd) => commands::secrets::secret(&Client::new(&args)?, format, cmd).await,
        Command::Endpoint(cmd) => {
            commands::endpoints::endpoint(&Client::new(&args)?, format, cmd).await
        }
        Command::Domains(domains_args) => {
            commands::domains::domains(&Client::new(&args)?, format, domains_args).await
        }
        Command::Cert(cmd) => commands::domains::cert(&Client::new(&args)?, format, cmd).await,
        Command::Get(cmd) => resources::get(&Client::new(&args)?, format, cmd).await,
        Command::Status { service, scope } => {
            resources::status(&Client::new(&args)?, format, &service, &scope).await
        }
        Command::Top(top_args) => commands::top::top(&Client::new(&args)?, format, top_args).await,
        Command::Rollback { service, scope, to } => {
            resources::rollback(&Client::new(&args)?, format, &service, &scope, to).await
        }
        Command::Rollout(cmd) => {
            commands::rollout::rollout(&Client::new(&args)?, format, cmd).await
        }
        Command::Delete(cmd) => resources::delete(&Client::new(&args)?, cmd).await,
    }
}
