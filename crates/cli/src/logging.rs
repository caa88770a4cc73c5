//! The process's own log, on standard error: filtered by `MERIDIAN_LOG` (`info` when unset),
//! as text for people (coloured at a terminal) or as one JSON object per line for log
//! collectors (`--log-format json`).

use std::sync::OnceLock;

/// How the process writes its own log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people: time, level, target, message and fields.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's
    /// fields, and `span`/`spans` (the spans it happened in).
    Json,
}

impl LogFormat {
    /// The flag's value for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The format chosen at start (for the processes `meridian dev` starts).
static CHOSEN: OnceLock<LogFormat> = OnceLock::new();

/// The format the log was set up with.
pub fn format() -> LogFormat {
    CHOSEN.get().copied().unwrap_or_default()
}

/// Sets up the process's log in `format`.
pub fn init(format: LogFormat) {
    let _ = CHOSEN.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_env("MERIDIAN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            // Colours only for a person at a terminal: a log file or journal gets plain text.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
