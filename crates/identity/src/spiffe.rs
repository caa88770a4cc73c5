//! SPIFFE IDs: who a certificate says its holder is.

use std::fmt;

use meridian_model::check_dns_label;

/// What a SPIFFE ID names, under one trust domain:
/// `spiffe://<trust-domain>/org/<org>/app/<app>/service/<service>` for a workload, and
/// `/gateway/<region>`, `/edge/<location>`, `/agent/<region>/<node>`, `/control/global` and
/// `/control/<region>` for Meridian's own components.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A service's instances.
    Workload {
        /// Owning org (tenant).
        org: String,
        /// Owning app.
        app: String,
        /// The service.
        service: String,
    },
    /// A region's gateway.
    Gateway {
        /// The region.
        region: String,
    },
    /// An edge location.
    Edge {
        /// The location.
        location: String,
    },
    /// A node's agent.
    Agent {
        /// The node's region.
        region: String,
        /// The node.
        node: String,
    },
    /// A control plane: `None` is the global one.
    Control {
        /// The region, for a regional control plane.
        region: Option<String>,
    },
}

/// A SPIFFE ID in Meridian's layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    /// The trust domain (the installation), e.g. `meridian.local`.
    pub trust_domain: String,
    /// What it names.
    pub subject: Subject,
}

/// Why a string is not a Meridian SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{id}` is not a Meridian SPIFFE ID: {reason}")]
pub struct BadSpiffeId {
    /// The string.
    pub id: String,
    /// Why.
    pub reason: String,
}

impl SpiffeId {
    /// The ID of a workload.
    pub fn workload(trust_domain: &str, org: &str, app: &str, service: &str) -> SpiffeId {
        SpiffeId {
            trust_domain: trust_domain.to_owned(),
            subject: Subject::Workload {
                org: org.to_owned(),
                app: app.to_owned(),
                service: service.to_owned(),
            },
        }
    }

    /// The org a workload ID belongs to (`None` for Meridian's components).
    pub fn org(&self) -> Option<&str> {
        match &self.subject {
            Subject::Workload { org, .. } => Some(org),
            _ => None,
        }
    }

    /// Parses `spiffe://…`, checking the layout and that every segment is a DNS label.
    pub fn parse(id: &str) -> Result<SpiffeId, BadSpiffeId> {
        let bad = |reason: &str| BadSpiffeId {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = id
            .strip_prefix("spiffe://")
            .ok_or_else(|| bad("it must start with spiffe://"))?;
        let (trust_domain, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("it has no path after the trust domain"))?;
        if trust_domain.is_empty() || !trust_domain.split('.').all(|l| check_dns_label(l).is_ok()) {
            return Err(bad("the trust domain must be DNS labels separated by dots"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        if let Some(segment) = segments.iter().find(|s| check_dns_label(s).is_err()) {
            return Err(bad(&format!("segment `{segment}` is not a DNS label")));
        }
        let owned = |s: &str| s.to_owned();
        let subject =
            match segments.as_slice() {
                ["org", org, "app", app, "service", service] => Subject::Workload {
                    org: owned(org),
                    app: owned(app),
                    service: owned(service),
                },
                ["gateway", region] => Subject::Gateway {
                    region: owned(region),
                },
                ["edge", location] => Subject::Edge {
                    location: owned(location),
                },
                ["agent", region, node] => Subject::Agent {
                    region: owned(region),
                    node: owned(node),
                },
                ["control", "global"] => Subject::Control { region: None },
                ["control", region] => Subject::Control {
                    region: Some(owned(region)),
                },
                _ => return Err(bad(
                    "the path must be org/<org>/app/<app>/service/<service>, gateway/<region>, \
                     edge/<location>, agent/<region>/<node> or control/<region|global>",
                )),
            };
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            subject,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/", self.trust_domain)?;
        match &self.subject {
            Subject::Workload { org, app, service } => {
                write!(f, "org/{org}/app/{app}/service/{service}")
            }
            Subject::Gateway { region } => write!(f, "gateway/{region}"),
            Subject::Edge { location } => write!(f, "edge/{location}"),
            Subject::Agent { region, node } => write!(f, "agent/{region}/{node}"),
            Subject::Control { region: None } => write!(f, "control/global"),
            Subject::Control {
                region: Some(region),
            } => write!(f, "control/{region}"),
        }
    }
}
