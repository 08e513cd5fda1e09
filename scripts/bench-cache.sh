#!/usr/bin/env bash
# Cache tier benchmark: builds in release mode and runs crates/cellar-cache/examples/tier_bench.rs
# against the Redis on 127.0.0.1:6379 (started by scripts/services.sh when nothing answers
# there), with redis-benchmark against the same Redis as the baseline, in the same run.
# Usage: scripts/bench-cache.sh [seconds per case, default 5] [connections, default 16]
# [entities, default 100000] [Zipf exponent, default 0.99]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-5}"
CONNS="${2:-16}"
ENTITIES="${3:-100000}"
ZIPF="${4:-0.99}"

source scripts/services.sh
ensure_redis
command -v redis-benchmark >/dev/null 2>&1 || { echo "redis-benchmark not found (it comes with redis-server)" >&2; exit 1; }
cargo build --release -j2 -p cellar-cache --example tier_bench >&2
BIN="${CARGO_TARGET_DIR:-target}/release/examples/tier_bench"

"$BIN" --redis "$CELLAR_TEST_REDIS" --seconds "$DURATION" --connections "$CONNS" \
    --entities "$ENTITIES" --zipf "$ZIPF"
