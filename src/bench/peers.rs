//! The raw TCP forwarders `ponte bench` runs beside Ponte, through the same load generator and
//! upstream: rathole (server and client, plain TCP transport) and bore (server and local). Each is
//! found in `--peers DIR` or on `PATH`; `bench/install-peers.sh` installs both with cargo.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::load::{self, Endpoint};

/// The control port bore's server always listens on (not configurable in bore 0.5/0.6).
const BORE_CONTROL_PORT: u16 = 7835;
/// Shared secret of the rathole service (loopback only).
const RATHOLE_TOKEN: &str = "ponte-bench-rathole-token";

/// One forwarder: its public side, and the two processes (server = the relay's role, client =
/// the agent's), killed when dropped.
pub struct Peer {
    /// Where its public side listens.
    pub public: SocketAddr,
    /// Server process id.
    pub server_pid: u32,
    /// Client process id.
    pub client_pid: u32,
    server: Child,
    client: Child,
    dir: Option<PathBuf>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.client.kill();
        let _ = self.server.kill();
        let _ = self.client.wait();
        let _ = self.server.wait();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `name` in `dir` when given, else on `PATH`.
pub fn find(dir: Option<&Path>, name: &str) -> Option<PathBuf> {
    if let Some(dir) = dir {
        let p = dir.join(name);
        return p.is_file().then_some(p);
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// What `program --version` prints, for the report.
pub fn version(program: &Path) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    version_line(
        &program.file_name()?.to_string_lossy(),
        &String::from_utf8_lossy(&out.stdout),
    )
}

/// One line out of `--version` output: rathole prints a block of build facts, whose
/// "Build Version:" line is the version; bore prints one line.
fn version_line(name: &str, text: &str) -> Option<String> {
    let line = match text.lines().find_map(|l| l.trim().strip_prefix("Build Version:")) {
        Some(v) => format!("{name} {}", v.trim()),
        None => text.lines().next()?.trim().to_string(),
    };
    (!line.is_empty()).then_some(line)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Kill a child and reap it.
fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A started server and its client (or why the client did not start, in which case the server is
/// stopped) as one peer, once it forwards to `public`.
async fn pair(
    name: &str,
    server: Child,
    client: anyhow::Result<Child>,
    public: u16,
    dir: Option<PathBuf>,
) -> anyhow::Result<Peer> {
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            stop(server);
            return Err(e);
        }
    };
    let peer = Peer {
        public: SocketAddr::from(([127, 0, 0, 1], public)),
        server_pid: server.id(),
        client_pid: client.id(),
        server,
        client,
        dir,
    };
    wait_until_forwarding(name, peer.public).await?;
    Ok(peer)
}

fn spawn(program: &Path, args: &[&str]) -> anyhow::Result<Child> {
    Command::new(program)
        .args(args)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Wait until requests go through `public` to the upstream.
async fn wait_until_forwarding(name: &str, public: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if load::warm_up(&Endpoint::plain(public)).await.is_ok() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(15) {
            bail!("{name} did not forward requests within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// rathole server and client on loopback forwarding a public port to `upstream`.
pub async fn rathole(program: &Path, upstream: SocketAddr) -> anyhow::Result<Peer> {
    let dir = std::env::temp_dir().join(format!("ponte-bench-rathole-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let (control, public) = (free_port()?, free_port()?);
    let server_cfg = dir.join("server.toml");
    let client_cfg = dir.join("client.toml");
    std::fs::write(
        &server_cfg,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\n[server.services.bench]\ntoken = \"{RATHOLE_TOKEN}\"\nbind_addr = \"127.0.0.1:{public}\"\n"
        ),
    )?;
    std::fs::write(
        &client_cfg,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\n[client.services.bench]\ntoken = \"{RATHOLE_TOKEN}\"\nlocal_addr = \"{upstream}\"\n"
        ),
    )?;
    let server = spawn(program, &["--server", &server_cfg.to_string_lossy()])?;
    let client = spawn(program, &["--client", &client_cfg.to_string_lossy()]);
    pair("rathole", server, client, public, Some(dir)).await
}

/// bore server and `bore local` on loopback forwarding a public port to `upstream`. bore's
/// control port is fixed (7835), so only one bore bench runs at a time on a machine.
pub async fn bore(program: &Path, upstream: SocketAddr) -> anyhow::Result<Peer> {
    if std::net::TcpListener::bind(("127.0.0.1", BORE_CONTROL_PORT)).is_err() {
        bail!("bore's control port {BORE_CONTROL_PORT} is taken (another bore server running?)");
    }
    let public = free_port()?;
    let port = public.to_string();
    let server = spawn(
        program,
        &[
            "server",
            "--bind-addr",
            "127.0.0.1",
            "--min-port",
            &port,
            "--max-port",
            &port,
        ],
    )?;
    // Give the server a moment to bind its control port before the client dials it.
    let started = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", BORE_CONTROL_PORT))
        .await
        .is_err()
    {
        if started.elapsed() > Duration::from_secs(10) {
            stop(server);
            bail!("bore server did not listen on {BORE_CONTROL_PORT} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let upstream_port = upstream.port().to_string();
    let client = spawn(
        program,
        &[
            "local",
            &upstream_port,
            "--local-host",
            &upstream.ip().to_string(),
            "--to",
            "127.0.0.1",
            "--port",
            &port,
        ],
    );
    pair("bore", server, client, public, None).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_peer_only_in_the_given_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(Some(dir.path()), "rathole"), None);
        std::fs::write(dir.path().join("rathole"), "").unwrap();
        assert_eq!(
            find(Some(dir.path()), "rathole"),
            Some(dir.path().join("rathole"))
        );
        assert_eq!(find(Some(dir.path()), "bore"), None);
    }

    #[test]
    fn version_is_one_line() {
        let rathole = "rathole \nBuild Timestamp:     2026-12-02T08:25:15Z\nBuild Version:       0.5.0\nCommit SHA:          None\n";
        assert_eq!(version_line("rathole", rathole).as_deref(), Some("rathole 0.5.0"));
        assert_eq!(
            version_line("bore", "bore-cli 0.6.0\n").as_deref(),
            Some("bore-cli 0.6.0")
        );
        assert_eq!(version_line("bore", ""), None);
    }
}
