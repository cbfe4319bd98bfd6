//! Shared pieces of the packaging tests: find the artifacts `packaging/build-all.sh` left in
//! `dist/`, skip with a reason when a tool or artifact is missing (fail instead under `CI=true`),
//! run external commands with a time limit and their output in a log file, and a relay plus
//! echo upstream on loopback for the packaged agents to connect to.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// True when running under CI, where a skip is a failure.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip (return false, printing why) or, under CI, fail.
pub fn skip(test: &str, reason: &str) -> bool {
    if ci() {
        panic!("{test}: {reason} (CI=true, so this is a failure, not a skip)");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// True if `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Every tool in `tools` is installed, or skip.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<_> = tools.iter().filter(|t| !have(t)).collect();
    missing.is_empty()
        || skip(
            test,
            &format!("not installed: {missing:?} (see .ci/packaging.sh)"),
        )
}

/// The project root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The one file in `dist/<sub>` whose name starts with `prefix` and ends with `suffix`.
pub fn artifact(sub: &str, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let dir = root().join("dist").join(sub);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Find an artifact or skip, naming what builds it.
pub fn require_artifact(test: &str, sub: &str, prefix: &str, suffix: &str) -> Option<PathBuf> {
    let found = artifact(sub, prefix, suffix);
    if found.is_none() {
        skip(
            test,
            &format!(
                "no {}: run packaging/build-all.sh first",
                Path::new("dist")
                    .join(sub)
                    .join(format!("{prefix}*{suffix}"))
                    .display()
            ),
        );
    }
    found
}

pub use crate::support::process::Owned;

/// Run `cmd` with no stdin, stdout and stderr appended to `log`, killed after `limit`.
/// Returns the exit status and what this run added to the log.
pub fn run_logged(cmd: &mut Command, log: &Path, limit: Duration) -> (Option<ExitStatus>, String) {
    let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let err = out.try_clone().expect("clone log");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let status = Owned(child).wait_for(limit);
    let text = std::fs::read(log).unwrap_or_default();
    let added = String::from_utf8_lossy(text.get(before..).unwrap_or_default()).into_owned();
    (status, added)
}

/// Poll `check` every 250 ms until it returns `Some`, or panic with `what` after `limit`.
pub fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The test tunnels and their tokens: the shared harness's `demo`, and `t2` for a second agent.
pub const TOKENS: [(&str, &str); 2] = [
    ("demo", crate::support::TOKEN),
    ("t2", "packaging-test-token-t2-0123456789"),
];

/// The shared harness's relay (tunnels `demo`, `t2`) and echo upstream on loopback, in a runtime
/// of their own so synchronous tests can drive external programs between requests.
pub struct Loopback {
    /// The relay, `http://127.0.0.1:PORT`.
    pub relay: String,
    /// The echo upstream, `http://127.0.0.1:PORT`.
    pub upstream: String,
    handles: Option<(crate::support::RelayHandle, crate::support::Upstream)>,
    runtime: tokio::runtime::Runtime,
}

impl Loopback {
    /// Start both.
    pub fn start() -> Loopback {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (relay, upstream) = runtime.block_on(async {
            let mut yaml = crate::support::relay_yaml(None, "", "");
            let (name, token) = TOKENS[1];
            yaml.push_str(&format!("  {name}:\n    token: {token}\n"));
            (
                crate::support::start_relay(&yaml).await,
                crate::support::echo_upstream().await,
            )
        });
        Loopback {
            relay: relay.url(false),
            upstream: upstream.url(),
            handles: Some((relay, upstream)),
            runtime,
        }
    }

    /// An agent configuration for tunnel `tunnel` (`demo` or `t2`).
    pub fn agent_yaml(&self, tunnel: &str) -> String {
        let token = TOKENS
            .iter()
            .find(|(n, _)| *n == tunnel)
            .map(|(_, t)| *t)
            .expect("known tunnel");
        format!(
            "relay: {}\ntoken: {token}\ningress:\n  - upstream: {}\n",
            self.relay, self.upstream
        )
    }

    /// POST the sample webhook through tunnel `tunnel`; the status (0 when the request failed).
    pub fn post(&self, tunnel: &str) -> (u16, String) {
        let url = format!("{}/t/{tunnel}/hooks/packaging-test", self.relay);
        self.runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(10), ponte::demo::send_sample(&url)).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(e)) => (0, e.to_string()),
                Err(_) => (0, "timed out".into()),
            }
        })
    }

    /// Wait until a request through `tunnel` comes back from the echo upstream.
    pub fn wait_served(&self, tunnel: &str, limit: Duration) -> String {
        wait_until(&format!("a 200 through tunnel {tunnel}"), limit, || {
            let (code, body) = self.post(tunnel);
            (code == 200 && body.contains("key1")).then_some(body)
        })
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some((relay, _upstream)) = self.handles.take() {
            relay.shutdown.cancel();
        }
    }
}
