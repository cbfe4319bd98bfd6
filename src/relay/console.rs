//! The relay side of the console (`/_ponte/console/`, in [`crate::inspect::console`]): the
//! [`Backend`] it reads through, over the relay's state, its login budget and its store (the
//! same operations as the admin API, answered in the admin API's wire types).

use std::net::IpAddr;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::state::RelayState;
use crate::inspect::console::backend::ListQuery;
use crate::inspect::console::{Backend, BackendError, Overview};
use crate::protocol::admin::{self as wire, DeliveryDetail, ListResponse};
use crate::store::{self, ListFilter, StoreError};

/// The console's view of one relay.
pub struct RelayBackend<'a>(pub &'a Arc<RelayState>);

impl RelayBackend<'_> {
    fn store(&self) -> Result<&Arc<dyn store::Store>, BackendError> {
        self.0
            .queues
            .as_ref()
            .map(|q| &q.store)
            .ok_or_else(|| BackendError::Unavailable("this relay has no `store:`".into()))
    }

    fn wake(&self, tunnel: &str) {
        if let Some(queues) = &self.0.queues
            && let Ok(name) = crate::config::relay::TunnelName::parse(tunnel)
            && let Some(q) = queues.tunnel(&name)
        {
            q.wake.notify_one();
        }
    }
}

fn backend_error(e: StoreError) -> BackendError {
    match e {
        StoreError::NotFound(id) => BackendError::NotFound(format!("no delivery with id `{id}`")),
        other => BackendError::Unavailable(other.to_string()),
    }
}

impl Backend for RelayBackend<'_> {
    fn admin_token(&self) -> Option<&str> {
        self.0.config.admin_token.as_ref().map(|t| t.expose())
    }

    fn login_throttled(&self, ip: IpAddr) -> bool {
        self.0.registry.login_throttled(ip)
    }

    fn record_failed_login(&self, ip: IpAddr) {
        self.0.registry.record_failed_login(ip)
    }

    fn has_store(&self) -> bool {
        self.0.queues.is_some()
    }

    fn status(&self) -> BoxFuture<'_, Overview> {
        Box::pin(async move {
            // The admin API's own answer; if the store cannot be read, still the agents.
            match super::status::collect(self.0).await {
                Ok(status) => Overview {
                    status,
                    queue_error: None,
                },
                Err(e) => Overview {
                    status: super::status::build(self.0, None),
                    queue_error: Some(e.to_string()),
                },
            }
        })
    }

    fn list(&self, query: ListQuery) -> BoxFuture<'_, Result<ListResponse, BackendError>> {
        Box::pin(async move {
            let filter = ListFilter {
                tunnel: query.tunnel,
                status: query.status.map(|s| match s {
                    wire::Status::Pending => store::Status::Pending,
                    wire::Status::Delivered => store::Status::Delivered,
                    wire::Status::Failed => store::Status::Failed,
                }),
                before_seq: None,
                limit: query.limit.clamp(1, store::MAX_LIST),
            };
            let deliveries = self.store()?.list(filter).await.map_err(backend_error)?;
            Ok(ListResponse {
                deliveries: deliveries.into_iter().map(Into::into).collect(),
                next_before: None,
            })
        })
    }

    fn show(&self, id: String) -> BoxFuture<'_, Result<DeliveryDetail, BackendError>> {
        Box::pin(async move { Ok(self.store()?.show(id).await.map_err(backend_error)?.into()) })
    }

    fn replay(&self, id: String) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(async move {
            let summary = self.store()?.replay(id).await.map_err(backend_error)?;
            self.wake(&summary.tunnel);
            Ok(())
        })
    }

    fn replay_failed(&self, tunnel: Option<String>) -> BoxFuture<'_, Result<u64, BackendError>> {
        Box::pin(async move {
            let n = self.store()?.replay_failed(tunnel).await.map_err(backend_error)?;
            for t in self.0.registry.tunnels() {
                self.wake(t.name.as_str());
            }
            Ok(n)
        })
    }
}
