//! The HTTP proxy between the agent and the relay: `proxy_url:` in agent.yaml, or the variables
//! every HTTP tool reads (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, either case).
//!
//! Credentials decoding and `NO_PROXY` matching (names, `.suffix`, IPs, CIDR ranges, `*`) are
//! hyper-util's proxy matcher, the rules curl uses. This module picks the variable, and refuses
//! with a clear error the values that matcher would silently ignore (a typo must not turn the
//! proxy off) or that the agent cannot use (SOCKS, an `https://` proxy).

use std::sync::Arc;

use http::HeaderValue;
use hyper_util::client::proxy::matcher::Matcher;

/// Port of a proxy URL that names none (Squid's, the usual corporate proxy).
pub const DEFAULT_PROXY_PORT: u16 = 3128;

/// The proxy variables read from the environment, before the relay's scheme picks one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// `(name, value)` of each proxy variable that is set and not blank.
    vars: Vec<(&'static str, String)>,
}

/// The variables in the order they are looked at, per relay scheme.
const HTTPS_NAMES: [&str; 4] = ["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"];
const HTTP_NAMES: [&str; 4] = ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"];
const NO_PROXY_NAMES: [&str; 2] = ["NO_PROXY", "no_proxy"];

impl ProxyEnv {
    /// Read the variables through `lookup` (the process environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let names = HTTPS_NAMES.iter().chain(&HTTP_NAMES).chain(&NO_PROXY_NAMES);
        let mut vars: Vec<(&'static str, String)> = Vec::new();
        for name in names {
            if vars.iter().any(|(n, _)| n == name) {
                continue;
            }
            if let Some(v) = lookup(name).filter(|v| !v.trim().is_empty()) {
                vars.push((name, v));
            }
        }
        ProxyEnv { vars }
    }

    fn first(&self, names: &[&str]) -> Option<(&'static str, &str)> {
        names.iter().find_map(|want| {
            self.vars
                .iter()
                .find(|(n, _)| n == want)
                .map(|(n, v)| (*n, v.as_str()))
        })
    }
}

/// Where to send the agent's CONNECT, and with which credentials.
#[derive(Clone)]
pub struct ProxyRoute {
    /// `host:port` of the proxy.
    pub authority: String,
    /// `Proxy-Authorization` (Basic), when the proxy URL had credentials. Marked sensitive.
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRoute")
            .field("authority", &self.authority)
            .field("authorization", &self.authorization.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// The proxy in effect for the agent, validated.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    matcher: Arc<Matcher>,
}

impl ProxySettings {
    /// `proxy_url:` from agent.yaml: used for the relay whatever `NO_PROXY` says.
    pub fn from_url(text: &str) -> Result<Self, String> {
        let value = validate(text)?;
        Ok(ProxySettings {
            matcher: Arc::new(Matcher::builder().all(value).build()),
        })
    }

    /// The variables that apply to a relay reached over TLS (`tls`) or plain HTTP; `None` when
    /// none is set. The error names the variable.
    pub fn from_env(env: &ProxyEnv, tls: bool) -> Result<Option<Self>, String> {
        let Some((name, value)) = env.first(if tls { &HTTPS_NAMES } else { &HTTP_NAMES }) else {
            return Ok(None);
        };
        let value = validate(value).map_err(|e| format!("{name}: {e}"))?;
        let no_proxy = env
            .first(&NO_PROXY_NAMES)
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let builder = Matcher::builder().no(no_proxy);
        let builder = if tls {
            builder.https(value)
        } else {
            builder.http(value)
        };
        Ok(Some(ProxySettings {
            matcher: Arc::new(builder.build()),
        }))
    }

    /// The proxy to use for the relay at `host:port` (`tls`: https), or `None` when `NO_PROXY`
    /// exempts it.
    pub fn route(&self, host: &str, port: u16, tls: bool) -> Option<ProxyRoute> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let scheme = if tls { "https" } else { "http" };
        let dst: http::Uri = format!("{scheme}://{host}:{port}/").parse().ok()?;
        let intercept = self.matcher.intercept(&dst)?;
        let uri = intercept.uri();
        let proxy_host = uri.host()?;
        let authority = format!("{proxy_host}:{}", uri.port_u16().unwrap_or(DEFAULT_PROXY_PORT));
        Some(ProxyRoute {
            authority,
            authorization: intercept.basic_auth().cloned(),
        })
    }
}

/// Check a proxy URL the way the matcher will read it, and say what is wrong in words. Returns
/// the value to hand to the matcher (with `http://` added when there was no scheme).
fn validate(text: &str) -> Result<String, String> {
    let text = text.trim();
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = url::Url::parse(&with_scheme).map_err(|e| {
        format!("`{text}` is not a proxy URL ({e}); write it like http://user:password@proxy:3128")
    })?;
    if url.scheme() != "http" {
        return Err(format!(
            "proxy scheme `{}` is not supported; use an http:// proxy (CONNECT)",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    // The matcher parses with `http::Uri`, which is stricter than `url` about some characters
    // in credentials; refuse here what it would drop without a word.
    if with_scheme.parse::<http::Uri>().is_err() {
        return Err(format!(
            "`{text}` is not a proxy URL; percent-encode special characters in the user name and password (`@` as %40, `/` as %2F)"
        ));
    }
    Ok(with_scheme)
}

#[cfg(test)]
mod tests {
    use base64::Engine;

    use super::*;

    fn basic(user_pass: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    }

    fn env(pairs: &[(&str, &str)]) -> ProxyEnv {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_lookup(|n| map.get(n).cloned())
    }

    #[test]
    fn env_and_no_proxy() {
        let e = env(&[
            ("https_proxy", "http://u%40x:p@proxy.corp:8080"),
            ("NO_PROXY", "localhost, .internal.corp,10.0.0.0/8"),
        ]);
        let p = ProxySettings::from_env(&e, true).unwrap().unwrap();
        let route = p.route("relay.example.com", 443, true).unwrap();
        assert_eq!(route.authority, "proxy.corp:8080");
        assert_eq!(route.authorization.unwrap(), basic("u@x:p").as_str());
        assert!(p.route("localhost", 443, true).is_none());
        assert!(p.route("relay.internal.corp", 443, true).is_none());
        assert!(p.route("internal.corp", 443, true).is_none());
        assert!(p.route("10.1.2.3", 443, true).is_none());
        assert!(ProxySettings::from_env(&env(&[]), true).unwrap().is_none());
        // A plain (loopback) relay reads HTTP_PROXY, not HTTPS_PROXY.
        assert!(ProxySettings::from_env(&e, false).unwrap().is_none());
    }

    /// `+` in a percent-encoded password is a plus, not a space (it is not a form), and `%2B` is
    /// a plus too.
    #[test]
    fn credentials_are_percent_decoded_as_a_url_not_a_form() {
        let p = ProxySettings::from_url("http://clinic:p%2Bss+word@proxy.corp:3128").unwrap();
        let route = p.route("relay.example.com", 443, true).unwrap();
        assert_eq!(route.authorization.unwrap(), basic("clinic:p+ss+word").as_str());
        let e = env(&[("HTTPS_PROXY", "http://a%20b:c%3Ad@proxy.corp")]);
        let route = ProxySettings::from_env(&e, true)
            .unwrap()
            .unwrap()
            .route("relay.example.com", 443, true)
            .unwrap();
        assert_eq!(route.authority, "proxy.corp:3128");
        assert_eq!(route.authorization.unwrap(), basic("a b:c:d").as_str());
    }

    #[test]
    fn unusable_values_are_refused_with_the_variable_named() {
        let e = ProxySettings::from_env(&env(&[("HTTPS_PROXY", "socks5://x:1")]), true).unwrap_err();
        assert!(e.starts_with("HTTPS_PROXY: proxy scheme `socks5`"), "{e}");
        assert!(ProxySettings::from_url("https://proxy:3128").is_err());
        assert!(ProxySettings::from_url("http://").is_err());
        // `proxy.corp:3128` without a scheme means http://.
        let p = ProxySettings::from_url("proxy.corp:3128").unwrap();
        assert_eq!(
            p.route("r.example", 443, true).unwrap().authority,
            "proxy.corp:3128"
        );
        // proxy_url ignores NO_PROXY, as before.
        assert!(p.route("localhost", 443, true).is_some());
    }
}
