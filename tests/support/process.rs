//! The real `ponte` binary as a child process, for tests that must kill a relay or an agent with
//! SIGKILL. Its stderr (JSON log lines) is drained by a thread so the child never blocks on a
//! full pipe; only this child is ever killed, by its own handle.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running `ponte` child.
pub struct Process {
    child: Child,
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
        Process { child, lines }
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
                if self.child.try_wait().expect("try_wait").is_some() {
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

    /// Everything it logged so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// SIGKILL this child and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
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
