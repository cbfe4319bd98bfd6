//! The hooks figure of `ponte bench`: executions per second and p50 latency of a trivial command
//! (`/bin/true`, answered with its output so each request waits for the command), through
//! `ponte webhook`, beside adnanh/webhook when a `webhook` binary is on `PATH`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::load::{self, LatencyStats};

/// Connections driving hook requests: enough to keep both cores busy spawning processes.
const CONNECTIONS: usize = 8;
/// Sequential requests for the latency figure.
const LATENCY_REQUESTS: usize = 300;

/// One server's hook figures.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HookFigures {
    /// Hook executions per second.
    pub executions_per_s: f64,
    /// Latency of one execution, one connection.
    pub latency: LatencyStats,
}

/// Ponte's figures, and adnanh/webhook's when it is installed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HooksReport {
    /// `ponte webhook`.
    pub ponte: HookFigures,
    /// adnanh/webhook (`None`: no `webhook` on PATH).
    pub adnanh: Option<HookFigures>,
    /// What `webhook -version` said.
    pub adnanh_version: Option<String>,
}

/// A child process stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        super::procs::stop(&mut self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Start `program` with webhook's flags and wait until it answers.
async fn start(program: &Path, extra: &[&str], hooks: &Path) -> anyhow::Result<(Server, SocketAddr)> {
    let port = free_port()?;
    let child = Command::new(program)
        .args(extra)
        .args(["-ip", "127.0.0.1", "-port", &port.to_string(), "-hooks"])
        .arg(hooks)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let server = Server(child);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{} did not start listening",
            program.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((server, addr))
}

async fn figures(addr: SocketAddr, duration: Duration) -> anyhow::Result<HookFigures> {
    let path = "/hooks/true";
    load::latency_of(addr, path, 20).await?;
    let executions_per_s = load::rate(addr, path, CONNECTIONS, duration).await?;
    let latency = load::latency_of(addr, path, LATENCY_REQUESTS).await?;
    Ok(HookFigures {
        executions_per_s,
        latency,
    })
}

fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Measure both servers with the same hooks file.
pub async fn run(duration: Duration) -> anyhow::Result<HooksReport> {
    let dir = std::env::temp_dir().join(format!("ponte-bench-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let hooks = dir.join("hooks.json");
    let truth = on_path("true").unwrap_or_else(|| "/bin/true".into());
    std::fs::write(
        &hooks,
        format!(
            r#"[{{"id": "true", "execute-command": "{}", "include-command-output-in-response": true}}]"#,
            truth.display()
        ),
    )?;
    let result = async {
        let me = std::env::current_exe().context("locating the ponte binary")?;
        let (ponte_server, addr) = start(&me, &["webhook", "-max-concurrent-hooks", "64"], &hooks).await?;
        let ponte = figures(addr, duration).await?;
        drop(ponte_server);
        let (adnanh, adnanh_version) = match on_path("webhook") {
            Some(bin) => {
                let version = Command::new(&bin)
                    .arg("-version")
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                    .ok();
                let (server, addr) = start(&bin, &[], &hooks).await?;
                let f = figures(addr, duration).await?;
                drop(server);
                (Some(f), version)
            }
            None => (None, None),
        };
        anyhow::Ok(HooksReport {
            ponte,
            adnanh,
            adnanh_version,
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
