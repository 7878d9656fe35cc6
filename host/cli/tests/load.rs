#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Load under abuse (issue 8): the Kingdom and three duchies run as separate `halo` processes
//! on loopback; N concurrent HMSS measurements (noise off) must all succeed exactly, once
//! quietly and once while one client holds many connections that never finish the TLS
//! handshake and another (an authenticated duchy) keeps streaming oversized
//! AdvanceComputation messages. Prints the wall time of both runs and the peak RSS (VmHWM) of
//! every server process.
//!
//! CI runs a small instance. The full run (20 measurements, 200 stalled connections):
//!
//! ```text
//! HALO_LOAD_MEASUREMENTS=20 HALO_LOAD_STALLED=200 HALO_LOAD_REGISTERS=100000 \
//!   cargo test --release -p halo-cli --test load -- --nocapture
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use halo_cli::edp::EdpArgs;
use halo_cli::mc::McArgs;
use halo_identity::{DevPki, Principal};
use halo_proto::system::v1alpha as sys;

const HALO: &str = env!("CARGO_BIN_EXE_halo");
const DUCHIES: [&str; 3] = ["aggregator", "worker1", "worker2"];
const SEED: u64 = 5;
const MAX_FREQUENCY: u32 = 3;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `halo` server process, killed on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn spawn(name: &str, args: &[String], log: &Path) -> Proc {
        let log = std::fs::File::create(log).unwrap();
        let child = Command::new(HALO)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Proc {
            name: name.to_string(),
            child,
        }
    }

    /// Peak resident set size (VmHWM) in MiB.
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Servers {
    procs: Vec<Proc>,
    kingdom: String,
    duchies: BTreeMap<String, String>,
    pki: PathBuf,
}

async fn wait_listening(url: &str) {
    let addr = url.trim_start_matches("https://").to_string();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{url} never listened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn start_servers(dir: &Path) -> Servers {
    let pki = dir.join("pki");
    let status = Command::new(HALO)
        .args(["pki", "--out", pki.to_str().unwrap()])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::copy(
        Path::new(halo_plugin_build::PLUGIN_DIR).join("hmss-1.0.0.wasm"),
        plugins.join("hmss-1.0.0.wasm"),
    )
    .unwrap();
    let roles = dir.join("roles.toml");
    std::fs::write(
        &roles,
        "[honest_majority_share_shuffle]\naggregator = \"aggregator\"\n\
         non_aggregators = [\"worker1\", \"worker2\"]\n",
    )
    .unwrap();
    let kingdom = format!("https://127.0.0.1:{}", free_port());
    let duchies: BTreeMap<String, String> = DUCHIES
        .iter()
        .map(|d| (d.to_string(), format!("https://127.0.0.1:{}", free_port())))
        .collect();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let mut procs = vec![Proc::spawn(
        "kingdom",
        &[
            "kingdom".into(),
            "--pki".into(),
            s(&pki),
            "--roles-file".into(),
            s(&roles),
            "--data-dir".into(),
            s(&dir.join("kingdom")),
            "--listen".into(),
            kingdom.trim_start_matches("https://").into(),
        ],
        &dir.join("kingdom.log"),
    )];
    wait_listening(&kingdom).await;
    for (id, url) in &duchies {
        let mut args: Vec<String> = vec![
            "duchy".into(),
            "--id".into(),
            id.clone(),
            "--pki".into(),
            s(&pki),
            "--roles-file".into(),
            s(&roles),
            "--data-dir".into(),
            s(&dir.join(format!("duchy-{id}"))),
            "--listen".into(),
            url.trim_start_matches("https://").into(),
            "--kingdom".into(),
            kingdom.clone(),
            "--plugins".into(),
            s(&plugins),
        ];
        for (peer, peer_url) in &duchies {
            if peer != id {
                args.push("--peer".into());
                args.push(format!("{peer}={peer_url}"));
            }
        }
        procs.push(Proc::spawn(
            &format!("duchy {id}"),
            &args,
            &dir.join(format!("duchy-{id}.log")),
        ));
    }
    for url in duchies.values() {
        wait_listening(url).await;
    }
    Servers {
        procs,
        kingdom,
        duchies,
        pki,
    }
}

/// Runs `n` concurrent HMSS measurements through the `halo mc` / `halo edp` code paths and
/// checks each result against the ground truth. Returns the wall time.
async fn measure(servers: &Servers, n: usize, registers: usize) -> Duration {
    let pki = servers.pki.to_str().unwrap().to_string();
    let registers_s = registers.to_string();
    let started = Instant::now();
    let mut consumers = Vec::new();
    for _ in 0..n {
        let args = McArgs::try_parse_from([
            "mc",
            "--pki",
            &pki,
            "--kingdom",
            &servers.kingdom,
            "--data-providers",
            "edp1,edp2,edp3",
            "--max-frequency",
            &MAX_FREQUENCY.to_string(),
            "--truth-seed",
            &SEED.to_string(),
            "--truth-registers",
            &registers_s,
            "--timeout-secs",
            "1200",
            "--json",
        ])
        .unwrap();
        consumers.push(halo_cli::mc::run(args));
    }
    // Each provider fulfils every requisition it is given until it has done all n.
    let mut providers = Vec::new();
    for id in ["edp1", "edp2", "edp3"] {
        let mut argv: Vec<String> = [
            "edp",
            "--pki",
            &pki,
            "--kingdom",
            &servers.kingdom,
            "--id",
            id,
            "--seed",
            &SEED.to_string(),
            "--providers",
            "3",
            "--registers",
            &registers_s,
            "--max-frequency",
            &MAX_FREQUENCY.to_string(),
            "--wait-secs",
            "120",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (d, url) in &servers.duchies {
            argv.push("--duchy".into());
            argv.push(format!("{d}={url}"));
        }
        let args = EdpArgs::try_parse_from(argv).unwrap();
        providers.push(async move {
            let mut done = 0;
            while done < n {
                done += halo_cli::edp::run(args.clone()).await.unwrap().len();
            }
            done
        });
    }
    // (The simulators hold a thread-local RNG across awaits: run them concurrently on this
    // task rather than spawned.)
    let (reports, fulfilled) = tokio::join!(
        futures::future::join_all(consumers),
        futures::future::join_all(providers)
    );
    for done in fulfilled {
        assert_eq!(done, n);
    }
    let vectors = halo_sim::hmss::population(SEED, 3, registers, MAX_FREQUENCY, 0.3);
    let (reach, freq) = halo_sim::hmss::truth(&vectors, MAX_FREQUENCY);
    for report in reports {
        let report = report.unwrap();
        assert_eq!(report.result.reach, reach, "{}", report.measurement);
        assert_eq!(report.result.frequency.len(), freq.len());
        for (k, v) in &freq {
            assert!(
                (report.result.frequency[k] - v).abs() < 1e-12,
                "{}: bucket {k}: {} vs {v}",
                report.measurement,
                report.result.frequency[k]
            );
        }
    }
    started.elapsed()
}

/// Holds `count` TCP connections spread over all servers that never send a byte of TLS;
/// reopens those the servers close (handshake timeout) until `stop`.
async fn stall_handshakes(
    targets: Vec<String>,
    count: usize,
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
) {
    let mut tasks = Vec::new();
    for i in 0..count {
        let addr = targets[i % targets.len()]
            .trim_start_matches("https://")
            .to_string();
        let stop = stop.clone();
        let reopened = reopened.clone();
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut buf = [0u8; 64];
                // Wait until the server gives up on us (or we are told to stop).
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
                reopened.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// As worker1 (an authenticated peer), keeps streaming AdvanceComputation calls to the
/// aggregator whose chunks exceed the message-size limit. Returns the status codes seen.
async fn oversized_advances(servers: &Servers, stop: Arc<AtomicBool>) -> BTreeMap<String, u64> {
    let pki = DevPki::load(&servers.pki).unwrap();
    let trust = pki.trust_store().unwrap();
    let id = pki
        .identity(&Principal::Duchy("worker1".into()))
        .unwrap()
        .clone();
    let url = servers.duchies["aggregator"].clone();
    let mut codes = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let channel = id
            .channel(&trust, &Principal::Duchy("aggregator".into()), &url)
            .unwrap();
        let mut client = sys::computation_control_client::ComputationControlClient::new(channel)
            .max_encoding_message_size(usize::MAX);
        let header = sys::AdvanceComputationRequest {
            payload: Some(sys::advance_computation_request::Payload::Header(
                sys::advance_computation_request::Header {
                    name: "computations/load-abuse".into(),
                    ..Default::default()
                },
            )),
        };
        let chunk = |_| sys::AdvanceComputationRequest {
            payload: Some(sys::advance_computation_request::Payload::BodyChunk(
                sys::advance_computation_request::BodyChunk {
                    partial_data: vec![0x5a; 32 << 20],
                },
            )),
        };
        // Alternately: an oversized first message, and a header followed by oversized chunks.
        let round: u64 = codes.values().sum();
        let body: Vec<_> = if round.is_multiple_of(2) {
            (0..4).map(chunk).collect()
        } else {
            std::iter::once(header).chain((0..4).map(chunk)).collect()
        };
        let code = match client.advance_computation(tokio_stream::iter(body)).await {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        *codes.entry(code).or_insert(0) += 1;
    }
    codes
}

fn report(label: &str, wall: Duration, servers: &Servers) {
    let rss: Vec<String> = servers
        .procs
        .iter()
        .map(|p| format!("{} {:.0} MiB", p.name, p.peak_rss_mib()))
        .collect();
    println!(
        "LOAD {label}: wall {:.2} s; peak RSS: {}",
        wall.as_secs_f64(),
        rss.join(", ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_measurements_succeed_exactly_under_abuse() {
    let n = env_or("HALO_LOAD_MEASUREMENTS", 3);
    let stalled = env_or("HALO_LOAD_STALLED", 40);
    let registers = env_or("HALO_LOAD_REGISTERS", 20_000);
    println!("LOAD {n} concurrent HMSS measurements of {registers} registers");

    // Quiet run.
    let dir = tempfile::tempdir().unwrap();
    let servers = start_servers(dir.path()).await;
    let quiet = measure(&servers, n, registers).await;
    report("quiet", quiet, &servers);
    drop(servers);

    // The same under abuse, on a fresh cluster.
    let dir = tempfile::tempdir().unwrap();
    let servers = start_servers(dir.path()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let reopened = Arc::new(AtomicU64::new(0));
    let mut targets = vec![servers.kingdom.clone()];
    targets.extend(servers.duchies.values().cloned());
    let stall = tokio::spawn(stall_handshakes(
        targets,
        stalled,
        stop.clone(),
        reopened.clone(),
    ));
    // Let the stalled connections pile up first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let servers = Arc::new(servers);
    let abuse = tokio::spawn({
        let servers = servers.clone();
        let stop = stop.clone();
        async move { oversized_advances(&servers, stop).await }
    });
    let abused = measure(&servers, n, registers).await;
    stop.store(true, Ordering::Relaxed);
    let codes = abuse.await.unwrap();
    stall.await.unwrap();
    report("abused", abused, &servers);
    println!(
        "LOAD abuse: {stalled} stalled handshakes held ({} closed by the servers and reopened); \
         oversized AdvanceComputation calls by status: {codes:?}; wall abused/quiet {:.2}",
        reopened.load(Ordering::Relaxed),
        abused.as_secs_f64() / quiet.as_secs_f64()
    );
    assert!(
        !codes.contains_key("OK"),
        "an oversized AdvanceComputation was accepted: {codes:?}"
    );
    assert!(
        codes.values().sum::<u64>() > 0,
        "the abuser never got an answer"
    );
}
