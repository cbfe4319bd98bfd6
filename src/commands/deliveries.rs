//! `ponte deliveries …`: the operator's view of a relay's durable queue, over the relay's admin
//! API (`/_ponte/admin/`). List, show, replay (one, or every failed one) and purge.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use super::CommandError;
use crate::body::{self, Body};
use crate::config::{ConfigError, Secret};
use crate::protocol::admin::{
    ADMIN_PREFIX, DeliveryDetail, DeliverySummary, ListResponse, PurgeResponse, ReplayResponse, Status,
    StatusResponse,
};

/// Longest wait for one admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest admin answer read (a `show` of a delivery with a large body, in base64).
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// How to reach the relay's admin API.
#[derive(Debug)]
pub struct AdminArgs {
    /// `--relay`: the relay's base URL.
    pub relay: Option<String>,
    /// `--admin-token` / `PONTE_ADMIN_TOKEN`.
    pub admin_token: Option<String>,
    /// `--ca-file`: extra CA to trust.
    pub ca_file: Option<PathBuf>,
    /// `--json`: print the API's JSON instead of text.
    pub json: bool,
}

/// What to do.
#[derive(Debug)]
pub enum Action {
    /// List deliveries.
    List {
        /// Only this tunnel.
        tunnel: Option<String>,
        /// Only this state.
        status: Option<Status>,
        /// At most this many.
        limit: usize,
        /// Older than this `seq` (paging).
        before: Option<i64>,
    },
    /// Show one delivery.
    Show {
        /// Its id.
        id: String,
    },
    /// Replay one delivery.
    Replay {
        /// Its id.
        id: String,
    },
    /// Replay every failed delivery (of one tunnel).
    ReplayFailed {
        /// Only this tunnel.
        tunnel: Option<String>,
    },
    /// Delete deliveries.
    Purge {
        /// Which state (required).
        status: Status,
        /// Only this tunnel.
        tunnel: Option<String>,
        /// Only those that finished at least this long ago.
        older_than: Option<String>,
    },
}

/// Run `ponte deliveries`.
pub fn run(args: AdminArgs, action: Action) -> Result<(), CommandError> {
    let client = AdminClient::new(&args)?;
    super::runtime()?.block_on(async move {
        let json = args.json;
        match action {
            Action::List {
                tunnel,
                status,
                limit,
                before,
            } => {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                q.append_pair("limit", &limit.to_string());
                if let Some(t) = &tunnel {
                    q.append_pair("tunnel", t);
                }
                if let Some(s) = status {
                    q.append_pair("status", s.as_str());
                }
                if let Some(b) = before {
                    q.append_pair("before", &b.to_string());
                }
                let (raw, page): (Bytes, ListResponse) = client
                    .call(Method::GET, &format!("deliveries?{}", q.finish()))
                    .await?;
                let agents = if json { None } else { client.status().await };
                print_or(json, &raw, || print_list(&page, agents.as_ref()));
            }
            Action::Show { id } => {
                let (raw, detail): (Bytes, DeliveryDetail) = client
                    .call(Method::GET, &format!("deliveries/{}", encode(&id)))
                    .await?;
                let agents = if json { None } else { client.status().await };
                print_or(json, &raw, || print_detail(&detail, agents.as_ref()));
            }
            Action::Replay { id } => {
                let (raw, d): (Bytes, DeliverySummary) = client
                    .call(Method::POST, &format!("deliveries/{}/replay", encode(&id)))
                    .await?;
                print_or(json, &raw, || {
                    println!("{}: pending again, due now (tunnel {})", d.id, d.tunnel)
                });
            }
            Action::ReplayFailed { tunnel } => {
                let mut path = "replay?status=failed".to_string();
                if let Some(t) = &tunnel {
                    path.push_str(&format!("&tunnel={}", encode(t)));
                }
                let (raw, r): (Bytes, ReplayResponse) = client.call(Method::POST, &path).await?;
                print_or(json, &raw, || {
                    println!("{} failed deliveries are pending again", r.replayed)
                });
            }
            Action::Purge {
                status,
                tunnel,
                older_than,
            } => {
                let mut q = url::form_urlencoded::Serializer::new(String::new());
                q.append_pair("status", status.as_str());
                if let Some(t) = &tunnel {
                    q.append_pair("tunnel", t);
                }
                if let Some(o) = &older_than {
                    q.append_pair("older_than", o);
                }
                let (raw, r): (Bytes, PurgeResponse) = client
                    .call(Method::POST, &format!("purge?{}", q.finish()))
                    .await?;
                print_or(json, &raw, || {
                    println!("{} {status} deliveries deleted", r.purged)
                });
            }
        }
        Ok(())
    })
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

fn print_or(json: bool, raw: &[u8], text: impl FnOnce()) {
    if json {
        println!("{}", String::from_utf8_lossy(raw));
    } else {
        text();
    }
}

/// Is this delivery pending only because its tunnel has no agent connected? Then its next
/// attempt time means nothing: it goes out as soon as an agent connects.
fn waiting_for_agent(d: &DeliverySummary, status: Option<&StatusResponse>) -> bool {
    d.status == Status::Pending
        && !d.in_flight
        && status
            .and_then(|s| s.tunnels.iter().find(|t| t.name == d.tunnel))
            .is_some_and(|t| t.agents.is_empty())
}

/// The text for a pending delivery's next attempt.
fn next_try(d: &DeliverySummary, status: Option<&StatusResponse>) -> Option<String> {
    let next = d.next_attempt_at.as_deref()?;
    if waiting_for_agent(d, status) {
        return Some(format!(
            "waiting for the agent (no agent of tunnel `{}` is connected; it goes out when one connects)",
            d.tunnel
        ));
    }
    let relay_now = status.and_then(|s| humantime::parse_rfc3339_weak(&s.now).ok());
    if d.in_flight {
        return Some("now (attempt in flight)".into());
    }
    match relay_now {
        Some(now) if humantime::parse_rfc3339_weak(next).is_ok_and(|n| n <= now) => Some("due now".into()),
        _ => Some(next.to_string()),
    }
}

fn print_list(page: &ListResponse, relay: Option<&StatusResponse>) {
    if page.deliveries.is_empty() {
        println!("no deliveries");
        return;
    }
    println!(
        "{:<36}  {:<12}  {:<9}  {:>3}  {:<24}  REQUEST / LAST ERROR",
        "ID", "TUNNEL", "STATUS", "TRY", "RECEIVED"
    );
    for d in &page.deliveries {
        let status = if d.in_flight {
            "in-flight"
        } else {
            d.status.as_str()
        };
        let mut line = format!(
            "{:<36}  {:<12}  {:<9}  {:>3}  {:<24}  {} {}",
            d.id, d.tunnel, status, d.attempts, d.received_at, d.method, d.path
        );
        if let Some(e) = &d.last_error
            && d.status != Status::Delivered
        {
            line.push_str(&format!("  ({})", shorten(e, 80)));
        }
        if waiting_for_agent(d, relay) {
            line.push_str("  (waiting for the agent)");
        }
        println!("{line}");
    }
    if let Some(before) = page.next_before {
        println!("more: add --before {before}");
    }
}

fn print_detail(d: &DeliveryDetail, status: Option<&StatusResponse>) {
    let s = &d.summary;
    println!("id:        {}", s.id);
    println!("tunnel:    {}", s.tunnel);
    println!(
        "status:    {}{}",
        s.status,
        if s.in_flight { " (attempt in flight)" } else { "" }
    );
    println!("received:  {}", s.received_at);
    if let Some(next) = next_try(s, status) {
        println!("next try:  {next}");
    }
    if let Some(done) = &s.finished_at {
        println!("finished:  {done}");
    }
    println!("request:   {} {}", s.method, d.uri);
    for h in &d.headers {
        println!("  {}: {}", h.name, h.value);
    }
    match std::str::from_utf8(&d.body) {
        Ok(text) => println!("body ({} bytes):\n{text}", d.body.len()),
        Err(_) => println!("body ({} bytes, binary; use --json for base64)", d.body.len()),
    }
    println!("attempts:  {}", s.attempts);
    for a in &d.attempts_log {
        let status = a.status.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        let error = a.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default();
        println!(
            "  #{:<3} {}  {:<11}  {:>3}{}",
            a.number,
            a.finished_at,
            a.outcome.as_str(),
            status,
            error
        );
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}

/// A small HTTPS client for the admin API (also used by `ponte status`).
pub(super) struct AdminClient {
    base: String,
    token: Secret,
    client: Client<HttpsConnector<HttpConnector>, Body>,
}

impl AdminClient {
    /// Check the flags and build the client.
    pub(super) fn new(args: &AdminArgs) -> Result<Self, CommandError> {
        let invalid = |m: String| CommandError::Config(ConfigError::invalid("command line", m));
        let relay = args.relay.as_deref().ok_or_else(|| {
            invalid("no relay: pass --relay https://relay.example.com (the relay's own address)".into())
        })?;
        let url = url::Url::parse(relay).map_err(|e| {
            invalid(format!(
                "--relay `{relay}` is not a URL ({e}); write it like https://relay.example.com"
            ))
        })?;
        let loopback = match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            "http" => {
                return Err(invalid(format!(
                    "--relay `{relay}`: the admin token would cross the network in clear text; use https://"
                )));
            }
            other => {
                return Err(invalid(format!(
                    "--relay: `{other}://` is not supported; use https://"
                )));
            }
        }
        let token = args.admin_token.clone().ok_or_else(|| {
            invalid(
                "no admin token: pass --admin-token or set PONTE_ADMIN_TOKEN (the relay's `admin_token:`)"
                    .into(),
            )
        })?;
        let tls = crate::tls::client_config(args.ca_file.as_deref(), &[])?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(AdminClient {
            base: format!("{}{}", url.as_str().trim_end_matches('/'), ADMIN_PREFIX),
            token: Secret::new(token),
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// The relay's status, or `None` if it cannot say (an older relay without the endpoint):
    /// only used to explain deliveries, so its failure is not the command's.
    async fn status(&self) -> Option<StatusResponse> {
        match self.call::<StatusResponse>(Method::GET, "status").await {
            Ok((_, status)) => Some(status),
            Err(e) => {
                tracing::debug!(error = %e, "no relay status; showing deliveries without agent state");
                None
            }
        }
    }

    /// Call the API and decode its answer, keeping the raw JSON for `--json`.
    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<(Bytes, T)> {
        let uri = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&uri)
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token.expose()))
            .body(body::empty())
            .context("building the request")?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .with_context(|| format!("cannot reach the relay at {}", self.base))?;
            let status = resp.status();
            let bytes = body::collect_limited(resp.into_body(), MAX_ANSWER)
                .await
                .map_err(|e| anyhow!("reading the relay's answer: {e}"))?;
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| anyhow!("the relay did not answer within {CALL_TIMEOUT:?}"))??;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            bail!(
                "the relay answered {}: {}",
                status.as_u16(),
                text.trim().trim_start_matches("ponte: ")
            );
        }
        let value = serde_json::from_slice(&bytes)
            .with_context(|| format!("the relay's answer is not what this ponte expects (is it a Ponte relay of the same version?): {uri}"))?;
        Ok((bytes, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(relay: &str) -> AdminArgs {
        AdminArgs {
            relay: Some(relay.into()),
            admin_token: Some("t".into()),
            ca_file: None,
            json: false,
        }
    }

    #[test]
    fn clear_text_only_on_loopback() {
        assert!(AdminClient::new(&args("http://127.0.0.1:8080")).is_ok());
        assert!(AdminClient::new(&args("http://localhost:8080")).is_ok());
        assert!(AdminClient::new(&args("https://relay.example.com")).is_ok());
        let err = AdminClient::new(&args("http://relay.example.com")).err().unwrap();
        assert!(err.to_string().contains("clear text"), "{err}");
        let no_token = AdminArgs {
            admin_token: None,
            ..args("https://relay.example.com")
        };
        let err = AdminClient::new(&no_token).err().unwrap();
        assert!(err.to_string().contains("PONTE_ADMIN_TOKEN"), "{err}");
    }
}
