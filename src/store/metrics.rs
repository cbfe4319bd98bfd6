//! What the store records about its own work for `/_ponte/metrics`: how long each group commit
//! takes and how many jobs it carries. The relay registers these next to its own metrics.

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Histograms of the store's group commits (clones share their data).
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// Seconds from the start of a batch's transaction to its durable commit.
    pub commit_seconds: Histogram,
    /// Jobs (enqueues, claims, reports, …) committed together in one transaction.
    pub batch_size: Histogram,
}

impl StoreMetrics {
    /// Fresh histograms, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        // 100 µs .. ~6.5 s: an fsync on a fast SSD to a disk in trouble.
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 17));
        // 1 .. 512 jobs (the writer's largest batch).
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register_with_unit(
            "ponte_store_commit_duration",
            "Time one group commit of the queue store took (transaction and fsync)",
            Unit::Seconds,
            commit_seconds.clone(),
        );
        registry.register(
            "ponte_store_commit_batch_size",
            "Jobs committed together in one transaction of the queue store",
            batch_size.clone(),
        );
        StoreMetrics {
            commit_seconds,
            batch_size,
        }
    }
}
