//! The admin API (`/_ponte/admin/`) that `ponte deliveries` talks to: its paths and the JSON
//! answers beyond the store's own types. Authentication is `Authorization: Bearer <admin_token>`.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET deliveries?tunnel=&status=&limit=&before=` | [`ListResponse`] |
//! | `GET deliveries/{id}` | [`crate::store::DeliveryDetail`] |
//! | `POST deliveries/{id}/replay` | [`crate::store::DeliverySummary`] |
//! | `POST replay?status=failed&tunnel=` | [`ReplayResponse`] |
//! | `POST purge?status=&tunnel=&older_than=` | [`PurgeResponse`] |

use serde::{Deserialize, Serialize};

use crate::store::DeliverySummary;

/// Prefix of every admin path on the relay's own host.
pub const ADMIN_PREFIX: &str = "/_ponte/admin/";

/// A page of deliveries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResponse {
    /// Newest first.
    pub deliveries: Vec<DeliverySummary>,
    /// Pass as `before=` for the next page; absent on the last page.
    pub next_before: Option<i64>,
}

/// The answer to a bulk replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayResponse {
    /// How many deliveries went back to pending.
    pub replayed: u64,
}

/// The answer to a purge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeResponse {
    /// How many deliveries were deleted.
    pub purged: u64,
}
