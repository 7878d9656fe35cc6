#![allow(clippy::unwrap_used)]
//! Rough single-thread timings of the kernels (the real benchmark is host/engine's
//! `crypto` bench, through the component boundary).
use halo_p256::mul::FixedTable;
use halo_p256::ops;
use halo_p256::point::Affine;
use std::time::Instant;

fn main() {
    let mut rng = halo_p256::vectors::lcg(1);
    let g = FixedTable::new(&Affine::generator());
    for n in [1usize, 1000] {
        let ks = ops::random_scalars(n, &mut rng);
        let pts = ops::mul_fixed(&g, &ks).unwrap();
        let k = ops::random_scalars(1, &mut rng);
        let reps = (2000 / n).max(3);
        let time = |name: &str, f: &mut dyn FnMut()| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            let per = t.elapsed().as_secs_f64() / (reps * n) as f64;
            println!(
                "n={n:5} {name:24} {:8.2} µs  {:9.0}/s",
                per * 1e6,
                1.0 / per
            );
        };
        time("fixed G", &mut || {
            ops::mul_fixed(&g, &ks).unwrap();
        });
        time("var one scalar", &mut || {
            ops::mul(&pts, &k).unwrap();
        });
        time("var each", &mut || {
            ops::mul_each(&pts, &ks).unwrap();
        });
        time("decode", &mut || {
            ops::validate_points(&pts).unwrap();
        });
        let y = FixedTable::new(&Affine::decode(&pts[..33]).unwrap());
        let key = ops::ElGamalKey {
            generator: &g,
            key: &y,
        };
        let ct = ops::encrypt(&key, &pts, &mut rng).unwrap();
        time("encrypt", &mut || {
            ops::encrypt(&key, &pts, &mut rng).unwrap();
        });
        time("rerandomize", &mut || {
            ops::rerandomize(&key, &ct, &mut rng).unwrap();
        });
        time("blind", &mut || {
            ops::blind(&k, &k, &ct).unwrap();
        });
        time("partial decrypt", &mut || {
            ops::partial_decrypt(&k, &ct).unwrap();
        });
        // The same-key aggregator matrix, MF 10: n/9 ciphertexts × 9 results (time per
        // result), the old way (add the bases, then scale by random) and in one call.
        let shift = ct[..66].to_vec();
        let mult: Vec<u8> = (1..=9u64)
            .flat_map(|j| halo_p256::scalar::Scalar::from_u64(j).neg().to_be_bytes())
            .collect();
        if n == 1 {
            continue;
        }
        let m = n.div_ceil(9).min(n - 1);
        let few = &ct[66..(m + 1) * 66];
        time("matrix: add+scale-random", &mut || {
            let bases: Vec<u8> = (1..=9u64)
                .flat_map(|j| {
                    ops::scale(&shift, &mult[(j as usize - 1) * 32..j as usize * 32]).unwrap()
                })
                .collect();
            let lhs: Vec<u8> = few
                .chunks(66)
                .flat_map(|c| std::iter::repeat_n(c, 9).flatten().copied())
                .collect();
            let rhs = bases.repeat(m);
            ops::scale_random(&ops::ciphertext_add(&lhs, &rhs).unwrap(), &mut rng).unwrap();
        });
        time("matrix: shifted", &mut || {
            ops::scale_random_shifted(few, &shift, &mult, &mut rng).unwrap();
        });
    }
    let t = Instant::now();
    let _ = FixedTable::new(&Affine::generator());
    println!("table build {:?}", t.elapsed());
}
