#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Crash recovery (issue 9): the Kingdom, three duchies, three data providers and the
//! consumer run as separate `halo` processes on loopback; one process is SIGKILLed at a
//! chosen kill point (`HALO_CRASH_AT`, honoured by this test build of `halo`) and restarted
//! 2 s later on the same data directory; the measurement must still end SUCCEEDED with the
//! exact noise-free result. The harness is `tests/killpoints` (compiled in here by path).
//!
//! The full sweep (every kill point of HMSS reach-and-frequency, HMSS reach-only, test-sum,
//! LLv2 and reach-only LLv2, found by a clean traced run; prints the table, fails unless
//! every point survived):
//!
//! ```text
//! cargo test -p halo-cli --test kill_points -- --ignored full_sweep --nocapture
//! ```
//!
//! Narrow it with `HALO_KILL_PROTOCOL=hmss-rf,test-sum`, `HALO_KILL_ONLY=SUBSTRING` (matched
//! against `process point@k`), `HALO_KILL_LIMIT=N`; `HALO_KILL_KEEP=DIR` keeps every run's
//! directory (logs, traces, data) under DIR. `tests/killpoints/sweep.sh` wraps this.
//!
//! CI runs `ci_subset_survives` and `ci_subset_survives_llv2`: five representative points of
//! HMSS reach-and-frequency and of Liquid Legions v2.

use std::path::Path;

#[allow(dead_code)]
#[path = "../../../tests/killpoints/src/lib.rs"]
mod killpoints;

use killpoints::{ClientLauncher, Harness, Options, Protocol, Selection};

const HALO: &str = env!("CARGO_BIN_EXE_halo");
/// Carries a client role's arguments into the re-executed test binary.
const CLIENT_ENV: &str = "HALO_KILLPOINTS_CLIENT";

/// The test-sum data providers and consumer are this test binary, re-executed to run only
/// `client_role` (ignored, so plain `cargo test` never runs it), which reads its arguments
/// from `CLIENT_ENV`.
fn launcher() -> ClientLauncher {
    ClientLauncher {
        program: std::env::current_exe().unwrap(),
        args: [
            "--exact",
            "client_role",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]
        .map(String::from)
        .to_vec(),
        via_env: Some(CLIENT_ENV.into()),
    }
}

fn harness(work_dir: Option<&Path>, keep: bool) -> Harness {
    let opts = Options {
        keep_runs: keep,
        ..Options::default()
    };
    Harness::new(
        Path::new(HALO),
        Path::new(halo_plugin_build::PLUGIN_DIR),
        launcher(),
        opts,
        work_dir,
    )
    .unwrap()
}

#[test]
#[ignore = "entry point of the test-sum client processes the kill-point harness starts"]
fn client_role() {
    let args = std::env::var(CLIENT_ENV)
        .expect("client_role runs only as a process started by the kill-point harness");
    let args: Vec<String> = args.lines().map(String::from).collect();
    if let Err(e) = killpoints::client_main(&args) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Five representative points (a worker's plugin mid-stage, the aggregator after saving its
/// outcome, a receiver mid-upload, a herald before persisting its token, the Kingdom mid-run),
/// chosen from a clean run's trace: each must be reached and survived.
#[test]
fn ci_subset_survives() {
    ci_subset(Protocol::HmssReachFrequency);
}

/// The same five kinds of points in a Liquid Legions v2 reach-and-frequency measurement.
#[test]
fn ci_subset_survives_llv2() {
    ci_subset(Protocol::Llv2);
}

fn ci_subset(protocol: Protocol) {
    let h = harness(None, false);
    let sel = Selection {
        protocols: vec![protocol],
        ci: true,
        ..Selection::default()
    };
    let report = killpoints::run_sweep(&h, &sel, |l| eprintln!("{l}")).unwrap();
    println!("{}", report.table());
    assert_eq!(report.rows.len(), 5, "{}", report.table());
    let bad: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.verdict != killpoints::Verdict::Survived)
        .map(|r| {
            format!(
                "{} {}: {:?}\n{}",
                r.target.process,
                r.target.label(),
                r.verdict,
                r.tails
            )
        })
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The full sweep (see the top of the file).
#[test]
#[ignore = "the full sweep takes long: cargo test -p halo-cli --test kill_points -- --ignored full_sweep --nocapture"]
fn full_sweep() {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let protocols = env("HALO_KILL_PROTOCOL")
        .map(|v| {
            v.split(',')
                .map(|p| Protocol::parse(p.trim()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    let sel = Selection {
        protocols,
        only: env("HALO_KILL_ONLY"),
        limit: env("HALO_KILL_LIMIT").map(|v| v.parse().unwrap()),
        ci: false,
    };
    let keep = env("HALO_KILL_KEEP");
    let h = harness(keep.as_deref().map(Path::new), keep.is_some());
    let report = killpoints::run_sweep(&h, &sel, |l| eprintln!("{l}")).unwrap();
    println!("{}", report.table());
    assert!(!report.rows.is_empty(), "nothing selected");
    let failed: Vec<String> = report
        .rows
        .iter()
        .filter(|r| r.verdict != killpoints::Verdict::Survived)
        .map(|r| format!("{} {} {}", r.protocol, r.target.process, r.target.label()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} kill runs did not survive: {}",
        failed.len(),
        report.rows.len(),
        failed.join(", ")
    );
}
