//! Checks that the queue's store can commit, every few seconds, so `/_ponte/ready` can say when it
//! cannot (a PostgreSQL server down or unreachable) without a database round trip per probe: the
//! ready path is public, and a probe flood must not become a flood on the database.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::state::Queues;

/// Time between two checks.
const INTERVAL: Duration = Duration::from_secs(2);

/// Check the store until `stop`, logging each change of state once.
pub async fn run(queues: Arc<Queues>, stop: CancellationToken) {
    loop {
        let outcome = tokio::select! {
            _ = stop.cancelled() => return,
            outcome = queues.store.ping() => outcome,
        };
        let problem = match outcome {
            Ok(()) => None,
            Err(e) => Some(e.to_string()),
        };
        match (queues.set_store_problem(problem.clone()), problem) {
            (None, Some(why)) => {
                tracing::warn!(error = %why, "the queue store cannot commit: /_ponte/ready answers 503 until it can")
            }
            (Some(_), None) => tracing::info!("the queue store commits again: /_ponte/ready answers 200"),
            _ => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}
