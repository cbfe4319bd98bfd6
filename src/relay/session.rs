//! One live agent connection, seen from the relay: the HTTP/2 client half of the reversed
//! connection, plus the permits that cap how many streams the relay opens on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

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
    /// Which of the agent's concurrent sessions this is (`Ponte-Agent-Slot`, 0 for older agents):
    /// a new session replaces only the one of the same agent and slot.
    pub slot: u32,
    /// Where the agent connected from.
    pub remote: SocketAddr,
    /// The Ponte version the agent announced in its handshake, if any.
    pub version: Option<String>,
    /// When the session was registered.
    pub connected_at: SystemTime,
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
            slot: 0,
            remote,
            version: None,
            connected_at: SystemTime::now(),
            sender,
            permits: Arc::new(Semaphore::new(max_streams as usize)),
            max_streams,
            closed: CancellationToken::new(),
        }
    }

    /// Record which of the agent's sessions this is.
    pub fn with_slot(mut self, slot: u32) -> Self {
        self.slot = slot;
        self
    }

    /// Record the version the agent announced.
    pub fn with_version(mut self, version: Option<String>) -> Self {
        self.version = version;
        self
    }

    /// Streams open on it right now.
    pub fn streams_in_use(&self) -> u32 {
        self.max_streams
            .saturating_sub(self.permits.available_permits() as u32)
    }

    /// Can new streams be opened on it?
    pub fn is_usable(&self) -> bool {
        !self.closed.is_cancelled() && !self.sender.is_closed()
    }

    /// Is a stream permit free right now?
    pub fn has_free_stream(&self) -> bool {
        self.permits.available_permits() > 0
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
    /// before `deadline`. The permit is returned so the caller holds it until the response body
    /// (or the websocket) is finished. The request is handed back when the connection closed
    /// before any of it was written, so the caller may safely send it elsewhere (even a POST):
    /// [`super::registry::TunnelState::send`] does.
    pub(super) async fn try_send(
        &self,
        req: Request<Body>,
        deadline: tokio::time::Instant,
    ) -> Result<(Response<Incoming>, OwnedSemaphorePermit), Attempt> {
        let max = self.max_streams;
        let permit = match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(Attempt::Failed(SendError::Busy(max))),
        };
        let mut sender = self.sender.clone();
        match tokio::time::timeout_at(deadline, sender.try_send_request(req)).await {
            Err(_) => Err(Attempt::Failed(SendError::Timeout)),
            Ok(Ok(resp)) => Ok((resp, permit)),
            Ok(Err(mut e)) => match e.take_message() {
                Some(req) => Err(Attempt::NotSent(Box::new(req), e.into_error())),
                None => Err(Attempt::Failed(SendError::Failed(e.into_error()))),
            },
        }
    }
}

/// Outcome of one [`Session::try_send`] that did not get a response.
pub(super) enum Attempt {
    /// Nothing was written; the request is returned.
    NotSent(Box<Request<Body>>, hyper::Error),
    /// The request may have reached the agent.
    Failed(SendError),
}

#[cfg(test)]
pub(super) mod testing {
    use std::sync::Arc;

    use http::{Method, Request, Response, StatusCode};
    use hyper::body::Incoming;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::Session;
    use crate::body::{self, Body};

    /// The client half of an in-memory HTTP/2 connection to a fake agent, and the connection task
    /// (abort it to kill the session's connection). The fake agent answers `200 served`, and a
    /// websocket extended CONNECT with `200`, then echoes whatever comes through the stream.
    pub async fn session_pair(id: u64) -> (Arc<Session>, tokio::task::JoinHandle<()>) {
        agent_session(id, &format!("agent-{id}"), 0).await
    }

    /// [`session_pair`] for a given agent instance id and HA slot.
    pub async fn agent_session(
        id: u64,
        agent_id: &str,
        slot: u32,
    ) -> (Arc<Session>, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req| async {
                Ok::<_, std::convert::Infallible>(fake_agent(req))
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .enable_connect_protocol()
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        let (sender, conn) =
            hyper::client::conn::http2::handshake::<_, _, Body>(TokioExecutor::new(), TokioIo::new(client))
                .await
                .unwrap();
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let session = Session::new(
            id,
            agent_id.to_string(),
            "127.0.0.1:1".parse().unwrap(),
            sender,
            10,
        )
        .with_slot(slot);
        (Arc::new(session), task)
    }

    fn fake_agent(mut req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::CONNECT {
            return Response::new(body::full("served"));
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            }
        });
        let mut resp = Response::new(body::empty());
        *resp.status_mut() = StatusCode::OK;
        resp
    }
}
