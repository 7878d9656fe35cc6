//! `kill-sweep`: the kill-point sweep from the command line (see the crate docs).
//!
//! ```text
//! kill-sweep --halo PATH [--plugins DIR] [--protocol hmss-rf|hmss-reach|test-sum]...
//!            [--only SUBSTRING] [--limit N] [--ci] [--list] [--registers N]
//!            [--chunk-bytes N] [--run-timeout SECS] [--work-dir DIR] [--keep]
//! ```
//!
//! `--halo` must be a `halo` built with kill points: `cargo test -p halo-cli --no-run` builds
//! one at `target/debug/halo` (a later `cargo build -p halo-cli` replaces it with one
//! without; `tests/killpoints/sweep.sh` copies it aside first). `--list` prints the sweep list
//! of the clean run and stops. Exit status 0 only if every kill run survived.
//!
//! `kill-sweep client ROLE ...` is the test-sum data provider / consumer the harness starts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use halo_killpoints::{ClientLauncher, Harness, Options, Protocol, Selection};

fn usage() -> &'static str {
    "usage: kill-sweep --halo PATH [--plugins DIR] [--protocol P]... [--only S] [--limit N] \
     [--ci] [--list] [--registers N] [--chunk-bytes N] [--run-timeout SECS] [--work-dir DIR] \
     [--keep]"
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        return match halo_killpoints::client_main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}\n{}", usage());
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<bool> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut halo: Option<PathBuf> = None;
    let mut plugins = workspace.join("target/plugins");
    let mut work_dir: Option<PathBuf> = None;
    let mut sel = Selection::default();
    let mut opts = Options::default();
    let mut list = false;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--halo" => halo = Some(PathBuf::from(value()?)),
            "--plugins" => plugins = PathBuf::from(value()?),
            "--protocol" => sel.protocols.push(Protocol::parse(&value()?)?),
            "--only" => sel.only = Some(value()?),
            "--limit" => sel.limit = Some(value()?.parse().context("--limit")?),
            "--ci" => sel.ci = true,
            "--list" => list = true,
            "--registers" => opts.registers = value()?.parse().context("--registers")?,
            "--chunk-bytes" => opts.chunk_bytes = value()?.parse().context("--chunk-bytes")?,
            "--run-timeout" => {
                opts.run_timeout = Duration::from_secs(value()?.parse().context("--run-timeout")?)
            }
            "--work-dir" => work_dir = Some(PathBuf::from(value()?)),
            "--keep" => opts.keep_runs = true,
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(true);
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    let halo = halo.ok_or_else(|| anyhow!("--halo is required"))?;
    let client = ClientLauncher {
        program: std::env::current_exe().context("locating kill-sweep itself")?,
        args: vec!["client".into()],
        via_env: None,
    };
    let h = Harness::new(&halo, &plugins, client, opts, work_dir.as_deref())?;
    eprintln!("work directory {}", h.root().display());
    if list {
        let protocols = if sel.protocols.is_empty() {
            Protocol::ALL.to_vec()
        } else {
            sel.protocols.clone()
        };
        for p in protocols {
            let d = h.discover(p)?;
            println!("{p}: clean run {:.1} s", d.wall.as_secs_f64());
            for t in d.targets() {
                println!("  {:<10} {}", t.process, t.label());
            }
            match d.ci_targets() {
                Ok(ci) => {
                    println!("  CI subset:");
                    for t in ci {
                        println!("  {:<10} {}", t.process, t.label());
                    }
                }
                Err(e) => println!("  no CI subset: {e:#}"),
            }
        }
        return Ok(true);
    }
    let report = halo_killpoints::run_sweep(&h, &sel, |line| eprintln!("{line}"))?;
    println!("{}", report.table());
    Ok(report.survived() == report.rows.len())
}
