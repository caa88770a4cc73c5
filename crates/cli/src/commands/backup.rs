//! `meridian backup` and `meridian restore`: the global control plane's whole store as one
//! file, read from and written to the database directly (SQLite in a data directory, or
//! PostgreSQL), so that a store moves between machines and between backends.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use meridian_store::StoreLocation;

/// Which store: the global control plane's own options.
#[derive(Args)]
pub struct StoreArgs {
    /// The global control plane's data directory, whose SQLite database is the store (unless
    /// --store).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// The store's PostgreSQL database instead: postgres://user:password@host:port/database.
    #[arg(long, value_name = "URL", env = "MERIDIAN_STORE", hide_env_values = true,
          value_parser = StoreLocation::postgres)]
    store: Option<StoreLocation>,
}

impl StoreArgs {
    fn location(self) -> StoreLocation {
        self.store
            .unwrap_or_else(|| StoreLocation::Sqlite(self.data_dir.join("meridian.db")))
    }
}

/// Options of `meridian backup`.
#[derive(Args)]
pub struct BackupArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The file to write (readable by its owner only); an existing one is replaced.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: PathBuf,
}

/// Options of `meridian restore`.
#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The backup to restore (made by `meridian backup`, from either backend).
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// Writes the whole store to the file, from one snapshot (the control plane may be running).
pub async fn backup(args: BackupArgs) -> Result<()> {
    let location = args.store.location();
    // Opening a SQLite store makes it when missing: a mistyped directory would give an empty
    // backup.
    if let StoreLocation::Sqlite(path) = &location {
        if !tokio::fs::try_exists(path).await.unwrap_or(false) {
            bail!("there is no store at {location} (see --data-dir and --store)");
        }
    }
    let store = location
        .open()
        .await
        .with_context(|| format!("opening the store at {location}"))?;
    let backup = store.backup().await.context("reading the store")?;
    // Written beside it, then moved over it: the file is whole or not there.
    let partial = args.output.with_extension("partial");
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o600);
    let mut file = options
        .open(&partial)
        .await
        .with_context(|| format!("creating {}", partial.display()))?;
    let written = tokio::io::AsyncWriteExt::write_all(&mut file, &backup).await;
    written
        .and(file.sync_all().await)
        .with_context(|| format!("writing {}", partial.display()))?;
    tokio::fs::rename(&partial, &args.output)
        .await
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "backed up {location} to {} ({} bytes)",
        args.output.display(),
        backup.len()
    );
    Ok(())
}

/// Fills an empty store with the file's content.
pub async fn restore(args: RestoreArgs) -> Result<()> {
    let backup = tokio::fs::read(&args.file)
        .await
        .with_context(|| format!("reading {}", args.file.display()))?;
    let location = args.store.location();
    if let Some(dir) = match &location {
        StoreLocation::Sqlite(path) => path.parent(),
        StoreLocation::Postgres(_) => None,
    } {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = location
        .open()
        .await
        .with_context(|| format!("opening the store at {location}"))?;
    let revision = match store.restore(&backup).await {
        Ok(revision) => revision,
        Err(e) => bail!("restoring {} into {location}: {e}", args.file.display()),
    };
    println!(
        "restored {} into {location} (up to revision {revision}); sealed secrets and keys open \
         only with the secrets key they were sealed with (--secrets-key)",
        args.file.display()
    );
    Ok(())
}
