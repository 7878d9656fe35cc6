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
    }
    let t = Instant::now();
    let _ = FixedTable::new(&Affine::generator());
    println!("table build {:?}", t.elapsed());
}
