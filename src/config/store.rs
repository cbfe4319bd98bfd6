//! `relay.yaml` keys of the durable queue's store: where it lives, how big it may grow, and how
//! long finished deliveries are kept.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
            return Err(
                "PostgreSQL stores are not available in this version yet; use store: sqlite:///var/lib/ponte/relay.db"
                    .into(),
            );
        }
        Err(format!(
            "`{t}` is not a store URL; write it like sqlite:///var/lib/ponte/relay.db"
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
