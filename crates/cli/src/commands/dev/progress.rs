//! A progress line for `meridian dev`'s long waits, so that a person sees what is ready so far
//! and how long it has waited: at a terminal, one line redrawn in place each time the wait
//! polls; elsewhere (a log file, a pipe), a line only when what is ready changes.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// One wait being shown.
pub struct Progress {
    what: &'static str,
    started: Instant,
    at_terminal: bool,
    shown: Option<String>,
}

impl Progress {
    /// Starts showing the wait for `what` (e.g. "the example app to be served").
    pub fn start(what: &'static str) -> Progress {
        let at_terminal = std::io::stdout().is_terminal();
        if !at_terminal {
            println!("waiting for {what}…");
        }
        Progress {
            what,
            started: Instant::now(),
            at_terminal,
            shown: None,
        }
    }

    /// Shows what is ready now (e.g. "web served in 1 of 2 regions").
    pub fn update(&mut self, state: &str) {
        if self.at_terminal {
            print!(
                "\r\x1b[2K{}",
                line(self.what, state, self.started.elapsed())
            );
            // A progress line that cannot be drawn is not worth stopping for.
            let _ = std::io::stdout().flush();
        } else if self.shown.as_deref() != Some(state) {
            println!("  {state}");
        }
        self.shown = Some(state.to_owned());
    }

    /// Ends the wait with what was ready at its end.
    pub fn finish(self, state: &str) {
        let line = line(self.what, state, self.started.elapsed());
        if self.at_terminal {
            println!("\r\x1b[2K{line}");
        } else {
            println!("  {line}");
        }
    }
}

/// `waiting for WHAT: STATE (N s)`.
fn line(what: &str, state: &str, waited: Duration) -> String {
    format!("waiting for {what}: {state} ({} s)", waited.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_what_is_ready_and_how_long_it_took() {
        assert_eq!(
            line(
                "the example app to be served",
                "web served in 1 of 2 regions",
                Duration::from_millis(12_700)
            ),
            "waiting for the example app to be served: web served in 1 of 2 regions (12 s)"
        );
    }
}
