#!/usr/bin/env bash
# Runs every check and test of Cellar, starting the services the integration tests need.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_build_packages
ensure_postgres
ensure_kafka
ensure_dynamodb
ensure_redis
ensure_s3

cargo fmt --all -- --check
cargo clippy --all-targets -j2 -- -D warnings
cargo test --all-targets -j2 -- --include-ignored
cargo test --doc -j2
