//! The P-256 half of the `crypto` import (`halo:mpc@1.2`, `@1.3`) through the real component
//! boundary, with the `ec-bench` fixture: the host import and the SDK's pure-guest
//! implementation give the same bytes (random and edge inputs, and the same errors for bad
//! input); the spec's known answers hold through the import; the randomized operations keep
//! their algebra; the limits hold (fixed bases per computation, handles per call, result size,
//! the stage deadline counting the host's CPU time) and the table cache is per computation.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use halo_engine::{EngineConfig, LoadedPlugin, Runtime};
use halo_p256::ops;
use halo_plugin_build as plugins;
use halo_protocol::{
    ComputationContext, InputOrigin, Participant, Protocol, Role, StageError, StageInput,
    SystemProtocol,
};

fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("halo-engine-aot")
}

fn runtime_with(f: impl FnOnce(&mut EngineConfig)) -> Runtime {
    let mut config = EngineConfig {
        cache_dir: Some(shared_cache()),
        max_instances: 16,
        crypto_threads: 2,
        ..EngineConfig::default()
    };
    f(&mut config);
    Runtime::new(config).unwrap()
}

fn load(rt: &Runtime) -> Arc<LoadedPlugin> {
    rt.load_file(Path::new(plugins::EC_BENCH)).unwrap()
}

fn ctx(gid: &str) -> ComputationContext {
    ComputationContext {
        global_id: gid.into(),
        duchy_id: "worker1".into(),
        role: Role::NonAggregator,
        protocol: SystemProtocol::LiquidLegionsV2,
        computation: vec![],
        participants: vec![Participant {
            duchy_id: "worker1".into(),
            role: Role::NonAggregator,
            requisition_params: vec![],
        }],
        state: vec![],
        attempt: 1,
        identity: None,
    }
}

fn input(data: &[u8]) -> StageInput {
    StageInput {
        origin: InputOrigin::Peer {
            duchy_id: "worker2".into(),
            description: 1,
        },
        data: data.to_vec(),
    }
}

/// Runs `op` once in computation `gid` with `backend` ("host" or "pure").
fn call_in(
    p: &LoadedPlugin,
    gid: &str,
    backend: &str,
    op: &str,
    args: &[&[u8]],
) -> Result<Vec<u8>, StageError> {
    let mut inputs = vec![input(format!("{backend} {op} 1").as_bytes())];
    inputs.extend(args.iter().map(|a| input(a)));
    p.execute(&ctx(gid), 1, inputs)
        .map(|o| o.state.unwrap_or_default())
}

fn call(p: &LoadedPlugin, backend: &str, op: &str, args: &[&[u8]]) -> Result<Vec<u8>, StageError> {
    call_in(p, "c-p256", backend, op, args)
}

/// Host and pure agree, results and errors alike (errors compare without the plugin prefix).
fn same(p: &LoadedPlugin, op: &str, args: &[&[u8]]) -> Result<Vec<u8>, String> {
    let strip = |e: StageError| {
        let m = e.to_string();
        m.split_once(": ").map(|(_, r)| r.to_owned()).unwrap_or(m)
    };
    let h = call(p, "host", op, args).map_err(strip);
    let g = call(p, "pure", op, args).map_err(strip);
    assert_eq!(h, g, "host and pure differ for {op}");
    h
}

fn u32be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

/// Deterministic test inputs from the native crate.
struct Inputs {
    points: Vec<u8>,
    scalars: Vec<u8>,
    cts: Vec<u8>,
    secret: Vec<u8>,
    key_point: Vec<u8>,
}

fn inputs(n: usize, seed: u64) -> Inputs {
    use halo_p256::mul::FixedTable;
    use halo_p256::point::Affine;
    let mut r = halo_p256::vectors::lcg(seed);
    let g = FixedTable::new(&Affine::generator());
    let mut scalars = ops::random_scalars(n, &mut r);
    // Edge scalars: 1, 2, n − 1, n − 2.
    let one = halo_p256::scalar::Scalar::from_u64(1);
    for (i, k) in [
        one,
        halo_p256::scalar::Scalar::from_u64(2),
        one.neg(),
        halo_p256::scalar::Scalar::from_u64(2).neg(),
    ]
    .iter()
    .enumerate()
    .take(n)
    {
        scalars[i * 32..(i + 1) * 32].copy_from_slice(&k.to_be_bytes());
    }
    let points = ops::mul_fixed(&g, &ops::random_scalars(n, &mut r)).unwrap();
    let secret = ops::random_scalars(1, &mut r);
    let key_point = ops::mul_fixed(&g, &secret).unwrap();
    let y = FixedTable::new(&Affine::decode(&key_point).unwrap());
    let key = ops::ElGamalKey {
        generator: &g,
        key: &y,
    };
    let cts = ops::encrypt(&key, &points, &mut r).unwrap();
    Inputs {
        points,
        scalars,
        cts,
        secret,
        key_point,
    }
}

#[test]
fn host_and_pure_give_the_same_bytes() {
    let rt = runtime_with(|_| {});
    let p = load(&rt);
    // 1 element, a few, and more than a host piece (so the host splits the batch).
    for n in [1usize, 7, 1100] {
        let x = inputs(n, n as u64);
        let k = &x.scalars[32..64.min(x.scalars.len())];
        let k = if k.len() == 32 { k } else { &x.scalars[..32] };
        let y = inputs(n, n as u64 + 1000);
        let half = &x.points[..];
        let other = &y.points[..];
        for (op, args) in [
            ("validate", vec![&x.points[..]]),
            ("mul", vec![&x.points[..], k]),
            ("mul-each", vec![&x.points[..], &x.scalars[..]]),
            ("fixed-mul", vec![&b""[..], &x.scalars[..]]),
            ("fixed-mul", vec![&x.key_point[..], &x.scalars[..]]),
            ("add", vec![half, other]),
            ("sub", vec![half, other]),
            ("negate", vec![&x.points[..]]),
            ("decrypt", vec![&x.secret[..], &x.cts[..]]),
            ("is-zero", vec![&x.secret[..], &x.cts[..]]),
            ("partial-decrypt", vec![&x.secret[..], &x.cts[..]]),
            ("blind", vec![&x.secret[..], k, &x.cts[..]]),
            ("scale", vec![&x.cts[..], k]),
            ("elgamal-add", vec![&x.cts[..], &x.cts[..]]),
            ("sort-blocks", vec![&x.cts[..], &u32be(66)[..]]),
        ] {
            let out = same(&p, op, &args).unwrap_or_else(|e| panic!("{op} n={n}: {e}"));
            assert!(!out.is_empty() || op == "validate", "{op}");
        }
        // The decryption of the encryption of the points is the points.
        assert_eq!(same(&p, "decrypt", &[&x.secret, &x.cts]).unwrap(), x.points);
    }
    let x = inputs(3, 99);
    assert_eq!(
        same(&p, "multiples", &[&x.points[..33], &u32be(2000)])
            .unwrap()
            .len(),
        2000 * 33
    );
    let mut unc = vec![4u8];
    let a = halo_p256::point::Affine::decode(&x.points[..33]).unwrap();
    unc.extend_from_slice(&a.encode_uncompressed()[1..]);
    assert_eq!(
        same(&p, "compress", &[&unc]).unwrap(),
        x.points[..33].to_vec()
    );
}

#[test]
fn bad_input_gives_the_same_error_from_host_and_pure() {
    let rt = runtime_with(|_| {});
    let p = load(&rt);
    let x = inputs(1500, 5);
    let k = &x.scalars[..32];
    // An invalid point far into the batch (in the host's second piece), another earlier in a
    // later argument: the lowest index wins.
    let mut bad = x.points.clone();
    bad[1200 * 33] = 7;
    let mut bad_b = x.points.clone();
    bad_b[1100 * 33] = 0x04;
    let mut bad_ct = x.cts.clone();
    bad_ct[1300 * 66 + 33] = 9;
    let n_bytes = halo_p256::scalar::Scalar::from_u64(1).neg().to_be_bytes();
    let mut n_itself = n_bytes;
    n_itself[31] += 1;
    let mut bad_scalars = x.scalars.clone();
    bad_scalars[1400 * 32..1401 * 32].copy_from_slice(&[0u8; 32]);
    for (op, args, want) in [
        (
            "validate",
            vec![&bad[..]],
            "InvalidPoint { argument: \"points\", index: 1200 }",
        ),
        ("validate", vec![&bad[..40]], "BadLength"),
        ("add", vec![&bad[..], &bad_b[..]], "index: 1100"),
        (
            "mul",
            vec![&x.points[..], &[0u8; 32][..]],
            "InvalidScalar { argument: \"scalar\", index: 0 }",
        ),
        ("mul", vec![&x.points[..], &n_itself[..]], "InvalidScalar"),
        ("mul", vec![&x.points[..], &k[..31]], "BadLength"),
        (
            "mul-each",
            vec![&x.points[..], &bad_scalars[..]],
            "InvalidScalar { argument: \"scalars\", index: 1400 }",
        ),
        (
            "mul-each",
            vec![&x.points[..], &x.scalars[..64]],
            "BadLength",
        ),
        ("fixed-mul", vec![&b""[..], &bad_scalars[..]], "index: 1400"),
        ("fixed-mul", vec![&bad[..32], k], "BadLength"),
        (
            "decrypt",
            vec![&x.secret[..], &bad_ct[..]],
            "InvalidPoint { argument: \"ciphertexts\", index: 1300 }",
        ),
        (
            "blind",
            vec![&x.secret[..], &[0u8; 32][..], &x.cts[..]],
            "InvalidScalar { argument: \"blinding-key\"",
        ),
        ("sub", vec![&x.points[..33], &x.points[..33]], "Identity(0)"),
        ("sort-blocks", vec![&x.cts[..], &u32be(0)[..]], "BadLength"),
        (
            "sort-blocks",
            vec![&x.cts[..65], &u32be(66)[..]],
            "BadLength",
        ),
        ("compress", vec![&x.points[..32]], "BadLength"),
    ] {
        let e = same(&p, op, &args).unwrap_err();
        let want = want.replace("Identity(0)", "Identity { index: 0 }");
        assert!(e.contains(&want), "{op}: {e} does not contain {want}");
    }
    // The shifted destructor: the shift first, then the lowest bad ciphertext or multiplier
    // (ciphertext 1300 sits in a later host piece than multiplier 2); an identity result
    // names its result index (ciphertext 1200, row 1 of 3, in a later piece).
    let mult: Vec<u8> = (1..=3u64)
        .flat_map(|j| halo_p256::scalar::Scalar::from_u64(j).neg().to_be_bytes())
        .collect();
    let mut bad_mult = mult.clone();
    bad_mult[64..].copy_from_slice(&[0u8; 32]);
    // A shift that is none of the ciphertexts (C − 1·C would be an identity row).
    let other = inputs(1, 99).cts;
    let shift = &other[..66];
    let many = vec![0u8; (ops::MAX_SHIFT_MULTIPLIERS + 1) * 32];
    let mut bad_shift = shift.to_vec();
    bad_shift[33] = 7;
    for (args, want) in [
        (
            vec![&x.cts[..], &bad_shift[..], &mult[..]],
            "InvalidPoint { argument: \"shift\", index: 0 }",
        ),
        (vec![&x.cts[..], &shift[..65], &mult[..]], "BadLength"),
        (
            vec![&bad_ct[..], shift, &mult[..]],
            "InvalidPoint { argument: \"ciphertexts\", index: 1300 }",
        ),
        (
            vec![&bad_ct[..], shift, &bad_mult[..]],
            "InvalidScalar { argument: \"multipliers\", index: 2 }",
        ),
        (vec![&x.cts[..], shift, &mult[..31]], "BadLength"),
        // Lengths before elements; m = 0 still checks every ciphertext (in host pieces);
        // the multiplier cap before any element.
        (vec![&bad_ct[..], shift, &mult[..40]], "BadLength"),
        (
            vec![&bad_ct[..], shift, &[][..]],
            "InvalidPoint { argument: \"ciphertexts\", index: 1300 }",
        ),
        (vec![&bad_ct[..], shift, &many[..]], "Limit"),
    ] {
        let e = same(&p, "scale-random-shifted", &args).unwrap_err();
        assert!(
            e.contains(want),
            "scale-random-shifted: {e} does not contain {want}"
        );
    }
    // Ciphertext 1200 = 2·shift, multiplier 2 = −2: row 1 of ciphertext 1200 is (O, O).
    let two = halo_p256::scalar::Scalar::from_u64(2).to_be_bytes();
    let twice_shift = call(&p, "host", "scale", &[shift, &two]).unwrap();
    let mut cts = x.cts.clone();
    cts[1200 * 66..1201 * 66].copy_from_slice(&twice_shift);
    let e = same(&p, "scale-random-shifted", &[&cts, shift, &mult]).unwrap_err();
    assert!(e.contains("Identity { index: 3601 }"), "{e}");
    // An identity result early in the batch does not hide a bad input later on (in another
    // host piece): the bad input is reported, as when the whole input is checked first.
    let mut a = x.points.clone();
    a[1300 * 33] = 7;
    let mut b = inputs(1500, 6).points;
    b[33..66].copy_from_slice(&x.points[33..66]);
    let e = same(&p, "sub", &[&a, &b]).unwrap_err();
    assert!(
        e.contains("InvalidPoint { argument: \"a\", index: 1300 }"),
        "{e}"
    );
    let e = same(&p, "sub", &[&x.points, &b]).unwrap_err();
    assert!(e.contains("Identity { index: 1 }"), "{e}");
    // Sorting: more records than one call takes.
    let e = call(
        &p,
        "host",
        "sort-blocks",
        &[&vec![0u8; (1 << 24) + 1], &u32be(1)],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("Limit"), "{e}");
    // Identity results: decrypting an encryption of zero.
    let zero = call(&p, "host", "encrypt-zero", &[&x.key_point, &u32be(3)]).unwrap();
    let e = same(&p, "decrypt", &[&x.secret, &zero]).unwrap_err();
    assert!(e.contains("Identity { index: 0 }"), "{e}");
    assert_eq!(
        same(&p, "is-zero", &[&x.secret, &zero]).unwrap(),
        vec![1, 1, 1]
    );
}

#[test]
fn known_answers_through_the_import() {
    let rt = runtime_with(|_| {});
    let p = load(&rt);
    let rows = halo_p256::vectors::HASH_TO_CURVE;
    let msgs: Vec<&[u8]> = rows.iter().map(|r| r.0.as_bytes()).collect();
    let out = same(&p, "hash-to-curve", &msgs).unwrap();
    let (points, tries) = out.split_at(rows.len() * 33);
    for (i, (input, t, want)) in rows.iter().enumerate() {
        assert_eq!(
            hex::encode(&points[i * 33..(i + 1) * 33]),
            *want,
            "H({input})"
        );
        assert_eq!(
            u32::from_be_bytes(tries[i * 4..i * 4 + 4].try_into().unwrap()),
            *t,
            "tries of H({input})"
        );
    }
    // v·P1 (spec §2.3/§2.4).
    let p1 = &points[..33];
    let table = same(&p, "multiples", &[p1, &u32be(11)]).unwrap();
    for &(v, want) in halo_p256::vectors::MULTIPLES_OF_P1 {
        assert_eq!(hex::encode(&table[(v - 1) * 33..v * 33]), want, "{v}·P1");
    }
    // The combined key of spec §2.2.
    let ys = [
        hex::decode(halo_p256::vectors::COMBINED_KEY.0[0]).unwrap(),
        hex::decode(halo_p256::vectors::COMBINED_KEY.0[1]).unwrap(),
        hex::decode(halo_p256::vectors::COMBINED_KEY.0[2]).unwrap(),
    ];
    let y12 = same(&p, "add", &[&ys[0], &ys[1]]).unwrap();
    assert_eq!(
        hex::encode(same(&p, "add", &[&y12, &ys[2]]).unwrap()),
        halo_p256::vectors::COMBINED_KEY.1
    );
    // The ElGamal / blind walk-through of spec §7 (3).
    let s = |v: u64| halo_p256::scalar::Scalar::from_u64(v).to_be_bytes();
    let y = same(&p, "fixed-mul", &[b"", &s(0x6666)]).unwrap();
    let m = same(&p, "hash-to-curve", &[b"7"]).unwrap()[..33].to_vec();
    let u = same(&p, "fixed-mul", &[b"", &s(0x42)]).unwrap();
    let ry = same(&p, "fixed-mul", &[&y, &s(0x42)]).unwrap();
    let e = same(&p, "add", &[&m, &ry]).unwrap();
    assert_eq!(hex::encode(&u), halo_p256::vectors::WALK_THROUGH_U);
    assert_eq!(hex::encode(&e), halo_p256::vectors::WALK_THROUGH_E);
    let ct = [u, e].concat();
    let b = same(&p, "blind", &[&s(0x1111), &s(0x5555), &ct]).unwrap();
    assert_eq!(hex::encode(&b), halo_p256::vectors::WALK_THROUGH_BLINDED);
    let b2 = same(&p, "partial-decrypt", &[&s(0x2222), &b]).unwrap();
    let plain = same(&p, "decrypt", &[&s(0x3333), &b2]).unwrap();
    assert_eq!(plain, same(&p, "mul", &[&m, &s(0x5555)]).unwrap());
}

#[test]
fn randomized_operations_keep_their_algebra() {
    let rt = runtime_with(|_| {});
    let p = load(&rt);
    let x = inputs(1100, 77);
    for backend in ["host", "pure"] {
        let c = |op: &str, args: &[&[u8]]| call(&p, backend, op, args).unwrap();
        let ct = c("encrypt", &[&x.key_point, &x.points]);
        assert_eq!(
            c("decrypt", &[&x.secret, &ct]),
            x.points,
            "{backend}: decrypt ∘ encrypt"
        );
        let rr = c("rerandomize", &[&x.key_point, &ct]);
        assert_ne!(rr, ct);
        assert_eq!(
            c("decrypt", &[&x.secret, &rr]),
            x.points,
            "{backend}: rerandomize"
        );
        let z = c("encrypt-zero", &[&x.key_point, &u32be(1100)]);
        assert_eq!(c("is-zero", &[&x.secret, &z]), vec![1u8; 1100]);
        let sr = c("scale-random", &[&[z.clone(), ct.clone()].concat()]);
        let flags = c("is-zero", &[&x.secret, &sr]);
        assert_eq!(
            flags,
            [vec![1u8; 1100], vec![0u8; 1100]].concat(),
            "{backend}: scale-random"
        );
        // The shifted destructor: plaintexts 1·P .. 1100·P (P = the first point), shift
        // Enc(P), multipliers −1 .. −9: element (i, j) is zero iff i == j. 1100 ciphertexts
        // × 9 spread over several host pieces.
        let p1 = &x.points[..33];
        let plains = c("multiples", &[p1, &u32be(1100)]);
        let counts = c("encrypt", &[&x.key_point, &plains]);
        let shift = c("encrypt", &[&x.key_point, p1]);
        let mult: Vec<u8> = (1..=9u64)
            .flat_map(|j| halo_p256::scalar::Scalar::from_u64(j).neg().to_be_bytes())
            .collect();
        let matrix = c("scale-random-shifted", &[&counts, &shift, &mult]);
        let zeros = c("is-zero", &[&x.secret, &matrix]);
        let want: Vec<u8> = (0..1100usize)
            .flat_map(|i| (0..9usize).map(move |j| u8::from(i == j)))
            .collect();
        assert_eq!(zeros, want, "{backend}: scale-random-shifted");
        let again = c("scale-random-shifted", &[&counts, &shift, &mult]);
        assert!(matrix.chunks(66).zip(again.chunks(66)).all(|(a, b)| a != b));
        let sum = c("elgamal-add", &[&ct, &z]);
        assert_eq!(c("decrypt", &[&x.secret, &sum]), x.points);
        let diff = c("elgamal-sub", &[&ct, &rr]);
        assert_eq!(c("is-zero", &[&x.secret, &diff]), vec![1u8; 1100]);
        let ks = c("random-scalars", &[&u32be(1100)]);
        assert_eq!(ks.len(), 1100 * 32);
        assert!(ops::decode_scalars("k", &ks).is_ok());
        // Two layers: x = x1 + x2; removing x1 with re-randomization under Y2 leaves an
        // encryption under Y2.
        let x1 = c("random-scalars", &[&u32be(1)]);
        let y1 = c("fixed-mul", &[b"", &x1]);
        let x2 = c("random-scalars", &[&u32be(1)]);
        let y2 = c("fixed-mul", &[b"", &x2]);
        let y12 = c("add", &[&y1, &y2]);
        let ct2 = c("encrypt", &[&y12, &x.points]);
        let pd = c("partial-decrypt-rerandomize", &[&x1, &y2, &ct2]);
        assert_eq!(
            c("decrypt", &[&x2, &pd]),
            x.points,
            "{backend}: partial decrypt + rerandomize"
        );
        // A layer that strips to the identity (an encryption of zero under y1 only) is still
        // re-randomized under y2 instead of refused. The u it keeps still carries its old
        // randomness, so decrypting with x2 gives −x2·u.
        let zero1 = c("encrypt-zero", &[&y1, &u32be(1100)]);
        let pz = c("partial-decrypt-rerandomize", &[&x1, &y2, &zero1]);
        let us: Vec<u8> = zero1.chunks(66).flat_map(|ct| ct[..33].to_vec()).collect();
        let want = c("negate", &[&c("mul", &[&us, &x2])]);
        assert_eq!(c("decrypt", &[&x2, &pz]), want, "{backend}: zero layer");
        // Blinding commutes with the remaining layer: decrypts to k·M.
        let k = c("random-scalars", &[&u32be(1)]);
        let bl = c("blind", &[&x1, &k, &ct2]);
        assert_eq!(
            c("decrypt", &[&x2, &bl]),
            c("mul", &[&x.points, &k]),
            "{backend}: blind"
        );
    }
}

#[test]
fn fixed_bases_are_cached_per_computation_and_capped() {
    let rt = runtime_with(|c| c.max_fixed_bases_per_computation = 3);
    let p = load(&rt);
    let x = inputs(5, 3);
    let s = &x.scalars[..32];
    // Registering in one call caches for later calls of the same computation only.
    call_in(&p, "comp-a", "host", "fixed-mul", &[&x.points[..33], s]).unwrap();
    assert_eq!(rt.cached_fixed_bases("comp-a"), 1);
    call_in(&p, "comp-a", "host", "fixed-mul", &[&x.points[..33], s]).unwrap();
    assert_eq!(
        rt.cached_fixed_bases("comp-a"),
        1,
        "the same point is not built twice"
    );
    assert_eq!(rt.cached_fixed_bases("comp-b"), 0);
    // The generator is not counted.
    call_in(&p, "comp-a", "host", "fixed-mul", &[b"", s]).unwrap();
    assert_eq!(rt.cached_fixed_bases("comp-a"), 1);
    // The cap: three distinct points, the fourth is refused (and the call goes on working).
    let out = call_in(&p, "comp-a", "host", "register-many", &[&x.points[..99]]).unwrap();
    assert_eq!(out, 3u32.to_be_bytes().to_vec());
    let e = call_in(&p, "comp-a", "host", "register-many", &[&x.points[..]]).unwrap_err();
    assert!(
        e.to_string().contains("Limit") && e.to_string().contains("maximum of 3"),
        "{e}"
    );
    assert_eq!(rt.cached_fixed_bases("comp-a"), 3);
    // An invalid point is an error, not a table.
    let e = call_in(&p, "comp-c", "host", "register-many", &[&[9u8; 33]]).unwrap_err();
    assert!(e.to_string().contains("InvalidPoint"), "{e}");
    assert_eq!(rt.cached_fixed_bases("comp-c"), 0);
    // Forgetting a computation drops its tables (the duchy calls this when it ends).
    p.computation_ended("comp-a");
    assert_eq!(rt.cached_fixed_bases("comp-a"), 0);
}

#[test]
fn least_recently_used_computations_are_dropped() {
    let rt = runtime_with(|c| c.max_cached_computations = 2);
    let p = load(&rt);
    let x = inputs(3, 4);
    for (i, gid) in ["g1", "g2", "g3"].iter().enumerate() {
        call_in(
            &p,
            gid,
            "host",
            "fixed-mul",
            &[&x.points[i * 33..(i + 1) * 33], &x.scalars[..32]],
        )
        .unwrap();
    }
    assert_eq!(
        rt.cached_fixed_bases("g1"),
        0,
        "the oldest computation was dropped"
    );
    assert_eq!(rt.cached_fixed_bases("g2"), 1);
    assert_eq!(rt.cached_fixed_bases("g3"), 1);
}

#[test]
fn results_larger_than_the_guest_memory_are_refused() {
    let rt = runtime_with(|c| c.max_memory_bytes = 16 << 20);
    let p = load(&rt);
    let x = inputs(1, 1);
    for (op, args) in [
        ("encrypt-zero", vec![&x.key_point[..], &u32be(u32::MAX)[..]]),
        ("random-scalars", vec![&u32be(u32::MAX)[..]]),
        ("multiples", vec![&x.points[..], &u32be(1 << 30)[..]]),
    ] {
        let e = call(&p, "host", op, &args).unwrap_err().to_string();
        assert!(
            e.contains("Limit") && e.contains("memory limit"),
            "{op}: {e}"
        );
    }
}

#[test]
fn handles_are_capped_while_held_not_when_dropped() {
    let rt = runtime_with(|_| {});
    let p = load(&rt);
    // 5000 handles created and dropped one after the other: fine.
    call(&p, "host", "generator-churn", &[&u32be(5000)]).unwrap();
    // 1024 held at once: fine; more: the host refuses (a trap for `generator`, which has no
    // error to return), and the runtime keeps serving.
    assert_eq!(
        call(&p, "host", "generator-hold", &[&u32be(1024)]).unwrap(),
        1024u32.to_be_bytes().to_vec()
    );
    let e = call(&p, "host", "generator-hold", &[&u32be(1025)]).unwrap_err();
    assert!(matches!(e, StageError::Permanent(_)), "{e:?}");
    assert!(e.to_string().contains("fixed-base handles"), "{e}");
    let x = inputs(2, 9);
    same(&p, "mul", &[&x.points, &x.scalars[..32]]).unwrap();
}

#[test]
fn calls_above_the_element_cap_are_refused() {
    let rt = runtime_with(|c| c.max_memory_bytes = 4 << 30);
    let p = load(&rt);
    let x = inputs(1, 2);
    let e = call(&p, "host", "multiples", &[&x.points, &u32be((1 << 24) + 1)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Limit") && e.contains("elements in one call"),
        "{e}"
    );
}

#[test]
fn host_cpu_time_counts_against_the_stage_deadline() {
    let rt = runtime_with(|c| {
        c.stage_deadline = Duration::from_millis(300);
        c.crypto_threads = 1;
    });
    let p = load(&rt);
    // ~40k variable-base multiplications take seconds on one thread; the call must end at
    // the deadline (checked between pieces) as a transient deadline error.
    let x = inputs(40_000, 8);
    let started = std::time::Instant::now();
    let e = call(&p, "host", "mul-each", &[&x.points, &x.scalars]).unwrap_err();
    assert!(matches!(e, StageError::Transient(_)), "{e:?}");
    assert!(e.to_string().contains("deadline"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The runtime still serves.
    let small = inputs(2, 9);
    same(&p, "mul", &[&small.points, &small.scalars[..32]]).unwrap();
}

/// A component built against `halo:mpc@1.2.0` (ec-bench 0.1.0, from before 1.3 added
/// `elgamal-scale-random-shifted`) loads on this 1.3 host through the Linker's semver
/// fallback, gets the same bytes from its 1.2 imports as from the pure implementation, and
/// computes the shifted destructor from 1.2's functions with the same algebra.
#[test]
fn a_wit_1_2_component_runs_on_the_1_3_host() {
    let rt = runtime_with(|_| {});
    let p = rt.load_file(Path::new(plugins::EC_BENCH_V1_2)).unwrap();
    assert_eq!(p.info().wit_package, "halo:mpc@1.2.0");
    assert!(
        p.info()
            .imports
            .iter()
            .any(|i| i == "halo:mpc/crypto@1.2.0"),
        "{:?}",
        p.info().imports
    );
    let x = inputs(40, 12);
    assert_eq!(
        same(&p, "mul-each", &[&x.points, &x.scalars]).unwrap(),
        same(&load(&rt), "mul-each", &[&x.points, &x.scalars]).unwrap()
    );
    let p1 = &x.points[..33];
    let plains = call(&p, "host", "multiples", &[p1, &u32be(40)]).unwrap();
    let counts = call(&p, "host", "encrypt", &[&x.key_point, &plains]).unwrap();
    let shift = call(&p, "host", "encrypt", &[&x.key_point, p1]).unwrap();
    let mult: Vec<u8> = (1..=4u64)
        .flat_map(|j| halo_p256::scalar::Scalar::from_u64(j).neg().to_be_bytes())
        .collect();
    for backend in ["host", "pure"] {
        let matrix = call(
            &p,
            backend,
            "scale-random-shifted",
            &[&counts, &shift, &mult],
        )
        .unwrap();
        let zeros = call(&p, "host", "is-zero", &[&x.secret, &matrix]).unwrap();
        let want: Vec<u8> = (0..40usize)
            .flat_map(|i| (0..4usize).map(move |j| u8::from(i == j)))
            .collect();
        assert_eq!(zeros, want, "{backend}");
    }
    let mut bad = counts.clone();
    bad[7 * 66 + 40] ^= 0x55;
    bad[7 * 66 + 33] = 6;
    let e = call(&p, "host", "scale-random-shifted", &[&bad, &shift, &mult])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("InvalidPoint { argument: \"ciphertexts\", index: 7 }"),
        "{e}"
    );
}
