#!/usr/bin/env python3
"""How steady this machine's CPUs are, with no keybound running (docs/benchmarks.md,
twenty-third session), and what that alone does to an open-loop latency target.

    crates/bench/tools/machine-capacity.py SECS [OUT.json]   # measure, then analyse
    crates/bench/tools/machine-capacity.py --from OUT.json   # analyse an earlier measurement

One process a CPU repeats a fixed unit of work (20 SHA-256 of 512 bytes, ~25 µs) and stamps
the monotonic clock after each unit. The work done in each 10 ms window, divided by the
median window's, is the share of the machine's usual capacity the processes got in it:
whatever else ran (the machine's other services, the hypervisor's other guests) took the
rest.

Then a fluid queue is fed at a fixed share `rho` of the median capacity and drained at each
window's measured capacity: an ideal server, whose work is divisible and costs the same at
any load, on this machine's CPUs. For each 5 s round it counts the windows in which the
backlog exceeded 5 ms and 15 ms of the machine's work; a round with more than 1 % of its
windows behind that much would have missed a p99 of 5 ms / 15 ms even with that server. A
real server does worse (its work comes in requests, a generator shares its cores), so the
counts are a lower bound on the rounds a `keybound bench --rate` phase asking `rho` of the
machine misses here.
"""
import array
import hashlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

WINDOW = 0.01
ROUND = 5.0
RHOS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.87, 0.9, 0.95)


def worker(secs, q):
    buf = b"x" * 512
    stamps = array.array("d")
    end = time.monotonic() + secs
    while True:
        for _ in range(20):
            hashlib.sha256(buf).digest()
        t = time.monotonic()
        stamps.append(t)
        if t > end:
            break
    q.put(stamps.tobytes())


def measure(secs, n):
    q = mp.Queue()
    ps = [mp.Process(target=worker, args=(secs, q)) for _ in range(n)]
    for p in ps:
        p.start()
    stamps = []
    for _ in ps:
        a = array.array("d")
        a.frombytes(q.get())
        stamps.append(list(a))
    for p in ps:
        p.join()
    return stamps


def late_rounds(cap, rho, limits):
    """For each limit (s), the 5 s rounds in which a fluid queue fed at `rho` was behind by
    more than it for over 1 % of the round; one pass over the windows."""
    per_round = int(ROUND / WINDOW)
    bad = [0] * len(limits)
    for s in range(0, len(cap) - per_round + 1, per_round):
        backlog, late = 0.0, [0] * len(limits)
        for c in cap[s : s + per_round]:
            backlog = max(0.0, backlog + rho - c)  # in windows of the whole machine's work
            for k, limit in enumerate(limits):
                late[k] += backlog * WINDOW > limit
        for k in range(len(limits)):
            bad[k] += late[k] / per_round > 0.01
    return bad


def analyse(stamps):
    t0 = max(s[0] for s in stamps)
    t1 = min(s[-1] for s in stamps)
    n = int((t1 - t0) / WINDOW)
    work = [0] * n
    for s in stamps:
        for t in s:
            i = int((t - t0) / WINDOW)
            if 0 <= i < n:
                work[i] += 1
    median = statistics.median(work)
    cap = [w / median for w in work]
    q = sorted(cap)
    rounds = int(n * WINDOW / ROUND)
    print(
        f"{n * WINDOW:.0f} s on {len(stamps)} CPUs in {WINDOW * 1000:.0f} ms windows "
        f"({rounds} rounds of {ROUND:.0f} s); a window's work ÷ the median window's: "
        f"p1 {q[n // 100]:.2f}, p5 {q[n // 20]:.2f}, p10 {q[n // 10]:.2f}, mean {sum(cap) / n:.3f}"
    )
    stops = [i * WINDOW for i, c in enumerate(cap) if c < 0.1]
    print(f"windows with under 10 % of the machine: {len(stops)}, at s {[round(s, 2) for s in stops]}")
    print("arrivals at rho × the median capacity, an ideal server: rounds behind by over 5 ms / 15 ms")
    print("for more than 1 % of the round")
    for rho in RHOS:
        five, fifteen = late_rounds(cap, rho, (0.005, 0.015))
        print(f"  rho {rho:.2f}: {five:3d} / {fifteen:3d} of {rounds}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--from":
        analyse(json.load(open(sys.argv[2])))
        return
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    stamps = measure(float(sys.argv[1]), os.cpu_count() or 1)
    if len(sys.argv) == 3:
        json.dump(stamps, open(sys.argv[2], "w"))
    analyse(stamps)


if __name__ == "__main__":
    main()
