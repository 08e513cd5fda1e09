#!/usr/bin/env bash
# Serving benchmark: builds in release mode, starts the quickstart, and loads it with wrk over
# loopback; then a bare HTTP server answering a fixed body of the same size, as the baseline.
# Usage: scripts/bench-serving.sh [seconds per run, default 10] [connections, default 16]
# [server worker threads, default 0: one per core]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-16}"
export CELLAR_SERVER__WORKER_THREADS="${3:-0}"
PORT=6590
BASE_PORT=6591

command -v wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
source scripts/services.sh
ensure_build_packages
cargo build --release -j2 -p cellar >&2
BIN="${CARGO_TARGET_DIR:-target}/release/cellar"

WORK=$(mktemp -d /tmp/cellar-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

wait_http() { # url
    for _ in $(seq 1 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "no answer from $1" >&2; return 1
}

"$BIN" quickstart --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$((PORT + 10))" >"$WORK/quickstart.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/health"

# Request bodies.
one='{"entities": {"user_id": ["u1"]}, "groups": ["user_profile"]}'
service='{"entities": {"user_id": ["u1"], "article_id": ["a1"]}, "feature_service": "home_feed_ranker"}'
hundred=$(python3 -c 'import json; print(json.dumps({"entities": {"user_id": ["u%d" % i for i in range(100)]}, "groups": ["user_profile"]}))')

lua() { # body -> script path
    local f="$WORK/req$RANDOM.lua"
    python3 - "$1" "$f" <<'PY'
import json, sys
body, path = sys.argv[1], sys.argv[2]
open(path, "w").write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' % json.dumps(body))
PY
    echo "$f"
}

# Runs wrk and prints "requests/s p50_ms p99_ms".
load() { # url [script]
    local out
    if [ -n "${2:-}" ]; then
        out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$2" "$1")
    else
        out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$1")
    fi
    echo "$out" >>"$WORK/wrk.log"
    python3 - "$out" <<'PY'
import re, sys
out = sys.argv[1]
def ms(label):
    m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\s*$" % label, out, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if errors:
    sys.exit("wrk saw %s error responses" % errors.group(1))
print("%.0f %.3f %.3f" % (rps, ms("50%"), ms("99%")))
PY
}

# Warm the local tier: the first read of each key goes to the store.
for body in "$one" "$service" "$hundred"; do
    curl -sf "http://127.0.0.1:$PORT/v1/features" -d "$body" >/dev/null || \
    curl -sf "http://127.0.0.1:$PORT/get-online-features" -d "$body" >/dev/null || true
done
size=$(curl -s "http://127.0.0.1:$PORT/v1/features" -d "$one" | wc -c)

"$BIN" bench-baseline --listen "127.0.0.1:$BASE_PORT" --body-bytes "$size" >"$WORK/baseline.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BASE_PORT/health"

# The baseline runs before and after Cellar's runs; the ratio uses the better of the two, so
# noise on a shared machine cannot flatter Cellar.
read -r rb1 p50_b1 p99_b1 < <(load "http://127.0.0.1:$BASE_PORT/fixed" "$(lua "$one")")
read -r r1 p50_1 p99_1 < <(load "http://127.0.0.1:$PORT/v1/features" "$(lua "$one")")
read -r rs p50_s p99_s < <(load "http://127.0.0.1:$PORT/v1/features" "$(lua "$service")")
read -r r100 p50_100 p99_100 < <(load "http://127.0.0.1:$PORT/v1/features" "$(lua "$hundred")")
read -r rb2 p50_b2 p99_b2 < <(load "http://127.0.0.1:$BASE_PORT/fixed" "$(lua "$one")")
if [ "$rb1" -ge "$rb2" ]; then rb=$rb1; p50_b=$p50_b1; p99_b=$p99_b1; else rb=$rb2; p50_b=$p50_b2; p99_b=$p99_b2; fi

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
echo
echo "machine: $(nproc) cores, $cpu; wrk -t1 -c$CONNS -d${DURATION}s over loopback; server worker threads: $CELLAR_SERVER__WORKER_THREADS"
printf "%-44s %12s %9s %9s\n" "case" "requests/s" "p50 ms" "p99 ms"
printf "%-44s %12s %9s %9s\n" "baseline: bare server, fixed $size-byte body" "$rb" "$p50_b" "$p99_b"
printf "%-44s %12s %9s %9s\n" "1 entity x 1 group (local tier)" "$r1" "$p50_1" "$p99_1"
printf "%-44s %12s %9s %9s\n" "1 entity x feature service home_feed_ranker" "$rs" "$p50_s" "$p99_s"
printf "%-44s %12s %9s %9s\n" "100 entities x 1 group" "$r100" "$p50_100" "$p99_100"
python3 - "$r1" "$rb" "$r100" <<'PY'
import sys
r1, rb, r100 = map(float, sys.argv[1:])
print("1x1 / baseline: %.0f%% of the bare server's requests/s" % (100 * r1 / rb))
print("100 entities: %.0f entity lookups/s" % (100 * r100))
PY
