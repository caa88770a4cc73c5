//! Running from an xDS control plane (`meridian proxy --xds URL`): a delta-ADS client whose
//! accepted updates are translated resource by resource and applied with work proportional to
//! the change ([`XdsHandler`]). The configuration in force is copied to disk (at most every
//! [`DISK_COPY_EVERY`], and at shutdown), and a proxy that starts while its control plane is
//! away serves that copy until the control plane answers. A gateway following its region over
//! mutual TLS also reports the requests it answered there ([`report`]).

pub mod fixture;
mod report;
mod state;
mod translate;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use meridian_model::ValidationErrors;
use meridian_xds::{
    run_delta_client, Changes, ClientOptions, Handler, Interest, Interests, Resources, UnaryClient,
    CLUSTER, LISTENER,
};
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::reload::{serve_admin, serve_until, RunError};
use crate::{ApplyError, Proxy};
use state::{Apply, Staged, Translation};
use translate::name_indices;
pub use translate::Identity;

/// The name of the disk copy in the state directory.
const STATE_FILE: &str = "last-config.json";

/// The disk copy is written at most this often (and once more at shutdown).
pub const DISK_COPY_EVERY: Duration = Duration::from_millis(500);

/// Options of [`run_xds`].
pub struct XdsOptions {
    /// The control plane's xDS address, e.g. `http://127.0.0.1:18000`.
    pub server: String,
    /// TLS (with this proxy's certificate) for an `https://` server.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// This proxy's certificate files, for clusters reached over mutual TLS, and what signals
    /// that they were renewed (the configuration is applied again then, so that new
    /// connections use the new certificate).
    pub identity: Option<(Identity, Arc<tokio::sync::Notify>)>,
    /// This proxy's node id.
    pub node_id: String,
    /// Its role (`gateway`, `node-proxy`, `edge`), sent as node metadata.
    pub role: String,
    /// Its region, sent as the node's locality.
    pub region: Option<String>,
    /// Where the last accepted configuration is kept.
    pub state_dir: PathBuf,
    /// Where the admin port listens.
    pub admin: SocketAddr,
    /// Where every request is logged, if anywhere.
    pub access_log: Option<(crate::AccessLogTarget, crate::AccessLogSource)>,
    /// Where the spans of traced requests go, if anywhere.
    pub trace: Option<crate::TraceOptions>,
}

/// Runs the proxy from xDS until `shutdown` resolves.
pub async fn run_xds(
    options: XdsOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let proxy = Arc::new(Proxy::default());
    crate::reload::log_access(&proxy, options.access_log.clone())?;
    crate::reload::trace(&proxy, options.trace.as_ref())?;
    let state_file = options.state_dir.join(STATE_FILE);
    start_from_disk(&proxy, &state_file).await;
    let admin = serve_admin(&proxy, options.admin).await?;
    let node = node(&options);
    let identity = options.identity.as_ref().map(|(files, _)| files.clone());
    let handler = XdsHandler::new(proxy.clone(), identity);
    let disk = tokio::spawn(keep_on_disk(
        proxy.clone(),
        state_file.clone(),
        handler.applied(),
    ));
    if let Some((_, renewed)) = &options.identity {
        tokio::spawn(reapply_on_renewal(proxy.clone(), renewed.clone()));
    }
    let client = ClientOptions {
        url: options.server.clone(),
        tls: options.tls.clone(),
        node,
        backoff: (Duration::from_millis(100), Duration::from_secs(5)),
    };
    println!(
        "following xDS at {} as node {}",
        options.server, options.node_id
    );
    let reports = match (&options.tls, options.role.as_str()) {
        (Some(tls), "gateway") => {
            let control = UnaryClient::new(&options.server, tls.clone());
            let node = options.node_id.clone();
            Some(tokio::spawn(report::report_gateway(
                proxy.clone(),
                control,
                node,
                admin,
            )))
        }
        _ => None,
    };
    let client = tokio::spawn(run_delta_client(client, handler));
    let result = serve_until(&proxy, shutdown).await;
    client.abort();
    disk.abort();
    if let Some(reports) = reports {
        reports.abort();
    }
    // The final state, whatever the last periodic write saw.
    write_copy(&proxy, &state_file).await;
    result
}

fn node(options: &XdsOptions) -> Node {
    let fields = [(
        "role".to_owned(),
        Value {
            kind: Some(Kind::StringValue(options.role.clone())),
        },
    )];
    Node {
        id: options.node_id.clone(),
        locality: options.region.as_ref().map(|region| Locality {
            region: region.clone(),
            ..Default::default()
        }),
        metadata: Some(Struct {
            fields: fields.into_iter().collect(),
        }),
        user_agent_name: "meridian-proxy".to_owned(),
        ..Default::default()
    }
}

/// Applies the configuration in force again after each renewal of the proxy's certificate:
/// new connections use the new certificate, open ones stay.
/// Applies `proxy`'s configuration again each time `renewed` is told (its certificate files were
/// renewed: new connections use the new certificate), for as long as the task runs.
pub async fn reapply_on_renewal(proxy: Arc<Proxy>, renewed: Arc<tokio::sync::Notify>) {
    loop {
        renewed.notified().await;
        if let Some(config) = proxy.config().await {
            if let Err(e) = proxy.apply(config).await {
                tracing::error!(error = %e, "the renewed certificate could not be applied");
            }
        }
    }
}

/// Applies the disk copy, if there is a good one.
async fn start_from_disk(proxy: &Proxy, path: &std::path::Path) {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the last xDS configuration");
            return;
        }
    };
    let config = match crate::parse_config(&text) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a bad copy of the last xDS configuration");
            return;
        }
    };
    match proxy.apply(config).await {
        Ok(()) => println!(
            "serving the last configuration accepted over xDS ({}) until the control plane answers",
            path.display()
        ),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot apply the last xDS configuration")
        }
    }
}

/// Turns accepted xDS updates into applied configurations, with work that follows the change:
/// only the resources an update touches are translated again, and a change of clusters already
/// in force that leaves their settings alone (new endpoints: the common case) is applied to
/// those clusters alone.
pub struct XdsHandler {
    proxy: Arc<Proxy>,
    identity: Option<Identity>,
    translation: Translation,
    /// Whether a whole configuration from xDS has been applied yet.
    served: bool,
    /// Counts applied changes (the disk copy follows it).
    applied: watch::Sender<u64>,
}

impl XdsHandler {
    /// A handler that applies to `proxy`, with `identity` for clusters over mutual TLS.
    pub fn new(proxy: Arc<Proxy>, identity: Option<Identity>) -> XdsHandler {
        XdsHandler {
            proxy,
            identity,
            translation: Translation::default(),
            served: false,
            applied: watch::Sender::new(0),
        }
    }

    /// Changes each time the handler applied a change to the proxy.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Commits `staged` and applies what it changes; undoes it if the proxy refuses.
    async fn apply(
        &mut self,
        resources: &Resources,
        staged: Staged,
    ) -> Result<Option<Interests>, String> {
        let (undo, apply, interests_changed) = self.translation.commit(staged, resources);
        let apply = match apply {
            Apply::Nothing | Apply::Clusters(_)
                if !self.served && self.translation.ready(resources) =>
            {
                Apply::Whole(Box::new(self.translation.config()))
            }
            apply => apply,
        };
        let applied = match apply {
            Apply::Nothing => Ok(false),
            Apply::Clusters(clusters) => match self.proxy.apply_endpoints(&clusters).await {
                Ok(true) => Ok(true),
                Ok(false) => self.apply_whole(self.translation.config()).await,
                Err(ApplyError::Invalid(errors)) => {
                    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
                    Err(named(&errors, &[], &names))
                }
                Err(e) => Err(e.to_string()),
            },
            Apply::Whole(config) => self.apply_whole(*config).await,
        };
        match applied {
            Ok(changed) => {
                if changed {
                    self.applied.send_modify(|count| *count += 1);
                }
                Ok(interests_changed.then(|| self.translation.interests()))
            }
            Err(reason) => {
                self.translation.undo(undo);
                Err(reason)
            }
        }
    }

    /// Applies a whole configuration; a refusal names the resources, not indices.
    async fn apply_whole(&mut self, config: ProxyConfig) -> Result<bool, String> {
        let listeners: Vec<String> = config.listeners.iter().map(|l| l.name.clone()).collect();
        let clusters: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        let counts = (config.listeners.len(), config.clusters.len());
        match self.proxy.apply(config).await {
            Ok(()) => {
                self.served = true;
                tracing::info!(
                    listeners = counts.0,
                    clusters = counts.1,
                    "applied a whole configuration from xDS"
                );
                Ok(true)
            }
            Err(ApplyError::Invalid(errors)) => {
                let listeners: Vec<&str> = listeners.iter().map(String::as_str).collect();
                let clusters: Vec<&str> = clusters.iter().map(String::as_str).collect();
                Err(named(&errors, &listeners, &clusters))
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Validation errors with `listeners[i]` and `clusters[i]` turned into the resources' names.
fn named(errors: &ValidationErrors, listeners: &[&str], clusters: &[&str]) -> String {
    let messages: Vec<String> = errors
        .errors
        .iter()
        .map(|e| {
            let field = name_indices(&e.field, "listeners", "Listener", listeners);
            let field = name_indices(&field, "clusters", "Cluster", clusters);
            format!("{field}: {}", e.message)
        })
        .collect();
    messages.join("; ")
}

impl Handler for XdsHandler {
    fn initial_interests(&self) -> Interests {
        [
            (LISTENER.to_owned(), Interest::Wildcard),
            (CLUSTER.to_owned(), Interest::Wildcard),
        ]
        .into_iter()
        .collect()
    }

    /// Translates every Listener and Cluster again (for callers that do not say what changed).
    async fn accept(
        &mut self,
        resources: &Resources,
        _type_url: &str,
    ) -> Result<Interests, String> {
        let mut staged = Staged::default();
        for type_url in [LISTENER, CLUSTER] {
            let mut names: BTreeSet<String> = self.translation.names(type_url).collect();
            names.extend(
                resources
                    .get(type_url)
                    .into_iter()
                    .flatten()
                    .map(|(n, _)| n.clone()),
            );
            let names: Vec<String> = names.into_iter().collect();
            let more =
                self.translation
                    .stage(resources, type_url, &names, self.identity.as_ref())?;
            staged = staged.and(more);
        }
        self.apply(resources, staged).await?;
        Ok(self.translation.interests())
    }

    async fn accept_changes(
        &mut self,
        resources: &Resources,
        changes: &Changes<'_>,
    ) -> Result<Option<Interests>, String> {
        let staged = self.translation.stage(
            resources,
            changes.type_url,
            changes.names,
            self.identity.as_ref(),
        )?;
        self.apply(resources, staged).await
    }
}

/// Keeps the disk copy of the configuration in force: written after a change that `applied`
/// signals, at most once every [`DISK_COPY_EVERY`] (changes in between are written together).
async fn keep_on_disk(proxy: Arc<Proxy>, path: PathBuf, mut applied: watch::Receiver<u64>) {
    while applied.changed().await.is_ok() {
        applied.borrow_and_update();
        write_copy(&proxy, &path).await;
        tokio::time::sleep(DISK_COPY_EVERY).await;
    }
}

/// Writes the disk copy of `proxy`'s configuration (a whole file, renamed into place).
async fn write_copy(proxy: &Proxy, path: &std::path::Path) {
    let Some(config) = proxy.config().await else {
        return;
    };
    let result = async {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let text = serde_json::to_string_pretty(&config).map_err(std::io::Error::other)?;
        let partial = path.with_extension("json.partial");
        tokio::fs::write(&partial, text).await?;
        tokio::fs::rename(&partial, path).await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e,
            "cannot keep a copy of the configuration on disk");
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::google::protobuf::Any;
    use meridian_xds::{Changes, Handler, Held, Interests, Resources, CLUSTER, ENDPOINT};

    use super::fixture;
    use super::XdsHandler;
    use crate::Proxy;

    /// Replaces ClusterLoadAssignment `name` with `assignment` and has the handler take it.
    async fn change(
        handler: &mut XdsHandler,
        resources: &mut Resources,
        name: &str,
        assignment: Any,
    ) -> Result<Option<Interests>, String> {
        let held = Held {
            version: "2".to_owned(),
            resource: Arc::new(assignment),
        };
        let names = [name.to_owned()];
        let endpoints = resources.get_mut(ENDPOINT).unwrap();
        endpoints.insert(name.to_owned(), held);
        let changes = Changes {
            type_url: ENDPOINT,
            names: &names,
        };
        handler.accept_changes(resources, &changes).await
    }

    #[tokio::test]
    async fn one_endpoint_change_translates_and_touches_one_cluster() {
        let proxy = Arc::new(Proxy::default());
        let mut handler = XdsHandler::new(proxy.clone(), None);
        let mut resources = fixture::resources(50, "127.0.0.1:0".parse().unwrap());
        handler.accept(&resources, CLUSTER).await.unwrap();
        let before = proxy.active.lock().await.clusters.clone();
        assert_eq!(before.len(), 50);

        let name = fixture::service(7);
        let staged = handler
            .translation
            .stage(&resources, ENDPOINT, std::slice::from_ref(&name), None)
            .unwrap();
        assert_eq!(
            staged.cluster_names(),
            [name.as_str()],
            "one cluster re-translated"
        );

        let moved = fixture::assignment(7, &[4242]);
        let interests = change(&mut handler, &mut resources, &name, moved).await;
        let interests = interests.unwrap();
        assert!(interests.is_none(), "the subscriptions did not change");

        let active = proxy.active.lock().await;
        for (cluster, built) in &before {
            let now = &active.clusters[cluster];
            assert!(Arc::ptr_eq(built, now), "cluster {cluster} was rebuilt");
            let ports: Vec<u16> = now.endpoints().iter().map(|e| e.addr.port()).collect();
            if *cluster == name {
                assert_eq!(ports, [4242]);
            } else {
                assert_ne!(ports, [4242]);
            }
        }
        let config = active.config.as_ref().unwrap();
        let in_force = &config.clusters[active.cluster_at[&name]];
        assert_eq!(in_force.endpoints[0].address, "127.0.0.1:4242");
    }

    #[tokio::test]
    async fn a_bad_endpoint_is_refused_by_name_and_changes_nothing() {
        use envoy_types::pb::envoy::config::core::v3::address::Address;
        use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
        use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
        use prost::Message;

        let proxy = Arc::new(Proxy::default());
        let mut handler = XdsHandler::new(proxy.clone(), None);
        let mut resources = fixture::resources(5, "127.0.0.1:0".parse().unwrap());
        handler.accept(&resources, CLUSTER).await.unwrap();
        let before = proxy.config().await.unwrap();

        let name = fixture::service(3);
        let any = fixture::assignment(3, &[4242]);
        let mut assignment = ClusterLoadAssignment::decode(any.value.as_slice()).unwrap();
        let lb = &mut assignment.endpoints[0].lb_endpoints[0];
        let Some(HostIdentifier::Endpoint(endpoint)) = &mut lb.host_identifier else {
            unreachable!()
        };
        let Some(Address::SocketAddress(socket)) = &mut endpoint.address.as_mut().unwrap().address
        else {
            unreachable!()
        };
        socket.address = "nowhere".to_owned();
        let bad = meridian_xds::render::pack(&assignment);
        let refused = change(&mut handler, &mut resources, &name, bad)
            .await
            .unwrap_err();
        assert!(
            refused.contains("Cluster `s3`: endpoints[0].address"),
            "{refused}"
        );
        assert_eq!(proxy.config().await.unwrap(), before);
    }
}
