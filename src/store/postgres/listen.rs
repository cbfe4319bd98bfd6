//! Work made by other relay nodes, announced with PostgreSQL's `LISTEN`/`NOTIFY`. A node that
//! commits new or replayed deliveries sends `NOTIFY ponte_work, '<instance> <tunnel>'` in the same
//! transaction (delivered only if it commits); every node keeps one connection that listens and
//! wakes that tunnel's delivery worker, instead of leaving it to its next poll.
//!
//! The listening connection is re-made after any loss, with a growing pause; after each
//! (re)connection every worker is woken once, since notifications sent meanwhile are lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Transaction;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use super::conn::{chain, driver_config};
use super::ops::execute;
use super::tls;
use crate::config::postgres::PostgresUrl;
use crate::store::StoreError;

/// The notification channel.
pub(super) const CHANNEL: &str = "ponte_work";
/// Notify `$1` (the channel) of `$2` (this instance) for every tunnel of `$3`.
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, $2 || ' ' || t) FROM unnest($3::text[]) AS t";
/// First pause before re-making a lost listening connection; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// Announce new work of `tunnels` to the other nodes when `tx` commits.
pub(super) async fn notify(
    tx: &Transaction<'_>,
    instance: &str,
    tunnels: &[String],
) -> Result<(), StoreError> {
    if tunnels.is_empty() {
        return Ok(());
    }
    execute(tx, NOTIFY, &[&CHANNEL, &instance, &tunnels])
        .await
        .map(drop)
}

/// One `Notify` per tunnel whose worker asked to be woken.
#[derive(Default)]
pub(super) struct Wakeups {
    by_tunnel: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakeups {
    /// The signal of `tunnel` (made on first use).
    pub(super) fn signal(&self, tunnel: &str) -> Arc<Notify> {
        let mut map = self.by_tunnel.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(tunnel.to_string()).or_default().clone()
    }

    fn wake(&self, tunnel: &str) {
        let map = self.by_tunnel.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(tunnel) {
            n.notify_one();
        }
    }

    fn wake_all(&self) {
        let map = self.by_tunnel.lock().unwrap_or_else(|p| p.into_inner());
        for n in map.values() {
            n.notify_one();
        }
    }
}

/// Listen until `stop` is cancelled, waking the tunnels other instances announce.
pub(super) async fn run(url: PostgresUrl, instance: String, wakeups: Arc<Wakeups>, stop: CancellationToken) {
    let mut pause = FIRST_PAUSE;
    let mut lost_logged = false;
    while !stop.is_cancelled() {
        match listen_once(&url, &instance, &wakeups, &stop, &mut lost_logged).await {
            // Connected, then lost: try again soon.
            Ok(()) => pause = FIRST_PAUSE,
            Err(e) => {
                if !lost_logged {
                    lost_logged = true;
                    tracing::warn!(store = %url, error = %e, "cannot listen for other relay nodes' work; retrying (this node still polls the store every few seconds)");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// One listening connection, from connect to loss (`Ok`) or a failure to set it up (`Err`).
async fn listen_once(
    url: &PostgresUrl,
    instance: &str,
    wakeups: &Wakeups,
    stop: &CancellationToken,
    lost_logged: &mut bool,
) -> Result<(), String> {
    let tls = tls::connector(url).map_err(|e| e.to_string())?;
    let (client, mut connection) = driver_config(url).connect(tls).await.map_err(|e| chain(&e))?;
    let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    // The connection must be polled for the LISTEN below to complete and for notifications to
    // arrive; it ends when the server closes it or the client is dropped.
    let driver = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if messages_tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %chain(&e), "the store's listening connection ended");
                    return;
                }
            }
        }
    });
    let listening = client.batch_execute(&format!("LISTEN {CHANNEL}")).await;
    if let Err(e) = listening {
        driver.abort();
        return Err(chain(&e));
    }
    if std::mem::take(lost_logged) {
        tracing::info!(store = %url, "listening for other relay nodes' work again");
    }
    // Whatever was announced while not listening is lost: look at every tunnel once.
    wakeups.wake_all();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            payload = messages.recv() => match payload {
                Some(payload) => {
                    if let Some((from, tunnel)) = payload.split_once(' ')
                        && from != instance
                    {
                        wakeups.wake(tunnel);
                    }
                }
                None => {
                    *lost_logged = true;
                    tracing::warn!(store = %url, "lost the store's listening connection; reconnecting (this node still polls the store every few seconds)");
                    break;
                }
            },
        }
    }
    drop(client);
    driver.abort();
    Ok(())
}
