//! The guard: a small process of its own that the edge starts next to it, which withdraws the
//! anycast prefixes when the edge can no longer do it — when the edge dies in any way
//! (`kill -9`, a crash: the pipe from the edge closes), or when it stops giving signs of life
//! for the guard timeout (frozen: SIGSTOP, a stalled runtime). BGP and BFD catch the BIRD or
//! the machine that dies; the guard catches the edge that dies while its BIRD lives on and goes
//! on attracting traffic. It ignores SIGINT and SIGTERM, which reach a whole process group at
//! once: the edge withdraws on those itself, and the guard follows when the edge is gone.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

use super::speaker::{BirdSpeaker, Speaker};

/// What the guard needs to withdraw.
#[derive(Debug, Clone)]
pub struct GuardOptions {
    /// BIRD's control socket.
    pub socket: PathBuf,
    /// The state file of the static protocols.
    pub state_file: PathBuf,
    /// The static protocols holding the anycast routes.
    pub protocols: Vec<String>,
    /// How long without a sign of life before it withdraws.
    pub timeout: Duration,
}

impl GuardOptions {
    /// The guard's command-line arguments (after the subcommand that runs it).
    pub fn arguments(&self) -> Vec<String> {
        let mut arguments = vec![
            "--bgp-socket".to_owned(),
            self.socket.display().to_string(),
            "--state-file".to_owned(),
            self.state_file.display().to_string(),
            "--timeout".to_owned(),
            format!("{}ms", self.timeout.as_millis()),
        ];
        for protocol in &self.protocols {
            arguments.extend(["--protocol".to_owned(), protocol.clone()]);
        }
        arguments
    }
}

/// Runs the guard: reads signs of life on standard input until it closes, withdrawing when
/// none came for the timeout, and once more (then returns) when it closes.
pub async fn run_guard(options: GuardOptions) {
    let mut speaker = BirdSpeaker::for_guard(
        &options.socket,
        &options.state_file,
        options.protocols.clone(),
    );
    let ignored = [
        tokio::signal::unix::SignalKind::interrupt(),
        tokio::signal::unix::SignalKind::terminate(),
    ]
    .map(tokio::signal::unix::signal);
    if ignored.iter().any(Result::is_err) {
        tracing::warn!("the guard cannot ignore SIGINT and SIGTERM");
    }
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    // Whether it withdrew since the last sign of life.
    let mut withdrew = false;
    loop {
        match tokio::time::timeout(options.timeout, stdin.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                withdraw(&mut speaker, "the edge is gone").await;
                return;
            }
            Ok(Ok(_)) => withdrew = false,
            Err(_) if !withdrew => {
                withdraw(&mut speaker, "the edge gave no sign of life in time").await;
                withdrew = true;
            }
            Err(_) => {}
        }
    }
}

async fn withdraw(speaker: &mut BirdSpeaker, why: &str) {
    match speaker.set(false).await {
        Ok(()) => tracing::warn!(why, "the guard withdrew the anycast prefixes"),
        Err(e) => {
            tracing::error!(why, error = %e, "the guard could not withdraw the anycast prefixes")
        }
    }
}

/// The edge's side of the guard: the process, and the pipe that carries signs of life.
pub struct Guard {
    command: (PathBuf, Vec<String>),
    child: Child,
    stdin: ChildStdin,
}

impl Guard {
    /// Starts `program` with `arguments` as the guard (its standard input is the pipe).
    pub fn spawn(program: PathBuf, arguments: Vec<String>) -> std::io::Result<Guard> {
        let (child, stdin) = start(&program, &arguments)?;
        Ok(Guard {
            command: (program, arguments),
            child,
            stdin,
        })
    }

    /// Gives a sign of life; starts the guard again if it is gone.
    pub async fn beat(&mut self) {
        let written =
            tokio::time::timeout(Duration::from_secs(1), self.stdin.write_all(&[1])).await;
        if matches!(written, Ok(Ok(()))) {
            return;
        }
        tracing::warn!(status = ?self.child.try_wait(), "the anycast guard is gone; starting it again");
        match start(&self.command.0, &self.command.1) {
            Ok((child, stdin)) => {
                self.child = child;
                self.stdin = stdin;
            }
            Err(e) => tracing::error!(error = %e, "cannot start the anycast guard"),
        }
    }
}

fn start(program: &PathBuf, arguments: &[String]) -> std::io::Result<(Child, ChildStdin)> {
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the guard has no standard input"))?;
    Ok((child, stdin))
}
