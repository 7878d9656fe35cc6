//! The host's `identity` import (`halo:mpc@1.1.0`): signatures with this duchy's key, and
//! checks of other principals' signatures. The host holds every private key and resolves and
//! checks every certificate (halo-system §8.2, §8.3).

pub use crate::bindings::halo::mpc::identity::{IdentityError, Signature};

/// Signs `message` with this duchy's key (ECDSA P-256 with SHA-256, ASN.1 DER signature).
pub fn sign(message: &[u8]) -> Result<Signature, IdentityError> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::halo::mpc::identity::sign(message)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        native::with(|h| h.sign(message))
    }
}

/// Checks that `signature` (algorithm `algorithm_oid`) over `message` was made with the key of
/// the certificate named `certificate` (e.g. `dataProviders/edp1/certificates/0123abcd…`),
/// which the host resolves and checks was issued by the trusted root of its owner.
pub fn verify(
    certificate: &str,
    message: &[u8],
    signature: &[u8],
    algorithm_oid: &str,
) -> Result<(), IdentityError> {
    #[cfg(target_arch = "wasm32")]
    {
        crate::bindings::halo::mpc::identity::verify(certificate, message, signature, algorithm_oid)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        native::with(|h| h.verify(certificate, message, signature, algorithm_oid))
    }
}

/// Off wasm (unit tests), identity calls go to a handler the test installs on its thread.
#[cfg(not(target_arch = "wasm32"))]
pub mod native {
    use std::cell::RefCell;

    use super::{IdentityError, Signature};

    /// What a native test provides in place of the host.
    pub trait Handler {
        /// See [`super::sign`].
        fn sign(&self, message: &[u8]) -> Result<Signature, IdentityError>;
        /// See [`super::verify`].
        fn verify(
            &self,
            certificate: &str,
            message: &[u8],
            signature: &[u8],
            algorithm_oid: &str,
        ) -> Result<(), IdentityError>;
    }

    thread_local! {
        static HANDLER: RefCell<Option<Box<dyn Handler>>> = const { RefCell::new(None) };
    }

    /// Installs `handler` for identity calls made on this thread.
    pub fn install(handler: impl Handler + 'static) {
        HANDLER.with(|h| *h.borrow_mut() = Some(Box::new(handler)));
    }

    pub(super) fn with<T>(
        f: impl FnOnce(&dyn Handler) -> Result<T, IdentityError>,
    ) -> Result<T, IdentityError> {
        HANDLER.with(|h| match h.borrow().as_deref() {
            Some(handler) => f(handler),
            None => Err(IdentityError::Invalid(
                "no identity handler is installed (native test)".into(),
            )),
        })
    }
}
