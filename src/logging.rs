//! Log set-up: human-readable lines by default, JSON for log collectors, the level from a flag or
//! `RUST_LOG` (which wins, so an operator can turn up one module without editing the unit file).

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event.
    Json,
}

/// Install the global subscriber writing to `writer`. Safe to call more than once (later calls are
/// ignored), which keeps tests that start several components in one process simple.
pub fn init<W>(format: LogFormat, level: &str, writer: W, ansi: bool)
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi)
        .with_target(false);
    let result = match format {
        LogFormat::Human => builder.try_init(),
        // JSON carries the target, so collectors can pick out `ponte::access` lines.
        LogFormat::Json => builder.json().with_target(true).flatten_event(true).try_init(),
    };
    if let Err(e) = result {
        // Already initialised (tests) is fine; anything else is worth one line on stderr.
        let _ = writeln!(std::io::stderr(), "logging not initialised: {e}");
    }
}

/// Install the subscriber writing to stderr.
pub fn init_stderr(format: LogFormat, level: &str) {
    // Colour only for a person at a terminal, never in journald or log files.
    init(format, level, std::io::stderr, std::io::stderr().is_terminal());
}
