//! Workload certificates for the services this node runs: requested from the control plane
//! with the agent's own certificate (the control plane checks that the service runs in the
//! region), kept in `<state>/certs/<org>.<app>.<service>/` (keys readable by the agent only),
//! renewed at two thirds of their lifetime.
//!
//! Requests run as tasks of their own: the agent's loop, which also reconciles instances,
//! starts drains and configures the node proxy, never waits on the control plane's issuance.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meridian_identity::enroll::{request_certificate, Credentials};
use meridian_identity::SpiffeId;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::node_proxy::{CertFiles, ServiceKey};

/// How long a service whose certificate could not be had waits before it is asked again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The certificates held, by service, and the requests under way.
pub struct WorkloadCerts {
    control: String,
    identity_dir: PathBuf,
    dir: PathBuf,
    held: BTreeMap<ServiceKey, Credentials>,
    /// The services the node runs, as last told to [`WorkloadCerts::request_due`].
    needed: BTreeSet<ServiceKey>,
    requests: JoinSet<(ServiceKey, Option<Credentials>)>,
    requested: BTreeSet<ServiceKey>,
    /// Services whose last request failed, and when they may be asked for again.
    failed: BTreeMap<ServiceKey, Instant>,
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
            needed: BTreeSet::new(),
            requests: JoinSet::new(),
            requested: BTreeSet::new(),
            failed: BTreeMap::new(),
        }
    }

    fn dir_of(dir: &Path, service: &ServiceKey) -> PathBuf {
        dir.join(format!("{}.{}.{}", service.0, service.1, service.2))
    }

    /// Starts a request for each of `services` that has no certificate or one due for
    /// renewal, unless one is under way or failed less than [`RETRY_AFTER`] ago, and drops the
    /// certificates of the other services. Returns at once: [`WorkloadCerts::issued`] yields
    /// what the requests bring.
    pub fn request_due(&mut self, services: &BTreeSet<ServiceKey>) {
        self.held.retain(|service, _| services.contains(service));
        self.failed.retain(|service, _| services.contains(service));
        self.needed.clone_from(services);
        let (now, clock) = (SystemTime::now(), Instant::now());
        let due: Vec<ServiceKey> = services
            .iter()
            .filter(|s| self.held.get(*s).is_none_or(|c| now >= c.renew_at()))
            .filter(|s| !self.requested.contains(*s))
            .filter(|s| self.failed.get(*s).is_none_or(|at| clock >= *at))
            .cloned()
            .collect();
        for service in due {
            self.requested.insert(service.clone());
            let (control, identity_dir) = (self.control.clone(), self.identity_dir.clone());
            let dir = Self::dir_of(&self.dir, &service);
            self.requests.spawn(async move {
                let issued = issue(&control, &identity_dir, &dir, &service).await;
                (service, issued)
            });
        }
    }

    /// Waits for the next request to end and keeps its certificate if the service still runs
    /// here; returns whether a certificate was kept. Pending while no request is under way
    /// (for `select!`).
    pub async fn issued(&mut self) -> bool {
        let Some(ended) = self.requests.join_next().await else {
            return std::future::pending().await;
        };
        let Ok((service, issued)) = ended else {
            return false; // A request task cannot panic but by a bug; it is asked again.
        };
        self.requested.remove(&service);
        match issued {
            Some(credentials) if self.needed.contains(&service) => {
                self.failed.remove(&service);
                self.held.insert(service, credentials);
                true
            }
            Some(_) => false,
            None => {
                self.failed.insert(service, Instant::now() + RETRY_AFTER);
                false
            }
        }
    }

    /// The files of every certificate held.
    pub fn files(&self) -> BTreeMap<ServiceKey, CertFiles> {
        self.held
            .keys()
            .map(|service| {
                let dir = Self::dir_of(&self.dir, service);
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

/// Requests `service`'s certificate from `control` with the agent's identity in
/// `identity_dir` and stores it in `dir`; `None` (said in the log) when it cannot be had now.
async fn issue(
    control: &str,
    identity_dir: &Path,
    dir: &Path,
    service: &ServiceKey,
) -> Option<Credentials> {
    let agent = match Credentials::load(identity_dir) {
        Ok(Some(agent)) => agent,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the agent's identity");
            return None;
        }
    };
    let id = SpiffeId::workload(&agent.id.trust_domain, &service.0, &service.1, &service.2);
    let issued = match request_certificate(control, &agent, Some(&id)).await {
        Ok(issued) => issued,
        Err(e) => {
            tracing::warn!(%id, error = %e, "no workload certificate yet; retrying");
            return None;
        }
    };
    if let Err(e) = issued.save(dir) {
        tracing::warn!(%id, error = %e, "cannot store the workload certificate");
        return None;
    }
    tracing::info!(%id, "workload certificate issued");
    Some(issued)
}
