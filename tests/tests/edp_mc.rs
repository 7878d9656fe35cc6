#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `halo mc` and `halo edp` against separately running servers: the functions the
//! subcommands run, with their command lines parsed by clap, load the PKI from disk and talk
//! to a real Kingdom and three duchies (real `hmss` plugin) over mutual TLS. Without noise
//! the result equals the ground truth of the synthetic population.

use clap::Parser;
use halo_cli::edp::EdpArgs;
use halo_cli::mc::McArgs;
use halo_tests::*;

const REGISTERS: &str = "5000";
const SEED: &str = "11";
const MAX_FREQUENCY: &str = "4";

fn edp_args(pki: &str, kingdom: &str, duchies: &[String], extra: &[&str]) -> EdpArgs {
    let mut argv: Vec<String> = ["edp", "--pki", pki, "--kingdom", kingdom]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for d in duchies {
        argv.push("--duchy".into());
        argv.push(d.clone());
    }
    argv.extend(
        [
            "--seed",
            SEED,
            "--providers",
            "3",
            "--registers",
            REGISTERS,
            "--max-frequency",
            MAX_FREQUENCY,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string()),
    );
    EdpArgs::try_parse_from(argv).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halo_mc_and_halo_edp_measure_the_ground_truth_without_noise() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_hmss_cluster(dir.path()).await.unwrap();
    let pki = dir.path().join("c").join("pki");
    let pki = pki.to_str().unwrap();
    let kingdom = cluster.kingdom_url();
    let duchies: Vec<String> = halo_sim::DUCHIES
        .iter()
        .map(|d| format!("{d}={}", cluster.duchy_url(d).unwrap()))
        .collect();

    let consumer = McArgs::try_parse_from([
        "mc",
        "--pki",
        pki,
        "--kingdom",
        &kingdom,
        "--data-providers",
        "edp1,edp2,edp3",
        "--max-frequency",
        MAX_FREQUENCY,
        "--truth-seed",
        SEED,
        "--truth-registers",
        REGISTERS,
        "--timeout-secs",
        "120",
        "--json",
    ])
    .unwrap();
    let providers: Vec<EdpArgs> = ["edp1", "edp2", "edp3"]
        .iter()
        .map(|id| edp_args(pki, &kingdom, &duchies, &["--id", id, "--wait-secs", "60"]))
        .collect();
    // The consumer creates the measurement and waits; meanwhile the data providers poll
    // for their requisitions and fulfil them, one after the other.
    let (report, fulfilled) = tokio::join!(halo_cli::mc::run(consumer), async {
        let mut all = Vec::new();
        for p in providers {
            all.push(halo_cli::edp::run(p).await?);
        }
        anyhow::Ok(all)
    });
    let report = report.unwrap();
    let fulfilled = fulfilled.unwrap();

    for (i, done) in fulfilled.iter().enumerate() {
        assert_eq!(done.len(), 1, "edp{}: {done:?}", i + 1);
        let f = &done[0];
        assert_eq!(f.computation, report.computation);
        assert!(
            f.requisition
                .starts_with(&format!("dataProviders/edp{}/", i + 1)),
            "{f:?}"
        );
        assert!(f.duchy == "worker1" || f.duchy == "worker2", "{f:?}");
        assert_eq!(f.registers, 5000);
        assert!(f.bytes >= 5000, "{f:?}");
    }

    // The ground truth `halo mc` printed is that of the providers' population ...
    let vectors = halo_sim::hmss::population(11, 3, 5000, 4, 0.3);
    let (reach, freq) = halo_sim::hmss::truth(&vectors, 4);
    assert!(reach > 0);
    assert_eq!(report.truth, Some((reach, freq.clone())));
    // ... and the measurement found exactly it.
    assert_eq!(report.buckets, 4);
    assert_eq!(report.result.reach, reach);
    assert_eq!(report.result.frequency_vector_size, 5000);
    assert_eq!(report.result.frequency.len(), freq.len());
    for (k, v) in &freq {
        assert!(
            (report.result.frequency[k] - v).abs() < 1e-12,
            "bucket {k}: {} vs {v}",
            report.result.frequency[k]
        );
    }

    // Nothing is left: --once lists, fulfils nothing and succeeds.
    let left = halo_cli::edp::run(edp_args(
        pki,
        &kingdom,
        &duchies,
        &["--id", "edp2", "--once"],
    ))
    .await
    .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // Which provider of the population an id is must be clear before anything is sent.
    let e = halo_cli::edp::run(edp_args(
        pki,
        &kingdom,
        &duchies,
        &["--id", "edp4", "--once"],
    ))
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("population has only 3"), "{e:#}");
    let e = halo_cli::edp::run(edp_args(
        pki,
        &kingdom,
        &duchies,
        &["--id", "publisher", "--once"],
    ))
    .await
    .unwrap_err();
    assert!(format!("{e:#}").contains("pass --index"), "{e:#}");
    // A principal the PKI does not know.
    let e = halo_cli::edp::run(edp_args(
        pki,
        &kingdom,
        &duchies,
        &["--id", "publisher", "--index", "0", "--once"],
    ))
    .await
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("no identity for dataProviders/publisher"),
        "{e:#}"
    );

    cluster.shutdown().await.unwrap();
}
