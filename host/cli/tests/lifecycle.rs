#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Lifecycle of `halo duchy` and `halo kingdom` as real processes on loopback (issue 10):
//! SIGTERM during a stage (finished within the grace period, or abandoned with its lease
//! released), SIGTERM to the Kingdom while the duchies stream, `/healthz`, `/readyz` and the
//! gRPC health service over mTLS. A measurement interrupted by a SIGTERM must still end with
//! the exact noise-free result (the kill-point harness's ground-truth check).
//!
//! "During a stage" is made deterministic by a pause point of this test build of `halo`
//! (`HALO_PAUSE_AT=mill.execute:STAGE:MILLIS`, `HALO_PAUSE_MARKER=FILE`): the mill sleeps
//! right before running the stage and writes the marker, which is when the test signals.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../../../tests/killpoints/src/lib.rs"]
mod killpoints;

use killpoints::{ClientLauncher, DUCHIES, Harness, Options, PROVIDERS, Protocol};

const HALO: &str = env!("CARGO_BIN_EXE_halo");
/// Every wait of these tests is bounded by this (a hang is a failure, not a timing check).
const BOUND: Duration = Duration::from_secs(240);
/// The stage the pause point holds, run by the non-aggregators.
const STAGE: &str = "SHUFFLE_PHASE";

fn harness() -> Harness {
    // The test-sum clients are not used here.
    let launcher = ClientLauncher {
        program: PathBuf::from(HALO),
        args: Vec::new(),
        via_env: None,
    };
    Harness::new(
        Path::new(HALO),
        Path::new(halo_plugin_build::PLUGIN_DIR),
        launcher,
        Options::default(),
        None,
    )
    .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `halo` process, restartable with the same arguments.
struct Node {
    name: String,
    dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    incarnation: u32,
}

impl Node {
    fn new(name: &str, dir: &Path, args: Vec<String>) -> Node {
        Node {
            name: name.into(),
            dir: dir.to_path_buf(),
            args,
            env: vec![("RUST_LOG".into(), "info".into())],
            child: None,
            incarnation: 0,
        }
    }

    fn log(&self) -> PathBuf {
        self.dir
            .join(format!("{}.{}.log", self.name, self.incarnation))
    }

    fn out(&self) -> PathBuf {
        self.dir
            .join(format!("{}.{}.out", self.name, self.incarnation))
    }

    fn start(&mut self, extra_env: &[(&str, String)]) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.incarnation += 1;
        let mut cmd = Command::new(HALO);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(File::create(self.out()).unwrap())
            .stderr(File::create(self.log()).unwrap());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("HALO_") {
                cmd.env_remove(&k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
        self.child = Some(cmd.spawn().unwrap());
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Sends SIGTERM (as an orchestrator does).
    fn sigterm(&self) -> Instant {
        let pid = self.child.as_ref().unwrap().id();
        let at = Instant::now();
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill -TERM {pid}");
        at
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().unwrap()?;
        self.child = None;
        Some(status)
    }

    /// Waits for the process to exit (bounded by `bound`).
    fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let until = Instant::now() + bound;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            assert!(
                Instant::now() < until,
                "{} did not exit within {bound:?}:\n{}",
                self.name,
                tail(&self.log_text(), 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_running(&mut self) {
        if let Some(s) = self.try_exit() {
            panic!(
                "{} exited ({s}):\n{}",
                self.name,
                tail(&self.log_text(), 30)
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + BOUND;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_listening(port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(&format!("a listener on {port}"), || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// `GET path` over HTTP/1.1: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let code = r.split_whitespace().nth(1)?.parse().ok()?;
    let body = r.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The Kingdom, three duchies, three data providers and the consumer of an HMSS
/// reach-and-frequency measurement, with noise off.
struct Cluster {
    h: Harness,
    dir: PathBuf,
    kingdom: Node,
    kingdom_port: u16,
    duchies: BTreeMap<&'static str, Node>,
    duchy_ports: BTreeMap<&'static str, u16>,
    metrics_ports: BTreeMap<String, u16>,
    clients: Vec<Node>,
}

impl Cluster {
    /// `duchy_args`: more arguments per duchy.
    fn new(duchy_args: &[(&str, Vec<String>)]) -> Cluster {
        let h = harness();
        let dir = h.root().join("run");
        fs::create_dir_all(&dir).unwrap();
        let s = |p: &Path| p.to_string_lossy().to_string();
        let pki = h.root().join("pki");
        let roles = h.root().join(killpoints::ROLES_FILE);
        let plugins = h
            .root()
            .join(format!("plugins-{}", Protocol::HmssReachFrequency.name()));
        let kingdom_port = free_port();
        let kingdom_url = format!("https://127.0.0.1:{kingdom_port}");
        let mut metrics_ports = BTreeMap::new();
        let kingdom_metrics = free_port();
        metrics_ports.insert("kingdom".to_string(), kingdom_metrics);
        let kingdom = Node::new(
            "kingdom",
            &dir,
            vec![
                "kingdom".into(),
                "--pki".into(),
                s(&pki),
                "--roles-file".into(),
                s(&roles),
                "--data-dir".into(),
                s(&dir.join("kingdom")),
                "--listen".into(),
                format!("127.0.0.1:{kingdom_port}"),
                "--metrics-listen".into(),
                format!("127.0.0.1:{kingdom_metrics}"),
            ],
        );
        let duchy_ports: BTreeMap<&'static str, u16> =
            DUCHIES.iter().map(|d| (*d, free_port())).collect();
        let mut duchies = BTreeMap::new();
        for d in DUCHIES {
            let metrics = free_port();
            metrics_ports.insert(d.to_string(), metrics);
            let mut args: Vec<String> = vec![
                "duchy".into(),
                "--id".into(),
                d.into(),
                "--pki".into(),
                s(&pki),
                "--roles-file".into(),
                s(&roles),
                "--data-dir".into(),
                s(&dir.join(format!("duchy-{d}"))),
                "--listen".into(),
                format!("127.0.0.1:{}", duchy_ports[d]),
                "--kingdom".into(),
                kingdom_url.clone(),
                "--plugins".into(),
                s(&plugins),
                "--cache-dir".into(),
                s(&h.root().join("plugin-cache")),
                "--retry-max-secs".into(),
                "2".into(),
                "--metrics-listen".into(),
                format!("127.0.0.1:{metrics}"),
            ];
            for peer in DUCHIES.iter().filter(|p| **p != d) {
                args.push("--peer".into());
                args.push(format!("{peer}=https://127.0.0.1:{}", duchy_ports[peer]));
            }
            for (who, extra) in duchy_args {
                if *who == d {
                    args.extend(extra.iter().cloned());
                }
            }
            duchies.insert(d, Node::new(d, &dir, args));
        }
        Cluster {
            h,
            dir,
            kingdom,
            kingdom_port,
            duchies,
            duchy_ports,
            metrics_ports,
            clients: Vec::new(),
        }
    }

    fn kingdom_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.kingdom_port)
    }

    fn start_kingdom(&mut self) {
        self.kingdom.start(&[]);
        wait_listening(self.kingdom_port);
    }

    fn start_duchy(&mut self, d: &str, env: &[(&str, String)]) {
        let n = self.duchies.get_mut(d).unwrap();
        n.start(env);
        wait_listening(self.duchy_ports[d]);
    }

    /// The consumer and the data providers.
    fn start_measurement(&mut self) {
        let s = |p: &Path| p.to_string_lossy().to_string();
        let pki = s(&self.h.root().join("pki"));
        let registers = self.h.opts.registers.to_string();
        let timeout = BOUND.as_secs().to_string();
        let mut mc = Node::new(
            "mc",
            &self.dir,
            vec![
                "mc".into(),
                "--pki".into(),
                pki.clone(),
                "--kingdom".into(),
                self.kingdom_url(),
                "--data-providers".into(),
                PROVIDERS.join(","),
                "--max-frequency".into(),
                killpoints::MAX_FREQUENCY.to_string(),
                "--noise".into(),
                "none".into(),
                "--truth-seed".into(),
                killpoints::SEED.to_string(),
                "--truth-providers".into(),
                PROVIDERS.len().to_string(),
                "--truth-registers".into(),
                registers.clone(),
                "--truth-overlap".into(),
                killpoints::OVERLAP.to_string(),
                "--timeout-secs".into(),
                timeout.clone(),
                "--json".into(),
            ],
        );
        mc.env = vec![("RUST_LOG".into(), "warn".into())];
        mc.start(&[]);
        self.clients.push(mc);
        for e in PROVIDERS {
            let mut args: Vec<String> = vec![
                "edp".into(),
                "--pki".into(),
                pki.clone(),
                "--kingdom".into(),
                self.kingdom_url(),
                "--id".into(),
                e.into(),
                "--seed".into(),
                killpoints::SEED.to_string(),
                "--providers".into(),
                PROVIDERS.len().to_string(),
                "--registers".into(),
                registers.clone(),
                "--max-frequency".into(),
                killpoints::MAX_FREQUENCY.to_string(),
                "--overlap".into(),
                killpoints::OVERLAP.to_string(),
                "--wait-secs".into(),
                timeout.clone(),
            ];
            for d in DUCHIES {
                args.push("--duchy".into());
                args.push(format!("{d}=https://127.0.0.1:{}", self.duchy_ports[d]));
            }
            let mut n = Node::new(e, &self.dir, args);
            n.env = vec![("RUST_LOG".into(), "warn".into())];
            n.start(&[]);
            self.clients.push(n);
        }
    }

    /// Waits for the consumer's result and checks it against the ground truth.
    fn assert_exact_result(&mut self) -> String {
        let until = Instant::now() + BOUND;
        loop {
            let mc = &mut self.clients[0];
            if let Some(status) = mc.try_exit() {
                let out = fs::read_to_string(mc.out()).unwrap_or_default();
                assert!(
                    status.success(),
                    "the consumer failed ({status}): {out}\n{}",
                    tail(&mc.log_text(), 20)
                );
                return killpoints::check_result(&out, self.h.opts.registers)
                    .unwrap_or_else(|e| panic!("{e:#}\n{out}"));
            }
            assert!(
                Instant::now() < until,
                "no result within {BOUND:?}; logs in {}",
                self.dir.display()
            );
            for n in self.duchies.values_mut() {
                if n.child.is_some() {
                    n.assert_running();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn pause_env(marker: &Path, millis: u64) -> Vec<(&'static str, String)> {
    vec![
        ("HALO_PAUSE_AT", format!("mill.execute:{STAGE}:{millis}")),
        ("HALO_PAUSE_MARKER", marker.to_string_lossy().to_string()),
    ]
}

/// SIGTERM to a duchy while its stage runs, with the default grace period (30 s): the stage
/// finishes, the process exits 0, and after a restart the measurement ends exactly.
#[test]
fn sigterm_during_a_stage_lets_it_finish_then_exits_0() {
    let mut c = Cluster::new(&[]);
    let marker = c.dir.join("paused");
    c.start_kingdom();
    for d in DUCHIES {
        let env = if d == "worker1" {
            pause_env(&marker, 2000)
        } else {
            Vec::new()
        };
        c.start_duchy(d, &env);
    }
    c.start_measurement();
    wait_until("worker1 to pause in its stage", || marker.exists());
    let w = c.duchies.get_mut("worker1").unwrap();
    let sent = w.sigterm();
    let status = w.wait_exit(BOUND);
    let took = sent.elapsed();
    let log = w.log_text();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", tail(&log, 30));
    eprintln!(
        "worker1: SIGTERM to exit in {:.3} s (stage finished)",
        took.as_secs_f64()
    );
    assert!(log.contains("SIGTERM received"), "{}", tail(&log, 30));
    assert!(
        log.contains("stages_finished=true"),
        "the stage must finish within the grace period:\n{}",
        tail(&log, 30)
    );
    assert!(
        !log.contains("lease released"),
        "nothing to release:\n{}",
        tail(&log, 30)
    );
    // The stage ran to its end: its outcome was saved before the process stopped.
    assert!(log.contains("claimed stage"), "{}", tail(&log, 30));
    c.start_duchy("worker1", &[]);
    let note = c.assert_exact_result();
    eprintln!("result after the restart: {note}");
}

/// SIGTERM to a duchy whose stage outlasts a 1 s grace period: the stage is abandoned, its
/// lease released without counting the attempt, the process exits 0 at once; the restarted
/// duchy finds no lease to free and runs the stage again as attempt 1 (with a one-hour lease,
/// waiting for it to expire would never finish).
#[test]
fn sigterm_with_a_stage_outlasting_the_grace_releases_its_lease() {
    let long = vec![
        "--shutdown-grace-secs".to_string(),
        "1".to_string(),
        "--lease-secs".to_string(),
        "3600".to_string(),
    ];
    let mut c = Cluster::new(&[("worker1", long)]);
    let marker = c.dir.join("paused");
    c.start_kingdom();
    for d in DUCHIES {
        let env = if d == "worker1" {
            // Ten minutes: far beyond the grace period and the test's bound.
            pause_env(&marker, 600_000)
        } else {
            Vec::new()
        };
        c.start_duchy(d, &env);
    }
    c.start_measurement();
    wait_until("worker1 to pause in its stage", || marker.exists());
    let w = c.duchies.get_mut("worker1").unwrap();
    let sent = w.sigterm();
    // Had it waited for the stage, it would still be paused for ten minutes.
    let status = w.wait_exit(Duration::from_secs(60));
    let took = sent.elapsed();
    let log = w.log_text();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", tail(&log, 30));
    eprintln!(
        "worker1: SIGTERM to exit in {:.3} s (1 s grace, stage abandoned)",
        took.as_secs_f64()
    );
    assert!(
        log.contains("stage interrupted, lease released"),
        "{}",
        tail(&log, 30)
    );
    assert!(log.contains("stages_finished=false"), "{}", tail(&log, 30));
    c.start_duchy("worker1", &[]);
    let note = c.assert_exact_result();
    eprintln!("result after the restart: {note}");
    let w = c.duchies.get_mut("worker1").unwrap();
    let log = w.log_text();
    assert!(
        !log.contains("freed the leases of a previous process"),
        "the lease was released at shutdown, nothing is left to free:\n{}",
        tail(&log, 30)
    );
    let again = log
        .lines()
        .find(|l| l.contains("claimed stage") && l.contains(&format!("stage={STAGE}")))
        .unwrap_or_else(|| {
            panic!(
                "the restarted worker1 never ran {STAGE}:\n{}",
                tail(&log, 30)
            )
        });
    assert!(
        again.contains("attempt=1"),
        "the interrupted claim must not count as an attempt: {again}"
    );
}

/// `/healthz`, `/readyz` (not ready without the Kingdom, nor without a plugin) and the gRPC
/// health service over mTLS, on a duchy and the Kingdom.
#[test]
fn readiness_and_health_follow_the_real_state() {
    let mut c = Cluster::new(&[]);
    let empty = c.dir.join("no-plugins");
    fs::create_dir_all(&empty).unwrap();
    // worker2 starts with an empty plugin directory.
    let w2 = c.duchies.get_mut("worker2").unwrap();
    let i = w2.args.iter().position(|a| a == "--plugins").unwrap();
    w2.args[i + 1] = empty.to_string_lossy().to_string();
    // The duchies first, the Kingdom not yet up.
    c.start_duchy("worker1", &[]);
    c.start_duchy("worker2", &[]);
    let m1 = c.metrics_ports["worker1"];
    let m2 = c.metrics_ports["worker2"];
    wait_listening(m1);
    wait_listening(m2);
    assert_eq!(http_get(m1, "/healthz").unwrap().0, 200);
    let (code, body) = http_get(m1, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready kingdom"), "{body}");
    assert!(
        body.contains("ok store") && body.contains("ok plugins"),
        "{body}"
    );
    // Check names and states only on the plain-HTTP port: no Kingdom URL, plugin digest or
    // path (those go to the log).
    assert!(
        !body.contains('/') && !body.contains("hmss"),
        "details on /readyz: {body}"
    );
    let (code, body) = http_get(m2, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready plugins"), "{body}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = halo_identity::DevPki::load(&c.h.root().join("pki")).unwrap();
    let trust = pki.trust_store().unwrap();
    let me = pki
        .identity(&halo_identity::Principal::DataProvider("edp1".into()))
        .unwrap()
        .clone();
    let status_of = |server: halo_identity::Principal, port: u16| {
        let (me, trust) = (me.clone(), trust.clone());
        async move {
            let channel = me
                .channel(&trust, &server, &format!("https://127.0.0.1:{port}"))
                .unwrap();
            let mut client = halo_ops::pb::HealthClient::new(channel);
            let r = client
                .check(halo_ops::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .unwrap();
            r.into_inner().status
        }
    };
    let serving = halo_ops::pb::ServingStatus::Serving as i32;
    let not_serving = halo_ops::pb::ServingStatus::NotServing as i32;
    let w1 = halo_identity::Principal::Duchy("worker1".into());
    assert_eq!(
        rt.block_on(status_of(w1.clone(), c.duchy_ports["worker1"])),
        not_serving
    );

    c.start_kingdom();
    let km = c.metrics_ports["kingdom"];
    wait_listening(km);
    wait_until("the Kingdom's /readyz", || {
        http_get(km, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    assert_eq!(http_get(km, "/healthz").unwrap().0, 200);
    wait_until("worker1's /readyz", || {
        http_get(m1, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    let (code, body) = http_get(m1, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        body.contains("halo_duchy_plugin_loaded{") && body.ends_with("# EOF\n"),
        "{body}"
    );
    wait_until("worker1 SERVING", || {
        rt.block_on(status_of(w1.clone(), c.duchy_ports["worker1"])) == serving
    });
    wait_until("the Kingdom SERVING", || {
        rt.block_on(status_of(halo_identity::Principal::Kingdom, c.kingdom_port)) == serving
    });
    // worker2 reaches the Kingdom but has no plugin: still not ready, until one arrives.
    let (code, body) = http_get(m2, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not ready plugins"), "{body}");
    let plugin = Protocol::HmssReachFrequency.plugin_file();
    fs::copy(
        Path::new(halo_plugin_build::PLUGIN_DIR).join(plugin),
        empty.join(plugin),
    )
    .unwrap();
    wait_until("worker2's /readyz once its plugin is there", || {
        http_get(m2, "/readyz").is_some_and(|(code, _)| code == 200)
    });
    for d in ["worker1", "worker2"] {
        let n = c.duchies.get_mut(d).unwrap();
        let sent = n.sigterm();
        assert_eq!(n.wait_exit(BOUND).code(), Some(0));
        eprintln!(
            "{d}: SIGTERM to exit in {:.3} s (idle)",
            sent.elapsed().as_secs_f64()
        );
    }
    c.kingdom.sigterm();
    assert_eq!(c.kingdom.wait_exit(BOUND).code(), Some(0));
}

/// SIGTERM to the Kingdom while the duchies follow its stream: it exits 0, ending each
/// stream normally (each herald says so and resumes from its token); after a restart the
/// measurement ends exactly.
#[test]
fn sigterm_to_the_kingdom_ends_streams_cleanly() {
    let mut c = Cluster::new(&[]);
    let marker = c.dir.join("paused");
    c.start_kingdom();
    for d in DUCHIES {
        let env = if d == "worker1" {
            pause_env(&marker, 1000)
        } else {
            Vec::new()
        };
        c.start_duchy(d, &env);
    }
    c.start_measurement();
    wait_until("worker1 to pause in its stage", || marker.exists());
    let sent = c.kingdom.sigterm();
    let status = c.kingdom.wait_exit(BOUND);
    let took = sent.elapsed();
    let log = c.kingdom.log_text();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", tail(&log, 30));
    eprintln!("kingdom: SIGTERM to exit in {:.3} s", took.as_secs_f64());
    assert!(log.contains("kingdom stopped"), "{}", tail(&log, 30));
    for d in DUCHIES {
        let n = &c.duchies[d];
        wait_until(&format!("{d} to see the stream end"), || {
            n.log_text()
                .contains("the Kingdom ended the active-computations stream")
        });
    }
    c.start_kingdom();
    let note = c.assert_exact_result();
    eprintln!("result after the Kingdom's restart: {note}");
}

/// SIGTERM while the duchy is still starting (held at the `duchy.start` pause point, after
/// its plugins were loaded): the handler is already installed, start-up is abandoned and the
/// process exits 0 (not killed by the signal).
#[test]
fn sigterm_during_start_up_exits_0() {
    let mut c = Cluster::new(&[]);
    let marker = c.dir.join("starting");
    let w = c.duchies.get_mut("worker1").unwrap();
    w.start(&[
        ("HALO_PAUSE_AT", "duchy.start:600000".to_string()),
        ("HALO_PAUSE_MARKER", marker.to_string_lossy().to_string()),
    ]);
    wait_until("worker1 to pause in its start-up", || marker.exists());
    w.sigterm();
    let status = w.wait_exit(BOUND);
    let log = w.log_text();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", tail(&log, 30));
    assert!(
        log.contains("SIGTERM received during start-up"),
        "{}",
        tail(&log, 30)
    );
}

/// A second SIGTERM during the grace period (a stage paused for ten minutes, a one-hour
/// grace period): the process exits at once with 143 (128 + SIGTERM) and says so; its lease
/// is freed by the next start, and the measurement still ends exactly.
#[test]
fn a_second_sigterm_exits_at_once() {
    let long_grace = vec!["--shutdown-grace-secs".to_string(), "3600".to_string()];
    let mut c = Cluster::new(&[("worker1", long_grace)]);
    let marker = c.dir.join("paused");
    c.start_kingdom();
    for d in DUCHIES {
        let env = if d == "worker1" {
            pause_env(&marker, 600_000)
        } else {
            Vec::new()
        };
        c.start_duchy(d, &env);
    }
    c.start_measurement();
    wait_until("worker1 to pause in its stage", || marker.exists());
    let w = c.duchies.get_mut("worker1").unwrap();
    w.sigterm();
    wait_until("worker1 to begin its graceful shutdown", || {
        w.log_text().contains("SIGTERM received: shutting down")
    });
    w.sigterm();
    let status = w.wait_exit(BOUND);
    let log = w.log_text();
    assert_eq!(status.code(), Some(143), "{status}:\n{}", tail(&log, 30));
    assert!(
        log.contains("second stop signal (SIGTERM) received"),
        "{}",
        tail(&log, 30)
    );
    assert!(!log.contains("duchy stopped"), "{}", tail(&log, 30));
    c.start_duchy("worker1", &[]);
    let note = c.assert_exact_result();
    eprintln!("result after the restart: {note}");
    // The stage left behind runs again in the new process. Whether its lease was still held
    // (then freed at start-up) or already given back by the exiting process as its runtime
    // shut down depends on timing; either way nothing waits for the lease to expire.
    let log = c.duchies["worker1"].log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("claimed stage") && l.contains(STAGE)),
        "the stage left behind runs again after the restart:\n{}",
        tail(&log, 30)
    );
}

/// Shutdown begins while a worker's claim is in flight (held at the `mill.claim_returned`
/// pause point until the shutdown): the claim is given back without running the stage or
/// counting an attempt; after a restart the stage runs as attempt 1 and the result is exact.
#[test]
fn a_claim_returned_after_shutdown_began_is_given_back() {
    let mut c = Cluster::new(&[]);
    let marker = c.dir.join("claimed");
    c.start_kingdom();
    for d in DUCHIES {
        let env = if d == "worker1" {
            vec![
                ("HALO_PAUSE_AT", "mill.claim_returned:600000".to_string()),
                ("HALO_PAUSE_MARKER", marker.to_string_lossy().to_string()),
            ]
        } else {
            Vec::new()
        };
        c.start_duchy(d, &env);
    }
    c.start_measurement();
    wait_until("worker1 to hold a fresh claim", || marker.exists());
    let w = c.duchies.get_mut("worker1").unwrap();
    w.sigterm();
    let status = w.wait_exit(BOUND);
    let log = w.log_text();
    assert_eq!(status.code(), Some(0), "{status}:\n{}", tail(&log, 30));
    assert!(
        log.contains("claim given back before its stage started"),
        "{}",
        tail(&log, 30)
    );
    assert!(
        !log.contains(killpoints::CLAIM_MARKER),
        "no stage may start once shutdown began:\n{}",
        tail(&log, 30)
    );
    c.start_duchy("worker1", &[]);
    let note = c.assert_exact_result();
    eprintln!("result after the restart: {note}");
    let log = c.duchies["worker1"].log_text();
    let first = log
        .lines()
        .find(|l| l.contains(killpoints::CLAIM_MARKER))
        .unwrap_or_else(|| panic!("the restarted worker1 ran no stage:\n{}", tail(&log, 30)));
    assert!(
        first.contains("attempt=1"),
        "the claim given back must not count as an attempt: {first}"
    );
}

/// The roles file of worker1 is edited (its two non-aggregators swapped) and worker1
/// restarted in the middle of a measurement: the computation fails with a message naming
/// the change, instead of worker1 playing another role than the one it started with.
#[test]
fn a_roles_file_changed_mid_computation_fails_it() {
    let long = vec![
        "--shutdown-grace-secs".to_string(),
        "1".to_string(),
        "--lease-secs".to_string(),
        "3600".to_string(),
    ];
    let mut c = Cluster::new(&[("worker1", long)]);
    let own = c.dir.join("worker1-roles.toml");
    let roles = fs::read_to_string(c.h.root().join(killpoints::ROLES_FILE)).unwrap();
    fs::write(&own, &roles).unwrap();
    let w = c.duchies.get_mut("worker1").unwrap();
    let i = w.args.iter().position(|a| a == "--roles-file").unwrap();
    w.args[i + 1] = own.to_string_lossy().to_string();
    let marker = c.dir.join("paused");
    c.start_kingdom();
    for d in DUCHIES {
        let env = if d == "worker1" {
            pause_env(&marker, 600_000)
        } else {
            Vec::new()
        };
        c.start_duchy(d, &env);
    }
    c.start_measurement();
    wait_until("worker1 to pause in its stage", || marker.exists());
    let w = c.duchies.get_mut("worker1").unwrap();
    w.sigterm();
    assert_eq!(
        w.wait_exit(BOUND).code(),
        Some(0),
        "{}",
        tail(&w.log_text(), 30)
    );
    let swapped = roles.replace(
        r#"non_aggregators = ["worker1", "worker2"]"#,
        r#"non_aggregators = ["worker2", "worker1"]"#,
    );
    assert_ne!(swapped, roles);
    fs::write(&own, swapped).unwrap();
    c.start_duchy("worker1", &[]);
    let mc = &mut c.clients[0];
    let status = mc.wait_exit(BOUND);
    assert!(!status.success(), "the measurement must fail");
    let log = c.duchies["worker1"].log_text();
    assert!(
        log.contains("the roles file changed while the computation was running"),
        "{}",
        tail(&log, 30)
    );
}
