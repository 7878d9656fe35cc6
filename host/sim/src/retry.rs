//! Riding out a restart of the Kingdom or of a duchy: every call the simulators (and so
//! `halo mc`, `halo edp` and `halo demo`) make goes through [`retry`], which repeats a call
//! that failed with a transient status, with capped exponential backoff and jitter, until the
//! caller's deadline.
//!
//! Transient ([`is_transient`]): UNAVAILABLE (including "connection refused" while a server
//! restarts, and a Kingdom's "database busy"), DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
//! and UNKNOWN / CANCELLED raised by the client's own transport (a connection reset or closed
//! mid-call). Everything else (INVALID_ARGUMENT, PERMISSION_DENIED, NOT_FOUND,
//! FAILED_PRECONDITION, ...) is returned at once.
//!
//! Only calls that are safe to repeat go through here: reads, CreateMeasurement with one
//! request id for all attempts (the Kingdom returns the measurement it already created), and a
//! fulfilment that resends the same header and body (the duchy accepts an identical
//! re-upload, the Kingdom an identical FulfillRequisition).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

/// Delay before the first retry.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long calls without a deadline of their own keep retrying.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(120);

/// Capped exponential backoff: the `n`-th retry (0-based) waits a uniformly random time in
/// `[d/2, d]` where `d = min(initial × 2ⁿ, max)` ("equal jitter": never less than half the
/// step, so a restarting server is not hammered; never in lock-step with other clients).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: INITIAL_BACKOFF,
            max: MAX_BACKOFF,
        }
    }
}

impl Backoff {
    /// The step before jitter of retry `n` (0-based).
    pub fn step(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// The jittered delay before retry `n` (0-based).
    pub fn delay(&self, n: u32) -> Duration {
        let step = self.step(n);
        let half = step / 2;
        let nanos = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::random_range(0..=nanos))
    }
}

/// Whether a failed call is worth repeating (see the module docs).
pub fn is_transient(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
            true
        }
        // A status the client's transport made up from a connection error carries that error
        // as its source; one the server sent does not.
        Code::Unknown | Code::Cancelled => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// Calls `call` until it succeeds, fails with a status that is not transient, or `deadline`
/// passes (each attempt is also cut off at the deadline), waiting [`Backoff::default`]
/// between attempts. After the deadline the last transient status is returned, its message
/// saying how many attempts were made. `what` names the call in the log.
pub async fn retry<T, F, Fut>(what: &str, deadline: Instant, call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    retry_with(Backoff::default(), what, deadline, call).await
}

/// [`retry`] with an explicit backoff.
pub async fn retry_with<T, F, Fut>(
    backoff: Backoff,
    what: &str,
    deadline: Instant,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let start = Instant::now();
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let status = match tokio::time::timeout(remaining, call()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(status)) if !is_transient(&status) => return Err(status),
            Ok(Err(status)) => status,
            Err(_) => Status::deadline_exceeded(format!("{what}: no answer before the deadline")),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Status::new(
                status.code(),
                format!(
                    "{} (gave up after {attempts} attempts in {:.1}s)",
                    status.message(),
                    now.duration_since(start).as_secs_f64()
                ),
            ));
        }
        let delay = backoff.delay(attempts - 1).min(deadline - now);
        tracing::warn!(
            call = what,
            code = ?status.code(),
            message = status.message(),
            attempt = attempts,
            retry_in_ms = delay.as_millis() as u64,
            "transient failure; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

/// The deadline `budget` from now.
pub fn deadline_in(budget: Duration) -> Instant {
    Instant::now() + budget
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_equal_jitter() {
        let b = Backoff::default();
        assert_eq!(b.step(0), Duration::from_millis(100));
        assert_eq!(b.step(1), Duration::from_millis(200));
        assert_eq!(b.step(5), Duration::from_millis(3200));
        assert_eq!(b.step(6), MAX_BACKOFF);
        assert_eq!(b.step(1000), MAX_BACKOFF);
        for n in [0, 1, 3, 6, 40, u32::MAX] {
            let step = b.step(n);
            for _ in 0..50 {
                let d = b.delay(n);
                assert!(
                    d >= step / 2 && d <= step,
                    "{n}: {d:?} outside [{step:?}/2, {step:?}]"
                );
            }
        }
    }

    #[test]
    fn classification() {
        for code in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
        ] {
            assert!(is_transient(&Status::new(code, "x")), "{code:?}");
        }
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::NotFound,
            Code::FailedPrecondition,
            Code::AlreadyExists,
            Code::Internal,
            Code::Unimplemented,
            Code::OutOfRange,
            Code::DataLoss,
            // Sent by a server: no transport error behind it.
            Code::Unknown,
            Code::Cancelled,
        ] {
            assert!(!is_transient(&Status::new(code, "x")), "{code:?}");
        }
        // Made up by the client's transport from a connection error.
        let reset = Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        )));
        assert_eq!(reset.code(), Code::Unknown);
        assert!(is_transient(&reset));
    }

    #[tokio::test]
    async fn permanent_errors_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let r: Result<(), Status> = retry("test", deadline_in(Duration::from_secs(600)), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(Status::invalid_argument("bad")) }
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = AtomicU32::new(0);
        let fast = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
        };
        let r = retry_with(fast, "test", deadline_in(Duration::from_secs(600)), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => Err(Status::unavailable("down")),
                    1 => Err(Status::resource_exhausted("busy")),
                    2 => Err(Status::aborted("conflict")),
                    3 => Err(Status::deadline_exceeded("slow")),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(r.unwrap(), 4);
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn the_deadline_ends_retrying_with_the_last_status() {
        let calls = AtomicU32::new(0);
        let fast = Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        let r: Result<(), Status> = retry_with(
            fast,
            "test",
            deadline_in(Duration::from_millis(200)),
            || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err(Status::unavailable("down")) }
            },
        )
        .await;
        let s = r.unwrap_err();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().starts_with("down (gave up after "), "{s:?}");
        assert!(calls.load(Ordering::SeqCst) > 1);
        // A call that never answers is cut off at the deadline.
        let r: Result<(), Status> = retry("test", deadline_in(Duration::from_millis(100)), || {
            std::future::pending()
        })
        .await;
        assert_eq!(r.unwrap_err().code(), Code::DeadlineExceeded);
    }
}
