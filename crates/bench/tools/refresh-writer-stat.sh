#!/bin/bash
# The refresh phase's durable writes, seen from the spawned server (docs/benchmarks.md,
# twenty-first session): per refresh, the context switches and CPU time of sqlx's SQLite
# thread and of the Tokio workers, and the group-commit batches a second and their size.
#
#   crates/bench/tools/refresh-writer-stat.sh BIN_DIR OUT_DIR
#
# BIN_DIR holds a release `keybound` and `keybound-bench`. Needs perf and curl. Runs
# `keybound bench --spawn --seed-keys 1000 --duration 6 --no-ceiling` and, 1 s into the
# refresh phase, `perf stat -e context-switches,task-clock --per-thread` on the server for
# 4 s, between two scrapes of its /metrics (`keybound_store_batch_ops`).
set -euo pipefail
bin=$(cd "$1" && pwd)
mkdir -p "$2" && cd "$2"
timeout 600 "$bin/keybound" bench --spawn --seed-keys 1000 --duration 6 --no-ceiling \
  >out.txt 2>err.txt &
bench=$!
for _ in $(seq 1 400); do grep -q "refresh: running" err.txt 2>/dev/null && break; sleep 0.25; done
sleep 1
pid=$(pgrep -f "keybound-bench serve-target" | head -1)
port=$(ss -ltnpH | grep "pid=$pid," | head -1 | awk '{print $4}' | sed 's/.*://')
curl -s "http://127.0.0.1:$port/metrics" >m0.txt
perf stat -e context-switches,task-clock --per-thread -p "$pid" -o stat.txt -- sleep 4 >/dev/null 2>&1
curl -s "http://127.0.0.1:$port/metrics" >m1.txt
wait "$bench"
rate=$(awk '/^POST \/v1\/token\/refresh/{print $4}' out.txt)
python3 - "$rate" <<'PY'
import collections, re, sys
n = float(sys.argv[1]) * 4  # refreshes in the 4 s (the phase's rate)
switches, cpu = collections.Counter(), collections.Counter()
for line in open("stat.txt"):
    m = re.match(r"\s*(\S+?)-\d+\s+([\d,.]+)\s+(?:msec\s+)?(context-switches|task-clock)", line)
    if m:
        thread, value = m.group(1).rstrip("0123456789-"), float(m.group(2).replace(",", ""))
        (switches if m.group(3) == "context-switches" else cpu)[thread] += value
def batches(path):
    d = {}
    for line in open(path):
        m = re.match(r"keybound_store_batch_ops_(sum|count) ([\d.e+]+)", line)
        if m:
            d[m.group(1)] = float(m.group(2))
    return d
a, b = batches("m0.txt"), batches("m1.txt")
count = b["count"] - a["count"]
print(f"refresh {float(sys.argv[1]):.0f}/s (the phase); batches {count / 4:.0f}/s, "
      f"{(b['sum'] - a['sum']) / count:.1f} ops each")
for t in sorted(cpu):
    print(f"  {t}: {switches[t] / n:.3f} context switches, {cpu[t] * 1000 / n:.1f} µs CPU a refresh")
PY
