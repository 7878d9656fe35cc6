//! Process lifecycle of `halo kingdom` and `halo duchy`: the stop signals.

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// The signals that stop a server gracefully.
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Installs the SIGTERM and SIGINT handlers now (from then on neither kills the process:
    /// install before starting anything that must be shut down cleanly).
    pub fn install() -> Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Resolves at the first SIGTERM or SIGINT; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Resolves on SIGTERM (what an orchestrator sends) or SIGINT (Ctrl-C). If the handlers
/// cannot be installed, never resolves (the default dispositions still end the process).
pub async fn shutdown_signal() {
    match ShutdownSignals::install() {
        Ok(mut s) => {
            let name = s.recv().await;
            tracing::info!("{name} received: shutting down");
        }
        Err(e) => {
            tracing::error!("{e:#}");
            std::future::pending::<()>().await
        }
    }
}
