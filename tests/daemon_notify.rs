//! The systemd notification protocol without systemd: the real `ponte` binary runs with
//! `NOTIFY_SOCKET` pointing at a datagram socket this test reads, against a real relay and echo
//! upstream started here on loopback. It must say READY=1, STATUS=connected…, WATCHDOG=1 and,
//! on SIGTERM, STOPPING=1 — over a path socket (what systemd uses) and an abstract one.
#![cfg(unix)]

mod packaging_support;
mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use packaging_support::Owned;
use support::TOKEN;
use tokio::net::UnixDatagram;

/// The agent process, killed by its PID if the test fails half-way.
struct Agent(Owned);

impl Agent {
    fn start(relay: &str, upstream: &str, notify_socket: &str) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_ponte"))
            .args([
                "agent",
                "--relay",
                relay,
                "--token",
                TOKEN,
                "--upstream",
                upstream,
            ])
            .env("NOTIFY_SOCKET", notify_socket)
            // Pet every 250 ms.
            .env("WATCHDOG_USEC", "500000")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ponte agent");
        Agent(Owned(child))
    }

    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.0
            .wait_for(limit)
            .unwrap_or_else(|| panic!("agent did not exit within {limit:?}"))
    }
}

/// A relay (tunnel `demo`, plain HTTP) and an echo upstream from the shared harness, on loopback.
async fn start_relay_and_upstream() -> (support::RelayHandle, support::Upstream) {
    let relay = support::start_relay(&support::relay_yaml(None, "", "")).await;
    (relay, support::echo_upstream().await)
}

/// Every notification received, in order, one `KEY=value` per entry.
struct Notifications {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Notifications {
    fn new(socket: UnixDatagram) -> Self {
        Notifications {
            socket,
            seen: Vec::new(),
        }
    }

    /// Receive one datagram before `deadline`; panics naming `what` if none comes.
    async fn recv_one(&mut self, deadline: tokio::time::Instant, what: &str) {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout_at(deadline, self.socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {what} in time; got {:?}", self.seen))
            .expect("recv");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        self.seen.extend(text.lines().map(str::to_owned));
    }

    /// Read until an entry satisfies `pred`, and return it.
    async fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(hit) = self.seen.iter().find(|l| pred(l)) {
                return hit.clone();
            }
            self.recv_one(deadline, what).await;
        }
    }

    /// Read until `line` has arrived `n` times.
    async fn wait_count(&mut self, line: &str, n: usize, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.count(line) < n {
            self.recv_one(deadline, &format!("{n} x {line}")).await;
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen.iter().filter(|l| *l == line).count()
    }

    fn position(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.seen.iter().position(|l| pred(l))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_socket_gets_ready_status_watchdog_and_stopping() {
    let (relay, upstream) = start_relay_and_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let mut notes = Notifications::new(UnixDatagram::bind(&path).unwrap());
    let mut agent = Agent::start(&relay.url(false), &upstream.url(), path.to_str().unwrap());

    notes
        .wait_for("READY=1", Duration::from_secs(15), |l| l == "READY=1")
        .await;
    let status = notes
        .wait_for("STATUS=connected", Duration::from_secs(5), |l| {
            l.starts_with("STATUS=connected to ")
        })
        .await;
    // READY=1 came with the first connected status, not before it.
    let ready_at = notes.position(|l| l == "READY=1").unwrap();
    let connected_at = notes.position(|l| l.starts_with("STATUS=connected")).unwrap();
    assert_eq!(connected_at, ready_at + 1, "{:?}", notes.seen);

    // The tunnel the status names works.
    let public_url = status
        .split("public URL ")
        .nth(1)
        .expect("public URL in STATUS")
        .trim();
    let (code, body) = ponte::demo::send_sample(&format!("{public_url}hooks/x"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");

    // Petted again and again while the supervisor runs (every 250 ms here).
    let pets = notes.count("WATCHDOG=1");
    notes
        .wait_count("WATCHDOG=1", pets + 3, Duration::from_secs(5))
        .await;

    agent.terminate();
    notes
        .wait_for("STOPPING=1", Duration::from_secs(5), |l| l == "STOPPING=1")
        .await;
    let exit = agent.wait_exit(Duration::from_secs(40));
    assert!(exit.success(), "agent exit: {exit:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_start_reports_ready_after_the_deadline() {
    // A port nobody listens on: the relay is "down".
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let mut notes = Notifications::new(UnixDatagram::bind(&path).unwrap());
    let started = Instant::now();
    let mut agent = Agent::start(&relay, "http://127.0.0.1:9", path.to_str().unwrap());

    notes
        .wait_for("STATUS=retrying", Duration::from_secs(8), |l| {
            l.starts_with("STATUS=retrying in ")
        })
        .await;
    assert_eq!(
        notes.count("READY=1"),
        0,
        "not ready while never connected: {:?}",
        notes.seen
    );
    notes
        .wait_for("READY=1", Duration::from_secs(15), |l| l == "READY=1")
        .await;
    let waited = started.elapsed();
    let deadline = ponte::daemon::systemd::READY_DEADLINE;
    assert!(
        waited >= deadline - Duration::from_secs(1),
        "READY=1 after {waited:?}, before the deadline"
    );
    assert!(
        waited < deadline + Duration::from_secs(5),
        "READY=1 only after {waited:?}"
    );

    agent.terminate();
    notes
        .wait_for("STOPPING=1", Duration::from_secs(5), |l| l == "STOPPING=1")
        .await;
    assert!(agent.wait_exit(Duration::from_secs(10)).success());
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abstract_socket_works_too() {
    use std::os::linux::net::SocketAddrExt;
    let (relay, upstream) = start_relay_and_upstream().await;
    let name = format!("ponte-notify-test-{}-{}", std::process::id(), uuid_like());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let std_socket = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
    std_socket.set_nonblocking(true).unwrap();
    let mut notes = Notifications::new(UnixDatagram::from_std(std_socket).unwrap());
    let mut agent = Agent::start(&relay.url(false), &upstream.url(), &format!("@{name}"));

    notes
        .wait_for("READY=1", Duration::from_secs(15), |l| l == "READY=1")
        .await;
    notes
        .wait_for("STATUS=connected", Duration::from_secs(5), |l| {
            l.starts_with("STATUS=connected to ")
        })
        .await;
    notes.wait_count("WATCHDOG=1", 2, Duration::from_secs(5)).await;
    agent.terminate();
    notes
        .wait_for("STOPPING=1", Duration::from_secs(5), |l| l == "STOPPING=1")
        .await;
    assert!(agent.wait_exit(Duration::from_secs(40)).success());
    relay.stop().await;
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
