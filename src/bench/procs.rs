//! The benchmark's relay and agent, run as child processes of this binary so their memory is
//! their own; plus the idle-agent probe that opens many sessions against the relay.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use hyper_util::rt::TokioExecutor;

use crate::config::Secret;
use crate::config::agent::{AgentConfig, AgentOverrides};

const TOKEN: &str = "bench-token-0123456789abcdef";

/// Relay and agent processes with the files they use.
pub struct Setup {
    /// Where the relay listens (plain HTTP on the public side).
    pub relay_addr: SocketAddr,
    /// Relay process id.
    pub relay_pid: u32,
    /// Agent process id.
    pub agent_pid: u32,
    relay: Child,
    agent: Child,
    dir: PathBuf,
    ca: PathBuf,
    tls: bool,
}

impl Setup {
    /// Write a certificate and configs, start both processes, wait for the tunnel. With
    /// `observe`, the relay writes its access log (JSON lines at INFO into a pipe this process
    /// drains, as into journald) and records metrics (`metrics_listen` on loopback); without, both
    /// are off.
    pub async fn start(upstream: SocketAddr, tls: bool, observe: bool) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ponte-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let (ca, cert, key) = write_certs(&dir)?;
        let relay_cfg = dir.join("relay.yaml");
        std::fs::write(
            &relay_cfg,
            format!(
                "listen: 127.0.0.1:0\n{}{}limits:\n  max_connections: 20000\n  max_agents_per_tunnel: 20000\ntunnels:\n  bench:\n    token: {TOKEN}\n",
                if tls {
                    format!("tls:\n  cert: {}\n  key: {}\n", cert.display(), key.display())
                } else {
                    String::new()
                },
                if observe {
                    "access_log: true\nmetrics_listen: 127.0.0.1:0\n"
                } else {
                    "access_log: false\n"
                },
            ),
        )?;
        let exe = std::env::current_exe()?;
        let mut relay = Command::new(&exe)
            .args([
                "--log-format",
                "json",
                "--log-level",
                if observe {
                    "warn,ponte::relay::server=info,ponte::access=info"
                } else {
                    "warn,ponte::relay::server=info"
                },
                "relay",
                "--config",
            ])
            .arg(&relay_cfg)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the relay")?;
        let relay_addr = read_listen_addr(&mut relay)?;
        let agent = Command::new(&exe)
            // No inspector: the bench measures the tunnel, not the capture of every request.
            .args(["--log-level", "warn", "agent", "--inspect", "off", "--relay"])
            .arg(format!(
                "{}://localhost:{}",
                if tls { "https" } else { "http" },
                relay_addr.port()
            ))
            .arg("--token")
            .arg(TOKEN)
            .arg("--ca-file")
            .arg(&ca)
            .arg("--upstream")
            .arg(format!("http://{upstream}"))
            .stderr(Stdio::inherit())
            .stdout(Stdio::null())
            .spawn()
            .context("starting the agent")?;
        let setup = Setup {
            relay_addr,
            relay_pid: relay.id(),
            agent_pid: agent.id(),
            relay,
            agent,
            dir,
            ca,
            tls,
        };
        setup.wait_for_agents(1).await?;
        Ok(setup)
    }

    /// Kill both processes and remove the files (as dropping does).
    pub fn stop(self) {}

    /// The CA file that signed the relay's certificate.
    pub fn ca(&self) -> &std::path::Path {
        &self.ca
    }

    async fn agents(&self) -> anyhow::Result<u64> {
        let stream = tokio::net::TcpStream::connect(self.relay_addr).await?;
        let mut s = if self.tls {
            let tls = crate::tls::client_config(Some(&self.ca), &[b"http/1.1"])?;
            let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
                .connect("localhost".try_into()?, stream)
                .await?;
            let (s, conn) = hyper::client::conn::http1::handshake::<_, crate::body::Body>(
                hyper_util::rt::TokioIo::new(stream),
            )
            .await?;
            tokio::spawn(conn);
            s
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake::<_, crate::body::Body>(
                hyper_util::rt::TokioIo::new(stream),
            )
            .await?;
            tokio::spawn(conn);
            s
        };
        let req = http::Request::get("/_ponte/health")
            .header("host", "localhost")
            .body(crate::body::empty())?;
        let body = crate::body::collect_limited(s.send_request(req).await?.into_body(), 64 * 1024)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        v["agents"].as_u64().context("health has no agent count")
    }

    async fn wait_for_agents(&self, n: u64) -> anyhow::Result<()> {
        for _ in 0..600 {
            if self.agents().await.unwrap_or(0) >= n {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the relay did not see {n} agents within 30 s")
    }

    /// Open `n` idle agent sessions and return the relay's RSS growth per session, in bytes.
    pub async fn relay_bytes_per_idle_agent(&self, n: usize) -> anyhow::Result<u64> {
        let before = rss_kib(self.relay_pid)?;
        let cfg = AgentConfig::empty().merge(
            AgentOverrides {
                inspect: None,
                relay: vec![format!(
                    "{}://localhost:{}",
                    if self.tls { "https" } else { "http" },
                    self.relay_addr.port()
                )],
                token: Some(Secret::new(TOKEN)),
                upstream: Some("http://127.0.0.1:9".into()),
                ca_file: Some(self.ca.clone()),
                hooks: None,
                proxy_env: Default::default(),
            },
            "bench",
        )?;
        let connector = crate::agent::dial::Connector::new(&cfg)?;
        let mut held = Vec::with_capacity(n);
        for i in 0..n {
            let (_, conn) = connector.connect(&format!("idle-{i}")).await?;
            held.push(tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(crate::body::empty()))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(conn, svc)
                    .await;
            }));
        }
        self.wait_for_agents(n as u64 + 1).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(self.relay_pid)?;
        for h in held {
            h.abort();
        }
        Ok(after.saturating_sub(before) * 1024 / n.max(1) as u64)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        stop(&mut self.agent);
        stop(&mut self.relay);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Longest wait for a child to finish after SIGTERM before it is killed.
#[cfg(unix)]
const STOP_GRACE: Duration = Duration::from_secs(5);

/// End a child as a service manager would: SIGTERM, so it shuts down as in production (and an
/// instrumented build writes its profile at exit: packaging/pgo-build.sh trains on this bench),
/// then SIGKILL if it is still there after [`STOP_GRACE`].
pub fn stop(child: &mut Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        use nix::sys::signal::{Signal, kill};
        let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The machine's 1-minute load average (Linux; 0 where unknown).
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// CPU time a process has used so far, user and system, all threads (Linux; `/proc` counts in
/// USER_HZ, which is 100 on every Linux architecture Ponte ships for).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    const USER_HZ: u64 = 100;
    let total = stat_field(pid, 11)? + stat_field(pid, 12)?;
    Ok(Duration::from_millis(total * 1000 / USER_HZ))
}

/// Minor page faults of a process so far, all threads (Linux): pages it touched for the first
/// time, such as memory the allocator took back from the kernel.
pub fn minor_faults(pid: u32) -> anyhow::Result<u64> {
    stat_field(pid, 7)
}

/// Field `i` of `/proc/PID/stat`, counted from the state (the first field after the command name,
/// which may hold spaces).
fn stat_field(pid: u32, i: usize) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc (Linux only)")?;
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(i))
        .and_then(|v| v.parse().ok())
        .context("unexpected /proc stat")
}

/// Resident set size of a process, in KiB (Linux).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// Anonymous (private heap and stack) resident memory of a process, in KiB: RSS without the
/// shared, file-backed pages of the executable.
pub fn anon_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "RssAnon:")
}

fn status_kib(pid: u32, key: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc (Linux only)")?;
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key} in /proc status"))
}

fn read_listen_addr(relay: &mut Child) -> anyhow::Result<SocketAddr> {
    let stderr = relay.stderr.take().context("relay stderr")?;
    let mut reader = BufReader::new(stderr);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["message"] == "relay listening"
            && let Some(addr) = v["addr"].as_str()
        {
            // Keep draining the pipe so the relay never blocks on a full stderr: in large reads,
            // as journald would, so the draining costs this process (which also drives the
            // load) as little as possible.
            std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
            return Ok(addr.parse()?);
        }
    }
    bail!("the relay exited before listening")
}

fn write_certs(dir: &std::path::Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Ponte bench CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &ca)?;
    let paths = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&paths.0, ca.pem())?;
    std::fs::write(&paths.1, cert.pem())?;
    std::fs::write(&paths.2, key.serialize_pem())?;
    Ok(paths)
}
