#!/usr/bin/env bash
# The full kill-point sweep (issue 9): every kill point of HMSS reach-and-frequency, HMSS
# reach-only, test-sum, LLv2 and reach-only LLv2, each process SIGKILLed there and restarted on its data directory;
# prints the table (process, point, result, recovery s) and the totals. Runs the ignored
# `full_sweep` test of host/cli/tests/kill_points.rs, whose `halo` binary honours
# HALO_CRASH_AT.
#
#   tests/killpoints/sweep.sh [--release] [--protocol hmss-rf,hmss-reach,test-sum,llv2,ro-llv2]
#                             [--only SUBSTRING] [--limit N] [--keep DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=()
usage="usage: $0 [--release] [--protocol P[,P...]] [--only SUBSTRING] [--limit N] [--keep DIR]"
while [ $# -gt 0 ]; do
  case "$1" in
    --release) profile=(--release) ;;
    --protocol) export HALO_KILL_PROTOCOL="${2:?$usage}"; shift ;;
    --only) export HALO_KILL_ONLY="${2:?$usage}"; shift ;;
    --limit) export HALO_KILL_LIMIT="${2:?$usage}"; shift ;;
    --keep) export HALO_KILL_KEEP="${2:?$usage}"; shift ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
exec cargo test "${profile[@]}" -p halo-cli --test kill_points -- --ignored full_sweep --nocapture
