//! `meridian`: one binary for every Meridian component and for the command-line client.
//!
//! Component subcommands (`control`, `dev`, `proxy`, …) run servers; the client commands talk
//! to the public API named by `--api`/`MERIDIAN_API` with the token of `--token`/`MERIDIAN_TOKEN`,
//! else those of the config file's context (see [`connection`]). This crate only wires things
//! together: the logic lives in the library crates.

mod client;
mod commands;
mod config;
mod connection;
mod definition;
mod logging;
mod malloc;
mod output;
mod yaml_depth;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::Client;
use crate::connection::ClientArgs;

/// Meridian: run your services in several regions on machines you own.
#[derive(Parser)]
#[command(name = "meridian", version, propagate_version = true)]
struct Cli {
    /// How this process writes its own log on standard error: `text`, or `json` (one object
    /// per line); the components `meridian dev` starts write theirs the same way.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "MERIDIAN_LOG_FORMAT"
    )]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// A client command with subcommands: the API's flags (on each subcommand too), then which one.
#[derive(Args)]
struct ClientGroup<C: Subcommand> {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: C,
}

/// A client command: the API's flags and the command's own.
#[derive(Args)]
struct ClientCommand<A: Args> {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    args: A,
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
    Edge(Box<commands::edge::EdgeCommand>),
    /// Run a node's agent: the instances its region assigns to this machine.
    Agent(commands::agent::AgentArgs),
    /// Make a one-time join token for a proxy or agent of a region (admin).
    JoinToken(ClientCommand<commands::join_token::JoinTokenArgs>),
    /// List a region's nodes, or drain one: move its instances elsewhere (admin).
    Node(ClientGroup<commands::node::NodeCommand>),
    /// Manage regions (admin).
    Region(ClientGroup<commands::resources::RegionCommand>),
    /// Manage orgs (admin).
    Org(ClientGroup<commands::resources::OrgCommand>),
    /// Manage an org's API tokens.
    Token(ClientGroup<commands::resources::TokenCommand>),
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
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Purge an app's responses from every edge's cache: by URL, by tag, or all of them.
    Cache(ClientGroup<commands::cache::CacheCommand>),
    /// Set, list and delete an app's secrets (referenced in env as `{secret: NAME}`).
    Secret(ClientGroup<commands::secrets::SecretCommand>),
    /// Register, list and remove a service's endpoints (where its instances listen).
    Endpoint(ClientGroup<commands::endpoints::EndpointCommand>),
    /// List the public domains of your services and the state of their certificates.
    Domains(ClientCommand<commands::domains::DomainsArgs>),
    /// Upload a certificate for a public domain.
    Cert(ClientGroup<commands::domains::CertCommand>),
    /// List resources.
    Get(ClientGroup<commands::resources::GetCommand>),
    /// Show the output of a service's instances in every region (or one), each line tagged
    /// with its region, instance and stream; `-f` follows new lines.
    Logs(ClientCommand<commands::logs::LogsArgs>),
    /// Show a service's state in each of its regions.
    Status {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: commands::resources::AppScope,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the live request figures of an app's services per region (requests/s, errors,
    /// latency, connections, instances), redrawn every few seconds.
    Top(ClientCommand<commands::top::TopArgs>),
    /// Make a new version of a service equal to an earlier one.
    Rollback {
        /// The service.
        service: String,
        #[command(flatten)]
        scope: commands::resources::AppScope,
        /// The version to go back to.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow, list, pause, resume, promote and abort a service's rollouts.
    Rollout(ClientGroup<commands::rollout::RolloutCommand>),
    /// Delete a resource.
    Delete(ClientGroup<commands::resources::DeleteCommand>),
    /// Write the global control plane's whole store (definitions and their versions, orgs,
    /// tokens as hashes, regions, certificates, sealed secrets, the change feed) to one file.
    Backup(commands::backup::BackupArgs),
    /// Fill an empty store with a file of `meridian backup` (from either backend).
    Restore(commands::backup::RestoreArgs),
    /// List, choose and change the client's contexts: API URL, token and default org, kept in
    /// $XDG_CONFIG_HOME/meridian/config.yaml (else ~/.config/meridian/config.yaml).
    #[command(subcommand)]
    Context(commands::context::ContextCommand),
    /// Print a completion script for a shell: `source <(meridian completions bash)` in
    /// ~/.bashrc; for zsh, save it as `_meridian` in a folder of `$fpath`; for fish, as
    /// ~/.config/fish/completions/meridian.fish.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// Tasks the single-CPU proxy runs between two looks at its sockets (tokio's default is 61).
/// Larger rounds let an HTTP/2 connection's answers leave together (`meridian_proxy`'s write
/// coalescing joins what one round answers), as HAProxy handles up to 200 events per poll:
/// 5-6% less CPU per h2-over-TLS request measured at 128, 256 and 512 alike; no change for
/// HTTP/1.1.
const TASKS_PER_ROUND: u32 = 256;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    // The proxy and the DNS server on a single CPU run on the current thread: no cross-thread scheduling on the
    // request path. Everything else (and the proxy on several CPUs) uses the multi-threaded one.
    let single_cpu = std::thread::available_parallelism().map_or(true, |n| n.get() == 1);
    let runtime = if single_cpu && matches!(cli.command, Command::Proxy(_) | Command::Dns(_)) {
        tokio::runtime::Builder::new_current_thread()
            .event_interval(TASKS_PER_ROUND)
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
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    use commands::{control, dev, resources};
    if std::env::var_os(dev::children::EXIT_WITH_PARENT).is_some() {
        tokio::spawn(dev::children::exit_with_parent());
    }
    match command {
        Command::Control(control_args) => control::run(*control_args).await,
        Command::Dev(dev_args) => dev::run(dev_args).await,
        Command::Proxy(proxy_args) => commands::proxy::run(proxy_args).await,
        Command::Agent(agent_args) => commands::agent::run(agent_args).await,
        Command::Edge(edge_args) => commands::edge::run(*edge_args).await,
        Command::Dns(dns_args) => commands::dns::run(dns_args).await,
        Command::Gateway(gateway_args) => commands::gateway::run(gateway_args).await,
        Command::Logs(c) => commands::logs::run(&c.client, c.args).await,
        Command::Context(cmd) => commands::context::run(cmd).await,
        Command::Completions { shell } => commands::completions::run(shell),
        Command::Backup(args) => commands::backup::backup(args).await,
        Command::Restore(args) => commands::backup::restore(args).await,
        Command::JoinToken(c) => commands::join_token::run(c.args, c.client).await,
        Command::Node(g) => commands::node::run(g.command, g.client).await,
        Command::Region(g) => {
            resources::region(&Client::new(&g.client).await?, g.client.output, g.command).await
        }
        Command::Org(g) => {
            resources::org(&Client::new(&g.client).await?, g.client.output, g.command).await
        }
        Command::Token(g) => {
            resources::token(&Client::new(&g.client).await?, g.client.output, g.command).await
        }
        Command::Deploy {
            file,
            detach,
            wait,
            client,
        } => {
            let at_terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            let follow = wait || (at_terminal && !detach);
            let api = Client::new(&client).await?;
            resources::deploy(&api, client.output, &file, follow).await
        }
        Command::Cache(g) => {
            let api = Client::new(&g.client).await?;
            commands::cache::cache(&api, g.client.output, g.command).await
        }
        Command::Secret(g) => {
            let api = Client::new(&g.client).await?;
            commands::secrets::secret(&api, g.client.output, g.command).await
        }
        Command::Endpoint(g) => {
            let api = Client::new(&g.client).await?;
            commands::endpoints::endpoint(&api, g.client.output, g.command).await
        }
        Command::Domains(c) => {
            let api = Client::new(&c.client).await?;
            commands::domains::domains(&api, c.client.output, c.args).await
        }
        Command::Cert(g) => {
            let api = Client::new(&g.client).await?;
            commands::domains::cert(&api, g.client.output, g.command).await
        }
        Command::Get(g) => {
            resources::get(&Client::new(&g.client).await?, g.client.output, g.command).await
        }
        Command::Status {
            service,
            scope,
            client,
        } => {
            let api = Client::new(&client).await?;
            resources::status(&api, client.output, &service, &scope).await
        }
        Command::Top(c) => {
            commands::top::top(&Client::new(&c.client).await?, c.client.output, c.args).await
        }
        Command::Rollback {
            service,
            scope,
            to,
            client,
        } => {
            let api = Client::new(&client).await?;
            resources::rollback(&api, client.output, &service, &scope, to).await
        }
        Command::Rollout(g) => {
            let api = Client::new(&g.client).await?;
            commands::rollout::rollout(&api, g.client.output, g.command).await
        }
        Command::Delete(g) => resources::delete(&Client::new(&g.client).await?, g.command).await,
    }
}
