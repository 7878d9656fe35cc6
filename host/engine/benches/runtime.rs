//! Runtime costs: compiling a component vs loading it from the AOT cache, Store + instantiate
//! per stage, and a 4 MiB in / 4 MiB out round trip through the `echo` fixture.
//!
//! `cargo bench -p halo-engine --bench runtime`
//! Targets: cached load < 5 ms, instantiate < 100 µs, 4 MiB round trip < 5 ms.

// A benchmark binary (not a `cfg(test)` target): failing fast on setup errors is the point.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use halo_engine::{EngineConfig, Runtime};
use halo_protocol::{ComputationContext, InputOrigin, Protocol, Role, StageInput, SystemProtocol};

fn ctx() -> ComputationContext {
    ComputationContext {
        global_id: "bench".into(),
        duchy_id: "worker1".into(),
        role: Role::FirstNonAggregator,
        protocol: SystemProtocol::HonestMajorityShareShuffle,
        computation: vec![],
        participants: vec![],
        state: vec![],
        attempt: 1,
        identity: None,
    }
}

fn bench(c: &mut Criterion) {
    let bytes = std::fs::read(halo_plugin_build::TEST_SUM_V1_0).expect("test-sum component");
    let dir = tempfile::tempdir().expect("tempdir");

    let no_cache = Runtime::new(EngineConfig::default()).expect("runtime");
    let cached = Runtime::new(EngineConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..EngineConfig::default()
    })
    .expect("runtime");
    // Fill the cache once.
    cached.load(&bytes).expect("load");

    let mut g = c.benchmark_group("load");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("compile (no cache)", |b| {
        b.iter(|| black_box(no_cache.load(black_box(&bytes)).expect("load")))
    });
    g.finish();

    let mut g = c.benchmark_group("load");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    g.bench_function("from AOT cache", |b| {
        b.iter(|| {
            let p = cached.load(black_box(&bytes)).expect("load");
            assert!(p.info().loaded_from_cache);
            black_box(p)
        })
    });
    g.finish();

    let plugin = cached.load(&bytes).expect("load");
    let mut g = c.benchmark_group("stage");
    g.sample_size(50).measurement_time(Duration::from_secs(3));
    g.bench_function("Store + instantiate", |b| {
        b.iter(|| plugin.instantiate_only().expect("instantiate"))
    });
    g.bench_function("Store + instantiate + start", |b| {
        b.iter(|| black_box(plugin.start(&ctx()).expect("start")))
    });

    let echo = cached
        .load_file(Path::new(halo_plugin_build::ECHO))
        .expect("echo");
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let c = ctx();
    g.bench_function("echo 4 MiB in + 4 MiB out (fresh Store)", |b| {
        b.iter_batched(
            || {
                vec![StageInput {
                    origin: InputOrigin::Peer {
                        duchy_id: "worker2".into(),
                        description: 1,
                    },
                    data: data.clone(),
                }]
            },
            |inputs| {
                let out = echo.execute(&c, 1, inputs).expect("echo");
                assert_eq!(out.sends[0].payload.len(), 4 << 20);
                black_box(out)
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
