#!/usr/bin/env python3
"""Who had the CPUs, bin by bin, in a trace open-loop-trace.sh made.

    crates/bench/tools/cpu-bins.py OUT_DIR FROM TO [BIN_SECONDS]

FROM and TO are times on perf's clock (open-loop-trace.sh prints the stalls on it). Prints,
for each bin (default 0.1 s), the cpu-clock samples of the eight busiest thread names
(`swapper` is the idle CPUs; `tokio-rt-worker` the server's workers, `keybound-bench` the load
generator); 1999 samples a second a CPU, so a bin of both CPUs holds 2 x 1999 x BIN_SECONDS.
"""
import collections
import re
import subprocess
import sys

out, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
width = float(sys.argv[4]) if len(sys.argv) > 4 else 0.1
script = subprocess.run(
    ["perf", "script", "-i", f"{out}/p.data", "-F", "comm,tid,cpu,time,event"],
    capture_output=True, text=True, check=True).stdout
bins = collections.defaultdict(collections.Counter)
for line in script.splitlines():
    m = re.match(r"\s*(.+?)\s+\d+\s+\[\d+\]\s+([\d.]+):\s+(\S+):", line)
    if not m or m.group(3) != "cpu-clock":
        continue
    t = float(m.group(2))
    if t0 <= t < t1:
        bins[int((t - t0) / width)][m.group(1)] += 1
total = collections.Counter()
for b in bins.values():
    total.update(b)
top = [c for c, _ in total.most_common(8)]
print("from      " + " ".join(f"{c[:15]:>15}" for c in top) + "  all")
for b in sorted(bins):
    print(f"{t0 + b * width:9.3f} " + " ".join(f"{bins[b][c]:>15}" for c in top)
          + f"  {sum(bins[b].values())}")
