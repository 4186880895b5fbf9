#!/bin/bash
# Profiles the spawned server through the sign-only, verify-sign, exchange and refresh phases
# of one `keybound bench` run (docs/benchmarks.md, twentieth and twenty-first sessions), for
# cpu-buckets.py.
#
#   crates/bench/tools/phase-profile.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds a release `keybound` and `keybound-bench` (cargo build --release -p keybound
# -p keybound-bench --bins). Needs perf. Writes OUT_DIR/{sign,vsign,exch,refr}.data (5 s of
# `perf record -F 999` each, from 1.5 s into the phase) and OUT_DIR/out.txt (the report).
set -euo pipefail
bin=$(cd "$1" && pwd)
mkdir -p "$2" && cd "$2"
rm -f sign.data vsign.data exch.data refr.data
timeout 600 "$bin/keybound" bench --spawn --seed-keys 1000 --duration 8 \
  >out.txt 2>err.txt &
bench=$!
profile() { # the report line that starts the phase, the output's name
  for _ in $(seq 1 400); do grep -q "$1" err.txt 2>/dev/null && break; sleep 0.25; done
  pid=$(pgrep -f "keybound-bench serve-target" | head -1)
  sleep 1.5
  perf record -F 999 -p "$pid" -o "$2.data" -- sleep 5 >/dev/null 2>&1
}
profile "POST /bench/sign for" sign
profile "POST /bench/verify-sign for" vsign
profile "exchange: running" exch
profile "refresh: running" refr
wait "$bench"
sed -n '/^phase/,/^$/p' out.txt
