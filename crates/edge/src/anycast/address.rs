//! The anycast addresses on the edge: each bound as a host address on the interface the
//! operator names (`lo`, or a dummy interface), with iproute2's `ip`, unless it is there
//! already; those the edge added are removed when it stops.

use std::net::IpAddr;

use tokio::process::Command;

use super::options::Prefix;

/// The addresses the edge added, to remove at the end.
#[derive(Debug, Default)]
pub struct Bound {
    interface: String,
    added: Vec<IpAddr>,
}

/// Binds each of `prefixes`' addresses on `interface` that is not bound there yet. Fails
/// naming the address and what `ip` said (no permission, no such interface).
pub async fn bind(prefixes: &[Prefix], interface: &str) -> Result<Bound, String> {
    let mut bound = Bound {
        interface: interface.to_owned(),
        added: Vec::new(),
    };
    for prefix in prefixes {
        let host = host(prefix.address);
        let listed = ip(&["-o", "addr", "show", "dev", interface, "to", &host]).await?;
        if !listed.trim().is_empty() {
            continue;
        }
        let mut arguments = vec!["addr", "add", &host, "dev", interface];
        if prefix.address.is_ipv6() {
            // No duplicate address detection: every edge holds the address on purpose.
            arguments.push("nodad");
        }
        ip(&arguments)
            .await
            .map_err(|e| format!("--anycast {prefix}: cannot bind {host} on {interface}: {e}"))?;
        tracing::info!(address = %prefix.address, interface, "anycast address bound");
        bound.added.push(prefix.address);
    }
    Ok(bound)
}

impl Bound {
    /// Removes the addresses the edge added.
    pub async fn unbind(self) {
        for address in self.added {
            let host = host(address);
            if let Err(e) = ip(&["addr", "del", &host, "dev", &self.interface]).await {
                tracing::warn!(%address, error = %e, "cannot remove the anycast address");
            }
        }
    }
}

/// `address` as a host prefix.
fn host(address: IpAddr) -> String {
    let len = if address.is_ipv4() { 32 } else { 128 };
    format!("{address}/{len}")
}

/// Runs `ip` with `arguments`; its standard output, or what went wrong.
async fn ip(arguments: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(arguments)
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
