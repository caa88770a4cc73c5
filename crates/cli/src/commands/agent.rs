//! `meridian agent`: one per machine; runs the instances its region's control plane assigns to
//! this node.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use meridian_agent::{run_agent, AddressPool, AgentOptions, Isolation};
use meridian_identity::Subject;

/// Options of `meridian agent`.
#[derive(Args)]
pub struct AgentArgs {
    /// The region this node belongs to.
    #[arg(long)]
    region: String,
    /// The region's control plane (`https://HOST:PORT`, its --xds address).
    #[arg(long, value_name = "URL")]
    control: String,
    /// This node's name (a DNS label, unique in the region).
    #[arg(long)]
    node: String,
    /// The one-time join token for `agent/<node>` (first start only; ask an administrator:
    /// meridian join-token agent/<node>).
    #[arg(long, env = "MERIDIAN_JOIN_TOKEN", hide_env_values = true)]
    join_token: Option<String>,
    /// How many instances this node may run.
    #[arg(long, default_value_t = 16)]
    capacity: u32,
    /// The first loopback address given to instances in host mode; each instance gets its own.
    #[arg(long, default_value = "127.0.100.1")]
    instance_addresses: Ipv4Addr,
    /// How instances are kept apart: `netns` (a network namespace each, with a /31 of
    /// --instance-network; needs root, iproute2 and nftables), `host` (loopback addresses), or
    /// `auto` (netns when those are there, else host).
    #[arg(long, default_value = "auto", value_parser = ["auto", "netns", "host"])]
    isolation: String,
    /// The /24 of 100.64.0.0/10 whose /31 pairs instances get with network namespaces.
    #[arg(long, default_value = "100.64.1.0")]
    instance_network: Ipv4Addr,
    /// The node proxy's admin port (/metrics, /config, /listeners, /healthz); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:0")]
    admin: std::net::SocketAddr,
    /// Where the agent keeps its identity, instances' working directories and logs.
    #[arg(long, default_value = "./agent-state")]
    state_dir: PathBuf,
    /// A registry (`HOST:PORT`, as image references name it) to pull images from over plain
    /// HTTP instead of HTTPS; repeat for several. Only for registries on a trusted network.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
}

/// Runs the agent until Ctrl-C or SIGTERM, then stops its instances.
pub async fn run(args: AgentArgs) -> Result<()> {
    for (flag, value) in [("--region", &args.region), ("--node", &args.node)] {
        meridian_model::check_dns_label(value)
            .map_err(|reason| anyhow::anyhow!("{flag}: {reason}"))?;
    }
    if !args.control.starts_with("https://") {
        anyhow::bail!(
            "--control: `{}` must be https://HOST:PORT (the control plane needs mutual TLS)",
            args.control
        );
    }
    let isolation = match args.isolation.as_str() {
        "netns" => Isolation::Netns,
        "host" => Isolation::Host,
        _ if meridian_agent::netns_available() => Isolation::Netns,
        _ => Isolation::Host,
    };
    if isolation == Isolation::Netns && !meridian_agent::netns_available() {
        anyhow::bail!("--isolation netns: needs root, iproute2's `ip` and nftables' `nft`; run as root with both installed (apt-get install iproute2 nftables) or use --isolation host");
    }
    let addresses = match isolation {
        Isolation::Netns => AddressPool::pairs(args.instance_network)?,
        Isolation::Host => AddressPool::new(args.instance_addresses, args.capacity.max(1))?,
    };
    let enrolled =
        super::identity::enroll(&args.control, &args.state_dir, args.join_token.as_deref()).await?;
    let (tls, id) = (enrolled.tls, enrolled.id);
    match &id.subject {
        Subject::Agent { region, node } if *region == args.region && *node == args.node => {}
        _ => anyhow::bail!(
            "{} holds the identity {id}, not the agent of node {} in region {}: use another \
             --state-dir or the matching --node and --region",
            args.state_dir.display(),
            args.node,
            args.region
        ),
    }
    let mode = match isolation {
        Isolation::Netns => format!(
            "each in a network namespace of its own with a /31 of {}/24",
            args.instance_network
        ),
        Isolation::Host => format!(
            "in host mode, each on a loopback address of its own from {} (network namespaces \
             need root, iproute2 and nftables)",
            args.instance_addresses
        ),
    };
    println!(
        "meridian agent of node {} in region {} following {} (capacity {}); instances run {mode}, \
         their node proxy beside them",
        args.node, args.region, args.control, args.capacity
    );
    let options = AgentOptions {
        control: args.control,
        tls,
        region: args.region,
        node: args.node,
        capacity: args.capacity,
        addresses,
        isolation,
        identity_dir: args.state_dir.join("identity"),
        trust_domain: id.trust_domain.clone(),
        admin: Some(args.admin),
        state_dir: args.state_dir,
        registries: meridian_model::RegistryOptions {
            insecure: args.insecure_registries,
            ..Default::default()
        },
    };
    run_agent(options, super::control::shutdown_signal()).await;
    Ok(())
}
