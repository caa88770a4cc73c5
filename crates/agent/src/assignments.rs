//! The agent's side of its delta-xDS stream: the node's assignments, decoded and checked as a
//! whole (one bad resource NACKs the update and keeps the last good set).

use std::collections::BTreeMap;

use meridian_model::ServiceSpec;
use meridian_xds::meridian::{
    Assignment, Service, ASSIGNMENT, SERVICE, VIP_NETWORK, VIP_PREFIX_LEN,
};
use meridian_xds::{Handler, Interest, Interests, Resources};
use prost::Message;
use tokio::sync::watch;

use crate::node_proxy::{MeshInstance, MeshService, ServiceKey};
use crate::secrets::SecretValues;

/// One instance the node must run.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    /// Its id.
    pub instance: String,
    /// Org, app and service.
    pub service: (String, String, String),
    /// The deployment version of its spec.
    pub version: u64,
    /// Its spec.
    pub spec: ServiceSpec,
    /// The values of the secrets its spec's environment references.
    pub secrets: SecretValues,
}

/// What the node must run, by resource name.
pub type Desired = BTreeMap<String, Wanted>;

/// The region's services as node proxies need them.
pub type Services = BTreeMap<ServiceKey, MeshService>;

/// Publishes each accepted set of assignments and of services.
pub struct AssignmentHandler {
    /// Where the desired set goes.
    pub desired: watch::Sender<Desired>,
    /// Where the region's services go.
    pub services: watch::Sender<Services>,
}

fn interests() -> Interests {
    Interests::from([
        (ASSIGNMENT.to_owned(), Interest::Wildcard),
        (SERVICE.to_owned(), Interest::Wildcard),
    ])
}

/// Decodes every service held, or says which one is bad and why.
fn decode_services(resources: &Resources) -> Result<Services, String> {
    let mut services = Services::new();
    for (name, held) in resources.get(SERVICE).into_iter().flatten() {
        let service = Service::decode(held.resource.value.as_slice())
            .map_err(|e| format!("service `{name}`: {e}"))?;
        let spec: ServiceSpec = serde_json::from_slice(&service.spec_json)
            .map_err(|e| format!("service `{name}`: spec_json: {e}"))?;
        let mut instances = Vec::new();
        for instance in service.instances {
            if instance.address.parse::<std::net::IpAddr>().is_err() {
                return Err(format!(
                    "service `{name}`: instance `{}`: address `{}` is not an IP address",
                    instance.instance, instance.address
                ));
            }
            if meridian_model::check_dns_label(&instance.region).is_err() {
                return Err(format!(
                    "service `{name}`: instance `{}`: region `{}` is not a DNS label",
                    instance.instance, instance.region
                ));
            }
            instances.push(MeshInstance {
                address: instance.address,
                healthy: instance.healthy,
                region: instance.region,
                priority: instance.priority,
                canary: instance.canary,
            });
        }
        let vip = match service.vip.as_str() {
            "" => None,
            text => Some(parse_vip(text).map_err(|e| format!("service `{name}`: vip: {e}"))?),
        };
        let canary_weight = match service.canary_weight {
            0 => None,
            weight @ 1..=99 => Some(weight),
            weight => {
                return Err(format!(
                    "service `{name}`: canary_weight: {weight} is not a percent from 1 to 99 \
                     (or 0 for no split)"
                ))
            }
        };
        services.insert(
            (service.org, service.app, service.service),
            MeshService {
                spec,
                instances,
                vip,
                canary_weight,
            },
        );
    }
    Ok(services)
}

/// A service's virtual IP: an IPv4 address in [`VIP_NETWORK`].
fn parse_vip(text: &str) -> Result<std::net::Ipv4Addr, String> {
    let vip: std::net::Ipv4Addr = text
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 address"))?;
    let mask = u32::MAX << (32 - VIP_PREFIX_LEN);
    if u32::from(vip) & mask != u32::from(VIP_NETWORK) {
        return Err(format!(
            "{vip} is not in the virtual IP network {VIP_NETWORK}/{VIP_PREFIX_LEN}"
        ));
    }
    Ok(vip)
}

/// Decodes every assignment held, or says which one is bad and why.
fn decode(resources: &Resources) -> Result<Desired, String> {
    let mut desired = Desired::new();
    for (name, held) in resources.get(ASSIGNMENT).into_iter().flatten() {
        let assignment = Assignment::decode(held.resource.value.as_slice())
            .map_err(|e| format!("assignment `{name}`: {e}"))?;
        let spec: ServiceSpec = serde_json::from_slice(&assignment.spec_json)
            .map_err(|e| format!("assignment `{name}`: spec_json: {e}"))?;
        if meridian_model::check_dns_label(&assignment.instance).is_err() {
            return Err(format!(
                "assignment `{name}`: instance `{}` is not a DNS label",
                assignment.instance
            ));
        }
        desired.insert(
            name.clone(),
            Wanted {
                instance: assignment.instance,
                service: (assignment.org, assignment.app, assignment.service),
                version: assignment.version,
                spec,
                secrets: SecretValues::from(assignment.secrets),
            },
        );
    }
    Ok(desired)
}

impl Handler for AssignmentHandler {
    fn initial_interests(&self) -> Interests {
        interests()
    }

    async fn accept(&mut self, resources: &Resources, type_url: &str) -> Result<Interests, String> {
        if type_url == ASSIGNMENT {
            let desired = decode(resources)?;
            self.desired.send_replace(desired);
        } else if type_url == SERVICE {
            let services = decode_services(resources)?;
            self.services.send_replace(services);
        }
        Ok(interests())
    }
}
