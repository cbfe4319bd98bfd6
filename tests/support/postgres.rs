//! A throwaway PostgreSQL cluster for tests and the queue benchmark: `initdb` in a temp dir,
//! `pg_ctl start` on a free port of 127.0.0.1 with its unix socket in the same dir, password
//! (SCRAM) authentication, TLS on (a certificate for `localhost` signed by a CA made here), and
//! `pg_ctl stop -m immediate` at the end.
//!
//! PostgreSQL refuses to run as root, so under root the cluster runs as `nobody`, which then
//! owns the temp dir. One cluster per test binary is shared ([`shared`]); each test makes its
//! own database in it. A test that stops the server starts its own ([`Cluster::start`]).
//!
//! Used by the library's tests, the integration tests and the benchmark (each includes this file
//! with `#[path]`), so it depends on nothing but std, tempfile and rcgen.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The superuser the tests connect as, and its password (with characters a URL must encode).
pub const USER: &str = "ponte";
pub const PASSWORD: &str = "p@ss w:rd/1";
const PASSWORD_IN_URL: &str = "p%40ss%20w%3Ard%2F1";

/// A running test cluster.
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    databases: AtomicUsize,
}

/// Why no cluster can run here (missing binaries, ...).
pub type Unavailable = String;

/// The cluster shared by this test binary, or why there is none. Under `CI=true` a missing
/// PostgreSQL fails the test instead of skipping it.
pub fn shared() -> Option<&'static Cluster> {
    static SHARED: OnceLock<Result<Cluster, Unavailable>> = OnceLock::new();
    let cluster = SHARED.get_or_init(|| {
        let c = Cluster::start()?;
        // Statics are never dropped: a watcher stops the server when this process ends.
        c.stop_when_process_ends();
        Ok(c)
    });
    match cluster {
        Ok(c) => Some(c),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// Report a missing PostgreSQL: a failure on CI, a printed skip elsewhere.
pub fn skip(why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("PostgreSQL is needed for this test under CI=true: {why}");
    }
    eprintln!("SKIPPED: no PostgreSQL test cluster: {why}");
}

impl Cluster {
    /// Make and start a cluster of its own (stopped and deleted on drop).
    pub fn start() -> Result<Cluster, Unavailable> {
        let bin = find_bin()?;
        let run_as = unprivileged_user()?;
        let dir = tempfile::Builder::new()
            .prefix("ponte-pg-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("cannot make a temp dir: {e}"))?
            .keep();
        let mut cluster = Cluster {
            dir,
            bin,
            port: 0,
            run_as,
            databases: AtomicUsize::new(0),
        };
        cluster.init()?;
        // Another process may take the free port between the look and the start: try a few.
        let mut last = String::new();
        for _ in 0..3 {
            cluster.port = free_port()?;
            match cluster.pg_ctl_start() {
                Ok(()) => return Ok(cluster),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn init(&self) -> Result<(), Unavailable> {
        let pwfile = self.dir.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).map_err(|e| e.to_string())?;
        self.write_tls_files()?;
        self.give_away(&self.dir)?;
        let out = self
            .command("initdb")
            .args(["-D", self.data().to_str().unwrap_or_default()])
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .map_err(|e| format!("cannot run initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// A CA, and a server certificate for `localhost` signed by it.
    fn write_tls_files(&self) -> Result<(), Unavailable> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let fail = |e: rcgen::Error| e.to_string();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("Ponte PostgreSQL test CA {}", self.dir.display()),
        );
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(fail)?).map_err(fail)?;
        let key = KeyPair::generate().map_err(fail)?;
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .map_err(fail)?
            .signed_by(&key, &ca)
            .map_err(fail)?;
        let write =
            |name: &str, text: String| std::fs::write(self.dir.join(name), text).map_err(|e| e.to_string());
        write("ca.pem", ca.pem())?;
        write("server.crt", cert.pem())?;
        write("server.key", key.serialize_pem())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                self.dir.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> Result<(), Unavailable> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c max_connections=300 \
             -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key \
             -c synchronous_commit=on -c fsync=on",
            self.port,
            self.dir.display(),
            dir = self.dir.display()
        );
        let out = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap_or_default()])
            .args(["-l", self.dir.join("server.log").to_str().unwrap_or_default()])
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        Err(format!(
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ))
    }

    /// Start a stopped server again on the same port.
    pub fn restart(&self) {
        self.pg_ctl_start().expect("PostgreSQL starts again");
    }

    /// Stop the server at once, like a crash (`-m immediate`: no checkpoint, clients cut).
    pub fn stop(&self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap_or_default()])
            .args(["-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A new empty database; returns its URL. `query` is appended as the URL's query string.
    pub fn database(&self, query: &str) -> String {
        let n = self.databases.fetch_add(1, Ordering::SeqCst);
        let name = format!("t{}_{n}", std::process::id());
        let out = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", USER, &name])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name, query)
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str, query: &str) -> String {
        let mut url = format!(
            "postgres://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{}/{name}",
            self.port
        );
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA that signed the server's certificate (for `localhost` only).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Run `sql` with psql as the superuser on database `name`, returning its output.
    pub fn psql(&self, name: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                USER,
                "-d",
                name,
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.current_dir(&self.dir).env("LC_ALL", "C");
        #[cfg(unix)]
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn give_away(&self, path: &Path) -> Result<(), Unavailable> {
        #[cfg(unix)]
        if let Some((uid, gid)) = self.run_as {
            for entry in std::fs::read_dir(path).map_err(|e| e.to_string())? {
                let entry = entry.map_err(|e| e.to_string())?;
                std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| format!("cannot give {} to uid {uid}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// A watcher process that stops the server and deletes its files once this process is gone.
    fn stop_when_process_ends(&self) {
        let script = r#"while [ -e "/proc/$0" ]; do sleep 1; done; "$1" -D "$2" -m immediate -w stop >/dev/null 2>&1; rm -rf "$3""#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg(std::process::id().to_string())
            .arg(self.bin.join("pg_ctl"))
            .arg(self.data())
            .arg(&self.dir)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        #[cfg(unix)]
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        let _ = cmd.spawn();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of `initdb` and `pg_ctl`: `PONTE_TEST_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else `PATH`.
fn find_bin() -> Result<PathBuf, Unavailable> {
    if let Ok(dir) = std::env::var("PONTE_TEST_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).find(|d| d.join("initdb").exists()))
        .unwrap_or_default();
    on_path.ok_or_else(|| {
        "initdb not found (install postgresql, e.g. `apt-get install postgresql-15`, or set PONTE_TEST_PG_BIN)".into()
    })
}

/// `nobody`'s uid and gid when running as root (PostgreSQL refuses root), else `None`.
fn unprivileged_user() -> Result<Option<(u32, u32)>, Unavailable> {
    let id = |args: &[&str]| -> Result<u32, Unavailable> {
        let out = Command::new("id")
            .args(args)
            .output()
            .map_err(|e| format!("cannot run id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("id {} printed no number", args.join(" ")))
    };
    if id(&["-u"])? != 0 {
        return Ok(None);
    }
    Ok(Some((id(&["-u", "nobody"])?, id(&["-g", "nobody"])?)))
}

fn free_port() -> Result<u16, Unavailable> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}
