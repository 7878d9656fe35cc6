//! The runtime against real components built from `plugins/` by `halo-plugin-build`:
//! versions side by side, limits obeyed and violated (deadline, memory, panic), WIT major
//! refusal, the AOT cache, and large payloads. After every failure a good plugin still runs.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use halo_engine::{EngineConfig, LoadError, LoadedPlugin, Runtime, SUPPORTED_WIT};
use halo_plugin_build as plugins;
use halo_proto::halo::v1::MeasurementSpec;
use halo_proto::prost::Message;
use halo_proto::system::v1alpha::{Computation, DifferentialPrivacyParams};
use halo_protocol::{
    ComputationContext, InputOrigin, Participant, Protocol, Role, StageError, StageInput,
    StageKind, SystemProtocol,
};
use halo_testkit::{self as ts, TestSumProtocol};

/// AOT artifacts shared by the tests in this binary (and kept between runs): compiling in a
/// debug build is slow. Tests about the cache itself use their own directory.
fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("halo-engine-aot")
}

fn runtime_with(f: impl FnOnce(&mut EngineConfig)) -> Runtime {
    let mut config = EngineConfig {
        cache_dir: Some(shared_cache()),
        max_instances: 16,
        ..EngineConfig::default()
    };
    f(&mut config);
    Runtime::new(config).unwrap()
}

fn runtime() -> Runtime {
    runtime_with(|_| {})
}

fn load(rt: &Runtime, path: &str) -> Arc<LoadedPlugin> {
    rt.load_file(Path::new(path))
        .unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

fn participants() -> Vec<Participant> {
    [
        ("aggregator", Role::Aggregator),
        ("worker1", Role::FirstNonAggregator),
        ("worker2", Role::SecondNonAggregator),
    ]
    .into_iter()
    .map(|(id, role)| Participant {
        duchy_id: id.into(),
        role,
        requisition_params: vec![],
    })
    .collect()
}

fn computation(epsilon: f64) -> Vec<u8> {
    let dp = DifferentialPrivacyParams {
        epsilon,
        delta: 1e-9,
    };
    let spec = MeasurementSpec {
        reach_privacy_params: Some(dp),
        frequency_privacy_params: Some(dp),
        ..Default::default()
    };
    Computation {
        measurement_spec: spec.encode_to_vec(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn ctx(duchy: &str, role: Role, state: Vec<u8>) -> ComputationContext {
    ComputationContext {
        global_id: "c-1".into(),
        duchy_id: duchy.into(),
        role,
        protocol: SystemProtocol::HonestMajorityShareShuffle,
        computation: computation(1.0),
        participants: participants(),
        state,
        attempt: 1,
        identity: None,
    }
}

/// Proves the host still serves after a failure: a good plugin starts and executes.
fn good_plugin_still_runs(rt: &Runtime) {
    let p = load(rt, plugins::TEST_SUM_V1_0);
    let c = ctx("worker1", Role::FirstNonAggregator, vec![]);
    let start = p.start(&c).unwrap();
    assert_eq!(start.initial_stage, ts::INITIALIZED);
    let out = p
        .execute(
            &ctx("worker1", Role::FirstNonAggregator, start.state),
            ts::INITIALIZED,
            vec![],
        )
        .unwrap();
    assert_eq!(out.next_stage, ts::WAIT_TO_START);
}

#[test]
fn test_sum_versions_load_side_by_side() {
    let rt = runtime();
    let v10 = load(&rt, plugins::TEST_SUM_V1_0);
    let v11 = load(&rt, plugins::TEST_SUM_V1_1);
    let (a, b) = (v10.info(), v11.info());
    assert_eq!((a.id.as_str(), a.version.as_str()), ("test-sum", "1.0.0"));
    assert_eq!((b.id.as_str(), b.version.as_str()), ("test-sum", "1.1.0"));
    assert_ne!(a.digest, b.digest);
    assert_eq!(a.digest.len(), 64);
    // 1.0.0 was built against WIT halo:mpc@1.0.0, 1.1.0 against 1.1.0: this host (1.2)
    // serves both through the Linker's semver fallback.
    for (info, wit) in [(a, "1.0.0"), (b, "1.1.0")] {
        assert_eq!(info.wit_package, format!("halo:mpc@{wit}"));
        assert_eq!(
            info.system_protocol,
            SystemProtocol::HonestMajorityShareShuffle
        );
        assert_eq!(info.stages, TestSumProtocol::new("1.0.0").stages());
        assert!(
            info.exports
                .iter()
                .any(|e| *e == format!("halo:mpc/protocol@{wit}")),
            "{:?}",
            info.exports
        );
        assert!(
            info.imports.iter().all(|i| i.starts_with("halo:mpc/")),
            "{:?}",
            info.imports
        );
    }
    assert_eq!(v10.stages(), v11.stages());
    let pin = v11.pin();
    assert_eq!(
        (pin.name.as_str(), pin.version.as_str(), pin.digest.as_str()),
        ("test-sum", "1.1.0", b.digest.as_str())
    );
    // Both versions run in one engine, interleaved.
    for p in [&v10, &v11, &v10] {
        let s = p
            .start(&ctx("worker2", Role::SecondNonAggregator, vec![]))
            .unwrap();
        assert_eq!(s.initial_stage, ts::INITIALIZED);
        assert_eq!(s.state.len(), 8);
    }
}

#[test]
fn start_rejects_epsilon_zero() {
    let rt = runtime();
    let p = load(&rt, plugins::TEST_SUM_V1_0);
    let mut c = ctx("aggregator", Role::Aggregator, vec![]);
    c.computation = computation(0.0);
    let err = p.start(&c).unwrap_err();
    match &err {
        StageError::InvalidInput(m) => {
            assert!(m.contains("epsilon"), "{m}");
            assert!(m.starts_with("test-sum@1.0.0: "), "{m}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    // The in-crate protocol agrees.
    assert!(matches!(
        TestSumProtocol::new("1.0.0").start(&c),
        Err(StageError::InvalidInput(_))
    ));
}

/// Runs a whole three-duchy computation through the wasm test-sum and checks the result
/// equals what the in-crate protocol computes from the same requisition data.
#[test]
fn test_sum_computes_what_the_in_crate_protocol_computes() {
    let rt = runtime();
    let wasm = load(&rt, plugins::TEST_SUM_V1_1);
    let native = TestSumProtocol::new("1.1.0");
    let requisitions = [
        ("worker1", vec![vec![1u32, 0, 2, 0], vec![0, 0, 1, 1]]),
        ("worker2", vec![vec![0u32, 3, 0, 0], vec![1, 0, 0, 0]]),
    ];
    let run = |p: &dyn Protocol| -> Vec<u8> {
        let roles = [
            ("aggregator", Role::Aggregator),
            ("worker1", Role::FirstNonAggregator),
            ("worker2", Role::SecondNonAggregator),
        ];
        let mut state = std::collections::HashMap::new();
        for (d, r) in roles {
            let s = p.start(&ctx(d, r, vec![])).unwrap();
            assert_eq!(s.initial_stage, ts::INITIALIZED);
            let out = p
                .execute(&ctx(d, r, s.state.clone()), ts::INITIALIZED, vec![])
                .unwrap();
            assert!(out.requisition_params.is_some());
            state.insert(d, s.state);
        }
        let setup = |d: &str, r| {
            p.execute(&ctx(d, r, state[d].clone()), ts::SETUP_PHASE, vec![])
                .unwrap()
        };
        let s1 = setup("worker1", Role::FirstNonAggregator);
        let s2 = setup("worker2", Role::SecondNonAggregator);
        let mut to_aggregator = Vec::new();
        for (d, r, peer_send) in [
            ("worker1", Role::FirstNonAggregator, &s2.sends[0]),
            ("worker2", Role::SecondNonAggregator, &s1.sends[0]),
        ] {
            assert_eq!(peer_send.to, d);
            let mut inputs = vec![StageInput {
                origin: InputOrigin::Peer {
                    duchy_id: "peer".into(),
                    description: peer_send.description,
                },
                data: peer_send.payload.clone(),
            }];
            let mine = &requisitions.iter().find(|(x, _)| *x == d).unwrap().1;
            for (i, v) in mine.iter().enumerate() {
                inputs.push(StageInput {
                    origin: InputOrigin::Requisition {
                        requisition_id: format!("{d}-r{i}"),
                        header: vec![],
                    },
                    data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                });
            }
            let out = p
                .execute(&ctx(d, r, state[d].clone()), ts::SHUFFLE_PHASE, inputs)
                .unwrap();
            assert_eq!(out.next_stage, ts::COMPLETE);
            to_aggregator.push(StageInput {
                origin: InputOrigin::Peer {
                    duchy_id: d.into(),
                    description: out.sends[0].description,
                },
                data: out.sends[0].payload.clone(),
            });
        }
        let out = p
            .execute(
                &ctx("aggregator", Role::Aggregator, state["aggregator"].clone()),
                ts::AGGREGATION_PHASE,
                to_aggregator,
            )
            .unwrap();
        assert_eq!(out.next_stage, ts::COMPLETE);
        out.result.unwrap().encrypted_result
    };
    let from_wasm = run(wasm.as_ref());
    let from_native = run(&native);
    assert_eq!(
        String::from_utf8_lossy(&from_wasm),
        String::from_utf8_lossy(&from_native)
    );
}

#[test]
fn runaway_is_stopped_by_the_deadline() {
    let rt = runtime_with(|c| c.stage_deadline = Duration::from_millis(300));
    let p = load(&rt, plugins::RUNAWAY);
    let label = format!("{}@{}", p.info().id, p.info().version);
    let started = Instant::now();
    let err = p
        .execute(&ctx("worker1", Role::FirstNonAggregator, vec![]), 1, vec![])
        .unwrap_err();
    let elapsed = started.elapsed();
    eprintln!("runaway: {err} after {elapsed:?}");
    match &err {
        StageError::Transient(m) => {
            assert_eq!(m, &format!("{label}: stage deadline of 0.3s exceeded"));
        }
        other => panic!("expected Transient, got {other:?}"),
    }
    assert!(err.is_transient());
    assert!(
        elapsed >= Duration::from_millis(280) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The same plugin works again in a fresh Store, and so does a good one.
    assert!(
        p.start(&ctx("worker1", Role::FirstNonAggregator, vec![]))
            .is_ok()
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn hog_is_stopped_by_the_memory_limit() {
    let rt = runtime_with(|c| c.max_memory_bytes = 64 << 20);
    let p = load(&rt, plugins::HOG);
    let err = p
        .execute(&ctx("worker1", Role::FirstNonAggregator, vec![]), 1, vec![])
        .unwrap_err();
    eprintln!("hog: {err}");
    match &err {
        StageError::Permanent(m) => {
            assert!(m.contains("memory limit of 64 MiB"), "{m}");
            assert!(m.starts_with("hog@1.0.0: "), "{m}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    good_plugin_still_runs(&rt);
}

#[test]
fn hog_within_a_larger_limit_succeeds() {
    let rt = runtime_with(|c| c.max_memory_bytes = 2 << 30);
    let p = load(&rt, plugins::HOG);
    let out = p
        .execute(&ctx("worker1", Role::FirstNonAggregator, vec![]), 1, vec![])
        .unwrap();
    assert_eq!(out.next_stage, 9);
}

#[test]
fn panicker_traps_as_a_permanent_error() {
    let rt = runtime();
    let p = load(&rt, plugins::PANICKER);
    let err = p
        .execute(&ctx("worker1", Role::FirstNonAggregator, vec![]), 1, vec![])
        .unwrap_err();
    eprintln!("panicker: {err}");
    match &err {
        StageError::Permanent(m) => {
            assert!(m.starts_with("panicker@1.0.0 trapped: "), "{m}");
            assert!(m.contains("unreachable"), "{m}");
            // The SDK's panic hook logged the message before the trap.
            assert!(m.contains("deliberate panic"), "{m}");
        }
        other => panic!("expected Permanent, got {other:?}"),
    }
    good_plugin_still_runs(&rt);
    // And the panicker itself still describes and starts.
    assert!(
        p.start(&ctx("worker1", Role::FirstNonAggregator, vec![]))
            .is_ok()
    );
}

#[test]
fn wrong_major_is_refused() {
    let rt = runtime();
    let err = rt.load_file(Path::new(plugins::WRONG_MAJOR)).unwrap_err();
    let msg = err.to_string();
    eprintln!("wrong-major: {msg}");
    match &err {
        LoadError::UnsupportedWit { found, supported } => {
            assert!(found.iter().any(|f| f == "halo:mpc@2.0.0"), "{found:?}");
            assert_eq!(supported, SUPPORTED_WIT);
        }
        other => panic!("expected UnsupportedWit, got {other:?}"),
    }
    assert!(msg.contains("halo:mpc@2.0.0"), "{msg}");
    assert!(msg.contains("halo:mpc@1.0.0..<2.0.0"), "{msg}");
    good_plugin_still_runs(&rt);
}

#[test]
fn garbage_is_refused() {
    let rt = runtime();
    for bytes in [
        &b"definitely not wasm"[..],
        &b""[..],
        // A valid, empty core module: not a component.
        &b"\0asm\x01\0\0\0"[..],
    ] {
        match rt.load(bytes) {
            Err(LoadError::Invalid(_)) => {}
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    match rt.load_file(Path::new("/nonexistent/plugin.wasm")) {
        Err(e @ LoadError::Io { .. }) => assert!(e.to_string().contains("/nonexistent"), "{e}"),
        other => panic!("expected Io, got {other:?}"),
    }
    // A truncated component.
    let bytes = std::fs::read(plugins::TEST_SUM_V1_0).unwrap();
    assert!(matches!(
        rt.load(&bytes[..bytes.len() / 2]),
        Err(LoadError::Invalid(_))
    ));
    good_plugin_still_runs(&rt);
}

#[test]
fn aot_cache_is_hit_and_load_cached_works() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        max_instances: 8,
        ..EngineConfig::default()
    };
    let rt = Runtime::new(config.clone()).unwrap();
    let bytes = std::fs::read(plugins::ECHO).unwrap();

    let first = rt.load(&bytes).unwrap();
    assert!(!first.info().loaded_from_cache);
    let stats = rt.cache_stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.compiles, stats.writes),
        (0, 1, 1, 1)
    );
    let artifact = rt.cache_path(&first.info().digest).unwrap();
    assert!(artifact.is_file(), "{}", artifact.display());

    let second = rt.load(&bytes).unwrap();
    assert!(second.info().loaded_from_cache);
    assert_eq!(rt.cache_stats().hits, 1);
    assert_eq!(rt.cache_stats().compiles, 1);
    assert_eq!(second.info().digest, first.info().digest);
    assert_eq!(second.pin(), first.pin());

    // By digest alone, also from a new runtime (a restarted host) after the .wasm is gone.
    let rt2 = Runtime::new(config).unwrap();
    let digest = first.info().digest.clone();
    let cached = rt2.load_cached(&digest).unwrap().unwrap();
    assert!(cached.info().loaded_from_cache);
    assert_eq!(cached.pin(), first.pin());
    assert_eq!(cached.stages(), first.stages());
    assert_eq!(
        cached
            .start(&ctx("worker1", Role::FirstNonAggregator, vec![]))
            .unwrap()
            .initial_stage,
        1
    );

    assert!(rt2.load_cached(&"0".repeat(64)).unwrap().is_none());
    assert!(matches!(
        rt2.load_cached("../../etc/passwd"),
        Err(LoadError::Invalid(_))
    ));
    let no_cache = Runtime::new(EngineConfig {
        max_instances: 4,
        ..EngineConfig::default()
    })
    .unwrap();
    assert!(no_cache.load_cached(&digest).unwrap().is_none());

    // A damaged artifact is discarded and recompiled. (It is replaced, never rewritten in
    // place: live plugins map the old file, see the SAFETY note in the runtime.)
    let tmp = dir.path().join("damaged");
    std::fs::write(&tmp, b"garbage").unwrap();
    std::fs::rename(&tmp, &artifact).unwrap();
    let third = rt.load(&bytes).unwrap();
    assert!(!third.info().loaded_from_cache);
    assert!(rt.load(&bytes).unwrap().info().loaded_from_cache);
}

#[test]
fn echo_round_trips_4_mib() {
    let rt = runtime();
    let p = load(&rt, plugins::ECHO);
    let a: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let b: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let want = [a.as_slice(), b.as_slice()].concat();
    assert_eq!(want.len(), 4 << 20);
    let inputs = vec![
        StageInput {
            origin: InputOrigin::Peer {
                duchy_id: "worker2".into(),
                description: 1,
            },
            data: a,
        },
        StageInput {
            origin: InputOrigin::Requisition {
                requisition_id: "r1".into(),
                header: b"header".to_vec(),
            },
            data: b,
        },
    ];
    let out = p
        .execute(&ctx("worker1", Role::FirstNonAggregator, vec![]), 1, inputs)
        .unwrap();
    assert_eq!(out.sends.len(), 1);
    assert_eq!(out.sends[0].to, "worker1");
    assert!(out.sends[0].payload == want, "payload differs");
}

#[test]
fn calls_run_in_parallel_stores() {
    let rt = runtime();
    let p = load(&rt, plugins::TEST_SUM_V1_0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let p = p.clone();
            s.spawn(move || {
                for _ in 0..5 {
                    let c = ctx("worker2", Role::SecondNonAggregator, vec![t]);
                    assert_eq!(p.start(&c).unwrap().initial_stage, ts::INITIALIZED);
                }
            });
        }
    });
}

#[test]
fn stage_table_kinds_survive_the_conversion() {
    let rt = runtime();
    let p = load(&rt, plugins::TEST_SUM_V1_0);
    let kinds: Vec<&str> = p
        .info()
        .stages
        .iter()
        .map(|s| match s.kind {
            StageKind::Queued { .. } => "queued",
            StageKind::WaitInputs { .. } => "wait-inputs",
            StageKind::WaitKingdom { .. } => "wait-kingdom",
            StageKind::Terminal => "terminal",
        })
        .collect();
    assert!(kinds.contains(&"wait-kingdom") && kinds.contains(&"wait-inputs"));
}

#[test]
fn epoch_ticker_holds_only_a_weak_engine() {
    let rt = Runtime::new(EngineConfig {
        max_instances: 2,
        ..EngineConfig::default()
    })
    .unwrap();
    let weak = rt.engine().weak();
    drop(rt);
    let deadline = Instant::now() + Duration::from_secs(2);
    // The ticker upgrades for an instant each tick; once the runtime is gone the engine
    // must be freed.
    while weak.upgrade().is_some() {
        assert!(Instant::now() < deadline, "engine still alive after drop");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The hmss component targets halo:mpc@1.3.0 and uses the `identity` import 1.1 added.
#[test]
fn hmss_uses_the_identity_import_of_wit_1_1() {
    let rt = runtime();
    let hmss = load(&rt, plugins::HMSS);
    let info = hmss.info();
    assert_eq!(info.wit_package, "halo:mpc@1.3.0");
    assert!(
        info.imports.iter().any(|i| i == "halo:mpc/identity@1.3.0"),
        "{:?}",
        info.imports
    );
    assert!(
        info.imports
            .iter()
            .all(|i| i.starts_with("halo:mpc/") && i.ends_with("@1.3.0")),
        "{:?}",
        info.imports
    );
}
