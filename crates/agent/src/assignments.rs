//! The agent's side of its delta-xDS stream: the node's assignments, decoded and checked as a
//! whole (one bad resource NACKs the update and keeps the last good set).

use std::collections::BTreeMap;

use meridian_model::ServiceSpec;
use meridian_xds::meridian::{Assignment, ASSIGNMENT};
use meridian_xds::{Handler, Interest, Interests, Resources};
use prost::Message;
use tokio::sync::watch;

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
}

/// What the node must run, by resource name.
pub type Desired = BTreeMap<String, Wanted>;

/// Publishes each accepted set of assignments.
pub struct AssignmentHandler {
    /// Where the desired set goes.
    pub desired: watch::Sender<Desired>,
}

fn interests() -> Interests {
    Interests::from([(ASSIGNMENT.to_owned(), Interest::Wildcard)])
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
        }
        Ok(interests())
    }
}
