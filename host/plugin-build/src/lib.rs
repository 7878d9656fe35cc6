//! The protocol plugins of `plugins/`, built from source by this crate's build script.
//!
//! `build.rs` compiles the `plugins/` workspace for `wasm32-unknown-unknown` (release, into
//! `target/plugins-build`), turns every core module into a component with `wit-component`, and
//! writes `target/plugins/<id>-<version>.wasm`. The consts below are absolute paths to those
//! files, for tests and the demo:
//!
//! | const | component | world |
//! |---|---|---|
//! | [`HMSS`] | `hmss-1.0.0.wasm`: Honest Majority Share Shuffle | `halo:mpc@1.3.0` |
//! | [`LLV2`] | `llv2-1.0.0.wasm`: Liquid Legions v2, reach and frequency | `halo:mpc@1.3.0` |
//! | [`RO_LLV2`] | `ro-llv2-1.0.0.wasm`: reach-only Liquid Legions v2 | `halo:mpc@1.3.0` |
//! | [`TEST_SUM_V1_0`] | `test-sum-1.0.0.wasm` (feature `wit-1-0`) | `halo:mpc@1.0.0` |
//! | [`TEST_SUM_V1_1`] | `test-sum-1.1.0.wasm` (feature `v1_1`) | `halo:mpc@1.1.0` |
//! | [`RUNAWAY`] | `runaway-1.0.0.wasm`: `execute` loops forever | `halo:mpc@1.3.0` |
//! | [`HOG`] | `hog-1.0.0.wasm`: `execute` touches 1 GiB in 16 MiB steps | `halo:mpc@1.3.0` |
//! | [`PANICKER`] | `panicker-1.0.0.wasm`: `execute` panics (logs the message, then traps) | `halo:mpc@1.3.0` |
//! | [`ECHO`] | `echo-1.0.0.wasm`: one send with all input data concatenated | `halo:mpc@1.3.0` |
//! | [`EC_BENCH`] | `ec-bench-1.0.0.wasm`: runs one P-256 operation (host import or pure guest) per `execute`, for tests and the benchmark | `halo:mpc@1.3.0` |
//! | [`EC_BENCH_V1_2`] | `ec-bench-0.1.0.wasm` (feature `wit-1-2`): the same fixture on the previous minor | `halo:mpc@1.2.0` |
//! | [`WRONG_MAJOR`] | `wrong-major-2.0.0.wasm`: fixture world `halo:mpc@2.0.0` | `halo:mpc@2.0.0` |
//!
//! [`PLUGIN_DIR`] is the directory holding them. Set `HALO_SKIP_PLUGIN_BUILD=1` to skip the
//! build (the consts are still defined; the files are whatever an earlier build left).

/// One built component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Component {
    /// Name of the const holding [`Component::path`].
    pub name: &'static str,
    /// Protocol id (what `describe()` returns).
    pub id: &'static str,
    /// Plugin version (what `describe()` returns).
    pub version: &'static str,
    /// The WIT package the component targets, e.g. `halo:mpc@1.0.0`.
    pub wit: &'static str,
    /// Absolute path of `<id>-<version>.wasm`.
    pub path: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
