//! Resource limits shared by the Kingdom's and the duchies' gRPC servers (issue 8, "bounded
//! resources"):
//!
//! * [`ServerLimits`]: connection-level limits (message size, HTTP/2 streams per connection,
//!   idle-connection timeout) and how they are applied to a tonic server. The TLS handshake
//!   timeout belongs to the accept loop (`halo_identity::TlsServerLimits`).
//! * [`idle`]: closes connections that have had no call in flight for the idle timeout.
//! * [`PerKeyLimiter`]: at most N concurrent calls of one kind per principal; the next one is
//!   answered `RESOURCE_EXHAUSTED`.

pub mod idle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;

/// Default largest gRPC message (decoded or encoded), 8 MiB: AdvanceComputation and
/// fulfilment bodies travel in chunks of at most 4 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 8 << 20;
/// Default largest message at the Kingdom, 1 MiB: every Kingdom call carries names,
/// parameters, certificates and small encrypted results, never bulk data, so a caller cannot
/// make it buffer more than this per call.
pub const KINGDOM_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` of a server connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 64;
/// Default idle-connection timeout (no call in flight).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// HTTP/2 keepalive: a ping after this much silence...
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// ...that must be answered within this long, or the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Connection-level limits of one gRPC server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest gRPC message a service decodes or encodes; larger is `RESOURCE_EXHAUSTED`.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls) one connection may have open at once; a client that wants
    /// more waits for one to finish.
    pub max_concurrent_streams: u32,
    /// A connection with no call in flight for this long is closed (clients reconnect).
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl ServerLimits {
    /// Applies the HTTP/2 limits (concurrent streams, keepalive) to a server builder.
    pub fn apply<L>(&self, server: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        server
            .max_concurrent_streams(self.max_concurrent_streams.max(1))
            .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
            .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
            .http2_max_pending_accept_reset_streams(Some(
                2 * self.max_concurrent_streams.max(1) as usize,
            ))
    }
}

/// tonic answers a message above the decoding limit with OUT_OF_RANGE ("decoded message
/// length too large"); the limit is a resource limit, so callers see RESOURCE_EXHAUSTED.
/// A message that is not valid protobuf comes back from tonic as INTERNAL; it is the caller's
/// fault, so callers see INVALID_ARGUMENT. Any other status is returned unchanged.
pub fn oversized_message_status(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange
        && status.message().contains("message length too large")
    {
        Status::resource_exhausted(status.message().to_string())
    } else if status.code() == tonic::Code::Internal
        && status
            .message()
            .starts_with("failed to decode Protobuf message")
    {
        Status::invalid_argument(status.message().to_string())
    } else {
        status
    }
}

/// Counts concurrent calls of one kind per key (a principal) and refuses more than `max`.
#[derive(Clone, Debug)]
pub struct PerKeyLimiter {
    what: &'static str,
    max: usize,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

/// One admitted call; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    key: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl PerKeyLimiter {
    /// At most `max` concurrent `what` (e.g. "AdvanceComputation streams") per key; `max` 0
    /// is treated as 1.
    pub fn new(what: &'static str, max: usize) -> Self {
        PerKeyLimiter {
            what,
            max: max.max(1),
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Admits one more call for `key`, or `RESOURCE_EXHAUSTED` if it already has `max`.
    pub fn try_acquire(&self, key: &str) -> Result<Permit, Status> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(key.to_string()).or_insert(0);
        if *n >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{key} already has {} concurrent {} (the limit)",
                self.max, self.what
            )));
        }
        *n += 1;
        Ok(Permit {
            key: key.to_string(),
            counts: self.counts.clone(),
        })
    }

    /// Calls currently admitted for `key`.
    pub fn in_use(&self, key: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(key).copied().unwrap_or(0)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_key_limiter_refuses_beyond_max_and_frees_on_drop() {
        let l = PerKeyLimiter::new("test streams", 2);
        let a = l.try_acquire("duchies/a").unwrap();
        let _b = l.try_acquire("duchies/a").unwrap();
        let err = l.try_acquire("duchies/a").unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("test streams"), "{}", err.message());
        // Another key has its own budget.
        let _c = l.try_acquire("duchies/b").unwrap();
        drop(a);
        assert_eq!(l.in_use("duchies/a"), 1);
        let _d = l.try_acquire("duchies/a").unwrap();
        assert_eq!(l.in_use("duchies/a"), 2);
    }

    #[test]
    fn oversized_message_becomes_resource_exhausted() {
        let s = oversized_message_status(Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        ));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let other = oversized_message_status(Status::out_of_range("page beyond the end"));
        assert_eq!(other.code(), tonic::Code::OutOfRange);
        // What tonic-prost answers for bytes that are not the message (prost's DecodeError).
        let garbage = oversized_message_status(Status::internal(
            "failed to decode Protobuf message: invalid wire type value: 7",
        ));
        assert_eq!(garbage.code(), tonic::Code::InvalidArgument);
        let internal = oversized_message_status(Status::internal("database is locked"));
        assert_eq!(internal.code(), tonic::Code::Internal);
    }

    #[test]
    fn zero_max_means_one() {
        let l = PerKeyLimiter::new("x", 0);
        let _a = l.try_acquire("k").unwrap();
        assert!(l.try_acquire("k").is_err());
    }
}
