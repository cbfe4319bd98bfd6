//! Ingress rules: the first rule whose host and path prefix match picks the origin. The relay's
//! `:authority` only selects among configured rules; it never names where the agent dials, so a
//! compromised relay cannot reach anything on the LAN the config does not list (no SSRF).

use std::sync::Arc;

use http::{Request, Response, StatusCode, header};

use super::origin::{Origin, OriginLayer, reply};
use super::upstream::HttpOrigin;
use crate::body::Body;
use crate::config::agent::AgentConfig;
use crate::locale::Lang;

enum HostMatch {
    Exact(String),
    /// `*.example.com` → `.example.com`.
    Suffix(String),
}

struct Rule {
    host: Option<HostMatch>,
    path: Option<String>,
    origin: Arc<dyn Origin>,
}

/// The agent's routing table.
pub struct Ingress {
    rules: Vec<Rule>,
}

impl Ingress {
    /// Build origins for every rule of the configuration.
    pub fn new(config: &AgentConfig) -> anyhow::Result<Self> {
        Self::with_layer(config, None)
    }

    /// Build origins for every rule, each wrapped by `layer` when one is given (the
    /// inspector's capture); without one the origins are called directly, at no extra cost.
    pub fn with_layer(config: &AgentConfig, layer: Option<&dyn OriginLayer>) -> anyhow::Result<Self> {
        let mut rules = Vec::with_capacity(config.ingress.len());
        for rule in &config.ingress {
            let host = rule.host.as_ref().map(|h| {
                let h = h.as_str().trim().to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                    None => HostMatch::Exact(h),
                }
            });
            let mut origin: Arc<dyn Origin> = match &rule.hooks {
                Some(file) => Arc::new(super::hooks_origin::HooksOrigin::new(rule, file.as_str())?),
                None => {
                    if rule.danger_accept_invalid_certs {
                        tracing::warn!(upstream = ?rule.upstream, "danger_accept_invalid_certs is set: the upstream's certificate is not checked");
                    }
                    Arc::new(HttpOrigin::new(rule, config)?)
                }
            };
            if let Some(layer) = layer {
                origin = layer.wrap(origin);
            }
            rules.push(Rule {
                host,
                path: rule.path.as_ref().map(|p| p.as_str().to_string()),
                origin,
            });
        }
        Ok(Ingress { rules })
    }

    /// The origin for a host (any case, with or without port) and path.
    pub fn route(&self, host: &str, path: &str) -> Option<&Arc<dyn Origin>> {
        let host = host_only(host);
        self.rules
            .iter()
            .find(|r| {
                let host_ok = match &r.host {
                    None => true,
                    Some(HostMatch::Exact(h)) => *h == host,
                    Some(HostMatch::Suffix(s)) => host.ends_with(s.as_str()),
                };
                host_ok && r.path.as_ref().is_none_or(|p| path.starts_with(p.as_str()))
            })
            .map(|r| &r.origin)
    }

    /// Answer one request from the relay (or a replay from the inspector).
    pub async fn serve(&self, req: Request<Body>) -> Response<Body> {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let started = std::time::Instant::now();
        let method = req.method().clone();
        // The path only: a query string may carry a sender's secret (Chatwoot puts its token there).
        let path = req.uri().path().to_owned();
        let resp = match self.route(&host, &path) {
            Some(origin) => origin.clone().serve(req).await,
            None => reply(
                StatusCode::NOT_FOUND,
                "no-ingress",
                &format!("no ingress rule of the agent matches {host}{path}"),
            ),
        };
        // One line per request, as ngrok's console shows them (headers only: the body may still
        // be streaming).
        tracing::info!(
            "{method} {path} → {} ({} ms)",
            resp.status().as_u16(),
            started.elapsed().as_millis()
        );
        resp
    }

    /// Human summary of the rules, for the start-up log.
    pub fn describe(&self) -> Vec<String> {
        self.rules
            .iter()
            .map(|r| {
                let host = match &r.host {
                    None => "*".to_string(),
                    Some(HostMatch::Exact(h)) => h.clone(),
                    Some(HostMatch::Suffix(s)) => format!("*{s}"),
                };
                format!(
                    "{host}{} → {}",
                    r.path.as_deref().unwrap_or(""),
                    r.origin.describe()
                )
            })
            .collect()
    }

    /// One line per rule, public address → origin, for the banner printed once connected (as
    /// ngrok's "Forwarding" line): `Forwarding https://relay/t/demo/hooks/ → http://localhost:9000`,
    /// or in Portuguese `Conectado — URL pública: https://relay/t/demo/ → http://localhost:8000`.
    pub fn forwarding(&self, public_url: &str, lang: Lang) -> Vec<String> {
        let base = public_url.trim_end_matches('/');
        self.rules
            .iter()
            .map(|r| {
                let path = r.path.as_deref().unwrap_or("/");
                let origin = r.origin.describe();
                let host = match &r.host {
                    None => None,
                    Some(HostMatch::Exact(h)) => Some(h.clone()),
                    Some(HostMatch::Suffix(s)) => Some(format!("*{s}")),
                };
                match (lang, host) {
                    (Lang::En, None) => format!("Forwarding {base}{path} → {origin}"),
                    (Lang::En, Some(h)) => format!("Forwarding requests for {h}{path} → {origin}"),
                    (Lang::PtBr, None) => format!("Conectado — URL pública: {base}{path} → {origin}"),
                    (Lang::PtBr, Some(h)) => format!("Conectado — pedidos para {h}{path} → {origin}"),
                }
            })
            .collect()
    }
}

fn host_only(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    let host = if a.starts_with('[') {
        a.split(']').next().map(|h| format!("{h}]")).unwrap_or(a.clone())
    } else {
        a.rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or(a.clone())
    };
    host.trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingress(yaml: &str) -> Ingress {
        let cfg: AgentConfig = crate::config::parse_with_env(yaml, "t", &|_| None).unwrap();
        Ingress::new(&cfg).unwrap()
    }

    #[test]
    fn first_match_wins() {
        let i = ingress(
            "ingress:\n  - {path: /hooks/, upstream: 'http://127.0.0.1:9000'}\n  - {host: 'api.example.com', upstream: 'http://127.0.0.1:9001'}\n  - {host: '*.dev.example.com', upstream: 'http://127.0.0.1:9002'}\n  - {upstream: 'http://127.0.0.1:8000'}\n",
        );
        let pick = |h: &str, p: &str| i.route(h, p).map(|o| o.describe());
        assert_eq!(pick("x", "/hooks/a").as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            pick("API.example.com:443", "/v1").as_deref(),
            Some("http://127.0.0.1:9001")
        );
        assert_eq!(
            pick("a.dev.example.com", "/").as_deref(),
            Some("http://127.0.0.1:9002")
        );
        assert_eq!(pick("other", "/").as_deref(), Some("http://127.0.0.1:8000"));
        let strict = ingress("ingress:\n  - {path: /only/, upstream: 'http://127.0.0.1:9000'}\n");
        assert!(strict.route("x", "/else").is_none());
        assert_eq!(
            i.forwarding("https://relay.test/t/demo/", Lang::En),
            [
                "Forwarding https://relay.test/t/demo/hooks/ → http://127.0.0.1:9000",
                "Forwarding requests for api.example.com/ → http://127.0.0.1:9001",
                "Forwarding requests for *.dev.example.com/ → http://127.0.0.1:9002",
                "Forwarding https://relay.test/t/demo/ → http://127.0.0.1:8000",
            ]
        );
        assert_eq!(
            i.forwarding("https://relay.test/t/demo/", Lang::PtBr),
            [
                "Conectado — URL pública: https://relay.test/t/demo/hooks/ → http://127.0.0.1:9000",
                "Conectado — pedidos para api.example.com/ → http://127.0.0.1:9001",
                "Conectado — pedidos para *.dev.example.com/ → http://127.0.0.1:9002",
                "Conectado — URL pública: https://relay.test/t/demo/ → http://127.0.0.1:8000",
            ]
        );
    }
}
