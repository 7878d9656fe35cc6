//! Resource names used by the system API: the one grammar of [`halo_protocol::names`], shared
//! with the Kingdom (so a duchy id the Kingdom accepts, e.g. `eu.1`, is one this duchy's
//! herald recognises).

pub use halo_protocol::names::*;

/// An id this duchy accepts from a peer, a data provider or the Kingdom (and may use as a
/// file name): [`valid_id_segment`].
pub fn valid_id(s: &str) -> bool {
    valid_id_segment(s)
}
