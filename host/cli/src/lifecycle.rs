//! Process lifecycle of `halo kingdom` and `halo duchy`: the stop signals.
//!
//! The handlers are installed before anything else (loading the configuration, compiling
//! plugins), so a stop signal during start-up is an orderly exit too: start-up is abandoned
//! (nothing was claimed yet, nothing needs releasing) and the process exits 0. The first
//! signal after start-up begins the graceful shutdown; a second one ends the process at once
//! with [`Interrupted`] (exit status 128 + the signal number, as a shell reports it).

use std::future::Future;

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};

/// The signals that stop a server gracefully.
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

/// A stop signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopSignal {
    Term,
    Int,
}

impl StopSignal {
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        }
    }

    /// The exit status of a process that ends because of this signal: 128 + its number.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Term => 128 + 15,
            StopSignal::Int => 128 + 2,
        }
    }
}

impl std::fmt::Display for StopSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A second stop signal ended the graceful shutdown early: the process exits with
/// [`StopSignal::exit_code`] without waiting for running stages (their leases are freed by
/// the next start, which finds the data directory's previous process dead).
#[derive(Debug)]
pub struct Interrupted(pub StopSignal);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "second {} during the graceful shutdown", self.0)
    }
}

impl std::error::Error for Interrupted {}

impl ShutdownSignals {
    /// Installs the SIGTERM and SIGINT handlers now (from then on neither kills the process:
    /// install before starting anything that must be shut down cleanly).
    pub fn install() -> Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> StopSignal {
        tokio::select! {
            _ = self.term.recv() => StopSignal::Term,
            _ = self.int.recv() => StopSignal::Int,
        }
    }

    /// Runs `start` (start-up) unless a stop signal comes first: then `start` is dropped
    /// where it stands and `Err(signal)` returned.
    pub async fn unless_signalled<T>(
        &mut self,
        start: impl Future<Output = T>,
    ) -> std::result::Result<T, StopSignal> {
        tokio::select! {
            // A signal that is already there wins over a start-up that would finish now.
            biased;
            s = self.recv() => Err(s),
            r = start => Ok(r),
        }
    }

    /// Waits for the first stop signal, then runs `shutdown` (the graceful shutdown); a
    /// second signal while it runs abandons it and returns [`Interrupted`].
    pub async fn serve_until_stopped(
        &mut self,
        shutdown: impl Future<Output = Result<()>>,
    ) -> Result<()> {
        let first = self.recv().await;
        tracing::info!(
            "{first} received: shutting down (a second SIGTERM or SIGINT stops at once)"
        );
        self.graceful(shutdown).await
    }

    /// Runs `shutdown` unless a stop signal arrives first (see [`Interrupted`]).
    pub async fn graceful(&mut self, shutdown: impl Future<Output = Result<()>>) -> Result<()> {
        tokio::select! {
            r = shutdown => r,
            s = self.recv() => {
                tracing::error!(
                    "second stop signal ({s}) received: exiting at once without waiting for \
                     running work (leases are freed by the next start)"
                );
                Err(anyhow::Error::new(Interrupted(s)))
            }
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
