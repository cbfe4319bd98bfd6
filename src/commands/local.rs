//! Commands that need no relay of their own: `webhook` (adnanh/webhook's command line, served
//! locally), `demo` and `bench` (which start a relay and an agent themselves).

use tokio_util::sync::CancellationToken;

use super::{CommandError, runtime};

/// `ponte demo`.
pub fn demo(upstream: Option<String>) -> Result<(), CommandError> {
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        crate::demo::run(upstream, shutdown).await?;
        Ok(())
    })
}

/// `ponte bench`.
pub fn bench(opts: crate::bench::BenchOptions) -> Result<(), CommandError> {
    runtime()?.block_on(async move {
        crate::bench::run(opts).await?;
        Ok(())
    })
}

/// `ponte webhook`: adnanh/webhook's command line, served locally without a relay.
pub fn webhook(flags: crate::hooks::cli::WebhookFlags) -> Result<(), CommandError> {
    if flags.version {
        println!(
            "webhook version {} (ponte webhook, compatible with adnanh/webhook 2.8)",
            crate::VERSION
        );
        return Ok(());
    }
    let opts = crate::hooks::server::Options::from_flags(&flags)?;
    tracing::info!(
        "version {} starting (ponte webhook, adnanh/webhook 2.8 compatible)",
        crate::VERSION
    );
    // Loaded before the runtime starts so a mistake in a hooks file is a configuration error.
    let loaded = crate::hooks::server::Reloader::load(&opts.files, opts.template)?;
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        crate::shutdown::cancel_on_signals(shutdown.clone());
        crate::hooks::server::run(opts, loaded, shutdown).await?;
        Ok(())
    })
}
