#!/usr/bin/env bash
# Batch ingestion benchmarks, in release mode:
#  1. crates/cellar-ingest-batch/examples/batch_bench.rs: Parquet into the embedded store
#     (read + map alone as the ceiling, then into a fresh store, then the same job again);
#  2. crates/cellar/examples/worker_bench.rs: one backfill run by 1, then 2 `cellar worker`
#     processes through Kafka into a shared Redis store, against the local runner into the
#     same Redis, in the same run. Starts Redis and tansu (scripts/services.sh) when nothing
#     answers on their ports.
# Usage: scripts/bench-batch.sh [rows, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS="${1:-1000000}"

source scripts/services.sh
ensure_build_packages
ensure_redis
ensure_kafka
cargo build --release -j2 -p cellar-ingest-batch --example batch_bench >&2
cargo build --release -j2 -p cellar --bin cellar --example worker_bench >&2
TARGET="${CARGO_TARGET_DIR:-target}/release"

echo "== Parquet into the embedded store: attribute group"
"$TARGET/examples/batch_bench" --rows "$ROWS"
echo "== Parquet into the embedded store: time-series group"
"$TARGET/examples/batch_bench" --rows "$ROWS" --kind timeseries
echo "== cellar worker scaling (Kafka runner, Redis store)"
"$TARGET/examples/worker_bench" --cellar "$TARGET/cellar" --kafka 127.0.0.1:9092 \
    --redis "$CELLAR_TEST_REDIS" --rows "$ROWS"
