//! One live agent connection, seen from the relay: the HTTP/2 client half of the reversed
//! connection, plus the permits that cap how many streams the relay opens on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::body::Body;

/// A registered agent session.
pub struct Session {
    /// Relay-local id, for logs and deregistration.
    pub id: u64,
    /// The agent's instance id (stable across its reconnects).
    pub agent_id: String,
    /// Where the agent connected from.
    pub remote: SocketAddr,
    sender: SendRequest<Body>,
    permits: Arc<Semaphore>,
    max_streams: u32,
    closed: CancellationToken,
}

/// Why a request could not be carried over a session.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The session's stream limit stayed full for the whole wait.
    #[error("all {0} streams of the agent connection stayed busy")]
    Busy(u32),
    /// No response headers in time.
    #[error("no response in time")]
    Timeout,
    /// The connection or stream failed.
    #[error("{0}")]
    Failed(#[from] hyper::Error),
}

impl Session {
    /// Wrap the client half of a freshly upgraded agent connection.
    pub fn new(
        id: u64,
        agent_id: String,
        remote: SocketAddr,
        sender: SendRequest<Body>,
        max_streams: u32,
    ) -> Self {
        Session {
            id,
            agent_id,
            remote,
            sender,
            permits: Arc::new(Semaphore::new(max_streams as usize)),
            max_streams,
            closed: CancellationToken::new(),
        }
    }

    /// Can new streams be opened on it?
    pub fn is_usable(&self) -> bool {
        !self.closed.is_cancelled() && !self.sender.is_closed()
    }

    /// Close the session (stale-session eviction, shutdown).
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Resolves when the session is closed from the relay side.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    /// Open one stream: wait for a stream permit, send, and wait for the response headers, all
    /// within `timeout`. The permit is returned so the caller holds it until the response body
    /// (or the websocket) is finished.
    pub async fn send(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<(Response<Incoming>, OwnedSemaphorePermit), SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let max = self.max_streams;
        let permit = tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| SendError::Busy(max))?
            .map_err(|_| SendError::Busy(max))?;
        let mut sender = self.sender.clone();
        let resp = tokio::time::timeout_at(deadline, sender.send_request(req))
            .await
            .map_err(|_| SendError::Timeout)??;
        Ok((resp, permit))
    }
}
