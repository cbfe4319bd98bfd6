//! Log set-up: human-readable lines by default, JSON for log collectors, the level from a flag or
//! `RUST_LOG` (which wins, so an operator can turn up one module without editing the unit file).
//! [`setup`] is what the command line calls: it picks the writer (stderr, batched, or a file).
//!
//! The relay logs a line per request (the access log), so its lines are written by a background
//! thread in batches ([`init_batched`]): the request path formats a line and appends it to a
//! buffer, and a burst of lines costs one write to stderr or the log file instead of one each.

mod access_line;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub use access_line::ACCESS_TARGET;
use access_line::AccessLines;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

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
        LogFormat::Human => builder
            .map_event_format(|inner| AccessLines { inner, json: false })
            .try_init(),
        // JSON carries the target, so collectors can pick out `ponte::access` lines.
        LogFormat::Json => builder
            .json()
            .with_target(true)
            .flatten_event(true)
            .map_event_format(|inner| AccessLines { inner, json: true })
            .try_init(),
    };
    if let Err(e) = result {
        // Already initialised (tests) is fine; anything else is worth one line on stderr.
        let _ = writeln!(std::io::stderr(), "logging not initialised: {e}");
    }
}

/// How long a line may wait in the batch before the writer thread writes it.
const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Bytes that wake the writer thread before its interval is up.
const BATCH_BYTES: usize = 64 * 1024;
/// Bytes past which the thread that logs writes the batch itself: if the output is stuck, logging
/// slows the caller down (as a plain stderr write would) rather than growing without bound.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// [`init`], with lines collected in memory and written by a background thread every
/// [`FLUSH_INTERVAL`] (or sooner in a burst): the thread that logs only formats and copies, and
/// a burst costs one write instead of one per line. tracing-appender's non-blocking writer was
/// measured first: it wakes its thread for almost every line at a few thousand lines a second,
/// which cost the relay more CPU than the write it saved. Keep the guard until the process
/// ends: dropping it writes what is still collected.
pub fn init_batched<W>(format: LogFormat, level: &str, writer: W, ansi: bool) -> BatchGuard
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let shared = Arc::new(Batch {
        buf: Mutex::new(Vec::new()),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let sink = Arc::new(writer);
    let thread = {
        let (shared, sink) = (shared.clone(), sink.clone());
        std::thread::Builder::new()
            .name("ponte-log".into())
            .spawn(move || shared.run(&*sink))
            .ok()
    };
    init(
        format,
        level,
        Batched {
            shared: shared.clone(),
            sink,
        },
        ansi,
    );
    BatchGuard { shared, thread }
}

/// Writes what is still collected when dropped, and stops the writer thread.
pub struct BatchGuard {
    shared: Arc<Batch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for BatchGuard {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lines waiting to be written.
struct Batch {
    buf: Mutex<Vec<u8>>,
    wake: Condvar,
    stop: AtomicBool,
}

impl Batch {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while appending leaves at worst a partial line; keep logging.
        self.buf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer thread: every interval (or when woken), write what was collected.
    fn run<W: for<'a> MakeWriter<'a>>(&self, sink: &W) {
        loop {
            let batch = {
                let buf = self.lock();
                let (mut buf, _) = self
                    .wake
                    .wait_timeout(buf, FLUSH_INTERVAL)
                    .unwrap_or_else(|p| p.into_inner());
                std::mem::take(&mut *buf)
            };
            write_out(sink, &batch);
            if self.stop.load(Ordering::Acquire) {
                // Lines logged while the last batch was written.
                let rest = std::mem::take(&mut *self.lock());
                write_out(sink, &rest);
                return;
            }
        }
    }
}

fn write_out<W: for<'a> MakeWriter<'a>>(sink: &W, batch: &[u8]) {
    if batch.is_empty() {
        return;
    }
    let mut out = sink.make_writer();
    // A batch that cannot be written has nowhere better to go; logging must not stop the relay.
    let _ = out.write_all(batch).and_then(|()| out.flush());
}

/// The subscriber's writer: appends each line to the batch under its lock, so lines from several
/// threads never interleave.
struct Batched<W> {
    shared: Arc<Batch>,
    sink: Arc<W>,
}

impl<'a, W: for<'b> MakeWriter<'b> + 'a> MakeWriter<'a> for Batched<W> {
    type Writer = Line<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            buf: Some(self.shared.lock()),
            shared: &self.shared,
            sink: &self.sink,
        }
    }
}

/// One line being appended to the batch.
struct Line<'a, W: for<'b> MakeWriter<'b>> {
    buf: Option<MutexGuard<'a, Vec<u8>>>,
    shared: &'a Batch,
    sink: &'a W,
}

impl<W: for<'b> MakeWriter<'b>> Write for Line<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if let Some(buf) = self.buf.as_mut() {
            buf.extend_from_slice(data);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: for<'b> MakeWriter<'b>> Drop for Line<'_, W> {
    fn drop(&mut self) {
        let Some(mut buf) = self.buf.take() else { return };
        if buf.len() >= MAX_BATCH_BYTES {
            // The writer thread is behind (the output is stuck): write here, outside the lock.
            let batch = std::mem::take(&mut *buf);
            drop(buf);
            write_out(self.sink, &batch);
        } else if buf.len() >= BATCH_BYTES {
            drop(buf);
            self.shared.wake.notify_one();
        }
    }
}

/// Where a command's log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// stderr (a Windows service: its log file), each line written as it is logged.
    Standard,
    /// The same place, written in batches by a background thread (the relay: a line per
    /// request).
    Batched,
    /// Appended to this file (`ponte webhook -logfile`); never coloured.
    File(PathBuf),
}

/// How a command logs: the format, the level (`RUST_LOG` still wins) and where lines go.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Human or JSON lines.
    pub format: LogFormat,
    /// The level or filter, e.g. `info` or `warn,ponte::access=info`.
    pub level: String,
    /// Where lines go.
    pub output: Output,
}

/// The log file named by `-logfile` could not be opened (exit code 2, like a configuration
/// mistake: fix the path, do not restart in a loop).
#[derive(Debug, thiserror::Error)]
#[error("error opening log file {}: {source}", path.display())]
pub struct LogFileError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// Keeps the log output working until the process ends: dropping it writes the relay's
/// batched lines that are still collected.
#[must_use = "dropping the guard stops the batched log writer"]
pub struct LogGuard {
    _batch: Option<BatchGuard>,
}

/// Install the global subscriber a command asks for. `standard` is where [`Output::Standard`]
/// and [`Output::Batched`] lines go (`daemon::log_writer()`: stderr, or a Windows service's log
/// file). Colour only for a person at a terminal (never in journald, a pipe or a file).
pub fn setup<W>(setup: Setup, standard: W) -> Result<LogGuard, LogFileError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let Setup {
        format,
        level,
        output,
    } = setup;
    let ansi = std::io::stderr().is_terminal();
    let batch = match output {
        Output::Standard => {
            init(format, &level, standard, ansi);
            None
        }
        Output::Batched => Some(init_batched(format, &level, standard, ansi)),
        Output::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|source| LogFileError { path, source })?;
            init(format, &level, Mutex::new(file), false);
            None
        }
    };
    Ok(LogGuard { _batch: batch })
}

/// Install the subscriber writing to stderr.
pub fn init_stderr(format: LogFormat, level: &str) {
    // Colour only for a person at a terminal, never in journald or log files.
    init(format, level, std::io::stderr, std::io::stderr().is_terminal());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `-logfile` that cannot be opened: the path and the reason, and exit code 2 (fixed by
    /// the user, not by a restart). Nothing is installed, so this test leaves the global
    /// subscriber alone.
    #[test]
    fn an_unopenable_log_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no-such-dir").join("webhook.log");
        let Err(e) = setup(
            Setup {
                format: LogFormat::Human,
                level: "info".into(),
                output: Output::File(path.clone()),
            },
            std::io::stderr,
        ) else {
            panic!("opened a file in a missing directory");
        };
        let message = e.to_string();
        assert!(
            message.starts_with(&format!("error opening log file {}: ", path.display())),
            "{message}"
        );
        let e = crate::exit::CommandError::from(e);
        assert_eq!(e.exit_code(), crate::exit::EXIT_CONFIG);
        assert_eq!(e.to_string(), message);
    }
}
