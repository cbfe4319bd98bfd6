//! The glue between the agent's [`Origin`] and the hooks engine (`crate::hooks`), kept in one
//! file so the engine never depends on the agent. The sender's address comes from the last
//! `X-Forwarded-For` entry, which the relay (the only peer on this connection) appends. The file
//! is watched as `ponte webhook -hotreload` does, so an edit needs no restart.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use http::{Request, Response};

use tokio_util::sync::{CancellationToken, DropGuard};

use super::origin::Origin;
use crate::body::Body;
use crate::config::agent::IngressRule;
use crate::hooks::handler::{HookService, Settings};
use crate::hooks::server::{Reloader, watch};

/// Serves one hooks file.
pub struct HooksOrigin {
    service: Arc<HookService>,
    file: String,
    /// Stops the file watcher when the ingress table is dropped.
    _watching: Option<DropGuard>,
}

impl HooksOrigin {
    /// Load the rule's hooks file; hooks are served under the rule's path (`/hooks/` without
    /// one).
    pub fn new(rule: &IngressRule, file: &str) -> anyhow::Result<Self> {
        let (reloader, set) = Reloader::load(&[Path::new(file).to_path_buf()], rule.hooks_template)?;
        let prefix = rule
            .path
            .as_ref()
            .map(|p| p.as_str().trim_matches('/').to_string())
            .unwrap_or_else(|| "hooks".to_string());
        tracing::info!(file, hooks = set.len(), "hooks loaded");
        let service = Arc::new(HookService::new(
            Settings {
                prefix,
                ..Settings::default()
            },
            set,
        ));
        // Watch only inside a runtime (the agent always has one; a table built in a plain
        // unit test does not).
        let watching = tokio::runtime::Handle::try_current().ok().map(|rt| {
            let stop = CancellationToken::new();
            rt.spawn(watch(reloader, service.clone(), true, stop.clone()));
            stop.drop_guard()
        });
        Ok(HooksOrigin {
            service,
            file: file.to_string(),
            _watching: watching,
        })
    }
}

/// The public sender as `ip:0` (the port is not forwarded), from the relay's `X-Forwarded-For`.
fn sender(req: &Request<Body>) -> String {
    let last = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse::<std::net::IpAddr>().ok());
    std::net::SocketAddr::new(last.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()), 0).to_string()
}

impl Origin for HooksOrigin {
    fn serve(self: Arc<Self>, req: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        Box::pin(async move {
            let remote = sender(&req);
            self.service.serve(req, remote).await
        })
    }

    fn describe(&self) -> String {
        format!("hooks {}", self.file)
    }
}
