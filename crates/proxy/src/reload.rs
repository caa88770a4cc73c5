//! Running from a config file: load it, serve the admin port, and re-apply the file when it
//! changes or on SIGHUP. A file that does not parse or validate is rejected with every problem
//! logged, and the configuration in force stays.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::Proxy;

/// How often the config file is checked for changes.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Options of [`run`].
pub struct RunOptions {
    /// The config file (YAML or JSON).
    pub config: PathBuf,
    /// Where the admin port listens (port 0 picks one; it is printed).
    pub admin: SocketAddr,
    /// Where every request is logged, whatever the file's `access_log` says (which, alone,
    /// logs to standard output).
    pub access_log: Option<(crate::AccessLogTarget, crate::AccessLogSource)>,
    /// Where the spans of traced requests go, if anywhere.
    pub trace: Option<crate::TraceOptions>,
}

/// Error starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The first configuration was not applied.
    #[error("{path}: {source}")]
    Apply {
        /// The file.
        path: String,
        /// Why.
        source: crate::ApplyError,
    },
    /// The access log could not be opened.
    #[error("access log {target}: {source}")]
    AccessLog {
        /// Where it was to go.
        target: crate::AccessLogTarget,
        /// Why.
        source: std::io::Error,
    },
    /// Tracing could not start.
    #[error("traces: {0}")]
    Trace(#[from] crate::TraceError),
    /// The admin port could not be bound.
    #[error("admin port {address}: {source}")]
    Admin {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

async fn load(proxy: &Proxy, path: &PathBuf) -> Result<String, RunError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| RunError::Read {
            path: path.display().to_string(),
            source,
        })?;
    proxy
        .apply_text(&text)
        .await
        .map_err(|source| RunError::Apply {
            path: path.display().to_string(),
            source,
        })?;
    Ok(text)
}

/// Serves the admin port of `proxy` on `address` in a task of its own; prints its address and
/// each listener's bound address on standard output. Returns the address bound.
pub async fn serve_admin(proxy: &Arc<Proxy>, address: SocketAddr) -> Result<SocketAddr, RunError> {
    serve_admin_with(proxy, address, axum::Router::new()).await
}

/// [`serve_admin`] with more routes: those of the component that embeds the proxy (an edge's
/// `/drain`, say).
pub async fn serve_admin_with(
    proxy: &Arc<Proxy>,
    address: SocketAddr,
    more: axum::Router,
) -> Result<SocketAddr, RunError> {
    let admin = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| RunError::Admin { address, source })?;
    let admin_address = admin
        .local_addr()
        .map_err(|source| RunError::Admin { address, source })?;
    let router = crate::admin::router(proxy.clone()).merge(more);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(admin, router).await {
            tracing::error!(error = %e, "admin port failed");
        }
    });
    println!("meridian proxy admin on http://{admin_address}");
    for (name, address) in proxy.listeners().await {
        println!("listener {name} on {address}");
    }
    Ok(admin_address)
}

/// Waits for `shutdown`, then drains `proxy`'s connections.
pub async fn serve_until(
    proxy: &Proxy,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    shutdown.await;
    drain(proxy).await;
    Ok(())
}

/// Starts `proxy`'s access log, if one is asked for.
pub(crate) fn log_access(
    proxy: &Proxy,
    access_log: Option<(crate::AccessLogTarget, crate::AccessLogSource)>,
) -> Result<(), RunError> {
    let Some((target, source)) = access_log else {
        return Ok(());
    };
    proxy
        .log_access(&target, source)
        .map_err(|source| RunError::AccessLog { target, source })
}

/// Starts tracing `proxy`'s requests, if asked for.
pub(crate) fn trace(proxy: &Proxy, options: Option<&crate::TraceOptions>) -> Result<(), RunError> {
    if let Some(options) = options {
        proxy.trace_to(options)?;
    }
    Ok(())
}

async fn drain(proxy: &Proxy) {
    let timeout = proxy.limits().drain_timeout.0;
    println!(
        "draining connections (up to {})",
        humantime::format_duration(timeout)
    );
    let left = proxy.drain(timeout).await;
    println!("stopped ({left} connections cut off)");
}

/// Runs the proxy from `options.config` until `shutdown` resolves. Prints the admin address and
/// each listener's bound address on standard output once serving.
pub async fn run(options: RunOptions, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let proxy = Arc::new(Proxy::default());
    log_access(&proxy, options.access_log)?;
    trace(&proxy, options.trace.as_ref())?;
    let mut applied = load(&proxy, &options.config).await?;
    serve_admin(&proxy, options.admin).await?;
    let mut hangup = signal(SignalKind::hangup()).ok();
    tokio::pin!(shutdown);
    loop {
        let forced = tokio::select! {
            _ = &mut shutdown => {
                drain(&proxy).await;
                return Ok(());
            }
            _ = tokio::time::sleep(POLL_INTERVAL) => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        let text = match tokio::fs::read_to_string(&options.config).await {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(path = %options.config.display(), error = %e,
                    "cannot read the config file; keeping the current config");
                continue;
            }
        };
        if text == applied && !forced {
            continue;
        }
        match proxy.apply_text(&text).await {
            Ok(()) => tracing::info!(path = %options.config.display(), "configuration reloaded"),
            Err(e) => tracing::warn!(path = %options.config.display(), error = %e,
                "configuration rejected; keeping the current one"),
        }
        applied = text;
    }
}
