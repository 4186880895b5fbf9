#!/usr/bin/env bash
# Coverage-guided fuzzing of keybound's parsers with cargo-fuzz (libFuzzer), for a bounded time.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]    # default 60 s; targets: api_key dpop_proof bodies attestation
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Seeds (valid keys, proofs and bodies) are made by the
# property-test twin of these targets (tests/api/fuzz.rs) into target/fuzz-seeds/; the corpus
# grows in fuzz/corpus/ and crashes land in fuzz/artifacts/ (both ignored by git). Exits
# non-zero when a target crashes; reproduce with `cargo +nightly fuzz run TARGET ARTIFACT`.
#
# Without nightly, the same properties still run on every `cargo test` as proptest cases.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(api_key dpop_proof bodies attestation)

cargo +nightly --version >/dev/null || { echo "needs a nightly toolchain" >&2; exit 2; }
cargo fuzz --version >/dev/null || { echo "needs cargo-fuzz: cargo install cargo-fuzz" >&2; exit 2; }

cargo test --quiet --test api fuzz_seeds_are_valid_inputs >/dev/null

status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t: ${SECS}s"
  # -rss_limit_mb: the parsers must stay small; a target that grows past 1 GiB is a finding.
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "target/fuzz-seeds/$t" -- \
      -max_total_time="$SECS" -rss_limit_mb=1024 -max_len=16384 -print_final_stats=1; then
    echo "== $t: FAILED (see fuzz/artifacts/$t/)" >&2
    status=1
  fi
done
exit "$status"
