#!/usr/bin/env bash
# Runs every fuzz target of tests/fuzz (cargo-fuzz / libFuzzer on a nightly toolchain) for
# SECONDS_PER_TARGET seconds each, one after the other on one core, and prints a table of
# executions and crashes per target. Exits non-zero if any target crashed (or failed to run).
#
# usage: tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#   SECONDS_PER_TARGET  default 60
#   TARGET...           default: every target (cargo fuzz list)
# environment:
#   FUZZ_RUNS=N         also stop a target after N executions (whichever comes first)
#   FUZZ_TOOLCHAIN      default nightly (installed with rustup if missing)
#
# Installs what it needs: the nightly toolchain (`rustup toolchain install nightly --profile
# minimal`) and cargo-fuzz (`cargo install cargo-fuzz --locked`). Builds into
# tests/fuzz/target; the corpus grows in tests/fuzz/corpus/<target>, crash inputs go to
# tests/fuzz/artifacts/<target>/, libFuzzer's output to tests/fuzz/logs/<target>.log (all
# git-ignored).
set -euo pipefail

secs="${1:-60}"
shift || true
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the $toolchain toolchain" >&2
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Release build with debug assertions and overflow checks; no sanitizer: the code under test
# is safe Rust (unsafe_code is denied workspace-wide), so what the fuzzer looks for is panics,
# overflows, broken invariants, hangs and memory blow-ups.
build_flags=(--fuzz-dir "$here" --target-dir "$here/target" -O -a -s none)
cd "$root"
echo "fuzz: building ($(rustup run "$toolchain" rustc --version))" >&2
cargo "+$toolchain" fuzz build "${build_flags[@]}" >&2

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo "+$toolchain" fuzz list --fuzz-dir "$here")
fi
bin_dir="$here/target/x86_64-unknown-linux-gnu/release"

# Small seeds for the text decoders (the structured targets need none).
seed() { # seed TARGET NAME CONTENT
    mkdir -p "$here/corpus/$1"
    [ -e "$here/corpus/$1/seed-$2" ] || printf '%s' "$3" >"$here/corpus/$1/seed-$2"
}
seed kingdom_token empty ''
seed kingdom_token real 'CgwIgJLTsAYQwMTHkQMQKg'
seed resource_names computation 'computations/AAAAAAAAAAE'
seed resource_names participant 'computations/AAAAAAAAAAE/participants/worker1'
seed resource_names stage 'computations/abc/participants/worker1/computationStage'
seed resource_names requisition 'dataProviders/edp1/requisitions/AAAAAAAAAAk'
seed resource_names certificate 'duchies/worker1/certificates/AAAAAAAAAAE'
seed resource_names measurement 'measurementConsumers/mc1/measurements/AAAAAAAAAAU'
seed resource_names principal 'dataProviders/edp-1.x'
seed plugin_file_name plain 'hmss-1.0.0.wasm'
seed plugin_file_name pre 'ro-llv2-2.0.0-rc.1+build-5.wasm'
seed sig_file sig 'algorithm = "ed25519"
key_id = "3f2a9c0d11e4b87a"
digest = "sha256:9b74c9897bac770ffc029102a200c5de9b74c9897bac770ffc029102a200c5de"
signature = "q1w2ZXJ0eXVpb3Bhc2RmZ2hqa2x6eGN2Ym5tcTF3MmUzcjR0NXk2dTdpOG85cDBxd2VydHl1aW9wYXNkZmdoamts"
signed_at = "2026-01-02T03:04:05Z"
'
seed_bytes() { # seed_bytes TARGET NAME PRINTF-ESCAPES (binary seeds)
    mkdir -p "$here/corpus/$1"
    [ -e "$here/corpus/$1/seed-$2" ] || printf "$3" >"$here/corpus/$1/seed-$2"
}
seed_bytes hmss_wire fv '\x0a\x07\x00\x01\x7f\x80\x01\xac\x02'
seed_bytes hmss_wire agg '\x0a\x04\x01\x05\x7e\x03\x10\x03'

mkdir -p "$here/logs"
# The upload targets write (and fsync) a blob per input: keep them in memory where possible.
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
    export TMPDIR=/dev/shm
fi
results=()
failed=0
for t in "${targets[@]}"; do
    mkdir -p "$here/corpus/$t" "$here/artifacts/$t"
    log="$here/logs/$t.log"
    args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$here/artifacts/$t/")
    [ -n "${FUZZ_RUNS:-}" ] && args+=(-runs="$FUZZ_RUNS")
    start=$(date +%s)
    set +e
    "$bin_dir/$t" "${args[@]}" "$here/corpus/$t" >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    [ -n "$runs" ] || runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -1)
    [ -n "$runs" ] || runs=$(grep -o '#[0-9]*' "$log" | tail -1 | tr -d '#')
    crashes=$(find "$here/artifacts/$t" -type f -newermt "@$start" | wc -l)
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then crashes="error(rc=$rc)"; fi
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "fuzz: $t failed (exit $rc); tail of $log:" >&2
        tail -n 30 "$log" >&2
    fi
    corpus=$(find "$here/corpus/$t" -type f | wc -l)
    results+=("$(printf '%-22s %8s %14s %12s %10s %8s' "$t" "$took" "${runs:-?}" \
        "$(( ${runs:-0} / (took > 0 ? took : 1) ))" "$crashes" "$corpus")")
done

printf '%-22s %8s %14s %12s %10s %8s\n' target seconds executions exec/s crashes corpus
for r in "${results[@]}"; do echo "$r"; done
if [ "$failed" -ne 0 ]; then
    echo "fuzz: FAILED (crash inputs under tests/fuzz/artifacts/, logs under tests/fuzz/logs/)" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, 0 crashes"
