//! Errors at the crate boundary (the registry matches on them).

use std::path::PathBuf;

/// Why a component could not be loaded. A failed load never affects plugins already loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The component file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a component, or it does not compile, validate or link.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component targets a WIT world this host does not serve.
    #[error(
        "unsupported WIT: the component uses {} but this host supports {supported}",
        found.join(", ")
    )]
    UnsupportedWit {
        /// What the component imports or exports that the host does not serve, e.g.
        /// `halo:mpc@2.0.0`.
        found: Vec<String>,
        /// The supported range, [`crate::SUPPORTED_WIT`].
        supported: String,
    },
    /// `describe()` trapped or returned something unusable.
    #[error("describe() failed: {0}")]
    Describe(String),
    /// The stage table `describe()` returned is inconsistent.
    #[error("invalid stage table: {0}")]
    InvalidStageTable(String),
}
