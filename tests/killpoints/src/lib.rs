//! Kill-point harness (issue 9): a measurement must survive the SIGKILL of any single process
//! at any point and end with exactly the result it would have had.
//!
//! Given a `halo` binary built with kill points (`halo-crashpoint/enabled`, which the
//! `cargo test -p halo-cli` build of `halo` has) and a directory of built plugins, the
//! [`Harness`] runs the Kingdom, three duchies (`aggregator`, `worker1`, `worker2`), three data
//! providers and the measurement consumer as separate OS processes on loopback, with mutual
//! TLS from `halo pki` and data directories on disk:
//!
//! * **discovery** ([`Harness::discover`]): one clean run with `HALO_CRASH_TRACE` set for every
//!   process; the kill points each process passed through become the sweep list
//!   ([`Discovery::targets`]): every distinct point at its first occurrence, and `*.chunk`
//!   points also at a middle occurrence (after k of n chunks). Nothing here knows a stage
//!   name: they come from the plugin's stage table through the trace.
//! * **kill run** ([`Harness::kill`]): fresh data directories; the target process gets
//!   `HALO_CRASH_AT=POINT@K`; when it has died by that point it is restarted 2 s later on the
//!   same data directory, port and arguments (without `HALO_CRASH_AT`). The measurement must
//!   end SUCCEEDED with the exact noise-free result (compared with the ground truth of the
//!   synthetic population). The recovery time is from the restart to the first `claimed
//!   stage` line the restarted process logs.
//! * **sweep** ([`run_sweep`]): discovery and kill runs over the selected protocols, a
//!   [`Report`] table with totals.
//!
//! Protocols ([`Protocol`]): HMSS reach-and-frequency and reach-only (`halo edp` / `halo mc`),
//! and the test protocol `test-sum` (the wasm plugin serving the HMSS system protocol), whose
//! data providers and consumer are this crate's own client roles ([`client_main`]) run as
//! separate processes through a [`ClientLauncher`] (`halo` has no test-sum client).
//!
//! Every child process is killed when the run that started it ends (also on panic); every
//! wait is bounded; each process's stderr is kept in the run directory
//! (`<process>.<incarnation>.log`) and its tail is part of a failure's report.
//!
//! This file is also compiled into `host/cli/tests/kill_points.rs` (by path): it may only use
//! crates `halo-cli` depends on, and must stay one file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

/// The duchies, by id (the Kingdom's configuration makes `aggregator` the aggregator).
pub const DUCHIES: [&str; 3] = ["aggregator", "worker1", "worker2"];

/// The roles file of the harness's deployment (in the harness root).
pub const ROLES_FILE: &str = "roles.toml";
const ROLES_TOML: &str = r#"[honest_majority_share_shuffle]
aggregator = "aggregator"
non_aggregators = ["worker1", "worker2"]

[liquid_legions_v2]
aggregator = "aggregator"
non_aggregators = ["worker1", "worker2"]
"#;
/// The data providers.
pub const PROVIDERS: [&str; 3] = ["edp1", "edp2", "edp3"];
/// Seed of the synthetic population.
pub const SEED: u64 = 7;
/// Largest per-provider frequency of the population (and the R&F measurement's maximum).
pub const MAX_FREQUENCY: u32 = 3;
/// Overlap of the population (`halo edp`'s default).
pub const OVERLAP: f64 = 0.3;

/// What a process logs when a mill worker claims a stage (the recovery-time marker).
pub const CLAIM_MARKER: &str = "claimed stage";
/// What `halo-crashpoint` prints just before the SIGKILL.
const CRASH_MARKER: &str = "halo-crashpoint: SIGKILL at";

/// A measurement the harness runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// HMSS reach and frequency (`hmss` plugin, `halo edp` / `halo mc`).
    HmssReachFrequency,
    /// HMSS reach only.
    HmssReach,
    /// The test protocol `test-sum` (its wasm plugin; this crate's client roles).
    TestSum,
    /// Liquid Legions v2, reach and frequency (`llv2` plugin, `halo edp` / `halo mc`).
    Llv2,
    /// Reach-only Liquid Legions v2 (`ro-llv2` plugin).
    RoLlv2,
}

/// Sketch size of the Liquid Legions measurements (the population reaches ~2 000 VIDs).
pub const LLV2_SKETCH_SIZE: i64 = 20_000;

impl Protocol {
    pub const ALL: [Protocol; 5] = [
        Protocol::HmssReachFrequency,
        Protocol::HmssReach,
        Protocol::TestSum,
        Protocol::Llv2,
        Protocol::RoLlv2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::HmssReachFrequency => "hmss-rf",
            Protocol::HmssReach => "hmss-reach",
            Protocol::TestSum => "test-sum",
            Protocol::Llv2 => "llv2",
            Protocol::RoLlv2 => "ro-llv2",
        }
    }

    pub fn parse(s: &str) -> Result<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                anyhow!("unknown protocol {s:?} (hmss-rf, hmss-reach, test-sum, llv2, ro-llv2)")
            })
    }

    /// The component the duchies' plugin directory holds (the only one, so the duchies serve
    /// the system protocol with it).
    pub fn plugin_file(self) -> &'static str {
        match self {
            Protocol::HmssReachFrequency | Protocol::HmssReach => "hmss-1.0.0.wasm",
            Protocol::TestSum => "test-sum-1.1.0.wasm",
            Protocol::Llv2 => "llv2-1.0.0.wasm",
            Protocol::RoLlv2 => "ro-llv2-1.0.0.wasm",
        }
    }

    /// The `halo mc --protocol` value, for the protocols `halo mc` / `halo edp` run.
    fn mc_protocol(self) -> Option<&'static str> {
        match self {
            Protocol::HmssReachFrequency | Protocol::HmssReach => Some("hmss"),
            Protocol::Llv2 => Some("llv2"),
            Protocol::RoLlv2 => Some("ro-llv2"),
            Protocol::TestSum => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to start this crate's client roles ([`client_main`]): `program args…` followed by the
/// role's arguments, or — with `via_env` — the role's arguments newline-separated in that
/// environment variable (for a libtest binary, which refuses unknown arguments).
#[derive(Clone, Debug)]
pub struct ClientLauncher {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub via_env: Option<String>,
}

/// Knobs of the runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// Registers of the synthetic population.
    pub registers: usize,
    /// AdvanceComputation chunk size (`halo duchy --chunk-bytes`), and the test-sum
    /// fulfilment chunk size: small, so every payload has several chunks.
    pub chunk_bytes: usize,
    /// `halo duchy --lease-secs`.
    pub lease_secs: u64,
    /// `halo duchy --retry-max-secs`.
    pub retry_max_secs: u64,
    /// More `halo duchy` arguments.
    pub extra_duchy_args: Vec<String>,
    /// From the kill to the restart.
    pub restart_delay: Duration,
    /// Bound of one run (start to result).
    pub run_timeout: Duration,
    /// Bound of a server's start (until it listens).
    pub start_timeout: Duration,
    /// After the result: how long a point not reached yet may still be reached, and how long
    /// a process restarted after the result must stay up.
    pub settle: Duration,
    /// Keep the directories of runs that survived (failed ones are always kept).
    pub keep_runs: bool,
    /// Lines of each log in a failure's report.
    pub tail_lines: usize,
    /// Runs of one target, at most, until its point is reached.
    pub tries: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            registers: 4000,
            chunk_bytes: 1024,
            lease_secs: 10,
            retry_max_secs: 2,
            extra_duchy_args: Vec::new(),
            restart_delay: Duration::from_secs(2),
            run_timeout: Duration::from_secs(120),
            start_timeout: Duration::from_secs(60),
            settle: Duration::from_secs(5),
            keep_runs: false,
            tail_lines: 12,
            tries: 4,
        }
    }
}

/// One kill point of one process: `HALO_CRASH_AT=point@occurrence`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    pub process: String,
    pub point: String,
    pub occurrence: u32,
    /// How often the point was hit in the discovery run.
    pub of: u32,
}

impl Target {
    /// The `HALO_CRASH_AT` value.
    pub fn crash_at(&self) -> String {
        format!("{}@{}", self.point, self.occurrence)
    }

    /// `point@k` (`point@k/n` for a middle occurrence).
    pub fn label(&self) -> String {
        if self.occurrence > 1 {
            format!("{}@{}/{}", self.point, self.occurrence, self.of)
        } else {
            format!("{}@{}", self.point, self.occurrence)
        }
    }
}

/// What the clean run passed through.
#[derive(Clone, Debug)]
pub struct Discovery {
    pub protocol: Protocol,
    /// Per process: the distinct points in the order of their first hit, with hit counts.
    pub points: BTreeMap<String, Vec<(String, u32)>>,
    /// Per process: every hit in order (`NAME@K`).
    pub hits: BTreeMap<String, Vec<String>>,
    /// Wall time of the clean run.
    pub wall: Duration,
    /// Directory of the clean run.
    pub dir: PathBuf,
}

/// Sort key of a process name: Kingdom, duchies, providers, consumer.
fn process_rank(name: &str) -> (usize, String) {
    let rank = match name {
        "kingdom" => 0,
        n if DUCHIES.contains(&n) => 1,
        n if n.starts_with("edp") => 2,
        _ => 3,
    };
    (rank, name.to_string())
}

impl Discovery {
    /// The sweep list: every distinct point of every process at its first occurrence, and each
    /// `*.chunk` point hit n ≥ 2 times also after k = max(2, ⌈n/2⌉) of its n chunks.
    pub fn targets(&self) -> Vec<Target> {
        let mut procs: Vec<&String> = self.points.keys().collect();
        procs.sort_by_key(|p| process_rank(p));
        let mut out = Vec::new();
        for p in procs {
            for (point, n) in &self.points[p] {
                let t = |occurrence| Target {
                    process: p.clone(),
                    point: point.clone(),
                    occurrence,
                    of: *n,
                };
                out.push(t(1));
                if point.ends_with(".chunk") && *n >= 2 {
                    out.push(t(n.div_ceil(2).max(2)));
                }
            }
        }
        out
    }

    fn count(&self, process: &str, point: &str) -> Option<u32> {
        self.points
            .get(process)?
            .iter()
            .find(|(p, _)| p == point)
            .map(|(_, n)| *n)
    }

    /// The CI subset, chosen from what the clean run passed through (no stage names):
    /// a plugin's stage mid-execution on a worker (its last `plugin.random`), the aggregator
    /// after saving its last outcome (last `mill.saved:*`), a receiver mid-upload (the middle
    /// `recv.chunk` of the duchy receiving most chunks), a worker's herald before persisting
    /// its continuation token (`herald.processed@1`), and the Kingdom mid-run (its middle
    /// hit). An error names what the trace lacks.
    pub fn ci_targets(&self) -> Result<Vec<Target>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        let mk = |process: &str, point: &str, occurrence: u32, of: u32| Target {
            process: process.to_string(),
            point: point.to_string(),
            occurrence,
            of,
        };
        // A plugin stage mid-execution on a worker.
        match ["worker1", "worker2"]
            .iter()
            .find_map(|w| self.count(w, "plugin.random").map(|n| (*w, n)))
        {
            Some((w, n)) => out.push(mk(w, "plugin.random", n, n)),
            None => missing.push("plugin.random on a worker"),
        }
        // The aggregator after saving its last outcome.
        let saved = self.hits.get("aggregator").and_then(|hits| {
            hits.iter()
                .rev()
                .filter_map(|h| h.rsplit_once('@'))
                .find(|(name, _)| name.starts_with("mill.saved:"))
                .map(|(name, _)| name.to_string())
        });
        match saved {
            Some(point) => {
                let n = self.count("aggregator", &point).unwrap_or(1);
                out.push(mk("aggregator", &point, 1, n));
            }
            None => missing.push("mill.saved:* on the aggregator"),
        }
        // A receiver mid-upload.
        match DUCHIES
            .iter()
            .filter_map(|d| self.count(d, "recv.chunk").map(|n| (*d, n)))
            .max_by_key(|(_, n)| *n)
        {
            Some((d, n)) if n >= 2 => out.push(mk(d, "recv.chunk", n.div_ceil(2).max(2), n)),
            _ => missing.push("recv.chunk hit at least twice on a duchy"),
        }
        // A worker's herald before persisting its token.
        match ["worker2", "worker1"]
            .iter()
            .find_map(|w| self.count(w, "herald.processed").map(|n| (*w, n)))
        {
            Some((w, n)) => out.push(mk(w, "herald.processed", 1, n)),
            None => missing.push("herald.processed on a worker"),
        }
        // The Kingdom mid-run.
        match self.hits.get("kingdom").filter(|h| !h.is_empty()) {
            Some(hits) => {
                let mid = &hits[hits.len() / 2];
                let (point, k) = parse_hit(mid).ok_or_else(|| anyhow!("bad trace line {mid}"))?;
                let n = self.count("kingdom", &point).unwrap_or(k);
                out.push(mk("kingdom", &point, k, n));
            }
            None => missing.push("any kingdom.* point"),
        }
        ensure!(
            missing.is_empty(),
            "{}: the clean run did not pass through: {}",
            self.protocol,
            missing.join(", ")
        );
        Ok(out)
    }
}

/// `NAME@K` → (NAME, K).
fn parse_hit(line: &str) -> Option<(String, u32)> {
    let (name, k) = line.trim().rsplit_once('@')?;
    Some((name.to_string(), k.parse().ok()?))
}

/// How a kill run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Killed at the point, restarted, and the measurement ended with the exact result.
    Survived,
    /// The run finished without the target reaching the point.
    NotReached,
    /// Why not.
    Failed(String),
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Verdict::Survived => "survived",
            Verdict::NotReached => "not reached",
            Verdict::Failed(_) => "FAILED",
        }
    }
}

/// One kill run.
#[derive(Clone, Debug)]
pub struct RunResult {
    pub protocol: Protocol,
    pub target: Target,
    pub verdict: Verdict,
    /// Restart → first `claimed stage` of the restarted process (None: it claimed nothing).
    pub recovery: Option<Duration>,
    /// What the restarted process claimed first (`stage=… attempt=…`), or other detail.
    pub note: String,
    pub wall: Duration,
    pub dir: PathBuf,
    /// Log tails (failures only).
    pub tails: String,
}

/// The harness: a `halo` binary, a plugin directory, a PKI and a work directory.
pub struct Harness {
    halo: PathBuf,
    plugins: PathBuf,
    client: ClientLauncher,
    pub opts: Options,
    root: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pki: PathBuf,
    cache: PathBuf,
    seq: AtomicUsize,
    failures: AtomicUsize,
}

impl Drop for Harness {
    /// A temporary work directory is removed, unless a run failed: then it stays (only the
    /// failed runs' directories are left in it) and its path is printed.
    fn drop(&mut self) {
        if self.failures.load(Ordering::Relaxed) > 0
            && let Some(t) = self._tmp.take()
        {
            let kept = t.keep();
            eprintln!(
                "kill-point harness: the failed runs are kept in {}",
                kept.display()
            );
        }
    }
}

impl Harness {
    /// Checks the binary and the plugins, creates the work directory (`work_dir`, or a
    /// temporary one removed on drop) and the PKI (`halo pki`).
    pub fn new(
        halo: &Path,
        plugins: &Path,
        client: ClientLauncher,
        opts: Options,
        work_dir: Option<&Path>,
    ) -> Result<Harness> {
        ensure!(
            halo.is_file(),
            "no halo binary at {} (build it with `cargo test -p halo-cli --no-run`)",
            halo.display()
        );
        for p in Protocol::ALL {
            let f = plugins.join(p.plugin_file());
            ensure!(
                f.is_file(),
                "no plugin {} (build the plugins: cargo build -p halo-plugin-build)",
                f.display()
            );
        }
        let (root, tmp) = match work_dir {
            Some(d) => {
                fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("halo-killpoints-")
                    .tempdir()
                    .context("creating a temporary directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let pki = root.join("pki");
        if !pki.exists() {
            let out = Command::new(halo)
                .args(["pki", "--out"])
                .arg(&pki)
                .env_remove("HALO_PKI_OUT")
                .stdin(Stdio::null())
                .output()
                .context("running halo pki")?;
            ensure!(
                out.status.success(),
                "halo pki failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // The roles every process reads (the Kingdom to pick participants, each duchy its role).
        std::fs::write(root.join(ROLES_FILE), ROLES_TOML).context("writing roles.toml")?;
        for p in Protocol::ALL {
            let d = root.join(format!("plugins-{}", p.name()));
            fs::create_dir_all(&d)?;
            fs::copy(plugins.join(p.plugin_file()), d.join(p.plugin_file()))
                .with_context(|| format!("copying {} into {}", p.plugin_file(), d.display()))?;
        }
        let cache = root.join("plugin-cache");
        fs::create_dir_all(&cache)?;
        Ok(Harness {
            halo: halo.to_path_buf(),
            plugins: plugins.to_path_buf(),
            client,
            opts,
            root,
            _tmp: tmp,
            pki,
            cache,
            seq: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        })
    }

    /// The work directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The plugin directory the harness was given.
    pub fn plugins(&self) -> &Path {
        &self.plugins
    }

    fn run_dir(&self, protocol: Protocol, what: &str) -> Result<PathBuf> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let slug: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(60)
            .collect();
        let d = self
            .root
            .join(protocol.name())
            .join(format!("{n:03}-{slug}"));
        if d.exists() {
            fs::remove_dir_all(&d)?;
        }
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }

    /// The clean run: no kill, every process traced.
    pub fn discover(&self, protocol: Protocol) -> Result<Discovery> {
        let dir = self.run_dir(protocol, "discovery")?;
        let started = Instant::now();
        let out = Run::new(self, protocol, &dir, None)?.execute();
        if let Verdict::Failed(why) = &out.verdict {
            self.failures.fetch_add(1, Ordering::Relaxed);
            bail!(
                "{protocol}: the clean run failed: {why}\n{}\n(run directory {})",
                out.tails,
                dir.display()
            );
        }
        let mut points = BTreeMap::new();
        let mut hits = BTreeMap::new();
        let mut names: Vec<String> = Vec::new();
        for e in fs::read_dir(&dir)? {
            let name = e?.file_name().to_string_lossy().to_string();
            if let Some(p) = name
                .strip_prefix("trace-")
                .and_then(|s| s.strip_suffix(".1.txt"))
            {
                names.push(p.to_string());
            }
        }
        for p in names {
            let text = fs::read_to_string(dir.join(format!("trace-{p}.1.txt")))?;
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            let mut distinct: Vec<(String, u32)> = Vec::new();
            for l in &lines {
                let (name, k) = parse_hit(l).ok_or_else(|| anyhow!("bad trace line {l:?}"))?;
                match distinct.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, c)) => *c = (*c).max(k),
                    None => distinct.push((name, k)),
                }
            }
            if !distinct.is_empty() {
                points.insert(p.clone(), distinct);
                hits.insert(p, lines);
            }
        }
        ensure!(
            !points.is_empty(),
            "{protocol}: the clean run reached no kill point at all: is {} built with \
             halo-crashpoint/enabled (the `cargo test -p halo-cli` build)?",
            self.halo.display()
        );
        Ok(Discovery {
            protocol,
            points,
            hits,
            wall: started.elapsed(),
            dir,
        })
    }

    /// One kill run of `target`.
    /// One kill run of `target`. A run that ends without reaching the point is tried again
    /// (up to [`Options::tries`] in all): where a process's points lie is not always the same
    /// from run to run (the Kingdom picks each requisition's fulfilling worker at random).
    pub fn kill(&self, protocol: Protocol, target: &Target) -> RunResult {
        let started = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let mut r = self.kill_once(protocol, target);
            r.wall = started.elapsed();
            if r.verdict != Verdict::NotReached || tries >= self.opts.tries.max(1) {
                if tries > 1 {
                    let _ = write!(r.note, " (try {tries})");
                }
                return r;
            }
        }
    }

    fn kill_once(&self, protocol: Protocol, target: &Target) -> RunResult {
        let started = Instant::now();
        let dir = match self.run_dir(
            protocol,
            &format!("{}-{}", target.process, target.crash_at()),
        ) {
            Ok(d) => d,
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return RunResult {
                    protocol,
                    target: target.clone(),
                    verdict: Verdict::Failed(format!("setting up: {e:#}")),
                    recovery: None,
                    note: String::new(),
                    wall: started.elapsed(),
                    dir: self.root.clone(),
                    tails: String::new(),
                };
            }
        };
        let out = match Run::new(self, protocol, &dir, Some(target)) {
            Ok(run) => run.execute(),
            Err(e) => Outcome {
                verdict: Verdict::Failed(format!("setting up: {e:#}")),
                recovery: None,
                note: String::new(),
                tails: String::new(),
            },
        };
        match out.verdict {
            Verdict::Survived | Verdict::NotReached if !self.opts.keep_runs => {
                let _ = fs::remove_dir_all(&dir);
            }
            Verdict::Failed(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        RunResult {
            protocol,
            target: target.clone(),
            verdict: out.verdict,
            recovery: out.recovery,
            note: out.note,
            wall: started.elapsed(),
            dir,
            tails: out.tails,
        }
    }
}

/// Which runs [`run_sweep`] does.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Protocols (all when empty).
    pub protocols: Vec<Protocol>,
    /// Only targets whose `process point@k` contains this.
    pub only: Option<String>,
    /// At most this many kill runs in all.
    pub limit: Option<usize>,
    /// The CI subset instead of every point.
    pub ci: bool,
}

/// Discovery, then the selected kill runs, one after the other; `progress` sees each result.
pub fn run_sweep(h: &Harness, sel: &Selection, mut progress: impl FnMut(&str)) -> Result<Report> {
    let started = Instant::now();
    let protocols = if sel.protocols.is_empty() {
        Protocol::ALL.to_vec()
    } else {
        sel.protocols.clone()
    };
    let mut rows = Vec::new();
    let mut discoveries = Vec::new();
    let mut budget = sel.limit.unwrap_or(usize::MAX);
    for p in protocols {
        if budget == 0 {
            break;
        }
        progress(&format!("{p}: discovery run"));
        let d = h.discover(p)?;
        let targets = if sel.ci { d.ci_targets()? } else { d.targets() };
        let targets: Vec<Target> = targets
            .into_iter()
            .filter(|t| {
                sel.only
                    .as_ref()
                    .is_none_or(|s| format!("{} {}", t.process, t.crash_at()).contains(s.as_str()))
            })
            .take(budget)
            .collect();
        budget -= targets.len();
        progress(&format!(
            "{p}: clean run {:.1} s; {} points in the trace, {} kill runs",
            d.wall.as_secs_f64(),
            d.points.values().map(Vec::len).sum::<usize>(),
            targets.len()
        ));
        discoveries.push((p, d.wall, d.points.values().map(Vec::len).sum::<usize>()));
        for (i, t) in targets.iter().enumerate() {
            let r = h.kill(p, t);
            let mut line = format!(
                "{p} [{}/{}] {} {}: {}",
                i + 1,
                targets.len(),
                t.process,
                t.label(),
                r.verdict.word()
            );
            if let Some(rec) = r.recovery {
                let _ = write!(line, ", recovery {:.2} s", rec.as_secs_f64());
            }
            let _ = write!(line, " ({:.0} s)", r.wall.as_secs_f64());
            if let Verdict::Failed(why) = &r.verdict {
                let _ = write!(
                    line,
                    "\n  {why}\n  run directory {}\n{}",
                    r.dir.display(),
                    r.tails
                );
            }
            progress(&line);
            rows.push(r);
        }
    }
    Ok(Report {
        rows,
        discoveries,
        wall: started.elapsed(),
    })
}

/// The results of a sweep.
#[derive(Clone, Debug)]
pub struct Report {
    pub rows: Vec<RunResult>,
    /// Per protocol: clean-run wall time and distinct points found.
    pub discoveries: Vec<(Protocol, Duration, usize)>,
    pub wall: Duration,
}

impl Report {
    pub fn survived(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Survived)
            .count()
    }

    pub fn not_reached(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::NotReached)
            .count()
    }

    /// Median and worst recovery time over the runs that had one.
    pub fn recovery(&self) -> Option<(Duration, Duration)> {
        let mut v: Vec<Duration> = self.rows.iter().filter_map(|r| r.recovery).collect();
        if v.is_empty() {
            return None;
        }
        v.sort();
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2
        };
        Some((median, v[v.len() - 1]))
    }

    /// The table (protocol, process, point, result, recovery) and the totals.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let w_point = self
            .rows
            .iter()
            .map(|r| r.target.label().len())
            .max()
            .unwrap_or(5)
            .max(5);
        let _ = writeln!(
            s,
            "{:<10} {:<10} {:<w_point$} {:<11} {:>10}  note",
            "protocol", "process", "point", "result", "recovery s"
        );
        for r in &self.rows {
            let rec = r
                .recovery
                .map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()));
            let note = match &r.verdict {
                Verdict::Failed(why) => first_line(why, 100),
                _ => r.note.clone(),
            };
            let _ = writeln!(
                s,
                "{:<10} {:<10} {:<w_point$} {:<11} {:>10}  {}",
                r.protocol.name(),
                r.target.process,
                r.target.label(),
                r.verdict.word(),
                rec,
                note
            );
        }
        let _ = writeln!(s);
        for (p, wall, n) in &self.discoveries {
            let _ = writeln!(
                s,
                "{p}: clean run {:.1} s, {n} distinct (process, point) pairs",
                wall.as_secs_f64()
            );
        }
        let failed = self.rows.len() - self.survived() - self.not_reached();
        let _ = write!(
            s,
            "tried {}, survived {}, not reached {}, failed {}",
            self.rows.len(),
            self.survived(),
            self.not_reached(),
            failed
        );
        match self.recovery() {
            Some((median, worst)) => {
                let _ = write!(
                    s,
                    "; recovery median {:.2} s, worst {:.2} s",
                    median.as_secs_f64(),
                    worst.as_secs_f64()
                );
            }
            None => {
                let _ = write!(s, "; no recovery measured");
            }
        }
        let _ = writeln!(s, "; sweep wall time {:.0} s", self.wall.as_secs_f64());
        s
    }
}

fn first_line(s: &str, max: usize) -> String {
    let l = s.lines().next().unwrap_or_default();
    if l.chars().count() > max {
        let cut: String = l.chars().take(max).collect();
        format!("{cut}…")
    } else {
        l.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// One run: the processes.

/// How to start one process.
#[derive(Clone, Debug)]
struct Spec {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// A server (Kingdom or duchy): must never exit on its own.
    server: bool,
    port: Option<u16>,
}

/// What the stderr reader saw.
#[derive(Default)]
struct LogState {
    /// First `claimed stage` line: when, and its `stage=… attempt=…`.
    first_claim: Option<(Instant, String)>,
    crashed_at_point: bool,
    last_error: Option<String>,
}

/// One incarnation of a process.
struct Proc {
    spec: usize,
    incarnation: u32,
    child: Child,
    exit: Option<ExitStatus>,
    handled: bool,
    log: PathBuf,
    out: PathBuf,
    state: Arc<Mutex<LogState>>,
    reader: Option<JoinHandle<()>>,
}

impl Proc {
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.exit = Some(s);
                    // The log is complete once the pipe is closed.
                    if let Some(r) = self.reader.take() {
                        let _ = r.join();
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    self.exit = self.child.wait().ok();
                }
            }
        }
        self.exit
    }

    fn state<T>(&self, f: impl FnOnce(&LogState) -> T) -> T {
        match self.state.lock() {
            Ok(s) => f(&s),
            Err(p) => f(&p.into_inner()),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// A free loopback port below the kernel's ephemeral range: a port from `bind(:0)` lies in
/// that range, where any outgoing connection (of the clients, the duchies) may take it in the
/// moment between our check and the server's bind, or while a killed server is down.
fn free_port() -> Result<u16> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.saturating_sub(1));
    if to > from + 1000 {
        let span = usize::from(to - from);
        // Spread over the range by pid and time, then walk.
        let seed = std::process::id() as usize
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() as usize)
                .unwrap_or(0);
        for _ in 0..span {
            let n = NEXT.fetch_add(7919, Ordering::Relaxed);
            let port = from + u16::try_from((seed.wrapping_add(n)) % span).unwrap_or(0);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `stage=X attempt=N` from a log line (what there is of it).
fn claim_fields(line: &str) -> String {
    line.split_whitespace()
        .filter(|w| w.starts_with("stage=") || w.starts_with("attempt="))
        .collect::<Vec<_>>()
        .join(" ")
}

fn spawn(
    spec: &Spec,
    idx: usize,
    dir: &Path,
    incarnation: u32,
    crash_at: Option<&str>,
) -> Result<Proc> {
    let log = dir.join(format!("{}.{incarnation}.log", spec.name));
    let out = dir.join(format!("{}.{incarnation}.out", spec.name));
    let trace = dir.join(format!("trace-{}.{incarnation}.txt", spec.name));
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .stdin(Stdio::null())
        .stdout(File::create(&out).with_context(|| format!("creating {}", out.display()))?)
        .stderr(Stdio::piped());
    // Nothing of the harness's own environment configures a child (clap reads HALO_*).
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HALO_") {
            cmd.env_remove(&k);
        }
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    cmd.env("HALO_CRASH_TRACE", &trace);
    if let Some(at) = crash_at {
        cmd.env("HALO_CRASH_AT", at);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} ({})", spec.name, spec.program.display()))?;
    let state = Arc::new(Mutex::new(LogState::default()));
    let reader = match child.stderr.take() {
        Some(stderr) => {
            let mut file =
                File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let state = state.clone();
            Some(std::thread::spawn(move || {
                let mut r = BufReader::new(stderr);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let now = Instant::now();
                    let _ = file.write_all(&buf);
                    let line = String::from_utf8_lossy(&buf);
                    if let Ok(mut s) = state.lock() {
                        if s.first_claim.is_none() && line.contains(CLAIM_MARKER) {
                            s.first_claim = Some((now, claim_fields(&line)));
                        }
                        if line.contains(CRASH_MARKER) {
                            s.crashed_at_point = true;
                        }
                        if line.contains("ERROR") || line.starts_with("error") {
                            s.last_error = Some(line.trim_end().to_string());
                        }
                    }
                }
                let _ = file.flush();
            }))
        }
        None => None,
    };
    Ok(Proc {
        spec: idx,
        incarnation,
        child,
        exit: None,
        handled: false,
        log,
        out,
        state,
        reader,
    })
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = fs::read(path).map(|b| String::from_utf8_lossy(&b).to_string());
    match text {
        Ok(t) => {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// The last `n` WARN/ERROR lines of a file.
fn warnings(path: &Path, n: usize) -> Vec<String> {
    let t = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default();
    let v: Vec<String> = t
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("error"))
        .map(str::to_string)
        .collect();
    v[v.len().saturating_sub(n)..].to_vec()
}

/// What [`Run::execute`] found.
struct Outcome {
    verdict: Verdict,
    recovery: Option<Duration>,
    note: String,
    tails: String,
}

/// One run: the specs of every process, the incarnations started.
struct Run<'h> {
    h: &'h Harness,
    protocol: Protocol,
    dir: PathBuf,
    target: Option<Target>,
    specs: Vec<Spec>,
    procs: Vec<Proc>,
}

impl<'h> Run<'h> {
    fn new(
        h: &'h Harness,
        protocol: Protocol,
        dir: &Path,
        target: Option<&Target>,
    ) -> Result<Self> {
        let s = |p: &Path| p.to_string_lossy().to_string();
        let o = &h.opts;
        let mut taken = Vec::new();
        let mut port = || -> Result<u16> {
            loop {
                let p = free_port()?;
                if !taken.contains(&p) {
                    taken.push(p);
                    return Ok(p);
                }
            }
        };
        let kingdom_port = port()?;
        let kingdom = format!("https://127.0.0.1:{kingdom_port}");
        let mut ports = BTreeMap::new();
        for d in DUCHIES {
            ports.insert(d, port()?);
        }
        let duchy_url = |d: &str| format!("https://127.0.0.1:{}", ports[d]);
        let server_env = vec![("RUST_LOG".to_string(), "info".to_string())];
        let mut specs = vec![Spec {
            name: "kingdom".into(),
            program: h.halo.clone(),
            args: vec![
                "kingdom".into(),
                "--pki".into(),
                s(&h.pki),
                "--roles-file".into(),
                s(&h.root.join(ROLES_FILE)),
                "--data-dir".into(),
                s(&dir.join("kingdom")),
                "--listen".into(),
                format!("127.0.0.1:{kingdom_port}"),
            ],
            env: server_env.clone(),
            server: true,
            port: Some(kingdom_port),
        }];
        let plugins = h.root.join(format!("plugins-{}", protocol.name()));
        for d in DUCHIES {
            let mut args: Vec<String> = vec![
                "duchy".into(),
                "--id".into(),
                d.into(),
                "--pki".into(),
                s(&h.pki),
                "--roles-file".into(),
                s(&h.root.join(ROLES_FILE)),
                "--data-dir".into(),
                s(&dir.join(format!("duchy-{d}"))),
                "--listen".into(),
                format!("127.0.0.1:{}", ports[d]),
                "--kingdom".into(),
                kingdom.clone(),
                "--plugins".into(),
                s(&plugins),
                "--cache-dir".into(),
                s(&h.cache),
                "--lease-secs".into(),
                o.lease_secs.to_string(),
                "--retry-max-secs".into(),
                o.retry_max_secs.to_string(),
                "--chunk-bytes".into(),
                o.chunk_bytes.to_string(),
            ];
            for peer in DUCHIES.iter().filter(|p| **p != d) {
                args.push("--peer".into());
                args.push(format!("{peer}={}", duchy_url(peer)));
            }
            args.extend(o.extra_duchy_args.iter().cloned());
            specs.push(Spec {
                name: d.into(),
                program: h.halo.clone(),
                args,
                env: server_env.clone(),
                server: true,
                port: Some(ports[d]),
            });
        }
        let timeout = o.run_timeout.as_secs().max(1).to_string();
        let registers = o.registers.to_string();
        let duchy_flags: Vec<String> = DUCHIES
            .iter()
            .flat_map(|d| ["--duchy".to_string(), format!("{d}={}", duchy_url(d))])
            .collect();
        let client_env = vec![("RUST_LOG".to_string(), "warn".to_string())];
        // The consumer first: it creates the measurement the providers wait for.
        match protocol {
            Protocol::HmssReachFrequency
            | Protocol::HmssReach
            | Protocol::Llv2
            | Protocol::RoLlv2 => {
                let mut mc: Vec<String> = vec![
                    "mc".into(),
                    "--protocol".into(),
                    protocol.mc_protocol().unwrap_or("hmss").into(),
                    "--sketch-size".into(),
                    LLV2_SKETCH_SIZE.to_string(),
                    "--pki".into(),
                    s(&h.pki),
                    "--kingdom".into(),
                    kingdom.clone(),
                    "--data-providers".into(),
                    PROVIDERS.join(","),
                    "--max-frequency".into(),
                    MAX_FREQUENCY.to_string(),
                    "--noise".into(),
                    "none".into(),
                    "--truth-seed".into(),
                    SEED.to_string(),
                    "--truth-providers".into(),
                    PROVIDERS.len().to_string(),
                    "--truth-registers".into(),
                    registers.clone(),
                    "--truth-overlap".into(),
                    OVERLAP.to_string(),
                    "--timeout-secs".into(),
                    timeout.clone(),
                    "--json".into(),
                ];
                if protocol == Protocol::HmssReach {
                    mc.push("--reach-only".into());
                }
                specs.push(Spec {
                    name: "mc".into(),
                    program: h.halo.clone(),
                    args: mc,
                    env: client_env.clone(),
                    server: false,
                    port: None,
                });
                for e in PROVIDERS {
                    let mut args: Vec<String> = vec![
                        "edp".into(),
                        "--pki".into(),
                        s(&h.pki),
                        "--kingdom".into(),
                        kingdom.clone(),
                        "--id".into(),
                        e.into(),
                        "--seed".into(),
                        SEED.to_string(),
                        "--providers".into(),
                        PROVIDERS.len().to_string(),
                        "--registers".into(),
                        registers.clone(),
                        "--max-frequency".into(),
                        MAX_FREQUENCY.to_string(),
                        "--overlap".into(),
                        OVERLAP.to_string(),
                        "--wait-secs".into(),
                        timeout.clone(),
                    ];
                    args.extend(duchy_flags.iter().cloned());
                    specs.push(Spec {
                        name: e.into(),
                        program: h.halo.clone(),
                        args,
                        env: client_env.clone(),
                        server: false,
                        port: None,
                    });
                }
            }
            Protocol::TestSum => {
                let common = |role: &str| -> Vec<String> {
                    vec![
                        role.into(),
                        "--pki".into(),
                        s(&h.pki),
                        "--kingdom".into(),
                        kingdom.clone(),
                        "--registers".into(),
                        registers.clone(),
                        "--deadline-secs".into(),
                        timeout.clone(),
                    ]
                };
                specs.push(client_spec(&h.client, "mc", common("mc"), &client_env));
                for e in PROVIDERS {
                    let mut args = common("edp");
                    args.extend([
                        "--id".into(),
                        e.into(),
                        "--chunk-bytes".into(),
                        o.chunk_bytes.to_string(),
                    ]);
                    args.extend(duchy_flags.iter().cloned());
                    specs.push(client_spec(&h.client, e, args, &client_env));
                }
            }
        }
        if let Some(t) = target
            && !specs.iter().any(|s| s.name == t.process)
        {
            bail!("no process {} in this deployment", t.process);
        }
        let mut cmdline = String::new();
        for sp in &specs {
            let _ = writeln!(
                cmdline,
                "{}: {} {}",
                sp.name,
                sp.program.display(),
                sp.args.join(" ")
            );
        }
        if let Some(t) = target {
            let _ = writeln!(
                cmdline,
                "target: {} HALO_CRASH_AT={}",
                t.process,
                t.crash_at()
            );
        }
        fs::write(dir.join("commands.txt"), cmdline)?;
        Ok(Run {
            h,
            protocol,
            dir: dir.to_path_buf(),
            target: target.cloned(),
            specs,
            procs: Vec::new(),
        })
    }

    fn is_target(&self, p: &Proc) -> bool {
        p.incarnation == 1
            && self
                .target
                .as_ref()
                .is_some_and(|t| t.process == self.specs[p.spec].name)
    }

    fn start(&mut self, idx: usize, incarnation: u32) -> Result<()> {
        let crash_at = match &self.target {
            Some(t) if incarnation == 1 && t.process == self.specs[idx].name => Some(t.crash_at()),
            _ => None,
        };
        let p = spawn(
            &self.specs[idx],
            idx,
            &self.dir,
            incarnation,
            crash_at.as_deref(),
        )?;
        self.procs.push(p);
        Ok(())
    }

    /// Waits until the server of the last started process listens (or it died at its kill
    /// point, which the main loop handles).
    fn wait_listening(&mut self) -> Result<()> {
        let Some(i) = self.procs.len().checked_sub(1) else {
            return Ok(());
        };
        let Some(port) = self.specs[self.procs[i].spec].port else {
            return Ok(());
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + self.h.opts.start_timeout;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let is_target = self.is_target(&self.procs[i]);
            let p = &mut self.procs[i];
            if let Some(status) = p.poll() {
                if is_target && status.signal() == Some(9) {
                    return Ok(());
                }
                bail!(
                    "{} exited before listening ({status}):\n{}",
                    self.specs[p.spec].name,
                    tail(&p.log, self.h.opts.tail_lines)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {port} within {:?}",
                    self.specs[p.spec].name,
                    self.h.opts.start_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn execute(mut self) -> Outcome {
        let started = Instant::now();
        let mut out = match self.drive(started) {
            Ok(o) => o,
            Err(e) => Outcome {
                verdict: Verdict::Failed(format!("{e:#}")),
                recovery: None,
                note: String::new(),
                tails: String::new(),
            },
        };
        // Stop everything before reading the logs.
        for p in &mut self.procs {
            if p.exit.is_none() {
                let _ = p.child.kill();
                let _ = p.child.wait();
                p.exit = Some(ExitStatus::from_raw(9));
                if let Some(r) = p.reader.take() {
                    let _ = r.join();
                }
            }
        }
        if matches!(out.verdict, Verdict::Failed(_)) && out.tails.is_empty() {
            out.tails = self.tails();
        }
        out
    }

    /// Log tails for a failure: the target's incarnations, the consumer, every process that
    /// exited on its own, and the last warnings of every server.
    fn tails(&self) -> String {
        let n = self.h.opts.tail_lines;
        let mut s = String::new();
        for p in &self.procs {
            let spec = &self.specs[p.spec];
            let interesting = self.target.as_ref().is_some_and(|t| t.process == spec.name)
                || spec.name == "mc"
                || (p.exit.is_some_and(|e| e.signal() != Some(9)) && !p.handled_ok());
            if interesting {
                let _ = writeln!(
                    s,
                    "--- {} (incarnation {}) {}:\n{}",
                    spec.name,
                    p.incarnation,
                    p.log.display(),
                    tail(&p.log, n)
                );
                if spec.name == "mc" {
                    let o = tail(&p.out, 3);
                    if !o.trim().is_empty() {
                        let _ = writeln!(s, "--- mc stdout:\n{o}");
                    }
                }
            }
        }
        for p in &self.procs {
            let spec = &self.specs[p.spec];
            if spec.server {
                let w = warnings(&p.log, 4);
                if !w.is_empty() {
                    let _ = writeln!(
                        s,
                        "--- {} (incarnation {}) last warnings:\n{}",
                        spec.name,
                        p.incarnation,
                        w.join("\n")
                    );
                }
            }
        }
        s
    }

    fn fail(&self, why: String) -> Result<Outcome> {
        Ok(Outcome {
            verdict: Verdict::Failed(why),
            recovery: None,
            note: String::new(),
            tails: self.tails(),
        })
    }

    fn drive(&mut self, started: Instant) -> Result<Outcome> {
        let opts = self.h.opts.clone();
        // Servers first, each listening before the next starts; then the consumer and the
        // providers.
        for i in 0..self.specs.len() {
            self.start(i, 1)?;
            if self.specs[i].server {
                self.wait_listening()?;
            }
        }
        let deadline = started + opts.run_timeout;
        let mut killed_at: Option<Instant> = None;
        let mut restarted: Option<(Instant, usize)> = None; // (when, index in procs)
        let mut result_at: Option<Instant> = None;
        let mut result_note = String::new();
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = Instant::now();
            for i in 0..self.procs.len() {
                let is_target = self.is_target(&self.procs[i]);
                let p = &mut self.procs[i];
                if p.handled {
                    continue;
                }
                let Some(status) = p.poll() else { continue };
                p.handled = true;
                let name = self.specs[p.spec].name.clone();
                if is_target && status.signal() == Some(9) {
                    if p.state(|s| s.crashed_at_point) {
                        killed_at = Some(now);
                        continue;
                    }
                    return self.fail(format!(
                        "{name} was SIGKILLed, but not at its kill point (OOM killer?)"
                    ));
                }
                let server = self.specs[p.spec].server;
                let incarnation = p.incarnation;
                let err = p.state(|s| s.last_error.clone());
                let out_file = p.out.clone();
                let log_file = p.log.clone();
                if server {
                    return self.fail(format!(
                        "{name} (incarnation {incarnation}) exited on its own ({status}) {}",
                        first_line(&err.unwrap_or_default(), 200)
                    ));
                }
                if !status.success() {
                    let err = err.unwrap_or_else(|| tail(&log_file, 1));
                    return self.fail(format!(
                        "{name} (incarnation {incarnation}) failed ({status}): {}",
                        first_line(&err, 300)
                    ));
                }
                if name == "mc" {
                    let text = fs::read_to_string(&out_file).unwrap_or_default();
                    match check_result_for(self.protocol, &text, self.h.opts.registers) {
                        Ok(note) => {
                            result_at = Some(now);
                            result_note = note;
                        }
                        Err(e) => return self.fail(format!("wrong result: {e:#}")),
                    }
                }
            }
            // Restart the killed process.
            if let Some(k) = killed_at
                && restarted.is_none()
                && now >= k + opts.restart_delay
            {
                let Some(t) = &self.target else {
                    bail!("a kill without a target");
                };
                let idx = self
                    .specs
                    .iter()
                    .position(|s| s.name == t.process)
                    .ok_or_else(|| anyhow!("no process {}", t.process))?;
                self.start(idx, 2)?;
                restarted = Some((Instant::now(), self.procs.len() - 1));
            }
            // Done?
            if let Some(r) = result_at {
                match (&self.target, killed_at, restarted) {
                    (None, _, _) => {
                        // Discovery: let late points (after the result) show up in the trace.
                        if now >= r + opts.settle.min(Duration::from_secs(3)) {
                            return Ok(Outcome {
                                verdict: Verdict::Survived,
                                recovery: None,
                                note: result_note,
                                tails: String::new(),
                            });
                        }
                    }
                    (Some(_), None, _) => {
                        if now >= r + opts.settle {
                            return Ok(Outcome {
                                verdict: Verdict::NotReached,
                                recovery: None,
                                note: format!(
                                    "measurement done in {:.0} s without reaching the point",
                                    (r - started).as_secs_f64()
                                ),
                                tails: String::new(),
                            });
                        }
                    }
                    (Some(_), Some(k), Some((at, i))) => {
                        // Killed after the result: the restarted process must stay up a while.
                        let late = k >= r;
                        if !late || now >= at + opts.settle {
                            let p = &self.procs[i];
                            let recovery = p.state(|s| s.first_claim.clone());
                            let mut note = match &recovery {
                                Some((_, what)) => format!("first claim {what}"),
                                None => "restarted; claimed nothing".to_string(),
                            };
                            if late {
                                note.push_str(" (killed after the result)");
                            }
                            let _ =
                                write!(note, "; killed {:.0} s in", (k - started).as_secs_f64());
                            return Ok(Outcome {
                                verdict: Verdict::Survived,
                                recovery: recovery.map(|(t, _)| t.saturating_duration_since(at)),
                                note,
                                tails: String::new(),
                            });
                        }
                    }
                    (Some(_), Some(_), None) => {} // the restart is due
                }
            }
            if now > deadline {
                let state = match (killed_at, restarted) {
                    (None, _) => "the point was not reached".to_string(),
                    (Some(k), None) => format!(
                        "killed {:.0} s in, not restarted",
                        (k - started).as_secs_f64()
                    ),
                    (Some(k), Some((at, i))) => format!(
                        "killed {:.0} s in, restarted {:.0} s in{}",
                        (k - started).as_secs_f64(),
                        (at - started).as_secs_f64(),
                        self.procs[i]
                            .state(|s| s.first_claim.clone())
                            .map(|(_, w)| format!(", first claim after restart {w}"))
                            .unwrap_or_else(|| ", claimed nothing after restart".into())
                    ),
                };
                return self.fail(format!(
                    "no result within {:.0} s ({state})",
                    opts.run_timeout.as_secs_f64()
                ));
            }
        }
    }
}

impl Proc {
    fn handled_ok(&self) -> bool {
        self.exit.is_some_and(|e| e.success())
    }
}

fn client_spec(
    l: &ClientLauncher,
    name: &str,
    role_args: Vec<String>,
    env: &[(String, String)],
) -> Spec {
    let mut args = l.args.clone();
    let mut env = env.to_vec();
    match &l.via_env {
        Some(var) => env.push((var.clone(), role_args.join("\n"))),
        None => args.extend(role_args),
    }
    Spec {
        name: name.to_string(),
        program: l.program.clone(),
        args,
        env,
        server: false,
        port: None,
    }
}

/// The vectors of the synthetic population every provider and the ground truth use.
pub fn population(registers: usize) -> Vec<Vec<u32>> {
    halo_sim::hmss::population(SEED, PROVIDERS.len(), registers, MAX_FREQUENCY, OVERLAP)
}

/// [`check_result`] for `protocol`: Liquid Legions' expected values are the estimator on the
/// union of the providers' sketches (what the MPC reproduces exactly without noise),
/// recomputed here from the population; the others' are the population's ground truth.
pub fn check_result_for(protocol: Protocol, stdout: &str, registers: usize) -> Result<String> {
    if !matches!(protocol, Protocol::Llv2 | Protocol::RoLlv2) {
        return check_result(stdout, registers);
    }
    let request = halo_sim::llv2::Llv2Request {
        reach_only_protocol: protocol == Protocol::RoLlv2,
        max_frequency: MAX_FREQUENCY,
        sketch_size: LLV2_SKETCH_SIZE,
        ..Default::default()
    };
    let (reach, freq) = halo_sim::llv2::expected(&population(registers), &request)?;
    check_result_against(stdout, reach, &freq)
}

/// Checks the consumer's JSON (the last `{…}` line of its stdout): SUCCEEDED, reach equal to
/// the expected reach (which must itself equal the population's, computed here), and every
/// frequency bucket equal to the expected one. Returns a one-line summary.
pub fn check_result(stdout: &str, registers: usize) -> Result<String> {
    let vectors = population(registers);
    let ours = (0..registers)
        .filter(|&i| vectors.iter().any(|v| v.get(i).is_some_and(|x| *x > 0)))
        .count() as i64;
    check_result_against(stdout, ours, &BTreeMap::new())
}

/// The consumer's JSON against a reach the harness computed (and, if not empty, its
/// frequency distribution).
fn check_result_against(
    stdout: &str,
    ours: i64,
    our_frequency: &BTreeMap<String, f64>,
) -> Result<String> {
    // (A libtest child prints `test client_role ... ` before it.)
    let line = stdout
        .lines()
        .rev()
        .find_map(|l| l.get(l.find("{\"")?..=l.rfind('}')?))
        .ok_or_else(|| anyhow!("the consumer printed no JSON result"))?;
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("parsing {line}"))?;
    let state = v["state"].as_str().unwrap_or_default();
    ensure!(state == "SUCCEEDED", "measurement ended {state}: {line}");
    let reach = v["reach"]
        .as_i64()
        .ok_or_else(|| anyhow!("no reach in {line}"))?;
    let expected = v["expected_reach"]
        .as_i64()
        .ok_or_else(|| anyhow!("no expected_reach in {line}"))?;
    ensure!(
        expected == ours,
        "the consumer's expected reach (its ground truth) {expected} is not the one computed \
         here, {ours}"
    );
    ensure!(reach == expected, "reach {reach}, expected {expected}");
    let empty = serde_json::Map::new();
    let f = v["frequency"].as_object().unwrap_or(&empty);
    let e = v["expected_frequency"].as_object().unwrap_or(&empty);
    for (k, b) in our_frequency {
        let a = e.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
        ensure!(
            (a - b).abs() <= 1e-9,
            "the consumer's expected bucket {k} is {a}, computed here {b}"
        );
    }
    let keys: std::collections::BTreeSet<&String> = f.keys().chain(e.keys()).collect();
    for k in keys {
        let a = f.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
        let b = e.get(k).and_then(|x| x.as_f64()).unwrap_or(0.0);
        ensure!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "frequency bucket {k}: {a}, expected {b}"
        );
    }
    Ok(format!("reach {reach}, {} buckets exact", f.len()))
}

// ---------------------------------------------------------------------------------------
// The test-sum client roles (`halo edp` / `halo mc` speak HMSS only).

/// Runs a client role: `edp` (fulfils this provider's test-sum requisitions with its vector
/// of the population as little-endian u32) or `mc` (creates a test-sum measurement, waits and
/// prints one JSON line: state, reach, frequency counts and the expected values). Both ride
/// out a Kingdom or duchy restart (bounded retries with backoff).
///
/// Arguments: `ROLE --pki DIR --kingdom URL --registers N --deadline-secs S` and, for `edp`,
/// `--id EDP --chunk-bytes N --duchy ID=URL…`.
pub fn client_main(args: &[String]) -> Result<()> {
    let (role, rest) = args
        .split_first()
        .ok_or_else(|| anyhow!("client: no role (edp or mc)"))?;
    let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .ok_or_else(|| anyhow!("client: unexpected argument {k:?}"))?;
        let v = it
            .next()
            .ok_or_else(|| anyhow!("client: --{key} needs a value"))?;
        flags.entry(key.to_string()).or_default().push(v.clone());
    }
    let one = |k: &str| -> Result<String> {
        flags
            .get(k)
            .and_then(|v| v.last().cloned())
            .ok_or_else(|| anyhow!("client {role}: --{k} is required"))
    };
    let pki = PathBuf::from(one("pki")?);
    let kingdom = one("kingdom")?;
    let registers: usize = one("registers")?.parse().context("--registers")?;
    let deadline = Duration::from_secs(one("deadline-secs")?.parse().context("--deadline-secs")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting a runtime")?;
    match role.as_str() {
        "edp" => {
            let id = one("id")?;
            let chunk: usize = one("chunk-bytes")?.parse().context("--chunk-bytes")?;
            let mut duchies = Vec::new();
            for d in flags.get("duchy").cloned().unwrap_or_default() {
                let (k, v) = d
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--duchy {d:?} is not ID=URL"))?;
                duchies.push((k.to_string(), v.to_string()));
            }
            rt.block_on(test_sum_edp(
                &pki, &kingdom, &id, duchies, registers, chunk, deadline,
            ))
        }
        "mc" => rt.block_on(test_sum_mc(&pki, &kingdom, registers, deadline)),
        other => bail!("client: unknown role {other:?} (edp or mc)"),
    }
}

/// Retries `f` with backoff (0.2 s doubling to 2 s) until it succeeds or `deadline` passes.
async fn retrying<T, F, Fut>(what: &str, deadline: Instant, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() + pause < deadline => {
                eprintln!("{what}: {e:#}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.context(format!("{what}: giving up"))),
        }
    }
}

async fn test_sum_edp(
    pki: &Path,
    kingdom: &str,
    id: &str,
    duchies: Vec<(String, String)>,
    registers: usize,
    chunk: usize,
    deadline: Duration,
) -> Result<()> {
    use halo_proto::api::v2alpha as api;
    let deadline = Instant::now() + deadline;
    let index = halo_sim::hmss::provider_index(id)
        .filter(|i| *i < PROVIDERS.len())
        .ok_or_else(|| anyhow!("{id} is not one of {PROVIDERS:?}"))?;
    let vector = population(registers).swap_remove(index);
    let data: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let remote = halo_sim::Remote::load(pki, kingdom, duchies)?;
    let who = halo_identity::Principal::DataProvider(id.to_string());
    let k = remote.kingdom_channel(&who)?;
    let reqs = retrying(&format!("{id}: listing requisitions"), deadline, || {
        let k = k.clone();
        async move {
            let r = halo_sim::edp::list(k, id).await?;
            ensure!(!r.is_empty(), "none yet");
            Ok(r)
        }
    })
    .await?;
    for r in reqs {
        let channel = remote.duchy_channel(&who, &r.fulfilling_duchy)?;
        let protocol =
            api::fulfill_requisition_request::header::Protocol::HonestMajorityShareShuffle(
                api::fulfill_requisition_request::header::HonestMajorityShareShuffle {
                    secret_seed: None,
                    register_count: i64::try_from(vector.len())?,
                    data_provider_certificate: format!("dataProviders/{id}/certificates/x"),
                },
            );
        let what = format!("{id}: fulfilling {} at {}", r.name, r.fulfilling_duchy);
        retrying(&what, deadline, || {
            let (channel, k, r, protocol, data) = (
                channel.clone(),
                k.clone(),
                r.clone(),
                protocol.clone(),
                &data,
            );
            async move {
                match halo_sim::edp::fulfill(channel, &r, Some(protocol), data, chunk).await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // Fulfilled after all (the answer was lost)? Then we are done.
                        if let Ok(listed) = halo_sim::edp::list(k, id).await
                            && !listed.iter().any(|l| l.name == r.name)
                        {
                            eprintln!("{}: {e:#}; no longer listed, so fulfilled", r.name);
                            return Ok(());
                        }
                        Err(e)
                    }
                }
            }
        })
        .await?;
        println!("{id}: fulfilled {} at {}", r.name, r.fulfilling_duchy);
    }
    Ok(())
}

async fn test_sum_mc(
    pki: &Path,
    kingdom: &str,
    registers: usize,
    deadline: Duration,
) -> Result<()> {
    use halo_proto::halo::v1 as admin;
    use halo_proto::system::v1alpha::DifferentialPrivacyParams;
    let deadline = Instant::now() + deadline;
    let remote = halo_sim::Remote::load(pki, kingdom, [])?;
    let who = halo_identity::Principal::MeasurementConsumer("mc1".into());
    let k = remote.kingdom_channel(&who)?;
    let dp = Some(DifferentialPrivacyParams {
        epsilon: 1.0,
        delta: 1e-9,
    });
    let spec = admin::MeasurementSpec {
        measurement_public_key: b"test-key".to_vec(),
        r#type: admin::measurement_spec::Type::ReachAndFrequency as i32,
        maximum_frequency: 10,
        reach_privacy_params: dp,
        frequency_privacy_params: dp,
        vid_sampling_interval_start: 0.0,
        vid_sampling_interval_width: 1.0,
        ..Default::default()
    };
    let providers: Vec<String> = PROVIDERS.iter().map(|s| s.to_string()).collect();
    // A retry after a lost answer may create a second measurement; the providers fulfil
    // everything listed and we wait for the one we were told about.
    let created = retrying("creating the measurement", deadline, || {
        halo_sim::mc::create_measurement(
            k.clone(),
            "mc1",
            admin::Protocol::HonestMajorityShareShuffle,
            spec.clone(),
            &providers,
        )
    })
    .await?;
    let name = created.measurement.name.clone();
    eprintln!("created {name} ({})", created.measurement.computation);
    let m = retrying(&format!("waiting for {name}"), deadline, || {
        let left = deadline.saturating_duration_since(Instant::now());
        halo_sim::mc::wait_until_done(k.clone(), &name, left)
    })
    .await?;
    let state = halo_sim::mc::state_name(m.state);
    let vectors = population(registers);
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    let mut expected_reach = 0i64;
    for i in 0..registers {
        let f: u32 = vectors.iter().map(|v| v.get(i).copied().unwrap_or(0)).sum();
        if f > 0 {
            expected_reach += 1;
            *expected.entry(f.to_string()).or_default() += 1.0;
        }
    }
    let mut out = serde_json::json!({
        "measurement": name,
        "computation": created.measurement.computation,
        "state": state,
        "expected_reach": expected_reach,
        "expected_frequency": expected,
    });
    if state == "SUCCEEDED" {
        // test-sum publishes its (test-only) result unencrypted.
        let r: serde_json::Value = serde_json::from_slice(&m.encrypted_result)
            .context("the test-sum result is not JSON")?;
        out["reach"] = r["reach"].clone();
        out["frequency"] = r["frequency"].clone();
        println!("{out}");
        Ok(())
    } else {
        out["failure_message"] = serde_json::json!(m.failure_message);
        println!("{out}");
        bail!("{name} ended {state}: {}", m.failure_message)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn discovery(traces: &[(&str, &[&str])]) -> Discovery {
        let mut points = BTreeMap::new();
        let mut hits = BTreeMap::new();
        for (p, lines) in traces {
            let mut distinct: Vec<(String, u32)> = Vec::new();
            for l in *lines {
                let (name, k) = parse_hit(l).unwrap();
                match distinct.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, c)) => *c = (*c).max(k),
                    None => distinct.push((name, k)),
                }
            }
            points.insert(p.to_string(), distinct);
            hits.insert(p.to_string(), lines.iter().map(|l| l.to_string()).collect());
        }
        Discovery {
            protocol: Protocol::TestSum,
            points,
            hits,
            wall: Duration::ZERO,
            dir: PathBuf::new(),
        }
    }

    #[test]
    fn sweep_list_has_every_point_once_and_chunks_in_the_middle() {
        let d = discovery(&[
            (
                "worker1",
                &[
                    "send.chunk@1",
                    "a.b:X@1",
                    "send.chunk@2",
                    "send.chunk@3",
                    "send.chunk@4",
                    "send.chunk@5",
                ],
            ),
            ("kingdom", &["kingdom.x@1", "kingdom.x@2"]),
            ("aggregator", &["recv.chunk@1", "recv.chunk@2"]),
        ]);
        let got: Vec<String> = d
            .targets()
            .iter()
            .map(|t| format!("{} {}", t.process, t.crash_at()))
            .collect();
        assert_eq!(
            got,
            [
                "kingdom kingdom.x@1",
                "aggregator recv.chunk@1",
                "aggregator recv.chunk@2",
                "worker1 send.chunk@1",
                "worker1 send.chunk@3",
                "worker1 a.b:X@1",
            ]
        );
    }

    #[test]
    fn ci_subset_names_what_the_trace_lacks() {
        let d = discovery(&[("worker1", &["plugin.random@1", "plugin.random@2"])]);
        let e = d.ci_targets().unwrap_err().to_string();
        assert!(
            e.contains("herald.processed") && e.contains("kingdom"),
            "{e}"
        );
        assert!(!e.contains("plugin.random"), "{e}");
        let d = discovery(&[
            ("worker1", &["plugin.random@1", "plugin.random@2"]),
            ("worker2", &["herald.processed@1"]),
            (
                "aggregator",
                &[
                    "mill.saved:A@1",
                    "recv.chunk@1",
                    "recv.chunk@2",
                    "recv.chunk@3",
                    "mill.saved:B@1",
                ],
            ),
            ("kingdom", &["kingdom.a@1", "kingdom.b@1", "kingdom.a@2"]),
        ]);
        let got: Vec<String> = d
            .ci_targets()
            .unwrap()
            .iter()
            .map(|t| format!("{} {}", t.process, t.crash_at()))
            .collect();
        assert_eq!(
            got,
            [
                "worker1 plugin.random@2",
                "aggregator mill.saved:B@1",
                "aggregator recv.chunk@2",
                "worker2 herald.processed@1",
                "kingdom kingdom.b@1",
            ]
        );
    }

    #[test]
    fn results_must_match_the_ground_truth_exactly() {
        let registers = 500;
        let vectors = population(registers);
        let (reach, freq) = halo_sim::hmss::truth(&vectors, MAX_FREQUENCY);
        let json = |reach: i64, freq: &BTreeMap<String, f64>| {
            serde_json::json!({
                "state": "SUCCEEDED",
                "reach": reach,
                "frequency": freq,
                "expected_reach": reach_truth(registers),
                "expected_frequency": truth_freq(registers),
            })
            .to_string()
        };
        fn reach_truth(registers: usize) -> i64 {
            halo_sim::hmss::truth(&population(registers), MAX_FREQUENCY).0
        }
        fn truth_freq(registers: usize) -> BTreeMap<String, f64> {
            halo_sim::hmss::truth(&population(registers), MAX_FREQUENCY).1
        }
        assert!(reach > 0);
        check_result(
            &format!("noise\ntest client_role ... {}", json(reach, &freq)),
            registers,
        )
        .unwrap();
        let e = check_result(&json(reach + 1, &freq), registers).unwrap_err();
        assert!(e.to_string().contains("reach"), "{e}");
        let mut off = freq.clone();
        *off.values_mut().next().unwrap() += 1e-6;
        let e = check_result(&json(reach, &off), registers).unwrap_err();
        assert!(e.to_string().contains("bucket"), "{e}");
        // A consumer whose own ground truth is not the population's is caught too.
        let e = check_result(&json(reach, &freq), registers + 100).unwrap_err();
        assert!(e.to_string().contains("ground truth"), "{e}");
        let failed = r#"{"state":"FAILED","failure_message":"x"}"#;
        assert!(check_result(failed, registers).is_err());
        assert!(check_result("no json here", registers).is_err());
    }
}
