#!/usr/bin/env python3
"""Server CPU a request, by bucket of symbols, for the profiles phase-profile.sh made.

    crates/bench/tools/cpu-buckets.py OUT_DIR SIGN_RATE VERIFY_SIGN_RATE EXCHANGE_RATE [REFRESH_RATE]

The rates are the phases' ok/s from OUT_DIR/out.txt; with REFRESH_RATE, a refresh column too. Each sample is a millisecond of CPU
(999 Hz); a bucket's µs a request is its samples over the 5 s profile, divided by the rate.
"""
import collections
import re
import subprocess
import sys

BUCKETS = [  # (bucket, substrings of the symbol), first match wins
    ("Ed25519 and SHA-512", ("curve25519", "sha512", "ed25519", "keccak", "merlin")),
    ("allocator", ("mi_", "mimalloc")),
    ("memmove/memcmp/memset", ("memmove", "memcpy", "memset", "memcmp")),
    ("hyper and http", ("hyper", "httparse", "http::")),
    ("Tokio", ("tokio", "mio")),
    ("serde", ("serde",)),
    ("moka", ("moka",)),
    ("SQLite", ("sqlx", "sqlite")),
    ("axum and tower", ("axum", "tower")),
    ("keybound", ("keybound",)),
]


def bucket(dso, symbol):
    if dso.startswith("[kernel"):
        return "kernel"
    for name, parts in BUCKETS:
        if any(p in symbol for p in parts):
            return name
    return "everything else"


def profile(path):
    out = subprocess.run(
        ["perf", "report", "-i", path, "--no-children", "--sort", "dso,symbol",
         "--stdio", "-g", "none", "-F", "sample,dso,symbol"],
        capture_output=True, text=True, check=True).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s+(\d+)\s+(\S+)\s+\[[.k]\]\s+(.*)$", line)
        if m:
            counts[bucket(m.group(2), m.group(3))] += int(m.group(1))
    return counts


def main():
    out_dir = sys.argv[1]
    rates = dict(zip(("sign", "vsign", "exch", "refr"), map(float, sys.argv[2:6])))
    counts = {p: profile(f"{out_dir}/{p}.data") for p in rates}
    per = lambda p, n: n / 999 / 5 / rates[p] * 1e6
    names = sorted({b for c in counts.values() for b in c}, key=lambda b: -counts["exch"][b])
    titles = {"sign": "sign-only", "vsign": "verify-sign", "exch": "exchange", "refr": "refresh"}
    print(f"{'µs a request':24}" + "".join(f"{titles[p]:>13}" for p in counts))
    for b in names + ["total"]:
        row = [per(p, sum(c.values()) if b == "total" else c[b]) for p, c in counts.items()]
        print(f"{b:24}" + "".join(f"{v:13.1f}" for v in row))


if __name__ == "__main__":
    main()
