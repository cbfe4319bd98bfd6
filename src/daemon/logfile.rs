//! Where log lines go: stderr for a console or systemd (journald collects it), or size-capped,
//! rotated files for a Windows service, which has no stderr anyone reads.
//!
//! [`LogSink`] is installed once at start-up as the subscriber's writer and writes to stderr until
//! [`route_to_file`] is called; the switch happens after the process knows it is a service, which
//! on Windows is only after the service dispatcher has answered.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Largest size of one log file before it is rotated: a clinic PC's disk must never fill with logs.
pub const MAX_FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept beside the current one (`ponte-agent.log.1` … `.5`): 60 MB at most in all.
pub const KEEP_FILES: usize = 5;

/// A log file that rotates itself when it would grow past its cap.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    state: Mutex<Option<(File, u64)>>,
}

impl RotatingFile {
    /// Open (append) `path`, creating its folder; rotate at `max_bytes`, keeping `keep` old files.
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = Self::append(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            max_bytes,
            keep,
            state: Mutex::new(Some((file, len))),
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    /// Shift `.log` → `.log.1` → … → `.log.{keep}` (the oldest is dropped) and start a new file.
    fn rotate(&self, state: &mut Option<(File, u64)>) -> io::Result<()> {
        // Windows cannot rename an open file: close it first.
        *state = None;
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        *state = Some((Self::append(&self.path)?, 0));
        Ok(())
    }

    /// Append one record (a whole log line), rotating first if it would not fit.
    pub fn write_record(&self, record: &[u8]) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let len = state.as_ref().map_or(0, |(_, len)| *len);
        if state.is_none() || (len > 0 && len + record.len() as u64 > self.max_bytes) {
            self.rotate(&mut state)?;
        }
        match state.as_mut() {
            Some((file, len)) => {
                file.write_all(record)?;
                *len += record.len() as u64;
                Ok(())
            }
            None => Err(io::Error::other("log file is closed")),
        }
    }
}

/// Remove terminal colour codes (`ESC [ … m`): the subscriber colours its output for a terminal,
/// and a log file read in Notepad must not show them.
pub fn strip_ansi(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == 0x1b && input.get(i + 1) == Some(&b'[') {
            i += 2;
            while i < input.len() && !(0x40..=0x7e).contains(&input[i]) {
                i += 1;
            }
            i += 1;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    out
}

static FILE: OnceLock<RotatingFile> = OnceLock::new();

/// Send every later log line to `path` (rotated) instead of stderr. Only the first call counts.
pub fn route_to_file(path: &Path) -> io::Result<()> {
    let file = RotatingFile::open(path, MAX_FILE_BYTES, KEEP_FILES)?;
    let _ = FILE.set(file);
    Ok(())
}

/// The log writer installed at start-up: stderr, or the file once [`route_to_file`] was called.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSink;

/// One log record on its way out; written in one piece when dropped.
#[derive(Debug)]
pub struct Record {
    buf: Vec<u8>,
}

impl Write for Record {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        // A log line that cannot be written has nowhere better to go; dropping it is the only
        // choice that keeps the tunnel running.
        let _ = match FILE.get() {
            Some(file) => file.write_record(&strip_ansi(&self.buf)),
            None => io::stderr().write_all(&self.buf),
        };
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = Record;
    fn make_writer(&'a self) -> Record {
        Record { buf: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_cap_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ponte-agent.log");
        let log = RotatingFile::open(&path, 100, 2).unwrap();
        for i in 0..20 {
            log.write_record(format!("line {i:02} {}\n", "x".repeat(30)).as_bytes())
                .unwrap();
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["ponte-agent.log", "ponte-agent.log.1", "ponte-agent.log.2"]
        );
        for name in &names {
            let len = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(len <= 100, "{name} is {len} bytes");
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.contains("line 19"), "{current}");
        let older = std::fs::read_to_string(dir.path().join("ponte-agent.log.1")).unwrap();
        assert!(older.contains("line 17"), "{older}");
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        RotatingFile::open(&path, 1000, 1)
            .unwrap()
            .write_record(b"one\n")
            .unwrap();
        RotatingFile::open(&path, 1000, 1)
            .unwrap()
            .write_record(b"two\n")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
    }

    #[test]
    fn colour_codes_are_removed() {
        let coloured = b"\x1b[2m2026-01-01\x1b[0m \x1b[32m INFO\x1b[0m tunnel connected\n";
        assert_eq!(
            strip_ansi(coloured),
            b"2026-01-01  INFO tunnel connected\n".to_vec()
        );
        assert_eq!(strip_ansi(b"plain"), b"plain".to_vec());
    }
}
