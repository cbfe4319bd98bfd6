//! `ponte webhook`: the stand-alone hooks server, a drop-in for `webhook.exe`. HTTP/1.1 (HTTPS
//! with `-secure`) on a listener bound by the caller, graceful stop, and hot reload of the hooks
//! files that never drops a request: the new set is swapped in whole, and a file that fails to
//! load keeps the previous hooks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handler::{HookService, Settings};
use super::{Hook, HookSet};
use crate::config::{ByteSize, ConfigError};

/// How often `-hotreload` looks at the files. Polling (rather than file-system events) behaves
/// the same on Windows, network drives and editors that replace files by renaming.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// Time a client gets to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a TLS handshake may take.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `ponte webhook` needs, from its flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to bind.
    pub addr: String,
    /// The hooks files.
    pub files: Vec<PathBuf>,
    /// Render them as templates.
    pub template: bool,
    /// Watch them.
    pub hotreload: bool,
    /// Start with no hooks without complaint.
    pub allow_empty: bool,
    /// `-secure`: certificate, key, TLS 1.3 only.
    pub tls: Option<(PathBuf, PathBuf, bool)>,
    /// `-pidfile`.
    pub pidfile: Option<PathBuf>,
    /// Request handling.
    pub settings: Settings,
}

impl Options {
    /// Check the flags and turn them into options.
    pub fn from_flags(f: &super::cli::WebhookFlags) -> Result<Options, ConfigError> {
        let bad = |m: String| ConfigError::invalid("command line", m);
        if let Some(m) = f.unsupported() {
            return Err(bad(m));
        }
        let mut response_headers = Vec::new();
        for h in &f.header {
            let Some((name, value)) = h.split_once('=') else {
                return Err(bad(format!(
                    "-header {h}: header flag must be in name=value format"
                )));
            };
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| bad(format!("-header {h}: `{name}` is not a valid header name")))?;
            let value = http::HeaderValue::from_str(value)
                .map_err(|_| bad(format!("-header {h}: the value cannot be sent in a header")))?;
            response_headers.push((name, value));
        }
        let http_methods = f
            .http_methods
            .as_deref()
            .unwrap_or("")
            .replace(' ', "")
            .to_uppercase()
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        let max_body = ByteSize::parse(&f.max_body_size)
            .map_err(|m| bad(format!("-max-body-size: {m}")))?
            .0;
        let timeout = crate::config::duration::parse(&f.command_timeout)
            .map_err(|m| bad(format!("-command-timeout: {m}")))?;
        if timeout.is_zero() {
            return Err(bad("-command-timeout must be more than 0s".into()));
        }
        if f.max_concurrent_hooks == 0 {
            return Err(bad("-max-concurrent-hooks must be at least 1".into()));
        }
        let tls13 = match f.tls_min_version.as_str() {
            "1.2" => false,
            "1.3" => true,
            other => {
                return Err(bad(format!(
                    "-tls-min-version {other}: ponte webhook supports 1.2 (the default) or 1.3; older versions are unsafe"
                )));
            }
        };
        let files = if f.hooks.is_empty() {
            vec![PathBuf::from("hooks.json")]
        } else {
            f.hooks.clone()
        };
        let ip = if f.ip.contains(':') && !f.ip.starts_with('[') {
            format!("[{}]", f.ip)
        } else {
            f.ip.clone()
        };
        Ok(Options {
            addr: format!("{ip}:{}", f.port),
            files,
            template: f.template,
            hotreload: f.hotreload,
            allow_empty: f.nopanic || f.verbose || f.debug || f.logfile.is_some(),
            tls: f.secure.then(|| (f.cert.clone(), f.key.clone(), tls13)),
            pidfile: f.pidfile.clone(),
            settings: Settings {
                prefix: f.urlprefix.trim_matches('/').to_string(),
                serve_root: true,
                http_methods,
                response_headers,
                max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
                limits: super::exec::Limits {
                    timeout,
                    max_concurrent: f.max_concurrent_hooks,
                    ..Default::default()
                },
                use_x_request_id: f.x_request_id,
                x_request_id_limit: f.x_request_id_limit,
            },
        })
    }
}

/// The hooks files as last loaded, so one broken file keeps its previous hooks.
pub struct Reloader {
    files: Vec<FileState>,
    template: bool,
}

struct FileState {
    path: PathBuf,
    text: Option<String>,
    hooks: Vec<Hook>,
}

impl Reloader {
    /// Load every file; any error stops the start (a typo should not silently serve nothing).
    pub fn load(files: &[PathBuf], template: bool) -> Result<(Reloader, HookSet), ConfigError> {
        let mut states = Vec::new();
        for path in files {
            tracing::info!("attempting to load hooks from {}", path.display());
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                path: path.clone(),
                source,
            })?;
            let (hooks, warnings) = super::parse_text(&text, &path.display().to_string(), template)?;
            log_loaded(path, &hooks, &warnings);
            states.push(FileState {
                path: path.clone(),
                text: Some(text),
                hooks,
            });
        }
        let reloader = Reloader {
            files: states,
            template,
        };
        let set = reloader
            .set()
            .map_err(|m| ConfigError::invalid("hooks files", m))?;
        Ok((reloader, set))
    }

    fn set(&self) -> Result<HookSet, String> {
        let mut all: Vec<Hook> = Vec::new();
        for f in &self.files {
            for h in &f.hooks {
                if all.iter().any(|a| a.id == h.id) {
                    return Err(format!(
                        "error: hook with the id {} has already been loaded! please check your hooks file for duplicate hooks ids! ({})",
                        h.id,
                        f.path.display()
                    ));
                }
                all.push(h.clone());
            }
        }
        Ok(HookSet { hooks: all })
    }

    /// Look at every file; if one changed and loads, return the new set. A file that fails
    /// (or vanished mid-replace) keeps its previous hooks and is logged.
    pub fn check(&mut self) -> Option<HookSet> {
        let mut changed = false;
        for i in 0..self.files.len() {
            let path = self.files[i].path.clone();
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    if self.files[i].text.take().is_some() {
                        tracing::warn!(
                            "hooks file {} cannot be read ({e}); keeping its previous hooks",
                            path.display()
                        );
                    }
                    continue;
                }
            };
            if self.files[i].text.as_deref() == Some(text.as_str()) {
                continue;
            }
            tracing::info!("hooks file {} modified", path.display());
            self.files[i].text = Some(text.clone());
            match super::parse_text(&text, &path.display().to_string(), self.template) {
                Ok((hooks, warnings)) => {
                    log_loaded(&path, &hooks, &warnings);
                    let previous = std::mem::replace(&mut self.files[i].hooks, hooks);
                    if let Err(m) = self.set() {
                        tracing::warn!("{m}; reverting hooks back to the previous configuration");
                        self.files[i].hooks = previous;
                    } else {
                        changed = true;
                    }
                }
                Err(e) => tracing::warn!("couldn't load hooks from file! {e}; keeping the previous hooks"),
            }
        }
        if changed { self.set().ok() } else { None }
    }
}

fn log_loaded(path: &Path, hooks: &[Hook], warnings: &[String]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
    tracing::info!("found {} hook(s) in file {}", hooks.len(), path.display());
    for h in hooks {
        tracing::info!("\tloaded: {}", h.id);
    }
}

/// Reload on file changes (and, on Unix, on SIGHUP or SIGUSR1 as adnanh does) until `shutdown`.
pub async fn watch(
    mut reloader: Reloader,
    service: Arc<HookService>,
    poll: bool,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(RELOAD_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut signals = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::hangup()).ok(),
            signal(SignalKind::user_defined1()).ok(),
        )
    };
    loop {
        #[cfg(unix)]
        let signalled = async {
            match &mut signals {
                (Some(h), Some(u)) => tokio::select! { _ = h.recv() => {}, _ = u.recv() => {} },
                _ => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick(), if poll => {}
            _ = signalled => tracing::info!("reload signal received; reloading hooks"),
        }
        // Reading the files is blocking I/O; it is small and once a second.
        let (r, set) = match tokio::task::spawn_blocking(move || {
            let set = reloader.check();
            (reloader, set)
        })
        .await
        {
            Ok(v) => v,
            Err(_) => return,
        };
        reloader = r;
        if let Some(set) = set {
            service.replace(set);
        }
    }
}

/// A TLS acceptor for `-secure` (HTTP/1.1 only, as adnanh turns HTTP/2 off).
pub fn tls_acceptor(cert: &Path, key: &Path, tls13_only: bool) -> anyhow::Result<TlsAcceptor> {
    let base = crate::tls::server_config(cert, key)?;
    let mut cfg = (*base).clone();
    if tls13_only {
        let certs = crate::tls::load_certs(cert)?;
        let key = rustls::pki_types::pem::PemObject::from_pem_file(key)
            .with_context(|| format!("{}: no usable private key", key.display()))?;
        cfg = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS provider")?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .context("the key does not match the certificate")?;
    }
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// Serve hooks on `listener` until `shutdown`; in-flight requests then get `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    service: Arc<HookService>,
    tls: Option<TlsAcceptor>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(p) => p,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (service, tls, stop) = (service.clone(), tls.clone(), shutdown.clone());
        tracker.spawn(async move {
            let svc = service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, std::convert::Infallible>(service.serve(req, peer.to_string()).await) }
            });
            match tls {
                Some(acceptor) => match tokio::time::timeout(TLS_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => serve_connection(TokioIo::new(s), svc, stop).await,
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                },
                None => serve_connection(TokioIo::new(stream), svc, stop).await,
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(?grace, "grace period over; closing with requests still in flight");
    }
    Ok(())
}

async fn serve_connection<I, S>(io: I, svc: S, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::body::Body> + Send,
    S::Future: Send,
    S::Error: Into<crate::BoxError>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Writes the process id to a file and removes it when dropped.
pub struct PidFile(PathBuf);

impl PidFile {
    /// Create the file.
    pub fn create(path: &Path) -> anyhow::Result<PidFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, format!("{}\n", std::process::id()))
            .with_context(|| format!("error creating pidfile {}", path.display()))?;
        Ok(PidFile(path.to_owned()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Run `ponte webhook` until `shutdown`: bind, log the URL, serve the hooks `Reloader::load`
/// read.
pub async fn run(
    opts: Options,
    (reloader, set): (Reloader, HookSet),
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if set.is_empty() && !opts.allow_empty {
        anyhow::bail!(
            "couldn't load any hooks from file! aborting webhook execution since the -verbose flag is set to false. If, for some reason, you want webhook to start without the hooks, either use -verbose flag, or -nopanic"
        );
    }
    let tls = match &opts.tls {
        Some((cert, key, tls13)) => Some(tls_acceptor(cert, key, *tls13)?),
        None => None,
    };
    let listener = TcpListener::bind(&opts.addr).await.with_context(|| {
        format!(
            "error listening on {} (is another program using the port?)",
            opts.addr
        )
    })?;
    let _pid = match &opts.pidfile {
        Some(p) => Some(PidFile::create(p)?),
        None => None,
    };
    let local = listener.local_addr().context("listener address")?;
    let prefix = if opts.settings.prefix.is_empty() {
        String::new()
    } else {
        format!("/{}", opts.settings.prefix)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %local, "serving hooks on {scheme}://{local}{prefix}/{{id}}");
    let service = Arc::new(HookService::new(opts.settings, set));
    tokio::spawn(watch(reloader, service.clone(), opts.hotreload, shutdown.clone()));
    serve(
        listener,
        service,
        tls,
        shutdown,
        crate::shutdown::DEFAULT_GRACE_PERIOD,
    )
    .await
}
