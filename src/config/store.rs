//! `relay.yaml` keys of the durable queue's store: where it lives, how big it may grow, and how
//! long finished deliveries are kept.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::postgres::PostgresUrl;
use super::{duration, parse_scalar};

/// Smallest accepted cap: the schema alone needs a few pages.
pub const MIN_STORE_MAX_SIZE: u64 = 64 * 1024;
/// Default cap on the store's size: room for about a million 1 KiB webhooks.
pub const DEFAULT_STORE_MAX_SIZE: u64 = 1 << 30;

/// Where the durable queue lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH`: an embedded SQLite file (`sqlite:///var/lib/ponte/relay.db`).
    Sqlite(PathBuf),
    /// `postgres://USER:PASS@HOST:5432/DB` (or `postgresql://`): a PostgreSQL database that
    /// several relay nodes may share.
    Postgres(Box<PostgresUrl>),
}

impl StoreUrl {
    /// Parse the `store:` value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Some(path) = t.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!(
                    "`{t}` names no file; write it like sqlite:///var/lib/ponte/relay.db"
                ));
            }
            return Ok(StoreUrl::Sqlite(PathBuf::from(path)));
        }
        if t.starts_with("postgres://") || t.starts_with("postgresql://") {
            return PostgresUrl::parse(t).map(|u| StoreUrl::Postgres(Box::new(u)));
        }
        Err(format!(
            "`{}` is not a store URL; write it like sqlite:///var/lib/ponte/relay.db or postgres://USER:PASSWORD@HOST:5432/DATABASE",
            super::postgres::mask_password(t)
        ))
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_scalar(d, StoreUrl::parse)
    }
}

/// How long finished deliveries stay in the store (pending ones are never removed by age).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Delivered requests are deleted this long after delivery.
    #[serde(with = "duration")]
    pub delivered: Duration,
    /// Failed requests are deleted this long after they failed (replay them before).
    #[serde(with = "duration")]
    pub failed: Duration,
}

/// Default retention of delivered requests.
pub const DEFAULT_RETENTION_DELIVERED: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default retention of failed requests: long enough to notice and replay them.
pub const DEFAULT_RETENTION_FAILED: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            delivered: DEFAULT_RETENTION_DELIVERED,
            failed: DEFAULT_RETENTION_FAILED,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::relay::RelayConfig;

    #[test]
    fn store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/ponte/relay.db").unwrap(),
            StoreUrl::Sqlite("/var/lib/ponte/relay.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite://relay.db").unwrap(),
            StoreUrl::Sqlite("relay.db".into())
        );
        assert!(
            StoreUrl::parse("sqlite://")
                .unwrap_err()
                .contains("names no file")
        );
        let pg = StoreUrl::parse("postgres://ponte:pw@db/ponte?sslmode=verify-full").unwrap();
        assert!(
            matches!(&pg, StoreUrl::Postgres(u) if u.to_string() == "postgres://ponte:***@db/ponte?sslmode=verify-full")
        );
        assert!(matches!(
            StoreUrl::parse("postgresql://ponte:pw@db/ponte"),
            Ok(StoreUrl::Postgres(_))
        ));
        let err = StoreUrl::parse("mysql://root:pw@db/x").unwrap_err();
        assert!(err.contains("postgres://") && !err.contains("pw@"), "{err}");
        assert!(
            StoreUrl::parse("/var/lib/relay.db")
                .unwrap_err()
                .contains("sqlite:///")
        );
    }

    fn parse(yaml: &str) -> Result<RelayConfig, String> {
        RelayConfig::from_str_with_env(yaml, "relay.yaml", &|_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn queue_keys_parse_and_mistakes_name_their_line() {
        let tunnel = "tunnels:\n  a:\n    token: 0123456789abcdef0123\n    delivery: queue\n";
        let cfg = parse(&format!(
            "store: sqlite:///tmp/x.db\nstore_max_size: 10MiB\nretention:\n  delivered: 1d\n{tunnel}    queue:\n      ordered: true\n      retry_schedule: [1s, 1m]\n"
        ))
        .unwrap();
        assert_eq!(cfg.store_max_size.0, 10 << 20);
        assert_eq!(cfg.retention.delivered, Duration::from_secs(86400));
        assert_eq!(cfg.retention.failed, DEFAULT_RETENTION_FAILED);
        let err = parse(&format!("store: mysql://x\n{tunnel}")).unwrap_err();
        assert!(err.starts_with("relay.yaml:1: store: "), "{err}");
        let err = parse(tunnel).unwrap_err();
        assert!(err.contains("needs a `store:`"), "{err}");
        let err = parse(&format!(
            "store: sqlite:///x.db\nretention:\n  deliverd: 1d\n{tunnel}"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("relay.yaml:3:") && err.contains("unknown field"),
            "{err}"
        );
        let err = parse(&format!(
            "store: sqlite:///x.db\n{tunnel}    queue:\n      retry_schedule: [0s]\n"
        ))
        .unwrap_err();
        assert!(err.contains("longer than 0s"), "{err}");
        let err = parse(&format!("store: sqlite:///x.db\nstore_max_size: 1KiB\n{tunnel}")).unwrap_err();
        assert!(err.contains("at least 64KiB"), "{err}");
    }
}
