//! One shutdown token, many sources: SIGTERM, SIGINT / Ctrl-C, and (on Windows) the service
//! manager's Stop all cancel the same [`CancellationToken`]. A second signal exits at once, so an
//! operator is never stuck behind a long grace period.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Default time in-flight requests get to finish after a stop request.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// Cancel `token` on the first stop signal; exit the process on the second.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        if wait_for_signal().await.is_err() {
            return;
        }
        tracing::info!("stop requested; finishing in-flight requests (send the signal again to exit now)");
        token.cancel();
        if wait_for_signal().await.is_ok() {
            tracing::warn!("second stop signal; exiting without waiting");
            std::process::exit(130);
        }
    });
}

#[cfg(unix)]
async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> std::io::Result<()> {
    tokio::signal::ctrl_c().await
}
