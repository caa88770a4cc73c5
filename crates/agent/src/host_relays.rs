//! The TCP services a host-mode instance reaches through its environment. With no namespace
//! there is no DNS and no virtual IP for the instance: as Kubernetes gives pods the addresses of
//! services in variables, the agent gives each `tcp` port of each service the instance may reach
//! (its org's, and other orgs' whose `mesh.allow` names it) a relay port on the instance's own
//! address, where the node proxy relays to the service over mutual TLS, and names it in a
//! variable: `MERIDIAN_TCP_<SERVICE>_<APP>_<PORT>=<address>:<relay>` for a service of the
//! instance's org, `MERIDIAN_TCP_<SERVICE>_<APP>_<ORG>_<PORT>=…` for another org's (as the
//! names `<service>.<app>.internal` and `<service>.<app>.<org>.internal` go), `<PORT>` being the
//! port's name, all upper-case with `-` as `_`.
//!
//! The environment is fixed when the instance starts, so the assignment is made then, once,
//! and kept for the instance's life: the relay ports do not move while configurations refresh,
//! and services that appear later get none (the instance would not know of them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use meridian_model::{Port, Protocol};

use crate::node_proxy::{mesh_port, visible, MeshService, ServiceKey, OUTBOUND_PORT};
use crate::relay_numbers::RelayNumbers;

/// A `tcp` port of a service that a host-mode instance reaches at `<its address>:<relay>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRelay {
    /// The service.
    pub target: ServiceKey,
    /// The name of its port (the port's number and place may change between its versions).
    pub port: String,
    /// The port the node proxy listens on, on the instance's address.
    pub relay: u16,
    /// The environment variable that names `<address>:<relay>`.
    pub variable: String,
}

/// The variable that names `target`'s port `port` for an instance of org `org`: see the module
/// doc.
pub fn variable(org: &str, target: &ServiceKey, port: &str) -> String {
    let (target_org, app, service) = target;
    let parts = if target_org == org {
        vec![service.as_str(), app, port]
    } else {
        vec![service.as_str(), app, target_org, port]
    };
    let name = parts.join("_").to_ascii_uppercase().replace('-', "_");
    format!("MERIDIAN_TCP_{name}")
}

/// The relays of an instance of `caller` whose own ports are `ports`, reaching `services`: one
/// per `tcp` port of each service it may reach, numbered ([`RelayNumbers`]) from
/// [`crate::node_proxy::RELAY_PORT_BASE`] up in the order of their variables, skipping what the
/// instance's address already has (its own ports, its mesh ports, `HTTP_PROXY`). Names are
/// made of DNS labels joined by `_`, so two services may give one variable (`a-b`/`c` and
/// `a`/`b-c`): a service of the caller's org takes it before another org's, and a variable
/// still claimed by two is given to neither (logged), so that a caller never connects to a
/// service it did not mean.
pub fn assign(
    caller: &ServiceKey,
    ports: &[Port],
    services: &BTreeMap<ServiceKey, MeshService>,
) -> Vec<HostRelay> {
    let mut claims: BTreeMap<String, Vec<(bool, &ServiceKey, &str)>> = BTreeMap::new();
    for reach in visible(caller, services).filter(|r| r.region.is_none()) {
        let tcp = reach.service.spec.ports.iter();
        for port in tcp.filter(|p| p.protocol == Protocol::Tcp) {
            let own = reach.target.0 == caller.0;
            claims
                .entry(variable(&caller.0, reach.target, &port.name))
                .or_default()
                .push((own, reach.target, &port.name));
        }
    }
    let mut taken: BTreeSet<u16> = ports
        .iter()
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    taken.insert(OUTBOUND_PORT);
    taken.extend((0..ports.len()).map(mesh_port));
    let mut chosen_claims = Vec::new();
    for (variable, claimants) in claims {
        let own: Vec<_> = claimants.iter().filter(|(own, ..)| *own).collect();
        let chosen: Vec<_> = if own.is_empty() {
            claimants.iter().collect()
        } else {
            own
        };
        let [(_, target, port)] = chosen[..] else {
            let claimed: Vec<String> = chosen
                .iter()
                .map(|(_, (org, app, service), port)| format!("{org}/{app}/{service}:{port}"))
                .collect();
            tracing::warn!(%variable, ?claimed, "services share an environment variable: it is given to none of them");
            continue;
        };
        chosen_claims.push((variable, (*target).clone(), (*port).to_owned()));
    }
    let variables = chosen_claims.iter().map(|(variable, ..)| variable.clone());
    let numbered = RelayNumbers::default().update(variables, &taken, &BTreeSet::new());
    // Every key is new: those numbered are the first ones.
    numbered
        .into_iter()
        .zip(chosen_claims)
        .map(|((variable, relay), (_, target, port))| HostRelay {
            target,
            port,
            relay,
            variable,
        })
        .collect()
}

/// The variables of `relays` on `address`.
pub fn env(address: Ipv4Addr, relays: &[HostRelay]) -> impl Iterator<Item = (String, String)> + '_ {
    relays
        .iter()
        .map(move |r| (r.variable.clone(), format!("{address}:{}", r.relay)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node_proxy::RELAY_PORT_BASE;
    use meridian_model::ServiceSpec;
    use serde_json::json;

    fn key(org: &str, app: &str, service: &str) -> ServiceKey {
        (org.to_owned(), app.to_owned(), service.to_owned())
    }

    /// A service with `ports` (name, number, protocol), reachable by `allow`.
    fn service(ports: &[(&str, u16, &str)], allow: &[&str]) -> MeshService {
        let ports: Vec<_> = ports
            .iter()
            .map(|(name, port, protocol)| json!({"name": name, "port": port, "protocol": protocol}))
            .collect();
        let spec: ServiceSpec = serde_json::from_value(json!({
            "scale": {"min": 1, "max": 1},
            "runtime": {"process": {"command": "x"}},
            "ports": ports,
            "routes": [], "domains": [], "health_checks": [], "mesh": {"allow": allow},
        }))
        .unwrap();
        MeshService {
            spec,
            instances: Vec::new(),
            vip: None,
            canary_weight: None,
        }
    }

    #[test]
    fn variables_are_named_as_the_services_dns_names_go() {
        let org = "acme";
        let same = key("acme", "my-shop", "db");
        assert_eq!(
            variable(org, &same, "pg-main"),
            "MERIDIAN_TCP_DB_MY_SHOP_PG_MAIN"
        );
        let other = key("partner", "queue", "broker");
        assert_eq!(
            variable(org, &other, "amqp"),
            "MERIDIAN_TCP_BROKER_QUEUE_PARTNER_AMQP"
        );
    }

    /// web of acme/shop, with ports 8080 (http) and 40001 (its mesh ports are 15443 and 15444).
    fn web_service() -> MeshService {
        service(&[("http", 8080, "http"), ("odd", 40001, "tcp")], &[])
    }

    /// [`web_service`]'s key and ports.
    fn web() -> (ServiceKey, Vec<Port>) {
        (key("acme", "shop", "web"), web_service().spec.ports)
    }

    #[test]
    fn reachable_tcp_ports_get_relays_numbered_by_variable_past_the_instances_own_ports() {
        let (caller, ports) = web();
        let services: BTreeMap<ServiceKey, MeshService> = [
            (caller.clone(), web_service()),
            (
                key("acme", "shop", "db"),
                service(&[("pg", 5432, "tcp"), ("admin", 9000, "http")], &[]),
            ),
            (
                key("partner", "q", "broker"),
                service(&[("amqp", 5672, "tcp")], &["acme/shop/web"]),
            ),
            // Another org's service that does not allow web: no variable.
            (
                key("other", "shop", "db"),
                service(&[("pg", 5432, "tcp")], &[]),
            ),
        ]
        .into_iter()
        .collect();
        let relays = assign(&caller, &ports, &services);
        let got: Vec<(&str, u16, &str)> = relays
            .iter()
            .map(|r| (r.variable.as_str(), r.relay, r.target.0.as_str()))
            .collect();
        // 40000 is free; 40001 is web's own port.
        assert_eq!(
            got,
            [
                (
                    "MERIDIAN_TCP_BROKER_Q_PARTNER_AMQP",
                    RELAY_PORT_BASE,
                    "partner"
                ),
                ("MERIDIAN_TCP_DB_SHOP_PG", RELAY_PORT_BASE + 2, "acme"),
                // web's own tcp port, reached through the mesh like any other.
                ("MERIDIAN_TCP_WEB_SHOP_ODD", RELAY_PORT_BASE + 3, "acme"),
            ]
        );
        let env: Vec<(String, String)> = env(Ipv4Addr::new(127, 62, 0, 5), &relays).collect();
        assert_eq!(
            env[1],
            (
                "MERIDIAN_TCP_DB_SHOP_PG".to_owned(),
                format!("127.62.0.5:{}", RELAY_PORT_BASE + 2)
            )
        );
    }

    #[test]
    fn a_variable_two_services_claim_goes_to_the_callers_org_or_to_none() {
        let (caller, ports) = web();
        let tcp = |port: &str| service(&[(port, 5432, "tcp")], &["acme/*/*"]);
        let names = |services: &BTreeMap<ServiceKey, MeshService>| -> Vec<(String, ServiceKey)> {
            assign(&caller, &ports, services)
                .into_iter()
                .map(|r| (r.variable, r.target))
                .collect()
        };
        let mut services: BTreeMap<ServiceKey, MeshService> = [
            // acme's a-b/c and a/b-c both give MERIDIAN_TCP_A_B_C_PG: neither gets it.
            (key("acme", "c", "a-b"), tcp("pg")),
            (key("acme", "b-c", "a"), tcp("pg")),
            // x's db/shop port pg and acme's db/shop port x-pg both give
            // MERIDIAN_TCP_DB_SHOP_X_PG: acme's (the caller's org) gets it.
            (key("x", "shop", "db"), tcp("pg")),
            (key("acme", "shop", "db"), tcp("x-pg")),
            // y's a-x/db and a/x-db both give MERIDIAN_TCP_A_X_DB_Y_PG: neither gets it.
            (key("y", "db", "a-x"), tcp("pg")),
            (key("y", "x-db", "a"), tcp("pg")),
        ]
        .into_iter()
        .collect();
        let db = |org: &str| {
            (
                "MERIDIAN_TCP_DB_SHOP_X_PG".to_owned(),
                key(org, "shop", "db"),
            )
        };
        assert_eq!(names(&services), [db("acme")]);
        // Without acme's, x's gets it.
        services.remove(&key("acme", "shop", "db"));
        assert_eq!(names(&services), [db("x")]);
    }
}
