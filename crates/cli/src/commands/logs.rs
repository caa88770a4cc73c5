//! `meridian logs SERVICE --app APP [-f] [--region R] [--since 10m] [--grep X]`: the output of a
//! service's instances in every region, through the API (the global control plane asks each
//! region, which asks its agents). Each line is tagged with its region, instance and stream; a
//! region or node that does not answer is said so on standard error, and the rest is shown.
//!
//! With `--state-dir` or `--dev-dir`, the files the agents on this machine keep are read
//! instead, without any control plane: for a node whose region is cut off.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use clap::Args;
use meridian_agent::{answer_locally, LocalQuery};
use meridian_model::{LogEvent, LogParams, LogRequest};
use meridian_xds::logs::LogAnswer;

use super::resources::{service_path, AppScope};
use crate::client::Client;
use crate::output::Format;

/// Options of `meridian logs`.
#[derive(Args)]
pub struct LogsArgs {
    /// The service.
    service: String,
    #[command(flatten)]
    scope: AppScope,
    /// Only this region.
    #[arg(long)]
    region: Option<String>,
    /// Only lines written since: a duration back (`10m`, `1h`) or a time
    /// (`2024-05-01T12:00:00Z`).
    #[arg(long)]
    since: Option<String>,
    /// The last lines of each instance [default: 100, or every line since --since, up to
    /// 10000].
    #[arg(long)]
    tail: Option<u32>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// Keep printing the lines written next, until Ctrl-C.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Print each line's time (when its agent read it).
    #[arg(long)]
    timestamps: bool,
    /// Read the logs the agent with this state directory keeps on this machine instead of
    /// asking the API (repeat for several).
    #[arg(long = "state-dir", value_name = "DIR", conflicts_with = "region")]
    state_dirs: Vec<PathBuf>,
    /// Read the logs of every agent of a `meridian dev` data directory instead of asking the
    /// API.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["region", "state_dirs"])]
    dev_dir: Option<PathBuf>,
}

impl LogsArgs {
    /// The query, checked as the API checks it.
    fn request(&self) -> Result<LogRequest> {
        let params = LogParams {
            since: self.since.as_deref(),
            tail: self.tail,
            grep: self.grep.as_deref(),
            follow: self.follow,
            region: self.region.as_deref(),
        };
        LogRequest::parse(&params, SystemTime::now()).map_err(|errors| {
            let first = errors.errors.first();
            anyhow::anyhow!(
                "--{}: {}",
                first.map_or("logs", |e| e.field.as_str()),
                first.map_or(String::new(), |e| e.message.clone())
            )
        })
    }

    /// Whether the logs are read from local files.
    fn local(&self) -> bool {
        self.dev_dir.is_some() || !self.state_dirs.is_empty()
    }
}

/// Runs `meridian logs`: through the API at `client`, or locally.
pub async fn run(client: &crate::connection::ClientArgs, args: LogsArgs) -> Result<()> {
    let request = args.request()?;
    if args.local() {
        return local(args, request).await;
    }
    let api = Client::new(client).await?;
    let path = service_path(&api, &args.service, &args.scope).await?;
    let mut query = vec![format!("tail={}", request.tail)];
    let mut push = |name: &str, value: Option<&String>| {
        if let Some(value) = value {
            query.push(format!("{name}={}", percent_encode(value)));
        }
    };
    push("since", args.since.as_ref());
    push("grep", args.grep.as_ref());
    push("region", args.region.as_ref());
    if args.follow {
        query.push("follow=true".to_owned());
    }
    let mut response = api
        .open_stream(&format!("{path}/logs?{}", query.join("&")))
        .await?;
    let mut printer = Printer {
        format: client.output,
        timestamps: args.timestamps,
        pending: Vec::new(),
    };
    while let Some(chunk) = response
        .chunk()
        .await
        .context("the API's log stream broke off")?
    {
        printer.feed(&chunk)?;
    }
    Ok(())
}

/// Percent-encodes a query parameter's value.
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Prints the API's events as they come.
struct Printer {
    format: Format,
    timestamps: bool,
    /// The start of an event whose line has not ended yet.
    pending: Vec<u8>,
}

impl Printer {
    /// Prints the events that `chunk` completes.
    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        self.pending.extend_from_slice(chunk);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            let event: LogEvent = serde_json::from_slice(&line[..end])
                .context("the API's log stream holds something other than events")?;
            self.print(&event)?;
        }
        Ok(())
    }

    fn print(&self, event: &LogEvent) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if self.format == Format::Json {
            if !matches!(event, LogEvent::Heartbeat) {
                serde_json::to_writer(&mut out, event)?;
                writeln!(out)?;
            }
            return Ok(());
        }
        match event {
            LogEvent::Line(line) => {
                if self.timestamps {
                    write!(out, "{} ", line.time)?;
                }
                writeln!(
                    out,
                    "[{} {} {}] {}",
                    line.region, line.instance, line.stream, line.text
                )?;
            }
            LogEvent::Notice(notice) => {
                out.flush()?;
                eprintln!("meridian logs: {}: {}", notice.kind.as_str(), notice.text);
            }
            LogEvent::CaughtUp | LogEvent::Heartbeat => {}
        }
        Ok(())
    }
}

/// Reads the files of the agents on this machine: each state directory (named after its
/// node) on a thread of its own.
async fn local(args: LogsArgs, request: LogRequest) -> Result<()> {
    let state_dirs: Vec<PathBuf> = match &args.dev_dir {
        Some(dev) => std::fs::read_dir(dev.join("agents"))
            .with_context(|| format!("--dev-dir: {} has no agents", dev.display()))?
            .flatten()
            .map(|e| e.path())
            .collect(),
        None => args.state_dirs.clone(),
    };
    let query = Arc::new(LocalQuery {
        org: args.scope.org.clone(),
        app: args.scope.app.clone(),
        service: args.service.clone(),
        since_nanos: request.since.map_or(0, meridian_model::logs::unix_nanos),
        tail: request.tail as usize,
        grep: request
            .grep
            .as_deref()
            .map(meridian_model::compile_grep)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--grep: {e}"))?,
        follow: request.follow,
    });
    if !state_dirs.iter().any(|dir| query.found(dir)) {
        bail!(
            "no logs of {}/{} in {}; pass the agents' --state-dir, or --dev-dir for meridian dev",
            args.scope.app,
            args.service,
            state_dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let timestamps = args.timestamps;
    let mut readers = tokio::task::JoinSet::new();
    for dir in state_dirs {
        let query = query.clone();
        readers.spawn_blocking(move || {
            let node = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut print = |answer: LogAnswer| print_local(&node, &answer, timestamps).is_ok();
            answer_locally(&dir, &query, &mut print, &|| true);
        });
    }
    while readers.join_next().await.is_some() {}
    Ok(())
}

/// Prints what one node's files answered: `[node instance stream] line`.
fn print_local(node: &str, answer: &LogAnswer, timestamps: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for line in &answer.lines {
        if timestamps {
            let time = meridian_model::logs::format_unix_nanos(line.time_unix_nanos);
            write!(out, "{time} ")?;
        }
        writeln!(
            out,
            "[{node} {} {}] {}",
            line.instance, line.stream, line.text
        )?;
    }
    for notice in &answer.notices {
        eprintln!("meridian logs: {node}: {}: {}", notice.kind, notice.text);
    }
    out.flush()
}
