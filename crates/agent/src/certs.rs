//! Workload certificates for the services this node runs: requested from the control plane
//! with the agent's own certificate (the control plane checks that the service runs in the
//! region), kept in `<state>/certs/<org>.<app>.<service>/` (keys readable by the agent only),
//! renewed at two thirds of their lifetime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::SystemTime;

use meridian_identity::enroll::{request_certificate, Credentials};
use meridian_identity::SpiffeId;

use crate::node_proxy::{CertFiles, ServiceKey};

/// The certificates held, by service.
pub struct WorkloadCerts {
    control: String,
    identity_dir: PathBuf,
    dir: PathBuf,
    held: BTreeMap<ServiceKey, Credentials>,
}

impl WorkloadCerts {
    /// Certificates from the control plane at `control`, requested with the agent's identity
    /// stored in `identity_dir`, kept under `dir`.
    pub fn new(control: &str, identity_dir: PathBuf, dir: PathBuf) -> WorkloadCerts {
        WorkloadCerts {
            control: control.to_owned(),
            identity_dir,
            dir,
            held: BTreeMap::new(),
        }
    }

    fn dir_of(&self, service: &ServiceKey) -> PathBuf {
        self.dir
            .join(format!("{}.{}.{}", service.0, service.1, service.2))
    }

    /// Makes sure each of `services` has a certificate that is not due for renewal, and drops
    /// the others; returns whether any certificate changed. A service whose certificate cannot
    /// be had now is retried at the next call.
    pub async fn ensure(&mut self, services: &BTreeSet<ServiceKey>) -> bool {
        let mut changed = false;
        self.held.retain(|service, _| services.contains(service));
        let now = SystemTime::now();
        let due: Vec<&ServiceKey> = services
            .iter()
            .filter(|s| self.held.get(*s).is_none_or(|c| now >= c.renew_at()))
            .collect();
        if due.is_empty() {
            return false;
        }
        let agent = match Credentials::load(&self.identity_dir) {
            Ok(Some(agent)) => agent,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the agent's identity");
                return false;
            }
        };
        for service in due {
            let id = SpiffeId::workload(&agent.id.trust_domain, &service.0, &service.1, &service.2);
            let issued = match request_certificate(&self.control, &agent, Some(&id)).await {
                Ok(issued) => issued,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "no workload certificate yet; retrying");
                    continue;
                }
            };
            if let Err(e) = issued.save(&self.dir_of(service)) {
                tracing::warn!(%id, error = %e, "cannot store the workload certificate");
                continue;
            }
            tracing::info!(%id, "workload certificate issued");
            self.held.insert(service.clone(), issued);
            changed = true;
        }
        changed
    }

    /// The files of every certificate held.
    pub fn files(&self) -> BTreeMap<ServiceKey, CertFiles> {
        self.held
            .keys()
            .map(|service| {
                let dir = self.dir_of(service);
                let files = CertFiles {
                    cert: dir.join("cert.pem"),
                    key: dir.join("key.pem"),
                    bundle: dir.join("bundle.pem"),
                };
                (service.clone(), files)
            })
            .collect()
    }
}
