//! systemd `Type=notify` glue: READY=1 once the agent's first session is up (or after a short
//! deadline, so a boot while offline is not held up), STATUS= with the agent's state, WATCHDOG=1
//! only while the supervisor's heartbeat is fresh, and STOPPING=1 when the shutdown token fires.
//!
//! Messages go to `NOTIFY_SOCKET` through the sd-notify crate; sd-notify 0.5 cannot reach an
//! abstract socket (`@name`), which some supervisors and test harnesses use, so those are sent
//! here directly. Without `NOTIFY_SOCKET` every call is a no-op.

use std::io;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::agent::AgentStatus;
use crate::agent::Heartbeat;

/// Longest time the agent waits for its first session before telling systemd it is ready anyway.
/// Boot must not hang while the network or the relay is down; STATUS= says what is going on.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);

/// Send `states` to the service manager, if there is one.
pub fn notify(states: &[NotifyState<'_>]) -> io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        None => Ok(()),
        Some(socket) if socket.as_encoded_bytes().starts_with(b"@") => {
            notify_abstract(&socket.as_encoded_bytes()[1..], states)
        }
        Some(_) => sd_notify::notify(states),
    }
}

#[cfg(target_os = "linux")]
fn notify_abstract(name: &[u8], states: &[NotifyState<'_>]) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let message: String = states.iter().map(|s| format!("{s}\n")).collect();
    let addr = SocketAddr::from_abstract_name(name)?;
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &addr)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn notify_abstract(_name: &[u8], _states: &[NotifyState<'_>]) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract NOTIFY_SOCKET addresses exist only on Linux",
    ))
}

/// Log a failed notification once per kind; the service keeps running either way.
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

fn watchdog_interval() -> Option<Duration> {
    // Pet at half the timeout, as sd_watchdog_enabled(3) advises.
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Report the agent's life to systemd until the process ends.
pub async fn report_agent(
    mut status: watch::Receiver<AgentStatus>,
    heartbeat: Heartbeat,
    shutdown: CancellationToken,
) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let pet_every = watchdog_interval();
    let mut pet = tokio::time::interval(pet_every.unwrap_or(Duration::from_secs(3600)));
    pet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(READY_DEADLINE);
    tokio::pin!(deadline);
    let mut ready = false;
    let mut stopping = false;
    let mut stale_reported = false;
    let mut current = status.borrow_and_update().to_string();
    send(&[NotifyState::Status(&current)]);
    loop {
        tokio::select! {
            changed = status.changed(), if !stopping => {
                if changed.is_err() {
                    // The supervisor is gone: nothing more to report but the watchdog's silence.
                    stopping = true;
                    continue;
                }
                let now = status.borrow_and_update().clone();
                current = now.to_string();
                if !ready && now.is_connected() {
                    ready = true;
                    send(&[NotifyState::Ready, NotifyState::Status(&current)]);
                } else {
                    send(&[NotifyState::Status(&current)]);
                }
            }
            _ = &mut deadline, if !ready => {
                ready = true;
                tracing::info!(status = %current, "not connected yet; reporting ready so start-up goes on");
                send(&[NotifyState::Ready, NotifyState::Status(&current)]);
            }
            _ = pet.tick(), if pet_every.is_some() => {
                if heartbeat.is_fresh() {
                    stale_reported = false;
                    send(&[NotifyState::Watchdog]);
                } else if !stale_reported {
                    stale_reported = true;
                    tracing::error!(age = ?heartbeat.age(), "the supervisor stopped beating; no longer petting the watchdog");
                }
            }
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing in-flight requests")]);
            }
            else => break,
        }
    }
}

/// Report the relay's life to systemd: ready now (the listener is bound), petting the watchdog
/// while the runtime runs, STOPPING=1 on shutdown.
pub async fn report_relay(listening: String, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let status = format!("listening on {listening}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    let pet_every = watchdog_interval();
    let mut pet = tokio::time::interval(pet_every.unwrap_or(Duration::from_secs(3600)));
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = pet.tick(), if pet_every.is_some() => send(&[NotifyState::Watchdog]),
            _ = shutdown.cancelled(), if !stopping => {
                stopping = true;
                send(&[NotifyState::Stopping, NotifyState::Status("stopping: finishing in-flight requests")]);
            }
            else => break,
        }
    }
}
