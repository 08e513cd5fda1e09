#!/usr/bin/env bash
# Runs every check and test of Cellar, starting the services the integration tests need.
# Tests that need a service are ignored by a plain `cargo test`; here they all run, and one
# whose service is missing fails naming it.
# Usage: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh

ensure_build_packages
# The test servers built from source (the broker, the object store) install once per machine,
# at low priority beside the workspace's build, which has idle cores while long chains of
# crates compile one after another.
( renice -n 10 -p "$BASHPID" >/dev/null; ensure_tansu_installed ) > "$SVC_DIR/tansu-installs.log" 2>&1 &
tansu_install=$!
( renice -n 10 -p "$BASHPID" >/dev/null; ensure_s3_installed ) > "$SVC_DIR/s3s-installs.log" 2>&1 &
s3s_install=$!
# A failing check stops the installs too, instead of leaving them to race the next run's.
trap 'pkill -P "$tansu_install,$s3s_install" 2>/dev/null || true' EXIT

cargo fmt --all -- --check
cargo clippy --all-targets -j2 -- -D warnings
cargo test --all-targets -j2 --no-run

wait "$tansu_install" || { cat "$SVC_DIR/tansu-installs.log" >&2; exit 1; }
wait "$s3s_install" || { cat "$SVC_DIR/s3s-installs.log" >&2; exit 1; }
ensure_postgres
ensure_kafka
ensure_dynamodb
ensure_redis
ensure_s3
ensure_redis_tls
ensure_postgres_tls
ensure_kafka_tls
ensure_kafka_sasl
ensure_s3_tls

cargo test --all-targets -j2 -- --include-ignored
cargo test --doc -j2

# The Python client's tests and the web console's browser tests, against the `cellar` just
# built (pytest's last line counts them).
ensure_python_env
ensure_browser
"$PY_ENV/bin/python" -m pytest python/tests -q -p no:cacheprovider
