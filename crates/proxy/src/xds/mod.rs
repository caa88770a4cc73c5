//! Running from an xDS control plane (`meridian proxy --xds URL`): a delta-ADS client whose
//! accepted updates become whole configurations, applied like a file reload. The last accepted
//! configuration is written to disk, and a proxy that starts while its control plane is away
//! serves that copy until the control plane answers.

mod translate;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use meridian_xds::{
    run_delta_client, ClientOptions, Handler, Interest, Interests, Resources, CLUSTER, ENDPOINT,
    LISTENER, ROUTE,
};

use crate::config::ProxyConfig;
use crate::reload::{serve_admin, serve_until, RunError};
use crate::Proxy;
pub use translate::Identity;
use translate::{assignment_names, route_names, translate, Translated};

/// The name of the disk copy in the state directory.
const STATE_FILE: &str = "last-config.json";

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
}

/// Runs the proxy from xDS until `shutdown` resolves.
pub async fn run_xds(
    options: XdsOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let proxy = Arc::new(Proxy::default());
    let state_file = options.state_dir.join(STATE_FILE);
    let last = start_from_disk(&proxy, &state_file).await;
    serve_admin(&proxy, options.admin).await?;
    let node = node(&options);
    let handler = ProxyHandler {
        proxy: proxy.clone(),
        state_file,
        last,
        identity: options.identity.as_ref().map(|(files, _)| files.clone()),
    };
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
    let client = tokio::spawn(run_delta_client(client, handler));
    let result = serve_until(&proxy, shutdown).await;
    client.abort();
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

/// Applies the disk copy, if there is a good one; returns it.
async fn start_from_disk(proxy: &Proxy, path: &std::path::Path) -> Option<ProxyConfig> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the last xDS configuration");
            return None;
        }
    };
    let config = match crate::parse_config(&text) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring a bad copy of the last xDS configuration");
            return None;
        }
    };
    match proxy.apply(config.clone()).await {
        Ok(()) => {
            println!("serving the last configuration accepted over xDS ({}) until the control plane answers", path.display());
            Some(config)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot apply the last xDS configuration");
            None
        }
    }
}

/// Turns accepted xDS state into applied configurations.
struct ProxyHandler {
    proxy: Arc<Proxy>,
    state_file: PathBuf,
    last: Option<ProxyConfig>,
    identity: Option<Identity>,
}

impl ProxyHandler {
    /// Writes the disk copy (a whole file, renamed into place).
    async fn persist(&self, config: &ProxyConfig) {
        let result = async {
            if let Some(dir) = self.state_file.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            let text = serde_json::to_string_pretty(config).map_err(std::io::Error::other)?;
            let partial = self.state_file.with_extension("json.partial");
            tokio::fs::write(&partial, text).await?;
            tokio::fs::rename(&partial, &self.state_file).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(path = %self.state_file.display(), error = %e,
                "cannot keep a copy of the configuration on disk");
        }
    }
}

impl Handler for ProxyHandler {
    fn initial_interests(&self) -> Interests {
        [
            (LISTENER.to_owned(), Interest::Wildcard),
            (CLUSTER.to_owned(), Interest::Wildcard),
        ]
        .into_iter()
        .collect()
    }

    async fn accept(&mut self, resources: &Resources, type_url: &str) -> Result<Interests, String> {
        if let Translated::Config(config) = translate(resources, self.identity.as_ref())? {
            if self.last.as_ref() != Some(&config) {
                self.proxy
                    .apply(config.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(%type_url, listeners = config.listeners.len(),
                    clusters = config.clusters.len(), "applied a configuration from xDS");
                self.persist(&config).await;
                self.last = Some(config);
            }
        }
        let routes: BTreeSet<String> = route_names(resources)?.into_iter().collect();
        let assignments: BTreeSet<String> = assignment_names(resources)?.into_iter().collect();
        let mut interests = self.initial_interests();
        interests.insert(ROUTE.to_owned(), Interest::Names(routes));
        interests.insert(ENDPOINT.to_owned(), Interest::Names(assignments));
        Ok(interests)
    }
}
