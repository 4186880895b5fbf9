#!/bin/bash
# Records the whole machine through one open-loop phase of `keybound bench` (docs/benchmarks.md,
# twenty-second session): CPU samples with stacks and the scheduler's switches and wake-ups,
# from the phase's proof building through its first seconds, and prints the phase's stalls
# with their times on perf's clock, to look them up in the trace (cpu-bins.py, perf report
# --time).
#
#   crates/bench/tools/open-loop-trace.sh BIN_DIR OUT_DIR N [SECS]
#
# BIN_DIR holds a release `keybound` and `keybound-bench`. N is the open-loop phase to record
# (1: 50 %, 2: 80 %); SECS how long (default 4). Runs `keybound bench --spawn --seed-keys 1000
# --duration 5 --no-ceiling --no-refresh --rate auto --json`. Needs perf. Writes
# OUT_DIR/{p.data,out.json,offset.txt}.
set -euo pipefail
bin=$(cd "$1" && pwd)
n=$3
secs=${4:-4}
mkdir -p "$2" && cd "$2"
timeout 600 "$bin/keybound" bench --spawn --seed-keys 1000 --duration 5 --no-ceiling \
  --no-refresh --rate auto --json >out.json 2>err.txt &
bench=$!
for _ in $(seq 1 2000); do
  [ "$(grep -c 'open loop: building' err.txt 2>/dev/null)" -ge "$n" ] && break
  sleep 0.02
done
# Wall clock minus perf's (CLOCK_MONOTONIC), to place --json's wall-clock stalls in the trace.
python3 -c "import time; print(time.time() - time.clock_gettime(time.CLOCK_MONOTONIC))" >offset.txt
perf record -a -g -k CLOCK_MONOTONIC -F 1999 -e cpu-clock -e sched:sched_switch \
  -e sched:sched_wakeup -o p.data -- sleep "$secs" >/dev/null 2>perf.err
wait "$bench"
python3 - <<'PY'
import json
d = json.load(open("out.json"))
off = float(open("offset.txt").read())
for p in d["open_loop"]:
    g = p["generator"]
    print(f"{g['fraction_of_closed_loop']:.0%} {g['rate_asked']:.0f}/s: p99 {p['p99_ms']} ms, "
          f"p99.9 {p['p999_ms']} ms")
    for s in g["stalls"]["stalls"]:
        print(f"  stall at {s['at_s']:.3f} s (perf clock {s['at_unix_s'] - off:.3f}): "
              f"{s['span_ms']:.1f} ms of sends, {s['answers']} answers, worst {s['worst_ms']:.1f} ms")
PY
