//! Every byte-level P-256 / ElGamal operation of the `crypto` import (`halo_p256::ops`, the
//! code the host and the SDK run) on arbitrary arguments: no panic, no hang; refusals are
//! errors; whatever succeeds has the documented size and decodes.
#![no_main]

use arbitrary::Arbitrary;
use halo_p256::mul::FixedTable;
use halo_p256::ops;
use halo_p256::point::Affine;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    op: u8,
    a: &'a [u8],
    b: &'a [u8],
    c: &'a [u8],
    n: u16,
}


fn check_points(r: Result<Vec<u8>, ops::CryptoError>, n: Option<usize>) {
    if let Ok(v) = r {
        assert_eq!(v.len() % 33, 0);
        if let Some(n) = n {
            assert_eq!(v.len(), n * 33);
        }
        ops::validate_points(&v).expect("outputs are valid points");
    }
}

fn check_cts(r: Result<Vec<u8>, ops::CryptoError>, n: usize) {
    if let Ok(v) = r {
        assert_eq!(v.len(), n * 66);
        ops::decode_ciphertexts("out", &v).expect("outputs are valid ciphertexts");
    }
}

fuzz_target!(|inp: Input| {
    let (a, b, c) = (inp.a, inp.b, inp.c);
    static G: std::sync::OnceLock<FixedTable> = std::sync::OnceLock::new();
    let g = G.get_or_init(|| FixedTable::new(&Affine::generator()));
    let mut r = halo_p256::vectors::lcg(inp.n as u64);
    match inp.op % 17 {
        0 => check_points(ops::mul(a, b), Some(a.len() / 33)),
        1 => check_points(ops::mul_each(a, b), Some(a.len() / 33)),
        2 => check_points(ops::add(a, b), None),
        3 => check_points(ops::sub(a, b), None),
        4 => check_points(ops::negate(a), Some(a.len() / 33)),
        5 => check_points(ops::multiples(a, (inp.n % 64) as usize), Some((inp.n % 64) as usize)),
        6 => check_points(ops::mul_fixed(g, a), Some(a.len() / 32)),
        7 => check_points(ops::decrypt(a, b), Some(b.len() / 66)),
        8 => {
            if let Ok(z) = ops::is_zero(a, b) {
                assert_eq!(z.len(), b.len() / 66);
            }
        }
        9 => check_cts(ops::partial_decrypt(a, b), b.len() / 66),
        10 => check_cts(ops::blind(a, b, c), c.len() / 66),
        11 => check_cts(ops::scale(a, b), a.len() / 66),
        12 => check_cts(ops::ciphertext_sub(a, b), a.len() / 66),
        13 => {
            if let Ok(y) = ops::point("key", &a[..a.len().min(33)]) {
                let t = FixedTable::new(&y);
                let k = ops::ElGamalKey { generator: g, key: &t };
                check_cts(ops::rerandomize(&k, b, &mut r), b.len() / 66);
                check_cts(ops::encrypt(&k, c, &mut r), c.len() / 33);
                check_cts(ops::partial_decrypt_rerandomize(&b[..b.len().min(32)], &k, c, &mut r), c.len() / 66);
            }
        }
        14 => {
            let (pts, tries) = ops::hash_to_curve(&[a, b, c]);
            assert_eq!(tries.len(), 3);
            assert!(tries.iter().all(|&t| t >= 1));
            for p in pts.chunks(33) {
                assert_eq!(p[0], 2, "hash-to-curve points have even y");
            }
            check_points(Ok(pts), Some(3));
        }
        15 => check_cts(
            ops::scale_random_shifted(a, b, c, &mut r),
            (a.len() / 66) * (c.len() / 32),
        ),
        _ => {
            let block = (inp.n % 300) as usize;
            if let Ok(s) = ops::sort_blocks(a, block) {
                assert_eq!(s.len(), a.len());
                assert!(s.chunks(block).zip(s.chunks(block).skip(1)).all(|(x, y)| x <= y));
            }
        }
    }
});
