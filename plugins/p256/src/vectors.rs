//! Known-answer values of spec mpc-crypto.md §2 (recomputed independently there), shared by
//! the tests of this crate, of the host's import and of the benchmarks; and a deterministic
//! byte source for reproducible test inputs (not for secrets).

/// Spec §2.3: `(input, tries, H(input) compressed)`.
pub const HASH_TO_CURVE: &[(&str, u32, &str)] = &[
    (
        "unit_ec_point",
        1,
        "0295eff36ee6834b476823392ce1f31aeda2c10edf2fdb5a4b2a708a600f18876f",
    ),
    (
        "destroyed_register_key",
        2,
        "02d81de426f38abb05329fce20be825d7cf5205dd08f079a803a65fc2310fc6fd8",
    ),
    (
        "blinded_histogram_noise_register_key",
        2,
        "024172667e46664192c54799e79864b0d20032c5c018d615f8e08ce30d82e5177b",
    ),
    (
        "publisher_noise_register_id",
        1,
        "02997f76808179780ce6b213aec014715248cbd6b33f5547159cbf000ae4234fea",
    ),
    (
        "padding_noise_register_id",
        2,
        "02ee69c57a30345a6483abb2da124b7d195f396bc578bf1812210e4ef57f35e635",
    ),
    (
        "flag_zero_base",
        1,
        "0202c950f1dde9eeff4f0b528428ff5800e952d916d36e94c0656a566a1f3f166d",
    ),
    (
        "0",
        2,
        "028a2a67c0fe908916515ff0c6216925dfc1ecb52f057494b17518763c65bec25c",
    ),
    (
        "1",
        3,
        "02cdbe79a27ed481eabdfbecd25eed5776de902fc584a95282c1cdf3d9995502f8",
    ),
    (
        "123",
        1,
        "020f00afbcc74f5a659c179ce2f0ba1b489a151b82acda8d1e5fa42ae089e087f6",
    ),
    (
        "-1",
        3,
        "02c6a3564d6888e53b4e68c7c2767099e40939b283146a079d898ed8fa2515aebf",
    ),
];

/// Spec §2.3 / §2.4: `(v, v·P1 compressed)`, `P1 = H("unit_ec_point")`.
pub const MULTIPLES_OF_P1: &[(usize, &str)] = &[
    (
        1,
        "0295eff36ee6834b476823392ce1f31aeda2c10edf2fdb5a4b2a708a600f18876f",
    ),
    (
        2,
        "02e4cf8de8ffc654f67981f9bf40e14666bc1ae1058a4cf02430a7605a5072c996",
    ),
    (
        3,
        "021d41f6362c7984a929b261eee33de455b2a4e134f5ad296d9f77ea20cea524a0",
    ),
    (
        10,
        "0371100c6c0eb74964bbdc35d99792607b18f236d7d57b4f02758484c5eb0cb837",
    ),
    (
        11,
        "02545581e7541d30fa3f5db7e760367451acb8319fe175c8c775431b7596b928ef",
    ),
];

/// The generator, compressed.
pub const GENERATOR: &str = "036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";

/// Spec §2.2: three duchy keys and their sum.
pub const COMBINED_KEY: ([&str; 3], &str) = (
    [
        "02d1432ca007a6c6d739fce2d21feb56d9a2c35cf968265f9093c4b691e11386b3",
        "039ef370ff4d216225401781d88a03f5a670a5040e6333492cb4e0cd991abbd5a3",
        "02d0f25ab445fc9c29e7e2509adc93308430f432522ffa93c2ae737ceb480b66d7",
    ],
    "02505d7b3ac4c3c387c74132ab677a3421e883b90d4c83dc766e400fe67acc1f04",
);

/// Spec §7 (3): keys 0x1111, 0x2222, 0x3333, `M = H("7")`, `r = 0x42`: the ciphertext
/// `(u, e)`, and its blinding by duchy 1 with `k = 0x5555`.
pub const WALK_THROUGH_U: &str =
    "0227dc812de9374f35b5ff02901dd3f0225bddad4dafed3f1dfcc068c9e0f5ab7b";
/// See [`WALK_THROUGH_U`].
pub const WALK_THROUGH_E: &str =
    "02f202f56da35f6bb8743f52ed950d25ee932660932860dca3ec01bb92afa87015";
/// See [`WALK_THROUGH_U`].
pub const WALK_THROUGH_BLINDED: &str = concat!(
    "03f8049a7d0cab281ae0b33b97c396b1993998b5e83891e9f6ebd732a4a5e46229",
    "022f7ea552ed61f2707ee7c284c5602b0d22ad1f25913c1a4ffa735e0e7e45f589"
);

/// A deterministic byte source (a 64-bit LCG) for reproducible test and benchmark inputs.
/// Not random: never use it for anything secret.
pub fn lcg(seed: u64) -> impl FnMut(&mut [u8]) {
    let mut s = seed;
    move |buf: &mut [u8]| {
        for b in buf.iter_mut() {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (s >> 33) as u8;
        }
    }
}
