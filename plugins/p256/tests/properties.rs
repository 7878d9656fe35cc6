//! Property tests of the byte-level operations (spec §2.5 algebra) on random keys, messages
//! and batch sizes: decrypt ∘ encrypt = id, re-randomization keeps the plaintext, blinding
//! commutes with the remaining layers, batched results equal one-at-a-time results, encodings
//! round-trip.

#![allow(clippy::unwrap_used)]

use halo_p256::mul::{FixedTable, mul_var};
use halo_p256::ops::{self, ElGamalKey};
use halo_p256::point::Affine;
use halo_p256::scalar::Scalar;
use proptest::prelude::*;

fn generator() -> &'static FixedTable {
    static G: std::sync::OnceLock<FixedTable> = std::sync::OnceLock::new();
    G.get_or_init(|| FixedTable::new(&Affine::generator()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn encryption_layers_and_blinding(seed in any::<u64>(), n in 1usize..40) {
        let mut r = halo_p256::vectors::lcg(seed);
        let g = generator();
        let x1 = ops::random_scalars(1, &mut r);
        let x2 = ops::random_scalars(1, &mut r);
        let y1 = ops::mul_fixed(g, &x1).unwrap();
        let y2 = ops::mul_fixed(g, &x2).unwrap();
        let y = ops::add(&y1, &y2).unwrap();
        let yt = FixedTable::new(&Affine::decode(&y).unwrap());
        let y2t = FixedTable::new(&Affine::decode(&y2).unwrap());
        let full = ElGamalKey { generator: g, key: &yt };
        let rest = ElGamalKey { generator: g, key: &y2t };
        let msgs: Vec<Vec<u8>> = (0..n).map(|i| format!("{seed}-{i}").into_bytes()).collect();
        let (m, _) = ops::hash_to_curve(&msgs);
        let ct = ops::encrypt(&full, &m, &mut r).unwrap();
        let x = Scalar::from_be_bytes(&x1[..].try_into().unwrap()).unwrap()
            .add(&Scalar::from_be_bytes(&x2[..].try_into().unwrap()).unwrap());
        // decrypt ∘ encrypt = id (with the summed key), and layer by layer.
        prop_assert_eq!(ops::decrypt(&x.to_be_bytes(), &ct).unwrap(), m.clone());
        let pd = ops::partial_decrypt(&x1, &ct).unwrap();
        prop_assert_eq!(ops::decrypt(&x2, &pd).unwrap(), m.clone());
        // Re-randomization keeps the plaintext and changes every ciphertext.
        let rr = ops::rerandomize(&full, &ct, &mut r).unwrap();
        prop_assert_eq!(ops::decrypt(&x.to_be_bytes(), &rr).unwrap(), m.clone());
        prop_assert!(rr.chunks(66).zip(ct.chunks(66)).all(|(a, b)| a != b));
        let pdr = ops::partial_decrypt_rerandomize(&x1, &rest, &ct, &mut r).unwrap();
        prop_assert_eq!(ops::decrypt(&x2, &pdr).unwrap(), m.clone());
        // Blind by duchy 1 with k: the remaining layer decrypts to k·M; the order of blinding
        // and re-randomizing does not matter.
        let k = ops::random_scalars(1, &mut r);
        let km = ops::mul(&m, &k).unwrap();
        prop_assert_eq!(ops::decrypt(&x2, &ops::blind(&x1, &k, &ct).unwrap()).unwrap(), km.clone());
        prop_assert_eq!(ops::decrypt(&x2, &ops::blind(&x1, &k, &rr).unwrap()).unwrap(), km);
        // Scaling by k then by k⁻¹-free check: scale commutes with decryption.
        let sc = ops::scale(&ct, &k).unwrap();
        prop_assert_eq!(ops::decrypt(&x.to_be_bytes(), &sc).unwrap(), ops::mul(&m, &k).unwrap());
    }

    #[test]
    fn batches_equal_single_multiplications(seed in any::<u64>(), n in 0usize..70) {
        let mut r = halo_p256::vectors::lcg(seed);
        let g = generator();
        let ks = ops::random_scalars(n, &mut r);
        let pts = ops::mul_fixed(g, &ops::random_scalars(n, &mut r)).unwrap();
        let each = ops::mul_each(&pts, &ks).unwrap();
        let fixed = ops::mul_fixed(g, &ks).unwrap();
        for i in 0..n {
            let p = Affine::decode(&pts[i * 33..(i + 1) * 33]).unwrap();
            let k = Scalar::from_be_bytes(&ks[i * 32..(i + 1) * 32].try_into().unwrap()).unwrap();
            prop_assert_eq!(&each[i * 33..(i + 1) * 33], &mul_var(&p, &k).to_affine().unwrap().encode()[..]);
            prop_assert_eq!(&fixed[i * 33..(i + 1) * 33], &mul_var(&Affine::generator(), &k).to_affine().unwrap().encode()[..]);
        }
        // Splitting a batch anywhere gives the same bytes (what the host does per piece).
        if n > 1 {
            let cut = (seed as usize % (n - 1)) + 1;
            let a = ops::mul_each(&pts[..cut * 33], &ks[..cut * 32]).unwrap();
            let b = ops::mul_each(&pts[cut * 33..], &ks[cut * 32..]).unwrap();
            prop_assert_eq!([a, b].concat(), each);
        }
    }

    #[test]
    fn encodings_round_trip(seed in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 33)) {
        let mut r = halo_p256::vectors::lcg(seed);
        let k = ops::random_scalars(1, &mut r);
        let p = ops::mul_fixed(generator(), &k).unwrap();
        let a = Affine::decode(&p).unwrap();
        prop_assert_eq!(&a.encode()[..], &p[..]);
        prop_assert_eq!(Affine::decode(&a.encode_uncompressed()), Some(a));
        let s = Scalar::from_be_bytes(&k[..].try_into().unwrap()).unwrap();
        prop_assert_eq!(&s.to_be_bytes()[..], &k[..]);
        prop_assert_eq!(Scalar::from_be_slice(&k[5..]).map(|v| v.to_be_bytes()[..5] == [0; 5]), Some(true));
        if let Some(q) = Affine::decode(&bytes) {
            prop_assert_eq!(&q.encode()[..], &bytes[..]);
        }
    }
}
