//! `meridian control --global`: the global control plane (public API over the store).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use meridian_store::{SqliteStore, Store};

/// Options of `meridian control`.
#[derive(Args)]
pub struct ControlArgs {
    /// Run the global control plane: the public API, the store and the change feed.
    #[arg(long, required = true)]
    global: bool,
    /// Directory for the embedded database (created if missing).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Address for the public API (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
}

/// Runs the global control plane until Ctrl-C or SIGTERM.
pub async fn run(args: ControlArgs) -> Result<()> {
    debug_assert!(args.global, "clap requires --global");
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating the data directory {}", args.data_dir.display()))?;
    let db = args.data_dir.join("meridian.db");
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&db)
            .await
            .with_context(|| format!("opening the store at {}", db.display()))?,
    );
    let admin_token = meridian_api::bootstrap_admin_token(&*store)
        .await
        .map_err(|e| anyhow::anyhow!("creating the admin token: {e:?}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is the port in use?)", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "meridian control (global) serving http://{addr} (data in {})",
        args.data_dir.display()
    );
    match admin_token {
        Some(token) => {
            println!("admin token (shown only at first start, stored hashed): {token}");
            println!("  export MERIDIAN_API=http://{addr} MERIDIAN_TOKEN={token}");
        }
        None => println!("admin token: created at first start, not shown again"),
    }
    axum::serve(listener, meridian_api::router(store))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
