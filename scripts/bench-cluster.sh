#!/usr/bin/env bash
# `keybound bench` against N instances that share one fresh PostgreSQL database and Redis, as
# in docs/deployment.md: one issuer name for all, each instance loaded by its own `keybound
# bench --url` process, all at once; the exchange rates add up.
#
#   scripts/bench-cluster.sh N [SECONDS]          # default: 1 instance, 10 s per phase
#
# Environment: KEYBOUND_BENCH_POSTGRES_URL (server, default postgres://postgres@127.0.0.1:5432),
# KEYBOUND_BENCH_REDIS_URL (default redis://127.0.0.1:6379). Only loopback addresses are used.
# A fresh database `kb_bench_cluster_<time>` is created and dropped afterwards. With one
# instance the ceiling phases (/healthz, sign-only) run too; with more they are skipped (the
# generators would measure each other). The instances are `keybound-bench serve-target`: the
# keybound server built from the library plus the ceiling routes (`keybound serve` has none),
# with `keybound serve`'s options. Reports go to target/bench-cluster/.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${1:-1}"
SECS="${2:-10}"
PG="${KEYBOUND_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
REDIS="${KEYBOUND_BENCH_REDIS_URL:-redis://127.0.0.1:6379}"
OUT=target/bench-cluster
mkdir -p "$OUT"

cargo build --release --quiet -p keybound -p keybound-bench
BIN=target/release/keybound
TARGET=target/release/keybound-bench

DB="kb_bench_cluster_$(date +%s)_$$"
ADMIN="bench-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
MASTER="$(head -c 32 /dev/urandom | base64)"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORTS=()
for _ in $(seq 1 "$N"); do PORTS+=("$(free_port)"); done
ISSUER="http://127.0.0.1:${PORTS[0]}"

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

start() { # port index
  "$TARGET" --database-url "$PG/$DB" serve-target --listen "127.0.0.1:$1" --issuer "$ISSUER" \
    --redis-url "$REDIS" --master-key "$MASTER" --admin-token "$ADMIN" \
    --ip-failure-budget 100000000 --refresh-rate-per-device 1000000 --log-format json >"$OUT/serve-$2.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 200); do
    curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "instance on port $1 did not become ready; see $OUT/serve-$2.log" >&2
  exit 1
}
# The first instance creates and migrates the database; the others find it ready.
for i in $(seq 0 $((N - 1))); do start "${PORTS[$i]}" "$i"; done

EXTRA=()
[ "$N" -gt 1 ] && EXTRA+=(--no-ceiling)
BENCHES=()
for i in $(seq 0 $((N - 1))); do
  "$BIN" bench --url "http://127.0.0.1:${PORTS[$i]}" --admin-token "$ADMIN" \
    --server-pid "${PIDS[$i]}" --duration "$SECS" --json "${EXTRA[@]}" >"$OUT/bench-$i.json" &
  BENCHES+=("$!")
done
for b in "${BENCHES[@]}"; do wait "$b"; done

python3 - "$N" "$OUT" <<'PY'
import json, sys
n, out = int(sys.argv[1]), sys.argv[2]
runs = [json.load(open(f"{out}/bench-{i}.json")) for i in range(n)]
ex = [r["exchange"] for r in runs]
total = sum(e["ok_per_second"] for e in ex)
errors = {}
for e in ex:
    for code, count in e["errors"].items():
        errors[code] = errors.get(code, 0) + count
print(f"instances: {n}, PostgreSQL + Redis, {runs[0]['connections']} connections per generator")
if n == 1 and runs[0].get("healthz"):
    r = runs[0]
    print(f"healthz /s: {r['healthz']['ok_per_second']:.0f}  sign-only /s: {r['sign_only']['ok_per_second']:.0f}")
print(f"exchange /s (sum): {total:.0f}")
print("per instance /s: " + ", ".join(f"{e['ok_per_second']:.0f}" for e in ex))
print("p50 / p99 / p99.9 ms (worst instance): "
      f"{max(e['p50_ms'] for e in ex):.1f} / {max(e['p99_ms'] for e in ex):.1f} / {max(e['p999_ms'] for e in ex):.1f}")
print("server cpu µs per exchange: " + ", ".join(f"{e['server_cpu_us_per_request']}" for e in ex))
print("server peak RSS MiB: " + ", ".join(f"{(r['peak_rss_bytes'] or 0) / 2**20:.1f}" for r in runs))
print(f"errors: {errors or 'none'}")
PY
