#!/usr/bin/env bash
# Property-based API testing with schemathesis against `/openapi.json`.
#
# Starts keybound on a loopback port with a fresh SQLite database in a temporary directory,
# runs schemathesis for a bounded time with every check (no 5xx, every status, content type,
# header and body as the document says, invalid input refused, valid input accepted, auth
# enforced), prints the report and exits non-zero when schemathesis found a failure or the
# server logged a panic. Only loopback addresses are used.
#
#   scripts/schemathesis.sh [SECONDS]      # default 120
#
# Needs Python 3 with venv; schemathesis is installed from PyPI into target/st-venv on first
# use. The server log and the JUnit report are left in target/schemathesis/.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_BUDGET="${1:-120}"
OUT=target/schemathesis
VENV=target/st-venv
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/st" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'schemathesis>=4,<5'
fi

cargo build --quiet --bin keybound
BIN=target/debug/keybound

WORK="$(mktemp -d)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
ADMIN_TOKEN="schemathesis-admin-token-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
MASTER_KEY="$(head -c 32 /dev/urandom | base64)"

# Generated requests fail authentication by the thousand: a budget of 20 failures per
# minute per IP would turn most of the run into 429s and hide the handlers behind it.
"$BIN" --database-url "sqlite://$WORK/keybound.db" serve \
  --listen "127.0.0.1:$PORT" --admin-token "$ADMIN_TOKEN" --master-key "$MASTER_KEY" \
  --ip-failure-budget 100000000 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$WORK"' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null

# A few objects for the path parameters to find (schemathesis also creates its own).
for i in 1 2; do
  curl -fsS -X POST "http://127.0.0.1:$PORT/admin/v1/keys" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "{\"name\": \"schemathesis-$i\", \"scopes\": [\"read:users\"]}" >/dev/null
done

status=0
"$VENV/bin/st" --config-file scripts/schemathesis.toml run "http://127.0.0.1:$PORT/openapi.json" \
  --checks all \
  --max-time "$SECONDS_BUDGET" \
  --workers 2 \
  --header "Authorization: Bearer $ADMIN_TOKEN" \
  --report junit --report-dir "$OUT" \
  || status=$?

if grep -q "panicked" "$OUT/server.log"; then
  echo "the server panicked; see $OUT/server.log" >&2
  status=1
fi
echo "schemathesis exit status: $status (server log: $OUT/server.log)"
exit "$status"
