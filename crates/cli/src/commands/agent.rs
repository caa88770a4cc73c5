//! `meridian agent`: one per machine; runs the instances its region's control plane assigns to
//! this node.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use meridian_agent::{run_agent, AddressPool, AgentOptions, Isolation};
use meridian_identity::Subject;
use meridian_model::{Cpu, Memory, Resources};

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
    /// What this node offers its instances: `cpu=CORES,memory=QUANTITY,instances=N` (any of
    /// them, e.g. `cpu=4,memory=8Gi`), or a number of instances alone. Not given: the machine's
    /// cores and memory, and 16 instances. Placement counts instances' `resources` against it.
    #[arg(long, value_name = "cpu=…,memory=…,instances=…", default_value = "")]
    capacity: String,
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
    /// The bound of the node's image store (<state-dir>/images), a quantity (`10Gi`, `500M`,
    /// bytes): while its layers take more, those no running or starting instance uses are
    /// deleted, least recently used first (checked after each pull and when instances stop).
    #[arg(long, value_name = "QUANTITY", default_value = "10Gi", value_parser = Memory::parse)]
    image_store_max: Memory,
    #[command(flatten)]
    access_log: super::proxy::AccessLogArgs,
    #[command(flatten)]
    trace: super::proxy::TraceArgs,
}

/// Runs the agent until Ctrl-C or SIGTERM, then stops its instances.
pub async fn run(args: AgentArgs) -> Result<()> {
    let capacity =
        Capacity::parse(&args.capacity).map_err(|e| anyhow::anyhow!("--capacity: {e}"))?;
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
        Isolation::Host => AddressPool::new(args.instance_addresses, capacity.instances.max(1))?,
    };
    let access_log = args
        .access_log
        .of("node-proxy", &args.node, Some(&args.region));
    if let Some((meridian_proxy::AccessLogTarget::File(path), _)) = &access_log {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| anyhow::anyhow!("--access-log: cannot open {}: {e}", path.display()))?;
    }
    let trace = args.trace.of("node-proxy", &args.node, Some(&args.region));
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
        "meridian agent of node {} in region {} following {} (capacity {} instances, {} cpu, \
         {} memory); instances run {mode}, their node proxy beside them",
        args.node, args.region, args.control, capacity.instances, capacity.cpu, capacity.memory
    );
    let options = AgentOptions {
        control: args.control,
        tls,
        region: args.region,
        node: args.node,
        capacity: capacity.instances,
        offers: Resources {
            cpu: Some(capacity.cpu),
            memory: Some(capacity.memory),
        },
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
        image_store_max: args.image_store_max.bytes(),
        access_log,
        trace,
    };
    run_agent(options, super::control::shutdown_signal()).await;
    Ok(())
}

/// What the node offers: `--capacity`.
#[derive(Debug, PartialEq, Eq)]
struct Capacity {
    instances: u32,
    cpu: Cpu,
    memory: Memory,
}

/// Instances a node runs when `--capacity` does not say.
const DEFAULT_INSTANCES: u32 = 16;

impl Capacity {
    /// Reads `cpu=4,memory=8Gi,instances=16` (any of them, the machine's for the others) or
    /// `16` (instances alone).
    fn parse(text: &str) -> Result<Capacity, String> {
        let mut capacity = Capacity {
            instances: DEFAULT_INSTANCES,
            cpu: machine_cpu(),
            memory: machine_memory(),
        };
        if let Ok(instances) = text.trim().parse::<u32>() {
            capacity.instances = instances;
            return Ok(capacity);
        }
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!("`{part}` is not KEY=VALUE (cpu=4,memory=8Gi,instances=16)")
            })?;
            match key.trim() {
                "cpu" => capacity.cpu = Cpu::parse(value)?,
                "memory" => capacity.memory = Memory::parse(value)?,
                "instances" => {
                    capacity.instances = value
                        .trim()
                        .parse()
                        .map_err(|_| format!("instances: `{value}` is not a number"))?
                }
                other => return Err(format!("unknown key `{other}` (cpu, memory or instances)")),
            }
        }
        Ok(capacity)
    }
}

/// The machine's cores (those this process may use).
fn machine_cpu() -> Cpu {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    Cpu::from_millis(
        u32::try_from(cores)
            .unwrap_or(u32::MAX / 1000)
            .saturating_mul(1000),
    )
}

/// The machine's memory (`MemTotal` of /proc/meminfo; 0, not counted, if unreadable).
fn machine_memory() -> Memory {
    let kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    Memory::from_bytes(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_reads_keys_or_a_number_of_instances() {
        let given = Capacity::parse("cpu=4,memory=8Gi").unwrap();
        assert_eq!(
            (given.instances, given.cpu, given.memory),
            (16, Cpu::from_millis(4000), Memory::from_bytes(8 << 30))
        );
        let all = Capacity::parse("cpu=500m, memory=512M, instances=3").unwrap();
        assert_eq!(
            (all.instances, all.cpu, all.memory),
            (3, Cpu::from_millis(500), Memory::from_bytes(512_000_000))
        );
        let machine = Capacity::parse("").unwrap();
        assert_eq!(machine.instances, 16);
        assert!(machine.cpu.millis() >= 1000, "{machine:?}");
        assert!(machine.memory.bytes() > 0, "{machine:?}");
        assert_eq!(Capacity::parse("8").unwrap().instances, 8);
        for (bad, says) in [
            ("cpu=four", "not a number of cores"),
            ("memory=8GB", "unknown unit"),
            ("disk=1", "unknown key `disk`"),
            ("cpu", "not KEY=VALUE"),
        ] {
            let err = Capacity::parse(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
