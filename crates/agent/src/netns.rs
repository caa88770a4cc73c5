//! Network namespaces for instances (when the agent runs as root): each instance gets a
//! namespace of its own, joined to the node by a veth pair with a /31 from the agent's instance
//! network (100.64.0.0/10, never the host's networks). The node side of the pair is where the
//! node proxy listens for the instance; the instance listens on its side. Made with `ip`
//! (iproute2).
//!
//! Every name the agent makes on the host — namespaces, veth links, `/etc/netns` directories —
//! carries a tag hashed from the agent's state directory, which is one node of one installation:
//! agents of other installations on the same host (another `meridian dev`, a test suite) have
//! other tags, and an agent cleans up only what carries its own. The nftables table lives inside
//! each namespace, so it needs no tag.
//!
//! Inside the namespace, nftables rules (made with `nft`) send every connection to a service
//! virtual IP ([`VIP_NETWORK`]) to the node side, port unchanged, where the node proxy listens
//! on the ports of the services the instance may reach — but a TCP connection to a virtual IP
//! and port in the `relays` map ([`Netns::set_relays`]) goes to that entry's relay port on the
//! node side, as a TCP connection names no service; and only the node side may open
//! connections to the instance, so that no other instance reaches it by its address, even on a
//! node that forwards packets.

use std::net::Ipv4Addr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use meridian_xds::meridian::{VIP_NETWORK, VIP_PREFIX_LEN};

use crate::netns_relays::TcpRelay;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How often, and how long apart, a leftover link of ours is looked for after deleting it.
const LEFTOVER_POLLS: u32 = 40;
const LEFTOVER_POLL: std::time::Duration = std::time::Duration::from_millis(25);

/// One instance's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    /// The namespace's name (`mrd-<tag>-<id>`).
    pub name: String,
    host_link: String,
    inner_link: String,
    /// The node side's address.
    pub host: Ipv4Addr,
    /// The instance side's address.
    pub inner: Ipv4Addr,
}

/// The start of the names of the namespaces that the agent with `state_dir` makes.
pub fn prefix(state_dir: &Path) -> String {
    format!("mrd-{}-", tag(state_dir))
}

/// A short tag (8 hex digits) that tells the names this agent makes on the host apart from other
/// agents', of this installation or another: a hash of its state directory (made absolute),
/// which holds one node's identity in one installation. The same across restarts, so that an
/// agent finds what a killed predecessor left.
pub fn tag(state_dir: &Path) -> String {
    let absolute = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    // FNV-1a: stable across runs and builds.
    let mut hash: u32 = 0x811c_9dc5;
    for byte in absolute.as_os_str().as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}

impl Netns {
    /// The namespace of the instance whose node side is `host` (even) and instance side
    /// `host + 1`, for the agent with `tag`.
    pub fn new(tag: &str, host: Ipv4Addr) -> Netns {
        let [_, _, third, last] = host.octets();
        let id = format!("{third:02x}{last:02x}");
        Netns {
            name: format!("mrd-{tag}-{id}"),
            host_link: format!("mh{tag}{id}"),
            inner_link: format!("mi{tag}{id}"),
            host,
            inner: Ipv4Addr::from(u32::from(host) + 1),
        }
    }

    /// Creates the namespace, its veth pair, addresses and default route; fails if the pair's
    /// addresses are already on the host (another agent's).
    pub async fn create(&self) -> std::io::Result<()> {
        // A namespace left by a killed agent is replaced.
        self.delete().await;
        self.claim_pair().await?;
        let (ns, host, inner) = (&self.name, &self.host_link, &self.inner_link);
        let host_address = format!("{}/31", self.host);
        let inner_address = format!("{}/31", self.inner);
        let steps: [&[&str]; 8] = [
            &["netns", "add", ns],
            &[
                "link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns,
            ],
            &["addr", "add", &host_address, "dev", host],
            &["link", "set", host, "up"],
            &["-n", ns, "addr", "add", &inner_address, "dev", inner],
            &["-n", ns, "link", "set", inner, "up"],
            &["-n", ns, "link", "set", "lo", "up"],
            &[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &self.host.to_string(),
            ],
        ];
        for step in steps {
            if let Err(e) = ip(step).await {
                self.delete().await;
                return Err(e);
            }
        }
        if let Err(e) = self.filter().await {
            self.delete().await;
            return Err(e);
        }
        // `ip netns exec` puts this file over /etc/resolv.conf inside the namespace: names are
        // asked of the node's DNS server on the node side.
        let dir = etc_dir(&self.name);
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(self.resolv_conf(), format!("nameserver {}\n", self.host)).await?;
        Ok(())
    }

    /// Makes sure the pair's addresses are free. A host link of ours still holding them — the
    /// veth pair of an earlier instance at this address, which the kernel tears down a moment
    /// after `ip netns delete` returned — is deleted (and waited for, a bounded while). Fails if
    /// another link holds them: another agent (of another installation, or given the same
    /// `--instance-network`) uses them, and taking them too would send its traffic astray.
    async fn claim_pair(&self) -> std::io::Result<()> {
        let mut holder = self.holder().await?;
        if holder.as_deref() == Some(self.host_link.as_str()) {
            let _ = ip(&["link", "delete", &self.host_link]).await;
            for _ in 0..LEFTOVER_POLLS {
                holder = self.holder().await?;
                if holder.as_deref() != Some(self.host_link.as_str()) {
                    break;
                }
                tokio::time::sleep(LEFTOVER_POLL).await;
            }
        }
        let pair = format!("{}/31", self.host);
        match holder {
            None => Ok(()),
            Some(link) if link == self.host_link => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{pair} is still on {link}, left by an earlier instance, which did not go"),
            )),
            Some(link) => Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "{pair} is already in use on this host (on {link}): another agent has the \
                     same --instance-network; give each agent on a host its own"
                ),
            )),
        }
    }

    /// The link that holds an address of the pair on the host, if one does.
    async fn holder(&self) -> std::io::Result<Option<String>> {
        let pair = format!("{}/31", self.host);
        let output = Command::new("ip")
            .args(["-o", "-4", "addr", "show", "to", &pair])
            .output()
            .await?;
        if !output.status.success() {
            return Err(std::io::Error::other(format!(
                "ip addr show to {pair}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let listed = String::from_utf8_lossy(&output.stdout);
        Ok(listed
            .split_whitespace()
            .nth(1)
            .map(|link| link.split('@').next().unwrap_or(link).to_owned()))
    }

    /// Loads the namespace's nftables rules: virtual IPs to the node side, and only the node
    /// side (or the instance itself) may connect to the instance.
    async fn filter(&self) -> std::io::Result<()> {
        let rules = format!(
            "table inet meridian {{
  map relays {{
    type ipv4_addr . inet_service : ipv4_addr . inet_service
  }}
  chain vips {{
    type nat hook output priority -100; policy accept;
    dnat ip to ip daddr . tcp dport map @relays
    ip daddr {VIP_NETWORK}/{VIP_PREFIX_LEN} dnat ip to {host}
  }}
  chain inbound {{
    type filter hook input priority 0; policy accept;
    iifname \"lo\" accept
    ct state established,related accept
    ip saddr {host} accept
    meta l4proto tcp reject with tcp reset
    drop
  }}
}}
",
            host = self.host
        );
        self.nft(&rules).await
    }

    /// Replaces the namespace's TCP relays: a connection to `vip:port` of one of them goes to
    /// its `relay` port on the node side.
    pub async fn set_relays(&self, relays: &[TcpRelay]) -> std::io::Result<()> {
        let mut rules = String::from("flush map inet meridian relays\n");
        if !relays.is_empty() {
            let elements: Vec<String> = relays
                .iter()
                .map(|r| format!("{} . {} : {} . {}", r.vip, r.port, self.host, r.relay))
                .collect();
            rules.push_str(&format!(
                "add element inet meridian relays {{ {} }}\n",
                elements.join(", ")
            ));
        }
        self.nft(&rules).await
    }

    /// Runs `nft -f -` in the namespace with `rules`.
    async fn nft(&self, rules: &str) -> std::io::Result<()> {
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = nft.stdin.take() {
            stdin.write_all(rules.as_bytes()).await?;
        }
        let output = nft.wait_with_output().await?;
        if output.status.success() {
            return Ok(());
        }
        Err(std::io::Error::other(format!(
            "nft in namespace {}: {}",
            self.name,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }

    /// Deletes the namespace (and with it the veth pair).
    pub async fn delete(&self) {
        let _ = ip(&["netns", "delete", &self.name]).await;
        let _ = tokio::fs::remove_dir_all(etc_dir(&self.name)).await;
    }

    /// The namespace's file, which a container joins (`ip netns add` makes it).
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// The resolver configuration of processes in the namespace (the node's DNS server).
    pub fn resolv_conf(&self) -> std::path::PathBuf {
        etc_dir(&self.name).join("resolv.conf")
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &std::ffi::OsStr) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }
}

/// The files of namespace `name` that `ip netns exec` mounts over /etc.
fn etc_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/etc/netns").join(name)
}

/// Runs `ip args`; an error says which step failed and why.
async fn ip(args: &[&str]) -> std::io::Result<()> {
    let output = Command::new("ip").args(args).output().await?;
    if output.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    )))
}

/// Deletes the namespaces an earlier agent with `tag` left behind.
pub async fn delete_leftovers(tag: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output().await else {
        return;
    };
    let prefix = format!("mrd-{tag}-");
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if name.starts_with(&prefix) {
            let _ = ip(&["netns", "delete", name]).await;
            let _ = tokio::fs::remove_dir_all(etc_dir(name)).await;
        }
    }
}

/// Whether this process may make network namespaces: it runs as root, and iproute2's `ip` and
/// nftables' `nft` are there.
pub fn available() -> bool {
    let runs = |program: &str, arg: &str| {
        std::process::Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    rustix::process::geteuid().is_root() && runs("ip", "-V") && runs("nft", "--version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_linux_limits_and_addresses_pair_up() {
        let tag = tag(Path::new("/var/lib/meridian/agent"));
        assert_eq!(tag.len(), 8);
        assert_ne!(tag, super::tag(Path::new("/tmp/dev/agents/fra-1")));
        let ns = Netns::new(&tag, Ipv4Addr::new(100, 64, 1, 2));
        assert!(ns.host_link.len() <= 15 && ns.inner_link.len() <= 15);
        assert_eq!(ns.inner, Ipv4Addr::new(100, 64, 1, 3));
        assert_ne!(ns.name, Netns::new(&tag, Ipv4Addr::new(100, 64, 1, 4)).name);
    }

    #[test]
    fn the_node_dns_owns_the_reverse_names_of_every_instance_network_and_virtual_ip() {
        let (network, prefix) = meridian_dns::PLATFORM_NETWORK;
        let inside = |first: Ipv4Addr, length: u8| {
            let shift = 32 - u32::from(prefix);
            length >= prefix && u32::from(first) >> shift == u32::from(network) >> shift
        };
        assert!(inside(VIP_NETWORK, VIP_PREFIX_LEN));
        // The first and last /24 that --instance-network accepts.
        for first in [
            Ipv4Addr::new(100, 64, 0, 0),
            Ipv4Addr::new(100, 111, 255, 0),
        ] {
            assert!(crate::AddressPool::pairs(first).is_ok());
            assert!(inside(first, 24));
        }
    }

    /// Whether namespace `name` exists.
    fn exists(name: &str) -> bool {
        std::path::Path::new("/run/netns").join(name).exists()
    }

    /// Deletes namespaces by name when dropped: what a failed run made goes too.
    struct Deleted(Vec<String>);

    impl Drop for Deleted {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", name])
                    .stderr(std::process::Stdio::null())
                    .status();
                let _ = std::fs::remove_dir_all(etc_dir(name));
            }
        }
    }

    #[tokio::test]
    async fn an_agent_takes_neither_the_namespaces_nor_the_addresses_of_another() {
        if !available() {
            assert_ne!(
                std::env::var("MERIDIAN_TEST_STRICT").as_deref(),
                Ok("1"),
                "network namespaces need root, iproute2 and nftables"
            );
            return;
        }
        // Tags and pair of this run only, so that concurrent runs leave each other alone.
        let (ours_dir, theirs_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (our_tag, their_tag) = (tag(ours_dir.path()), tag(theirs_dir.path()));
        let pid = std::process::id();
        let third = 200 + u8::try_from(pid % 50).unwrap();
        let last = 2 + 2 * u8::try_from(pid / 50 % 126).unwrap();
        let pair = Ipv4Addr::new(100, 111, third, last);
        let (ours, theirs) = (Netns::new(&our_tag, pair), Netns::new(&their_tag, pair));
        let _deleted = Deleted(vec![ours.name.clone(), theirs.name.clone()]);
        ours.create().await.unwrap();
        // Another agent given the same instance network cannot take the pair.
        let refused = theirs.create().await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::AddrInUse, "{refused}");
        assert!(
            refused
                .to_string()
                .contains("another agent has the same --instance-network; give"),
            "{refused}"
        );
        assert!(!exists(&theirs.name));
        // A link of ours left holding the pair (an earlier instance's veth the kernel has not
        // torn down yet; here a stand-in, once the real one is gone) does not stop ours: it is
        // deleted.
        ours.delete().await;
        let link = ours.host_link.as_str();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while ip(&["link", "show", link]).await.is_ok() {
            assert!(std::time::Instant::now() < end, "{link} never went");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let address = format!("{pair}/31");
        let peer = format!("{link}p");
        ip(&[
            "link",
            "add",
            link,
            "type",
            "veth",
            "peer",
            "name",
            peer.as_str(),
        ])
        .await
        .unwrap();
        ip(&["addr", "add", address.as_str(), "dev", link])
            .await
            .unwrap();
        assert_eq!(ours.holder().await.unwrap().as_deref(), Some(link));
        ours.create().await.unwrap();
        assert!(exists(&ours.name));
        // Its clean-up leaves ours alone; ours takes ours.
        delete_leftovers(&their_tag).await;
        assert!(exists(&ours.name));
        delete_leftovers(&our_tag).await;
        assert!(!exists(&ours.name));
    }
}
