//! `meridian logs SERVICE --app APP`: the output of a service's instances, as the agents on this
//! machine keep it (`<agent state>/logs/<org>.<app>.<instance>/stdout.log`, rotated at 10 MiB).
//! Logs stay on the nodes; reading them from another machine is not implemented yet.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;

/// Options of `meridian logs`.
#[derive(Args)]
pub struct LogsArgs {
    /// The service.
    service: String,
    /// Its app.
    #[arg(long)]
    app: String,
    /// Its org; without it, every org's service of that name and app.
    #[arg(long)]
    org: Option<String>,
    /// Agents' state directories to read (repeat the flag for several).
    #[arg(long = "state-dir", default_value = "./agent-state")]
    state_dirs: Vec<PathBuf>,
    /// Read every agent of a `meridian dev` data directory instead.
    #[arg(long, value_name = "DIR")]
    dev_dir: Option<PathBuf>,
    /// Standard error instead of standard output.
    #[arg(long)]
    stderr: bool,
    /// Lines from the end of each instance's current log.
    #[arg(long, default_value_t = 50)]
    tail: usize,
}

/// Prints the last lines of each instance's log, each prefixed with `[node instance]`.
pub fn run(args: LogsArgs) -> Result<()> {
    let state_dirs: Vec<PathBuf> = match &args.dev_dir {
        Some(dev) => std::fs::read_dir(dev.join("agents"))
            .map(|entries| entries.flatten().map(|e| e.path()).collect())
            .unwrap_or_default(),
        None => args.state_dirs.clone(),
    };
    let file = if args.stderr {
        "stderr.log"
    } else {
        "stdout.log"
    };
    let mut found = 0;
    for state in &state_dirs {
        let node = state
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (instance, path) in instance_logs(state, &args)? {
            found += 1;
            let text = std::fs::read_to_string(path.join(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(args.tail)..] {
                println!("[{node} {instance}] {line}");
            }
        }
    }
    if found == 0 {
        bail!(
            "no logs of {}/{} in {}; pass the agents' --state-dir, or --dev-dir for meridian dev",
            args.app,
            args.service,
            state_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The log directories of the service's instances under one agent's state directory.
fn instance_logs(state: &Path, args: &LogsArgs) -> Result<Vec<(String, PathBuf)>> {
    let Ok(entries) = std::fs::read_dir(state.join("logs")) else {
        return Ok(Vec::new());
    };
    let mut logs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<org>.<app>.<service>-<n>`
        let mut parts = name.splitn(3, '.');
        let (Some(org), Some(app), Some(instance)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let service = instance.rsplit_once('-').map_or(instance, |(s, _)| s);
        let org_matches = args.org.as_deref().is_none_or(|o| o == org);
        if org_matches && app == args.app && service == args.service {
            logs.push((instance.to_owned(), entry.path()));
        }
    }
    logs.sort();
    Ok(logs)
}
