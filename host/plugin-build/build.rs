//! Builds every plugin in `plugins/` from source and exposes the components.
//!
//! 1. Makes sure the `wasm32-unknown-unknown` target is installed (`rustup target add` when
//!    it is missing).
//! 2. Builds the `plugins/` workspace in release for that target, in its own target directory
//!    (`target/plugins-build`, so the outer build's lock is never waited on), once per variant.
//! 3. Turns each core module into a component with `wit-component` (no WASI adapter: the
//!    guests import only our WIT) and writes `target/plugins/<id>-<version>.wasm`.
//! 4. Writes `$OUT_DIR/plugins.rs` with one `pub const` path per component and `PLUGIN_DIR`.
//!
//! `HALO_SKIP_PLUGIN_BUILD=1` skips steps 1–3.

use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{env, fs, io};

const TARGET: &str = "wasm32-unknown-unknown";

/// One component to produce.
struct Plugin {
    /// Name of the generated const.
    konst: &'static str,
    /// Cargo package in `plugins/`.
    package: &'static str,
    /// Cargo features of the package for this variant (built separately when not empty).
    features: &'static [&'static str],
    /// Protocol id and version: the output is `<id>-<version>.wasm`.
    id: &'static str,
    version: &'static str,
    /// The WIT package the guest is built against.
    wit: &'static str,
}

const PLUGINS: &[Plugin] = &[
    Plugin {
        konst: "HMSS",
        package: "hmss",
        features: &[],
        id: "hmss",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "LLV2",
        package: "llv2",
        features: &[],
        id: "llv2",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "RO_LLV2",
        package: "ro-llv2",
        features: &[],
        id: "ro-llv2",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "TEST_SUM_V1_0",
        package: "test-sum",
        // Built against the older WIT minor: the host serves both.
        features: &["wit-1-0"],
        id: "test-sum",
        version: "1.0.0",
        wit: "halo:mpc@1.0.0",
    },
    Plugin {
        konst: "TEST_SUM_V1_1",
        package: "test-sum",
        features: &["v1_1"],
        id: "test-sum",
        version: "1.1.0",
        wit: "halo:mpc@1.1.0",
    },
    Plugin {
        konst: "RUNAWAY",
        package: "runaway",
        features: &[],
        id: "runaway",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "HOG",
        package: "hog",
        features: &[],
        id: "hog",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "PANICKER",
        package: "panicker",
        features: &[],
        id: "panicker",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "ECHO",
        package: "echo",
        features: &[],
        id: "echo",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "HOSTILE",
        package: "hostile",
        features: &[],
        id: "hostile",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "EC_BENCH",
        package: "ec-bench",
        features: &[],
        id: "ec-bench",
        version: "1.0.0",
        wit: "halo:mpc@1.3.0",
    },
    Plugin {
        konst: "EC_BENCH_V1_2",
        package: "ec-bench",
        // The same fixture built against the previous minor: a 1.2 component on a 1.3 host.
        features: &["wit-1-2"],
        id: "ec-bench",
        version: "0.1.0",
        wit: "halo:mpc@1.2.0",
    },
    Plugin {
        konst: "WRONG_MAJOR",
        package: "wrong-major",
        features: &[],
        id: "wrong-major",
        version: "2.0.0",
        wit: "halo:mpc@2.0.0",
    },
];

/// Variables of the outer build that must not leak into the plugin build: they would change
/// its flags (and so its fingerprints), its target directory, or wrap rustc in clippy.
const SCRUB_ENV: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WORKSPACE_WRAPPER",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
];

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let repo = manifest
        .join("../..")
        .canonicalize()
        .map_err(|e| format!("repository root above {}: {e}", manifest.display()))?;
    let plugins = repo.join("plugins");
    let target = repo.join("target");
    let out = target.join("plugins");

    rerun_if_changed(&repo, &plugins)?;
    println!("cargo:rerun-if-env-changed=HALO_SKIP_PLUGIN_BUILD");

    write_consts(&out)?;

    if env::var("HALO_SKIP_PLUGIN_BUILD").is_ok_and(|v| v == "1") {
        return Ok(());
    }

    ensure_target()?;
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let build_dir = target.join("plugins-build");
    let release = build_dir.join(TARGET).join("release");

    // Everything without features in one cargo run, then each featured variant on its own
    // (features unify per run). Each artifact is encoded before the next run overwrites it.
    cargo_build(&plugins, &build_dir, None)?;
    for p in PLUGINS.iter().filter(|p| p.features.is_empty()) {
        encode(p, &release, &out)?;
    }
    for p in PLUGINS.iter().filter(|p| !p.features.is_empty()) {
        cargo_build(&plugins, &build_dir, Some(p))?;
        encode(p, &release, &out)?;
    }
    Ok(())
}

fn rerun_if_changed(repo: &Path, plugins: &Path) -> Result<()> {
    // Directories are scanned recursively by cargo. Skip target directories and dot-files in
    // plugins/ (someone may have run cargo there by hand).
    for entry in fs::read_dir(plugins).map_err(|e| format!("reading {}: {e}", plugins.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "target" || name.starts_with('.') {
            continue;
        }
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    // The WIT packages and the protos the SDK generates messages from.
    println!("cargo:rerun-if-changed={}", repo.join("wit").display());
    println!(
        "cargo:rerun-if-changed={}",
        plugins.join(".cargo").join("config.toml").display()
    );
    println!("cargo:rerun-if-changed={}", repo.join("proto").display());
    println!("cargo:rerun-if-changed=build.rs");
    Ok(())
}

fn file_name(p: &Plugin) -> String {
    format!("{}-{}.wasm", p.id, p.version)
}

fn write_consts(out: &Path) -> Result<()> {
    let mut src = String::new();
    writeln!(src, "/// The directory holding every built component.")?;
    writeln!(src, "pub const PLUGIN_DIR: &str = {:?};", path_str(out)?)?;
    for p in PLUGINS {
        let path = out.join(file_name(p));
        writeln!(
            src,
            "\n/// `{}`: protocol `{}` version {} ({}).",
            file_name(p),
            p.id,
            p.version,
            p.wit
        )?;
        writeln!(src, "pub const {}: &str = {:?};", p.konst, path_str(&path)?)?;
    }
    writeln!(src, "\n/// Every component the build produces.")?;
    writeln!(src, "pub const COMPONENTS: &[Component] = &[")?;
    for p in PLUGINS {
        writeln!(
            src,
            "    Component {{ name: {:?}, id: {:?}, version: {:?}, wit: {:?}, path: {} }},",
            p.konst, p.id, p.version, p.wit, p.konst
        )?;
    }
    writeln!(src, "];")?;
    let dest = PathBuf::from(env::var("OUT_DIR")?).join("plugins.rs");
    write_if_changed(&dest, src.as_bytes())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| format!("path {} is not UTF-8", p.display()).into())
}

/// Installs the wasm target through rustup when it is missing.
fn ensure_target() -> Result<()> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    let listed = match listed {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return Err(format!(
                "`rustup target list --installed` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )
            .into());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // No rustup: accept a toolchain that ships the target anyway.
            if sysroot_has_target()? {
                return Ok(());
            }
            return Err(format!(
                "halo-plugin-build: rustup was not found and the Rust toolchain has no \
                 {TARGET} standard library. Install rustup (https://rustup.rs) and run \
                 `rustup target add {TARGET}`, or install {TARGET} for your toolchain \
                 some other way; or set HALO_SKIP_PLUGIN_BUILD=1 to skip building the plugins."
            )
            .into());
        }
        Err(e) => return Err(format!("running rustup: {e}").into()),
    };
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    println!("cargo:warning=installing the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .stdout(Stdio::from(io::stderr()))
        .status()
        .map_err(|e| format!("running `rustup target add {TARGET}`: {e}"))?;
    if !status.success() {
        return Err(format!(
            "`rustup target add {TARGET}` failed ({status}); install it by hand or set \
             HALO_SKIP_PLUGIN_BUILD=1"
        )
        .into());
    }
    Ok(())
}

fn sysroot_has_target() -> Result<bool> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("running {rustc} --print sysroot: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(sysroot
        .join("lib/rustlib")
        .join(TARGET)
        .join("lib")
        .is_dir())
}

/// `cargo build --release --target wasm32-unknown-unknown` of the plugins workspace (all of
/// it, or one package with its features).
fn cargo_build(plugins: &Path, build_dir: &Path, variant: Option<&Plugin>) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    // From inside plugins/, so that plugins/.cargo/config.toml (target flags) applies.
    cmd.current_dir(plugins)
        .arg("build")
        .arg("--release")
        .args(["--target", TARGET])
        .arg("--manifest-path")
        .arg(plugins.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(build_dir);
    match variant {
        None => {
            cmd.arg("--workspace");
        }
        Some(p) => {
            let features: Vec<String> = p
                .features
                .iter()
                .map(|f| format!("{}/{f}", p.package))
                .collect();
            cmd.args(["-p", p.package])
                .args(["--features", &features.join(",")]);
        }
    }
    for var in SCRUB_ENV {
        cmd.env_remove(var);
    }
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CARGO_FEATURE_") || k.starts_with("CARGO_CFG_") {
            cmd.env_remove(&*k);
        }
    }
    // Keep our stdout for cargo directives: the child's goes to stderr.
    cmd.stdout(Stdio::from(io::stderr()));
    let status = cmd
        .status()
        .map_err(|e| format!("running {cargo} for {}: {e}", plugins.display()))?;
    if !status.success() {
        let what = variant.map_or("the plugins workspace".to_string(), |p| {
            format!("{} with features {:?}", p.package, p.features)
        });
        return Err(format!(
            "building {what} for {TARGET} failed ({status}); see the cargo output above \
             (or set HALO_SKIP_PLUGIN_BUILD=1 to skip)"
        )
        .into());
    }
    Ok(())
}

/// Turns the core module of `p` into a component and writes `<id>-<version>.wasm`.
fn encode(p: &Plugin, release: &Path, out: &Path) -> Result<()> {
    let module_path = release.join(format!("{}.wasm", p.package.replace('-', "_")));
    let module =
        fs::read(&module_path).map_err(|e| format!("reading {}: {e}", module_path.display()))?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| format!("encoding {} as a component: {e:#}", module_path.display()))?;
    write_if_changed(&out.join(file_name(p)), &component)
}

/// Writes atomically (temp file + rename), and not at all when the content is unchanged, so
/// file watchers and caches keyed on mtime see no spurious change.
fn write_if_changed(dest: &Path, bytes: &[u8]) -> Result<()> {
    if fs::read(dest).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = dest.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    fs::rename(&tmp, dest).map_err(|e| format!("renaming to {}: {e}", dest.display()))?;
    Ok(())
}
