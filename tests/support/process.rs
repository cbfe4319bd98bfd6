//! Child processes the tests start: killed by their own PID when dropped, never by name.
//! [`Process`] runs the real `ponte` binary for tests that must SIGKILL a relay or an agent; its
//! stderr (JSON log lines) is drained by a thread so the child never blocks on a full pipe.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A child process killed (by its PID) when dropped.
pub struct Owned(pub Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Owned {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Wait for the exit, killing it after `limit`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            if start.elapsed() > limit {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM (with the `kill` utility, by PID) and wait for a graceful exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.0.id();
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        self.wait_for(super::WAIT)
            .unwrap_or_else(|| panic!("process {pid} did not exit after SIGTERM"))
    }
}

/// A running `ponte` child.
pub struct Process {
    child: Owned,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Start `ponte --log-format json ARGS…`.
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ponte"))
            .arg("--log-format")
            .arg("json")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ponte");
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Process {
            child: Owned(child),
            lines,
        }
    }

    /// The first JSON log line whose `message` is `message`, waiting for it (bounded); `None` if
    /// the process exited first.
    pub async fn log_line(&mut self, message: &str) -> Option<serde_json::Value> {
        super::within(&format!("log line `{message}`"), async {
            loop {
                let found = self.lines.lock().unwrap().iter().find_map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).ok()?;
                    (v["message"] == message).then_some(v)
                });
                if found.is_some() {
                    return found;
                }
                if self.child.0.try_wait().expect("try_wait").is_some() {
                    // Give the reader thread a moment to collect the last lines.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return self.lines.lock().unwrap().iter().find_map(|l| {
                        let v: serde_json::Value = serde_json::from_str(l).ok()?;
                        (v["message"] == message).then_some(v)
                    });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Everything it logged so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// How many JSON log lines so far have `message` as their message.
    pub fn count(&self, message: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == message))
            .count()
    }

    /// Wait (bounded) until at least `n` log lines have `message`.
    pub async fn wait_count(&self, message: &str, n: usize) {
        super::within(&format!("{n} log lines `{message}`"), async {
            while self.count(message) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }

    /// SIGTERM (with the `kill` utility, by PID) and wait (bounded) for its exit; `None` if it
    /// had to be killed after [`super::WAIT`].
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let pid = self.child.pid();
        Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("kill");
        self.child.wait_for(super::WAIT)
    }

    /// SIGKILL this child (by its PID) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

/// A relay child started from `config`, on `port` (0: any), with its bound port read from its
/// log. Retries a few times when the port is briefly not free again after a kill.
pub async fn start_relay_process(config: &Path, port: u16) -> (Process, u16) {
    let listen = format!("127.0.0.1:{port}");
    for _ in 0..50 {
        let mut p = Process::spawn(&["relay", "--config", config.to_str().unwrap(), "--listen", &listen]);
        if let Some(line) = p.log_line("relay listening").await {
            let addr: std::net::SocketAddr =
                line["addr"].as_str().expect("addr field").parse().expect("addr");
            return (p, addr.port());
        }
        let out = p.output();
        assert!(out.contains("cannot listen"), "relay exited: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("port {port} never became free again");
}
