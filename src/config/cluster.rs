//! `cluster:` in relay.yaml: this node's identity among several relay nodes sharing one
//! PostgreSQL store, how the others reach it, and what they share to trust each other.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{Secret, parse_scalar};

/// Shortest accepted `cluster.secret`: it is all that stands between the internet and the
/// forwarding endpoint.
pub const MIN_SECRET_LEN: usize = 16;

/// The `cluster:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name among the others (default: the host name). Unique per node.
    #[serde(default, deserialize_with = "opt_node_id")]
    pub node_id: Option<String>,
    /// The URL other nodes use to reach this node's listener, e.g. `https://10.0.0.5:443`.
    #[serde(deserialize_with = "advertise")]
    pub advertise: url::Url,
    /// Shared by every node of the cluster; a forwarded request must present it.
    pub secret: Secret,
    /// An extra trust anchor (PEM) for node-to-node TLS, besides the web's root CAs.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl ClusterConfig {
    /// The node id: as configured, else the host name.
    pub fn node_id(&self) -> String {
        self.node_id.clone().unwrap_or_else(host_name)
    }

    /// Checks that need the rest of the file: a PostgreSQL store, a long enough secret, and an
    /// advertise host outside the tunnels' `domain` (a host there routes to a tunnel, not to the
    /// relay's own endpoints).
    pub fn validate(&self, postgres_store: bool, domain: Option<&str>) -> Result<(), String> {
        if !postgres_store {
            return Err("cluster: needs a PostgreSQL store that every node shares; set `store: postgres://USER:PASSWORD@HOST:5432/DATABASE`, or remove the `cluster:` section for a single relay".into());
        }
        if self.secret.expose().trim().len() < MIN_SECRET_LEN {
            return Err(format!(
                "cluster.secret must be at least {MIN_SECRET_LEN} characters; use the same long random value on every node (e.g. ${{PONTE_CLUSTER_SECRET}})"
            ));
        }
        if !self.secret.expose().chars().all(|c| c.is_ascii_graphic()) {
            return Err("cluster.secret may hold only visible ASCII characters (no spaces); e.g. the output of `openssl rand -hex 32`".into());
        }
        if let (Some(domain), Some(host)) = (domain, self.advertise.host_str()) {
            let host = host.to_ascii_lowercase();
            if host.ends_with(&format!(".{domain}")) {
                return Err(format!(
                    "cluster.advertise host `{host}` is under the tunnels' domain `{domain}`, where every name is a tunnel; advertise the node's address or a name outside `{domain}`"
                ));
            }
        }
        Ok(())
    }
}

fn opt_node_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parse_scalar(d, |s| {
        let id = s.trim();
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if ok {
            Ok(Some(id.to_string()))
        } else {
            Err(format!(
                "`{s}` is not a node id; use up to 64 letters, digits, `-`, `_` or `.` (e.g. relay-1)"
            ))
        }
    })
}

fn advertise<'de, D: Deserializer<'de>>(d: D) -> Result<url::Url, D::Error> {
    parse_scalar(d, |s| {
        let bad = || {
            format!(
                "cluster.advertise `{s}` is not a URL other nodes can reach; write it like https://10.0.0.5:443"
            )
        };
        let url = url::Url::parse(s.trim()).map_err(|_| bad())?;
        let plain_origin = matches!(url.scheme(), "http" | "https")
            && url.host_str().is_some()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path() == "/"
            && url.query().is_none();
        if plain_origin { Ok(url) } else { Err(bad()) }
    })
}

/// This machine's host name, or a fixed fallback when it cannot be read.
fn host_name() -> String {
    #[cfg(unix)]
    let name = nix::unistd::gethostname().ok().and_then(|n| n.into_string().ok());
    #[cfg(not(unix))]
    let name = std::env::var("COMPUTERNAME").ok();
    name.filter(|n| !n.is_empty())
        .unwrap_or_else(|| "ponte-relay".to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::relay::RelayConfig;

    fn parse(yaml: &str) -> Result<RelayConfig, String> {
        RelayConfig::from_str_with_env(yaml, "relay.yaml", &|k| {
            (k == "SECRET").then(|| "0123456789abcdef-secret".to_string())
        })
        .map_err(|e| e.to_string())
    }

    const PG: &str = "store: postgres://ponte:pw@db/ponte\n";

    #[test]
    fn a_cluster_needs_postgres_and_a_reachable_advertise_url() {
        let ok = parse(&format!(
            "{PG}cluster:\n  node_id: relay-1\n  advertise: https://10.0.0.5:443\n  secret: ${{SECRET}}\n"
        ))
        .unwrap();
        let c = ok.cluster.unwrap();
        assert_eq!(c.node_id(), "relay-1");
        assert_eq!(c.advertise.as_str(), "https://10.0.0.5/");
        assert_eq!(c.secret.expose(), "0123456789abcdef-secret");
        // The host name is the default id.
        let c = parse(&format!(
            "{PG}cluster:\n  advertise: http://relay-2:8080\n  secret: ${{SECRET}}\n"
        ))
        .unwrap()
        .cluster
        .unwrap();
        assert!(!c.node_id().is_empty());

        let err =
            parse("store: sqlite:///tmp/x.db\ncluster:\n  advertise: https://a:1\n  secret: ${SECRET}\n")
                .unwrap_err();
        assert!(
            err.contains("PostgreSQL") && err.contains("store: postgres://"),
            "{err}"
        );
        let err = parse("cluster:\n  advertise: https://a:1\n  secret: ${SECRET}\n").unwrap_err();
        assert!(err.contains("cluster: needs a PostgreSQL store"), "{err}");
        let err = parse(&format!(
            "{PG}cluster:\n  advertise: https://a:1\n  secret: short\n"
        ))
        .unwrap_err();
        assert!(err.contains("cluster.secret must be at least 16"), "{err}");
        for bad in ["10.0.0.5:443", "ftp://a", "https://a:1/path", "https://u:p@a"] {
            let err = parse(&format!(
                "{PG}cluster:\n  advertise: {bad}\n  secret: ${{SECRET}}\n"
            ))
            .unwrap_err();
            assert!(err.contains("cluster.advertise"), "{bad}: {err}");
        }
        let err = parse(&format!(
            "{PG}domain: relay.example.com\ncluster:\n  advertise: https://node-1.relay.example.com\n  secret: ${{SECRET}}\n"
        ))
        .unwrap_err();
        assert!(err.contains("under the tunnels' domain"), "{err}");
        let err = parse(&format!(
            "{PG}cluster:\n  advertise: https://a:1\n  secret: \"0123456789 abcdef-secret\"\n"
        ))
        .unwrap_err();
        assert!(err.contains("visible ASCII"), "{err}");
        let err = parse(&format!(
            "{PG}cluster:\n  node_id: a b\n  advertise: https://a:1\n  secret: ${{SECRET}}\n"
        ))
        .unwrap_err();
        assert!(err.contains("is not a node id"), "{err}");
    }
}
