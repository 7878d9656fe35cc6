//! Client certificates as `halo_identity::TrustStore::identify` reads them from a TLS
//! handshake (any DER a peer presents), over a development PKI generated at start-up.
//!
//! Input: a mode byte, then raw DER, or XOR patches `(offset: u16 le, mask: u8)` applied to a
//! genuine duchy leaf (so mutations reach the signature, validity and extension checks), or a
//! raw certificate presented before the genuine leaf. Invariants: every failure is
//! UNAUTHENTICATED; only the genuine leaf's principal is ever identified, and a patched leaf
//! is accepted only if its signed part (TBS) is unchanged; a chain of two is always refused.
#![no_main]

use std::sync::OnceLock;

use halo_identity::{DevPki, Principal, TrustStore};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

struct World {
    trust: TrustStore,
    duchy: Principal,
    leaf: Vec<u8>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let duchy = Principal::Duchy("worker1".into());
        let principals = [
            Principal::Kingdom,
            duchy.clone(),
            Principal::Duchy("worker2".into()),
            Principal::DataProvider("edp1".into()),
        ];
        let pki = match DevPki::generate(&principals) {
            Ok(p) => p,
            Err(e) => panic!("dev PKI: {e}"),
        };
        let trust = match pki.trust_store() {
            Ok(t) => t,
            Err(e) => panic!("trust store: {e}"),
        };
        let leaf = match pki.identity(&duchy).map(|i| i.certificate_der()) {
            Some(Ok(der)) => der,
            other => panic!("leaf of {duchy}: {other:?}"),
        };
        World { trust, duchy, leaf }
    })
}

/// The bytes of the signed part (TBS, the first element inside the outer SEQUENCE) of a
/// certificate, read with a minimal walker independent of the code under test. The parser
/// under test is lenient about the outer envelope (seen: a primitive-form outer tag, 0x10, is
/// accepted), which is harmless as long as the signed bytes are the genuine ones; so the walker
/// ignores the outer tag and length and returns the whole TBS element, tag included.
fn tbs(der: &[u8]) -> Option<&[u8]> {
    /// (header length, content length) of the element at the start of `b`; `None` for an
    /// indefinite or absurd length.
    fn header(b: &[u8]) -> Option<(usize, Option<usize>)> {
        let l = *b.get(1)?;
        if l < 0x80 {
            return Some((2, Some(usize::from(l))));
        }
        let n = usize::from(l & 0x7f);
        if n == 0 {
            return Some((2, None));
        }
        if n > 4 || b.len() < 2 + n {
            return None;
        }
        let len = b[2..2 + n]
            .iter()
            .fold(0usize, |a, &b| a << 8 | usize::from(b));
        Some((2 + n, Some(len)))
    }
    let (h, _) = header(der)?;
    let inner = der.get(h..)?;
    let (th, tl) = header(inner)?;
    inner.get(..th + tl?)
}

fn check(w: &World, chain: &[CertificateDer<'static>]) -> Result<Principal, tonic::Status> {
    let r = w.trust.identify(Some(chain));
    if let Err(s) = &r {
        assert_eq!(s.code(), tonic::Code::Unauthenticated, "{s:?}");
    }
    r
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let (mode, rest) = data.split_first().unwrap_or((&0, &[]));
    match mode % 3 {
        0 => {
            if let Ok(p) = check(w, &[CertificateDer::from(rest.to_vec())]) {
                assert_eq!(p, w.duchy);
                assert_eq!(tbs(rest), tbs(&w.leaf), "a leaf nobody signed was accepted");
            }
        }
        1 => {
            let mut der = w.leaf.clone();
            for p in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([p[0], p[1]])) % der.len();
                der[at] ^= p[2];
            }
            if let Ok(p) = check(w, &[CertificateDer::from(der.clone())]) {
                assert_eq!(p, w.duchy);
                assert_eq!(tbs(&der), tbs(&w.leaf), "a tampered leaf was accepted");
            }
        }
        _ => {
            let chain = [
                CertificateDer::from(rest.to_vec()),
                CertificateDer::from(w.leaf.clone()),
            ];
            assert!(check(w, &chain).is_err(), "a chain of two was accepted");
        }
    }
    // The genuine leaf is still accepted (nothing above changed the trust store).
    if data.first() == Some(&0xff) {
        assert_eq!(
            check(w, &[CertificateDer::from(w.leaf.clone())])
                .ok()
                .as_ref(),
            Some(&w.duchy)
        );
    }
});
