#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An operator's deployment (issue 10): a Kingdom and four duchies named `eu-west`,
//! `us-east.2`, `agg` and `spare.4`, each a `halo` process started only with
//! `--config FILE.toml`; identities come from certificate, key and trust-bundle files in an
//! operator's own layout (no PKI directory); roles come from a shared `roles.toml` in which
//! `spare.4` plays no role. One HMSS reach-and-frequency measurement with noise off must be
//! exact, and the idle duchy must have taken part in nothing.
//!
//! Also: `--print-config` round-trips, unknown keys are refused naming them, environment and
//! flags override the file, and a certificate that is not the configured principal's is
//! refused at start-up.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use clap::Parser;

const HALO: &str = env!("CARGO_BIN_EXE_halo");
const DUCHIES: [&str; 4] = ["eu-west", "us-east.2", "agg", "spare.4"];
const PROVIDERS: [&str; 2] = ["edp1", "edp2"];
const REGISTERS: usize = 2000;

/// Kills the process when the test ends (pass or fail).
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn halo(args: &[&str]) -> Output {
    Command::new(HALO)
        .args(args)
        .env_remove("HALO_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn spawn(root: &Path, name: &str, args: &[&str]) -> Proc {
    let log = root.join(format!("{name}.log"));
    let out = fs::File::create(&log).unwrap();
    let child = Command::new(HALO)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    Proc {
        name: name.into(),
        child,
        log,
    }
}

/// An operator's files: `ops/<name>/tls.crt`, `ops/<name>/tls.key`, `ops/roots/*.pem` and a
/// hand-written trust bundle; certificates of the other principals in `ops/certs/`. Built by
/// copying out of a development PKI, then the PKI's own manifest is not used by the servers.
fn operator_files(root: &Path) -> PathBuf {
    let pki = root.join("devpki");
    let duchies = DUCHIES.join(",");
    let providers = PROVIDERS.join(",");
    let out = halo(&[
        "pki",
        "--out",
        pki.to_str().unwrap(),
        "--duchies",
        &duchies,
        "--data-providers",
        &providers,
        "--measurement-consumers",
        "mc1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ops = root.join("ops");
    fs::create_dir_all(ops.join("roots")).unwrap();
    fs::create_dir_all(ops.join("certs")).unwrap();
    let mut bundle = String::from("[roots]\n");
    let mut principals: Vec<(String, String)> = vec![("kingdom".into(), "kingdom".into())];
    principals.extend(
        DUCHIES
            .iter()
            .map(|d| (format!("duchies/{d}"), format!("duchy-{d}"))),
    );
    principals.extend(
        PROVIDERS
            .iter()
            .map(|e| (format!("dataProviders/{e}"), format!("edp-{e}"))),
    );
    principals.push(("measurementConsumers/mc1".into(), "mc-mc1".into()));
    for (name, stem) in &principals {
        let short = name.rsplit('/').next().unwrap();
        fs::copy(
            pki.join(stem).join("root.pem"),
            ops.join("roots").join(format!("{short}-ca.pem")),
        )
        .unwrap();
        bundle.push_str(&format!("{name:?} = \"roots/{short}-ca.pem\"\n"));
        fs::copy(
            pki.join(stem).join("cert.pem"),
            ops.join("certs").join(format!("{short}.crt")),
        )
        .unwrap();
        let own = ops.join(short);
        fs::create_dir_all(&own).unwrap();
        fs::copy(pki.join(stem).join("cert.pem"), own.join("tls.crt")).unwrap();
        fs::copy(pki.join(stem).join("key.pem"), own.join("tls.key")).unwrap();
    }
    fs::write(ops.join("trust.toml"), bundle).unwrap();
    ops
}

const ROLES: &str = r#"
[honest_majority_share_shuffle]
aggregator = "agg"
non_aggregators = ["eu-west", "us-east.2"]

[liquid_legions_v2]
aggregator = "agg"
non_aggregators = ["us-east.2", "eu-west"]
"#;

struct Deployment {
    root: PathBuf,
    kingdom_port: u16,
    ports: BTreeMap<&'static str, u16>,
}

impl Deployment {
    fn kingdom_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.kingdom_port)
    }

    fn duchy_url(&self, d: &str) -> String {
        format!("https://127.0.0.1:{}", self.ports[d])
    }

    fn kingdom_toml(&self) -> String {
        let mut certs = String::new();
        for d in DUCHIES {
            certs.push_str(&format!("\"duchies/{d}\" = \"ops/certs/{d}.crt\"\n"));
        }
        for e in PROVIDERS {
            certs.push_str(&format!("\"dataProviders/{e}\" = \"ops/certs/{e}.crt\"\n"));
        }
        format!(
            r#"# The Kingdom of the operator test.
data_dir = "data/kingdom"
listen = "127.0.0.1:{port}"
roles_file = "roles.toml"
duchies = ["eu-west", "us-east.2", "agg", "spare.4"]
data_providers = ["edp1", "edp2"]
measurement_consumers = ["mc1"]
stream_poll_interval_ms = 100

[identity]
certificate = "ops/kingdom/tls.crt"
key = "ops/kingdom/tls.key"
trust_bundle = "ops/trust.toml"

[certificates]
{certs}
[limits]
max_page_size = 500
"#,
            port = self.kingdom_port
        )
    }

    fn duchy_toml(&self, d: &str) -> String {
        let mut peers = String::new();
        for p in DUCHIES.iter().filter(|p| **p != d) {
            peers.push_str(&format!("{p:?} = \"{}\"\n", self.duchy_url(p)));
        }
        format!(
            r#"id = "{d}"
data_dir = "data/{d}"
listen = "127.0.0.1:{port}"
kingdom = "{kingdom}"
roles_file = "roles.toml"

[identity]
certificate = "ops/{d}/tls.crt"
key = "ops/{d}/tls.key"
trust_bundle = "ops/trust.toml"

[peers]
{peers}
[mill]
workers = 2
lease_secs = 10
retry_max_secs = 2

[plugins]
dir = "plugins"
cache_dir = "plugin-cache"
"#,
            port = self.ports[d],
            kingdom = self.kingdom_url(),
        )
    }

    fn new(root: &Path) -> Deployment {
        operator_files(root);
        let plugins = root.join("plugins");
        fs::create_dir_all(&plugins).unwrap();
        let built = Path::new(halo_plugin_build::PLUGIN_DIR);
        for entry in fs::read_dir(built).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let ours = ["hmss-", "llv2-", "ro-llv2-"];
            if ours.iter().any(|p| name.starts_with(p)) && name.ends_with(".wasm") {
                fs::copy(&path, plugins.join(&name)).unwrap();
            }
        }
        fs::write(root.join("roles.toml"), ROLES).unwrap();
        let dep = Deployment {
            root: root.to_path_buf(),
            kingdom_port: free_port(),
            ports: DUCHIES.iter().map(|d| (*d, free_port())).collect(),
        };
        fs::write(root.join("kingdom.toml"), dep.kingdom_toml()).unwrap();
        for d in DUCHIES {
            fs::write(root.join(format!("{d}.toml")), dep.duchy_toml(d)).unwrap();
        }
        dep
    }

    fn start(&self) -> Vec<Proc> {
        let cfg = |name: &str| self.root.join(name).to_str().unwrap().to_owned();
        let mut procs = vec![spawn(
            &self.root,
            "kingdom",
            &["kingdom", "--config", &cfg("kingdom.toml")],
        )];
        for d in DUCHIES {
            procs.push(spawn(
                &self.root,
                d,
                &["duchy", "--config", &cfg(&format!("{d}.toml"))],
            ));
        }
        procs
    }
}

#[derive(Parser)]
struct McCli {
    #[command(flatten)]
    args: halo_cli::mc::McArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_named_duchies_from_toml_with_file_identities_measure_exactly() {
    halo_identity::init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dep = Deployment::new(tmp.path());
    let procs = dep.start();

    let pki = tmp.path().join("devpki");
    let pki = pki.to_str().unwrap();
    let kingdom = dep.kingdom_url();
    let registers = REGISTERS.to_string();
    let timeout = "240";
    let mut duchy_flags = Vec::new();
    for d in DUCHIES {
        duchy_flags.push("--duchy".to_string());
        duchy_flags.push(format!("{d}={}", dep.duchy_url(d)));
    }
    for protocol in ["hmss", "llv2"] {
        let mut providers = Vec::new();
        for e in PROVIDERS {
            let mut argv: Vec<String> = [
                "edp",
                "--pki",
                pki,
                "--kingdom",
                &kingdom,
                "--id",
                e,
                "--seed",
                "7",
                "--providers",
                "2",
                "--registers",
                &registers,
                "--max-frequency",
                "4",
                "--wait-secs",
                timeout,
            ]
            .map(String::from)
            .to_vec();
            argv.extend(duchy_flags.iter().cloned());
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            providers.push(spawn(tmp.path(), &format!("{e}-{protocol}"), &argv));
        }
        let mc = McCli::try_parse_from([
            "mc",
            "--pki",
            pki,
            "--kingdom",
            &kingdom,
            "--protocol",
            protocol,
            "--sketch-size",
            "20000",
            "--data-providers",
            "edp1,edp2",
            "--max-frequency",
            "4",
            "--noise",
            "none",
            "--truth-seed",
            "7",
            "--truth-providers",
            "2",
            "--truth-registers",
            &registers,
            "--timeout-secs",
            timeout,
        ])
        .unwrap()
        .args;
        let report = match halo_cli::mc::run(mc).await {
            Ok(r) => r,
            Err(e) => {
                for p in procs.iter().chain(&providers) {
                    eprintln!("==== {} ====\n{}", p.name, p.log());
                }
                panic!("{protocol} measurement failed: {e:#}");
            }
        };
        // HMSS: the population's truth; LLv2: the estimator on the union sketch.
        let (reach, distribution) = report.truth.clone().unwrap();
        assert!(reach > 0);
        assert_eq!(report.result.reach, reach, "{protocol} reach");
        assert_eq!(report.buckets, 4);
        for (k, v) in &distribution {
            let got = report.result.frequency.get(k).copied().unwrap_or(0.0);
            assert!(
                (got - v).abs() < 1e-12,
                "{protocol} frequency {k}: {got} vs {v}"
            );
        }
        for p in &providers {
            assert!(p.log().contains("fulfilled"), "{}:\n{}", p.name, p.log());
        }
    }

    // The idle duchy took part in nothing: it saw no computation, and said so at start-up.
    let spare = procs.iter().find(|p| p.name == "spare.4").unwrap();
    let log = spare.log();
    assert!(
        log.contains("no role in any configured protocol"),
        "spare.4 should warn that it takes part in nothing:\n{log}"
    );
    assert!(
        !log.contains("computation recorded"),
        "spare.4 took part in a computation:\n{log}"
    );
    // Every participant knew its role from the roles file (HMSS, then LLv2).
    for (d, roles) in [
        ("eu-west", ["FirstNonAggregator", "NonAggregator"]),
        ("us-east.2", ["SecondNonAggregator", "NonAggregator"]),
        ("agg", ["Aggregator", "Aggregator"]),
    ] {
        let log = procs.iter().find(|p| p.name == d).unwrap().log();
        let recorded: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("computation recorded"))
            .collect();
        assert_eq!(recorded.len(), 2, "{d}: {recorded:?}\n{log}");
        for (line, role) in recorded.iter().zip(roles) {
            assert!(line.contains(&format!("role={role}")), "{d}: {line}");
        }
    }
}

#[test]
fn print_config_round_trips_and_unknown_keys_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dep = Deployment::new(tmp.path());
    let duchy = tmp.path().join("eu-west.toml");
    let printed = halo(&[
        "duchy",
        "--config",
        duchy.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let printed = String::from_utf8(printed.stdout).unwrap();
    // Paths are absolute, defaults are filled in, the file's values are there.
    assert!(printed.contains("id = \"eu-west\""), "{printed}");
    assert!(printed.contains("lease_secs = 10"), "{printed}");
    assert!(printed.contains("max_attempts = 10"), "{printed}");
    assert!(printed.contains(&format!(
        "{}",
        tmp.path().join("ops/eu-west/tls.key").display()
    )));
    let again = tmp.path().join("printed.toml");
    fs::write(&again, &printed).unwrap();
    let reprinted = halo(&[
        "duchy",
        "--config",
        again.to_str().unwrap(),
        "--print-config",
    ]);
    assert!(reprinted.status.success());
    assert_eq!(String::from_utf8(reprinted.stdout).unwrap(), printed);

    // The example files of deploy/examples parse and print.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples");
    for (cmd, file) in [("duchy", "duchy.toml"), ("kingdom", "kingdom.toml")] {
        let out = halo(&[
            cmd,
            "--config",
            examples.join(file).to_str().unwrap(),
            "--print-config",
        ]);
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Environment and flags override the file, flags win over the environment.
    let out = Command::new(HALO)
        .args([
            "duchy",
            "--config",
            duchy.to_str().unwrap(),
            "--print-config",
            "--workers",
            "7",
        ])
        .env("HALO_WORKERS", "5")
        .env("HALO_LEASE_SECS", "33")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("workers = 7"), "{text}");
    assert!(text.contains("lease_secs = 33"), "{text}");

    // Unknown keys, top-level and in a section, are refused naming the key (exit 64).
    let base = dep.duchy_toml("eu-west");
    for (body, key) in [
        (format!("colour = \"blue\"\n{base}"), "colour"),
        (
            base.replacen("[mill]\n", "[mill]\nwrkers = 3\n", 1),
            "wrkers",
        ),
        (
            base.replacen("[identity]\n", "[identity]\npassword = \"x\"\n", 1),
            "password",
        ),
    ] {
        let path = tmp.path().join("bad.toml");
        fs::write(&path, body).unwrap();
        let out = halo(&[
            "duchy",
            "--config",
            path.to_str().unwrap(),
            "--print-config",
        ]);
        assert_eq!(out.status.code(), Some(64), "{key}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(key) && err.contains("unknown field"),
            "{key}: {err}"
        );
    }
    let path = tmp.path().join("bad-kingdom.toml");
    fs::write(
        &path,
        format!(
            "{}\n[roles.hmss]\naggregator = \"agg\"\n",
            dep.kingdom_toml()
        ),
    )
    .unwrap();
    let out = halo(&[
        "kingdom",
        "--config",
        path.to_str().unwrap(),
        "--print-config",
    ]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hmss"));
}

#[test]
fn misconfigured_identities_and_roles_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dep = Deployment::new(tmp.path());
    let run = |name: &str, text: String, cmd: &str| -> String {
        let path = tmp.path().join(name);
        fs::write(&path, text).unwrap();
        let out = halo(&[cmd, "--config", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{name} started");
        assert_eq!(out.status.code(), Some(64), "{name}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Another duchy's certificate and key.
    let err = run(
        "swapped.toml",
        dep.duchy_toml("eu-west")
            .replace("ops/eu-west/tls.crt", "ops/agg/tls.crt")
            .replace("ops/eu-west/tls.key", "ops/agg/tls.key"),
        "duchy",
    );
    assert!(
        err.contains("duchies/agg") && err.contains("not duchies/eu-west"),
        "{err}"
    );
    // A trust bundle that names a file that is not there.
    fs::write(
        tmp.path().join("ops/bad-trust.toml"),
        "[roots]\n\"kingdom\" = \"roots/nope.pem\"\n",
    )
    .unwrap();
    let err = run(
        "bad-trust.toml",
        dep.duchy_toml("eu-west")
            .replace("ops/trust.toml", "ops/bad-trust.toml"),
        "duchy",
    );
    assert!(err.contains("nope.pem"), "{err}");
    // Half of the identity files.
    let err = run(
        "half.toml",
        dep.duchy_toml("eu-west")
            .replace("key = \"ops/eu-west/tls.key\"\n", ""),
        "duchy",
    );
    assert!(err.contains("certificate, key and trust_bundle"), "{err}");
    // A roles file naming a duchy the Kingdom does not know.
    fs::write(
        tmp.path().join("roles-bad.toml"),
        ROLES.replace("\"us-east.2\"]", "\"us-west\"]"),
    )
    .unwrap();
    let err = run(
        "kingdom-bad.toml",
        dep.kingdom_toml().replace("roles.toml", "roles-bad.toml"),
        "kingdom",
    );
    assert!(
        err.contains("us-west") && err.contains("not a configured duchy"),
        "{err}"
    );
    // A duchy certificate missing from [certificates].
    let err = run(
        "kingdom-nocert.toml",
        dep.kingdom_toml()
            .replace("\"duchies/spare.4\" = \"ops/certs/spare.4.crt\"\n", ""),
        "kingdom",
    );
    assert!(err.contains("duchies/spare.4"), "{err}");
    // [certificates]: a key that names no configured principal, and another duchy's leaf.
    let err = run(
        "kingdom-typo.toml",
        dep.kingdom_toml().replace(
            "[certificates]\n",
            "[certificates]\n\"duchies/eu-wset\" = \"ops/certs/eu-west.crt\"\n",
        ),
        "kingdom",
    );
    assert!(
        err.contains("duchies/eu-wset") && err.contains("not a configured"),
        "{err}"
    );
    let err = run(
        "kingdom-swapped.toml",
        dep.kingdom_toml().replace(
            "\"duchies/eu-west\" = \"ops/certs/eu-west.crt\"",
            "\"duchies/eu-west\" = \"ops/certs/agg.crt\"",
        ),
        "kingdom",
    );
    assert!(err.contains("identifies duchies/agg"), "{err}");
    // A peer that is not an https URL, a value out of range.
    let err = run(
        "plain-peer.toml",
        dep.duchy_toml("eu-west")
            .replacen("\"https://", "\"http://", 1),
        "duchy",
    );
    assert!(err.contains("not an https://"), "{err}");
    let err = run(
        "forever.toml",
        dep.duchy_toml("eu-west")
            .replace("lease_secs = 10", "lease_secs = 9223372036854775807"),
        "duchy",
    );
    assert!(
        err.contains("mill.lease_secs") && err.contains("out of range"),
        "{err}"
    );
}

#[test]
fn flags_replace_the_files_alternatives_and_flag_paths_are_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let _dep = Deployment::new(tmp.path());
    let duchy = tmp.path().join("eu-west.toml");
    // The file gives certificate/key/trust_bundle; a --pki flag replaces all three.
    let out = Command::new(HALO)
        .current_dir(tmp.path())
        .args([
            "duchy",
            "--config",
            duchy.to_str().unwrap(),
            "--print-config",
        ])
        .args([
            "--pki",
            "devpki",
            "--data-dir",
            "elsewhere",
            "--roles-file",
            "r.toml",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    let identity = parsed["identity"].as_table().unwrap();
    assert_eq!(identity.len(), 1, "{text}");
    let abs = |p: &str| {
        tmp.path()
            .canonicalize()
            .unwrap()
            .join(p)
            .display()
            .to_string()
    };
    assert_eq!(identity["pki_dir"].as_str().unwrap(), abs("devpki"));
    assert_eq!(parsed["data_dir"].as_str().unwrap(), abs("elsewhere"));
    assert_eq!(parsed["roles_file"].as_str().unwrap(), abs("r.toml"));
    // And the other way: a file with pki_dir, flags with the three files.
    let dev = tmp.path().join("dev.toml");
    std::fs::write(&dev, "[identity]\npki_dir = \"devpki\"\n").unwrap();
    let out = Command::new(HALO)
        .current_dir(tmp.path())
        .args(["duchy", "--config", dev.to_str().unwrap(), "--print-config"])
        .args([
            "--certificate",
            "c.pem",
            "--key",
            "k.pem",
            "--trust-bundle",
            "t.toml",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains("pki_dir") && text.contains("trust_bundle"),
        "{text}"
    );
}

/// A duchy whose roles file disagrees with the Kingdom's (here: the HMSS non-aggregators
/// swapped) must not play a role the others do not expect: the computation fails, naming
/// the disagreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duchy_whose_roles_disagree_with_the_kingdom_fails_the_computation() {
    halo_identity::init_crypto();
    let tmp = tempfile::tempdir().unwrap();
    let dep = Deployment::new(tmp.path());
    fs::write(
        tmp.path().join("roles-swapped.toml"),
        ROLES.replacen(
            "[\"eu-west\", \"us-east.2\"]",
            "[\"us-east.2\", \"eu-west\"]",
            1,
        ),
    )
    .unwrap();
    fs::write(
        tmp.path().join("us-east.2.toml"),
        dep.duchy_toml("us-east.2")
            .replace("roles.toml", "roles-swapped.toml"),
    )
    .unwrap();
    let procs = dep.start();
    let pki = tmp.path().join("devpki");
    let kingdom = dep.kingdom_url();
    let mc = McCli::try_parse_from([
        "mc",
        "--pki",
        pki.to_str().unwrap(),
        "--kingdom",
        &kingdom,
        "--data-providers",
        "edp1,edp2",
        "--noise",
        "none",
        "--timeout-secs",
        "120",
    ])
    .unwrap()
    .args;
    let err = match halo_cli::mc::run(mc).await {
        Ok(r) => panic!("the measurement succeeded: {:?}", r.result),
        Err(e) => format!("{e:#}"),
    };
    let log = procs.iter().find(|p| p.name == "us-east.2").unwrap().log();
    assert!(
        err.contains("disagrees with the Kingdom") || log.contains("disagrees with the Kingdom"),
        "{err}\n{log}"
    );
    assert!(err.contains("FAILED"), "{err}");
}
