//! The decoders of the `crypto` import's P-256 functions (`halo_p256`) on arbitrary bytes from
//! a plugin or a peer: points (33-byte compressed, 65-byte uncompressed) and scalars.
//! Invariants: a compressed or uncompressed point decodes exactly when RustCrypto `p256`
//! accepts it (an independent implementation), any other form never does, re-encodes to the
//! same bytes, and a scalar parses exactly when it is
//! below n (and is refused as an argument when zero).
#![no_main]

use halo_p256::ops;
use halo_p256::point::Affine;
use libfuzzer_sys::fuzz_target;
use p256::elliptic_curve::PrimeField;
use p256::elliptic_curve::sec1::FromEncodedPoint;

fuzz_target!(|data: &[u8]| {
    for len in [33usize, 65] {
        if data.len() < len {
            continue;
        }
        let b = &data[..len];
        let ours = Affine::decode(b);
        let theirs = p256::EncodedPoint::from_bytes(b)
            .ok()
            .and_then(|e| Option::<p256::AffinePoint>::from(p256::AffinePoint::from_encoded_point(&e)));
        // Only SEC1 compressed (02/03, 33 bytes) and uncompressed (04, 65 bytes) points are
        // points here, as in the reference; RustCrypto also takes other forms (e.g. the
        // 33-byte "compact" tag 05), which must be refused.
        let standard = matches!((len, b[0]), (33, 2 | 3) | (65, 4));
        if standard {
            assert_eq!(ours.is_some(), theirs.is_some(), "decode disagrees on {b:02x?}");
        } else {
            assert!(ours.is_none(), "non-SEC1 form accepted: {b:02x?}");
        }
        if let Some(p) = ours {
            if len == 33 {
                assert_eq!(&p.encode()[..], b);
            } else {
                assert_eq!(&p.encode_uncompressed()[..], b);
                assert_eq!(ops::compress(b).ok(), Some(p.encode().to_vec()));
            }
        }
    }
    if data.len() >= 32 {
        let b: [u8; 32] = data[..32].try_into().unwrap_or([0; 32]);
        let ours = halo_p256::scalar::Scalar::from_be_bytes(&b);
        let theirs = Option::<p256::Scalar>::from(p256::Scalar::from_repr(b.into()));
        assert_eq!(ours.is_some(), theirs.is_some());
        let as_arg = ops::scalar("k", &b);
        assert_eq!(as_arg.is_ok(), ours.is_some_and(|k| !k.is_zero()));
    }
    // Concatenations: validation agrees with decoding each element.
    let n = data.len() / 33;
    let all = ops::validate_points(&data[..n * 33]);
    let each = (0..n).position(|i| Affine::decode(&data[i * 33..(i + 1) * 33]).is_none());
    match each {
        None => assert!(all.is_ok()),
        Some(i) => assert_eq!(
            all,
            Err(ops::CryptoError::InvalidPoint { argument: "points".into(), index: i as u32 })
        ),
    }
});
