//! `meridian completions SHELL`: a completion script for the shell, generated from the same
//! definition as the parser (subcommands, flags, values of enumerated options).

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// Prints the completion script for `shell` on standard output.
pub fn run(shell: Shell) -> Result<()> {
    let mut command = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "meridian", &mut script);
    match std::io::stdout().write_all(&script) {
        // Whoever reads it (`| head`) may stop early: not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written.context("writing the completion script"),
    }
}
