//! The certificates' control loop: follows the store's change feed (a version that changes a
//! service's domain claims, or the service's deletion, changes the claims; a certificate row
//! changed is republished), starts the
//! orders that are due (at most [`CONCURRENT_ORDERS`] at once, each within [`ORDER_TIMEOUT`]),
//! and rotates the session ticket keys. Work per change is one domain (or one service's
//! domains); nothing is rescanned on a timer.
//!
//! Every replica publishes; only the holder of the lease ([`LeaseState`]) orders, marks
//! expiries, records why a domain waits and rotates the ticket keys, and its writes carry the
//! fence of its term, so that a deposed holder's late write is refused. A replica that takes
//! the lease loads and plans everything again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_api::Readiness;
use meridian_identity::SealingKey;
use meridian_model::{CertificateSource, CertificateState, ChangeKind, ChangeOp};
use meridian_store::{
    wait_for_changes, CertificateRecord, DomainClaim, Fence, ServiceFilter, ServiceKey, Store,
    StoreError,
};
use meridian_xds::meridian::{
    ACME_CHALLENGE, CERTIFICATE_PREFIX, CHALLENGE_PREFIX, EDGE_NAMESPACE, SECRET,
};
use meridian_xds::{Cache, Update};
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::JoinSet;

use super::acme::{Acme, AcmeOptions};
use super::metrics::CertificateMetrics;
use super::publish::{put_certificate, put_ticket_keys, remove_certificate};
use super::records::{self, key_label, serving};
use super::schedule::{Clock, Schedule};
use super::{tickets, IssuerConfig};
use crate::lease::LeaseState;

/// The readiness part [`Manager::run`] does once every valid certificate and the session
/// ticket keys are in the cache.
pub const CERTIFICATES_PUBLISHED: &str = "the certificates published";
/// Most orders running at once.
pub const CONCURRENT_ORDERS: usize = 8;
/// Longest an order may take before it counts as failed.
pub const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// Most changes read at once.
const FEED_PAGE: u32 = 1024;
/// Longest wait for a change before looking again.
const FEED_WAIT: Duration = Duration::from_secs(60);

/// Why a wildcard cannot be ordered over ACME.
const WILDCARD_NEEDS_UPLOAD: &str = "a wildcard needs a DNS-01 challenge, which Meridian does \
     not answer: upload a certificate for it (`meridian cert add`)";
/// Why nothing is ordered at all.
const NO_ISSUER: &str = "this control plane has no issuer (--local-ca or --acme-directory): \
     upload a certificate for it (`meridian cert add`)";

/// What issues certificates, shared by the order tasks.
#[derive(Clone)]
enum Issuer {
    None,
    Local(Arc<super::LocalCa>),
    Acme {
        options: AcmeOptions,
        account: Arc<OnceCell<Acme>>,
    },
}

impl Issuer {
    /// The source of what it issues, and why it cannot issue `domain` if it cannot.
    fn can_issue(&self, domain: &str) -> Result<CertificateSource, &'static str> {
        match self {
            Issuer::None => Err(NO_ISSUER),
            Issuer::Local(_) => Ok(CertificateSource::Local),
            Issuer::Acme { .. } if domain.starts_with("*.") => Err(WILDCARD_NEEDS_UPLOAD),
            Issuer::Acme { .. } => Ok(CertificateSource::Acme),
        }
    }
}

/// What the loop knows of one claimed domain.
struct Known {
    service: ServiceKey,
    record: Option<CertificateRecord>,
    published: bool,
}

impl Known {
    fn state(&self) -> &'static str {
        self.record
            .as_ref()
            .map_or(CertificateState::Pending, |r| r.state)
            .as_str()
    }
}

/// The certificates' control loop; see the module's documentation.
pub(crate) struct Manager {
    store: Arc<dyn Store>,
    cache: Arc<Cache>,
    key: Arc<SealingKey>,
    issuer: Issuer,
    metrics: CertificateMetrics,
    clock: Clock,
    known: HashMap<String, Known>,
    by_service: HashMap<ServiceKey, BTreeSet<String>>,
    schedule: Schedule,
    expiring: BTreeSet<(i64, String)>,
    in_flight: HashSet<String>,
    orders: JoinSet<(String, bool)>,
    slots: Arc<Semaphore>,
    tickets_due: i64,
    lease: LeaseState,
}

impl Manager {
    /// A loop over `store` publishing into `cache`, sealing with `key`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        cache: Arc<Cache>,
        key: Arc<SealingKey>,
        issuer: IssuerConfig,
        metrics: CertificateMetrics,
        lease: LeaseState,
    ) -> Self {
        let issuer = match issuer {
            IssuerConfig::None => Issuer::None,
            IssuerConfig::Local(ca) => Issuer::Local(ca),
            IssuerConfig::Acme(options) => Issuer::Acme {
                options,
                account: Arc::new(OnceCell::new()),
            },
        };
        let clock = Clock::new();
        Manager {
            store,
            cache,
            key,
            issuer,
            metrics,
            clock,
            known: HashMap::new(),
            by_service: HashMap::new(),
            schedule: Schedule::new(clock),
            expiring: BTreeSet::new(),
            in_flight: HashSet::new(),
            orders: JoinSet::new(),
            slots: Arc::new(Semaphore::new(CONCURRENT_ORDERS)),
            tickets_due: 0,
            lease,
        }
    }

    /// Loads everything and publishes it (then does [`CERTIFICATES_PUBLISHED`] in
    /// `readiness`), then follows the store until it closes (`Ok`) or fails (the error; the
    /// supervisor starts a new loop, which loads everything again).
    pub(crate) async fn run(mut self, readiness: &Readiness) -> Result<(), StoreError> {
        let mut revision = self.store.revision().await?;
        self.load_all().await?;
        self.rotate_tickets_if_due().await;
        readiness.done(CERTIFICATES_PUBLISHED);
        loop {
            let wake = self.schedule.next().min(self.tickets_due);
            tokio::select! {
                changes = wait_for_changes(&*self.store, revision, FEED_PAGE, FEED_WAIT) => {
                    let changes = match changes {
                        Err(StoreError::Closed) => return Ok(()),
                        changes => changes?,
                    };
                    for change in changes {
                        revision = change.revision;
                        match change.kind {
                            ChangeKind::Domains => self.claims_changed(&change.key).await?,
                            ChangeKind::Service if change.op == ChangeOp::Delete => {
                                self.service_deleted(&change.key);
                            }
                            ChangeKind::Certificate => self.certificate_changed(&change.key).await?,
                            ChangeKind::TicketKeys => self.publish_tickets().await,
                            _ => {}
                        }
                    }
                }
                Some(done) = self.orders.join_next() => {
                    match done {
                        Ok((domain, written)) => self.order_done(domain, written),
                        Err(e) => tracing::error!(error = %e, "a certificate order panicked"),
                    }
                }
                () = self.schedule.sleep_until(wake) => {
                    self.start_due().await;
                    self.rotate_tickets_if_due().await;
                }
                Ok(()) = self.lease.changed() => {
                    if self.lease.fence().is_some() {
                        // Whatever was due while another held the lease is planned again.
                        self.load_all().await?;
                        self.tickets_due = 0;
                        self.rotate_tickets_if_due().await;
                    }
                }
            }
            self.update_expiry();
        }
    }

    /// Reads every claim, publishes what is valid, withdraws what the cache holds beyond it
    /// (and every challenge of an order a previous loop abandoned), and plans what is due.
    async fn load_all(&mut self) -> Result<(), StoreError> {
        let claims = self.store.list_domains(&ServiceFilter::default()).await?;
        self.metrics.reset();
        let stale_challenges = self.cache.names(
            ACME_CHALLENGE,
            &format!("{EDGE_NAMESPACE}{CHALLENGE_PREFIX}"),
        );
        self.cache.apply(
            ACME_CHALLENGE,
            Update {
                put: Vec::new(),
                remove: stale_challenges,
            },
        );
        let claimed: HashSet<String> = claims.iter().map(|c| c.domain.clone()).collect();
        let prefix = format!("{EDGE_NAMESPACE}{CERTIFICATE_PREFIX}");
        for name in self.cache.names(SECRET, &prefix) {
            if !claimed.contains(&name[prefix.len()..]) {
                self.cache.apply(
                    SECRET,
                    Update {
                        put: Vec::new(),
                        remove: vec![name],
                    },
                );
            }
        }
        let count = claims.len();
        for claim in claims {
            self.track(claim).await;
        }
        tracing::info!(domains = count, "certificates loaded and published");
        Ok(())
    }

    /// A service's claims changed: they are read again; domains it dropped are withdrawn.
    async fn claims_changed(&mut self, key: &str) -> Result<(), StoreError> {
        let Some(service) = ServiceKey::from_change_key(key) else {
            return Ok(());
        };
        let filter = ServiceFilter {
            org: Some(service.org.clone()),
            app: Some(service.app.clone()),
            name: Some(service.name.clone()),
        };
        let claims = self.store.list_domains(&filter).await?;
        let now: BTreeSet<String> = claims.iter().map(|c| c.domain.clone()).collect();
        let before = self.by_service.remove(&service).unwrap_or_default();
        for gone in before.difference(&now) {
            self.forget(gone);
        }
        for claim in claims {
            self.track(claim).await;
        }
        Ok(())
    }

    /// A service was deleted, and its claims with it: its domains are withdrawn.
    fn service_deleted(&mut self, key: &str) {
        let Some(service) = ServiceKey::from_change_key(key) else {
            return;
        };
        for gone in self.by_service.remove(&service).unwrap_or_default() {
            self.forget(&gone);
        }
    }

    /// A certificate row changed: it is republished (or withdrawn) and planned again.
    async fn certificate_changed(&mut self, domain: &str) -> Result<(), StoreError> {
        match self.store.get_domain(domain).await? {
            Some(claim) => self.track(claim).await,
            None => self.forget(domain),
        }
        Ok(())
    }

    /// Takes `claim` as the truth for its domain: publishes or withdraws its certificate,
    /// plans its next step, and writes a pending row when nothing can issue it.
    async fn track(&mut self, claim: DomainClaim) {
        let DomainClaim {
            domain,
            service,
            certificate,
        } = claim;
        let now = self.clock.now();
        let previous = self.known.remove(&domain);
        if let Some(previous) = &previous {
            self.metrics.leave(previous.state());
            if let Some(end) = previous.record.as_ref().and_then(|r| r.not_after) {
                self.expiring.remove(&(end, domain.clone()));
            }
        }
        let was_published = previous.is_some_and(|p| p.published);
        let published = match certificate.as_ref().filter(|r| serving(r, now)) {
            Some(record) => match self.publish(record) {
                Ok(()) => true,
                Err(reason) => {
                    self.show_unservable(record, reason).await;
                    false
                }
            },
            None => {
                if was_published {
                    remove_certificate(&self.cache, &domain);
                }
                false
            }
        };
        if published {
            if let Some(end) = certificate.as_ref().and_then(|r| r.not_after) {
                self.expiring.insert((end, domain.clone()));
            }
        }
        let due = self.plan(&domain, certificate.as_ref(), now).await;
        self.schedule.set(&domain, due);
        self.by_service
            .entry(service.clone())
            .or_default()
            .insert(domain.clone());
        let known = Known {
            service,
            record: certificate,
            published,
        };
        self.metrics.enter(known.state());
        self.known.insert(domain, known);
    }

    /// Publishes `record` (valid); the reason when its key does not open (logged, naming the
    /// domain), and nothing is served.
    fn publish(&self, record: &CertificateRecord) -> Result<(), String> {
        let (Some(chain), Some(sealed)) = (&record.chain_pem, &record.sealed_key) else {
            return Ok(());
        };
        match self.key.open(&key_label(&record.domain), sealed) {
            Ok(key_pem) => {
                put_certificate(&self.cache, &record.domain, chain, &key_pem);
                Ok(())
            }
            Err(e) => {
                tracing::error!(domain = %record.domain, error = %e,
                    "the certificate's private key cannot be opened; it is not served");
                remove_certificate(&self.cache, &record.domain);
                Err(format!(
                    "{e}: not served; start the control plane with the --secrets-key it was \
                     sealed with, or upload a new certificate"
                ))
            }
        }
    }

    /// Shows why `record`'s certificate is not served (once: the row written comes back
    /// through the change feed with the same reason).
    async fn show_unservable(&self, record: &CertificateRecord, reason: String) {
        if record.last_error.as_ref() == Some(&reason) {
            return;
        }
        let Some(fence) = self.lease.fence() else {
            return;
        };
        let row = CertificateRecord {
            last_error: Some(reason),
            ..record.clone()
        };
        if let Err(e) = self.store.put_certificate(&row, Some(&fence)).await {
            tracing::warn!(domain = %record.domain, error = %e, "could not record why it is not served");
        }
    }

    /// When `domain` (whose row is `record`) needs work next, if ever; writes a pending row
    /// explaining why when nothing can issue it and it has no row yet.
    async fn plan(
        &self,
        domain: &str,
        record: Option<&CertificateRecord>,
        now: i64,
    ) -> Option<i64> {
        let expiry = record.filter(|r| serving(r, now)).and_then(|r| r.not_after);
        let issuable = self.issuer.can_issue(domain);
        match (record, issuable) {
            (Some(r), _) if uploaded(r) => expiry,
            (Some(r), Ok(_)) => {
                let next = r.next_attempt.unwrap_or(now);
                Some(expiry.map_or(next, |end| next.min(end)))
            }
            (None, Ok(_)) => Some(now),
            (Some(_), Err(_)) => expiry,
            (None, Err(why)) => {
                let fence = self.lease.fence()?;
                let source = match self.issuer {
                    Issuer::Acme { .. } => CertificateSource::Acme,
                    _ => CertificateSource::Upload,
                };
                let row = records::waiting(domain, source, why, now);
                if let Err(e) = self.store.put_certificate(&row, Some(&fence)).await {
                    tracing::debug!(%domain, error = %e, "could not record why the domain waits");
                }
                None
            }
        }
    }

    /// Forgets a domain that is no longer claimed and withdraws its certificate.
    fn forget(&mut self, domain: &str) {
        let Some(known) = self.known.remove(domain) else {
            return;
        };
        self.metrics.leave(known.state());
        self.schedule.set(domain, None);
        if let Some(end) = known.record.as_ref().and_then(|r| r.not_after) {
            self.expiring.remove(&(end, domain.to_owned()));
        }
        if known.published {
            remove_certificate(&self.cache, domain);
        }
        if let Some(domains) = self.by_service.get_mut(&known.service) {
            domains.remove(domain);
        }
    }

    /// Starts the work of every domain that is due: an order, or marking an expired
    /// certificate that nothing renews.
    /// Without the lease nothing is started: what is due is planned again once this replica
    /// takes it.
    async fn start_due(&mut self) {
        let now = self.clock.now();
        let due = self.schedule.take_due();
        let Some(fence) = self.lease.fence() else {
            return;
        };
        for domain in due {
            let Some(known) = self.known.get(&domain) else {
                continue;
            };
            if self.in_flight.contains(&domain) {
                continue;
            }
            let record = known.record.clone();
            let renewable = !record.as_ref().is_some_and(uploaded);
            match (self.issuer.can_issue(&domain), renewable) {
                (Ok(source), true) => self.start_order(domain, source, record, fence.clone()),
                _ => {
                    if let Some(current) =
                        record.filter(|r| !serving(r, now) && r.state == CertificateState::Valid)
                    {
                        let row = records::expired(&current, now);
                        if let Err(e) = self.store.put_certificate(&row, Some(&fence)).await {
                            tracing::warn!(%domain, error = %e, "could not record an expiry");
                        }
                    }
                }
            }
        }
    }

    /// Starts an order for `domain` in its own task; its result is written with `fence`.
    fn start_order(
        &mut self,
        domain: String,
        source: CertificateSource,
        previous: Option<CertificateRecord>,
        fence: Fence,
    ) {
        self.in_flight.insert(domain.clone());
        let (store, key, issuer, cache) = (
            self.store.clone(),
            self.key.clone(),
            self.issuer.clone(),
            self.cache.clone(),
        );
        let (slots, metrics, clock) = (self.slots.clone(), self.metrics.clone(), self.clock);
        self.orders.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let started = tokio::time::Instant::now();
            let result =
                tokio::time::timeout(ORDER_TIMEOUT, issue(&*store, &key, &issuer, cache, &domain))
                    .await;
            let now = clock.now();
            let outcome = match result {
                Ok(Ok(issued)) => records::issued(&domain, source, &issued, &key, now),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("the order took longer than {ORDER_TIMEOUT:?}")),
            };
            if source == CertificateSource::Acme {
                metrics.order(outcome.is_ok());
            }
            let row = match outcome {
                Ok(row) => {
                    tracing::info!(%domain, took = ?started.elapsed(), "certificate issued");
                    row
                }
                Err(error) => {
                    tracing::warn!(%domain, %error, "certificate order failed");
                    records::failed(&domain, source, previous.as_ref(), &error, now)
                }
            };
            // A certificate uploaded while the order ran wins over it.
            if let Ok(Some(claim)) = store.get_domain(&domain).await {
                if claim.certificate.as_ref().is_some_and(uploaded) {
                    return (domain, true);
                }
            }
            match store.put_certificate(&row, Some(&fence)).await {
                Ok(()) => (domain, true),
                Err(StoreError::NotFound(_)) => (domain, true),
                Err(e @ StoreError::Fenced(_)) => {
                    tracing::info!(%domain, error = %e, "the order's result is not stored: \
                        another replica took the lease and does the work");
                    (domain, true)
                }
                Err(e) => {
                    tracing::warn!(%domain, error = %e, "could not store the certificate");
                    (domain, false)
                }
            }
        });
    }

    /// An order ended; if its row could not be written, it is tried again after a backoff.
    fn order_done(&mut self, domain: String, written: bool) {
        self.in_flight.remove(&domain);
        if written {
            return;
        }
        if self.known.contains_key(&domain) {
            let at = self.clock.now().saturating_add(60);
            self.schedule.set(&domain, Some(at));
        }
    }

    /// Rotates the session ticket keys when they are due (or missing) and publishes them;
    /// without the lease, only publishes the stored ones (the holder's rotation comes through
    /// the change feed).
    async fn rotate_tickets_if_due(&mut self) {
        let now = self.clock.now();
        if now < self.tickets_due {
            return;
        }
        let Some(fence) = self.lease.fence() else {
            self.publish_tickets().await;
            self.tickets_due = i64::MAX;
            return;
        };
        let result = async {
            let stored = match tickets::load(&*self.store, &self.key).await {
                // Keys sealed with another secrets key are replaced: losing them costs only
                // the resumption of sessions made with them.
                Err(tickets::TicketKeysError::Seal(e)) => {
                    tracing::warn!(error = %e, "session ticket keys replaced");
                    None
                }
                stored => stored?,
            };
            let (keys, rotated_at) = stored.unwrap_or_default();
            if rotated_at > 0 && now < tickets::next_rotation(rotated_at) {
                return Ok((keys, rotated_at));
            }
            let keys = tickets::rotate(&*self.store, &self.key, keys, now, &fence).await?;
            Ok::<_, tickets::TicketKeysError>((keys, now))
        }
        .await;
        match result {
            Ok((keys, rotated_at)) => {
                put_ticket_keys(&self.cache, &keys);
                self.tickets_due = tickets::next_rotation(rotated_at);
            }
            Err(e) => {
                tracing::warn!(error = %e, "session ticket keys not rotated; retrying in a minute");
                self.tickets_due = now.saturating_add(60);
            }
        }
    }

    /// Publishes the stored session ticket keys (after a rotation, here or elsewhere).
    async fn publish_tickets(&mut self) {
        match tickets::load(&*self.store, &self.key).await {
            Ok(Some((keys, rotated_at))) => {
                put_ticket_keys(&self.cache, &keys);
                self.tickets_due = tickets::next_rotation(rotated_at);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "session ticket keys cannot be read"),
        }
    }

    fn update_expiry(&self) {
        let left = self
            .expiring
            .first()
            .map_or(0, |(end, _)| end.saturating_sub(self.clock.now()));
        self.metrics.set_expiry(left);
    }
}

/// Whether `record` is an uploaded certificate (not one waiting for an upload): the control
/// plane never renews it.
fn uploaded(record: &CertificateRecord) -> bool {
    record.source == CertificateSource::Upload && record.state != CertificateState::Pending
}

/// Issues `domain` a certificate with `issuer`.
async fn issue(
    store: &dyn Store,
    key: &SealingKey,
    issuer: &Issuer,
    cache: Arc<Cache>,
    domain: &str,
) -> Result<super::Issued, String> {
    match issuer {
        Issuer::None => Err(NO_ISSUER.to_owned()),
        Issuer::Local(ca) => ca.issue(domain).map_err(|e| e.to_string()),
        Issuer::Acme { options, account } => {
            let acme = account
                .get_or_try_init(|| Acme::connect(store, key, options.clone(), cache))
                .await
                .map_err(|e| e.to_string())?;
            acme.order(domain).await.map_err(|e| e.to_string())
        }
    }
}
