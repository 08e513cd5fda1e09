#!/usr/bin/env bash
# Serving benchmark: builds in release mode, starts the quickstart, and loads it with wrk over
# loopback; then a bare HTTP server answering a fixed body of the same size, as the baseline.
# Usage: scripts/bench-serving.sh [seconds per run, default 10] [connections, default 16]
# [server worker threads, default 0: one per core]
# CELLAR_BIN=path runs that binary instead of building this checkout (scripts/bench-compare.sh
# compares two builds this way).
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
CONNS="${2:-16}"
export CELLAR_SERVER__WORKER_THREADS="${3:-0}"
PORT=6590
BASE_PORT=6591

source scripts/bench-lib.sh

WORK=$(mktemp -d /tmp/cellar-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" quickstart --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$((PORT + 10))" >"$WORK/quickstart.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PORT/health"

# Requests draw their entities uniformly from every user (u0..u9999) and article (a0..a99999)
# of the quickstart's sample data, so the server's caches and store see the whole key space
# rather than one hot key. wrk builds each request in Lua; the bodies of the 100-entity case
# come from a pool made once per run (building 100 keys per request would slow the generator).
USERS=10000
ARTICLES=100000
one_body() { echo '{"entities": {"user_id": ["u1"]}, "groups": ["user_profile"]}'; }
lua() { # case -> script path
    local f="$WORK/$1.lua"
    cat >"$f" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local users, articles = $USERS, $ARTICLES
math.randomseed(os.time())
local pool = {}
if "$1" == "hundred" then
    for b = 1, 1000 do
        local keys = {}
        for i = 1, 100 do keys[i] = '"u' .. math.random(0, users - 1) .. '"' end
        pool[b] = '{"entities": {"user_id": [' .. table.concat(keys, ",") .. ']}, "groups": ["user_profile"]}'
    end
end
request = function()
    local body
    if "$1" == "one" then
        body = '{"entities": {"user_id": ["u' .. math.random(0, users - 1) .. '"]}, "groups": ["user_profile"]}'
    elseif "$1" == "service" then
        body = '{"entities": {"user_id": ["u' .. math.random(0, users - 1) .. '"], "article_id": ["a' ..
            math.random(0, articles - 1) .. '"]}, "feature_service": "home_feed_ranker"}'
    else
        body = pool[math.random(1, #pool)]
    end
    return wrk.format(nil, nil, nil, body)
end
LUA
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
    echo "$out" | wrk_summary
}

# Warm the local tier with every user and article: the first read of each key goes to the store.
python3 - "http://127.0.0.1:$PORT" "$USERS" "$ARTICLES" <<'PY'
import json, sys, urllib.request
url, users, articles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def post(path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req).read()
for start in range(0, users, 1000):
    post("/v1/features", {"entities": {"user_id": ["u%d" % u for u in range(start, min(start + 1000, users))]}, "groups": ["user_profile"]})
for start in range(0, articles, 1000):
    rows = range(start, min(start + 1000, articles))
    post("/v1/features", {"entities": {"user_id": ["u%d" % (a % users) for a in rows], "article_id": ["a%d" % a for a in rows]}, "feature_service": "home_feed_ranker"})
PY
size=$(curl -s "http://127.0.0.1:$PORT/v1/features" -d "$(one_body)" | wc -c)

"$BIN" bench-baseline --listen "127.0.0.1:$BASE_PORT" --body-bytes "$size" >"$WORK/baseline.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$BASE_PORT/health"

# The baseline runs before and after Cellar's runs; the ratio uses the better of the two, so
# noise on a shared machine cannot flatter Cellar.
read -r rb1 p50_b1 p99_b1 < <(load "http://127.0.0.1:$BASE_PORT/fixed" "$(lua one)")
read -r r1 p50_1 p99_1 < <(load "http://127.0.0.1:$PORT/v1/features" "$(lua one)")
read -r rs p50_s p99_s < <(load "http://127.0.0.1:$PORT/v1/features" "$(lua service)")
read -r r100 p50_100 p99_100 < <(load "http://127.0.0.1:$PORT/v1/features" "$(lua hundred)")
read -r rb2 p50_b2 p99_b2 < <(load "http://127.0.0.1:$BASE_PORT/fixed" "$(lua one)")
if [ "$rb1" -ge "$rb2" ]; then rb=$rb1; p50_b=$p50_b1; p99_b=$p99_b1; else rb=$rb2; p50_b=$p50_b2; p99_b=$p99_b2; fi

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
echo
echo "machine: $(nproc) cores, $cpu; wrk -t1 -c$CONNS -d${DURATION}s over loopback; server worker threads: $CELLAR_SERVER__WORKER_THREADS"
echo "entities drawn uniformly from all $USERS users and $ARTICLES articles, local tier warmed with all of them"
printf "%-44s %12s %9s %9s\n" "case" "requests/s" "p50 ms" "p99 ms"
printf "%-44s %12s %9s %9s\n" "baseline: bare server, fixed $size-byte body" "$rb" "$p50_b" "$p99_b"
printf "%-44s %12s %9s %9s\n" "1 random user x 1 group (local tier)" "$r1" "$p50_1" "$p99_1"
printf "%-44s %12s %9s %9s\n" "1 user, 1 article x home_feed_ranker" "$rs" "$p50_s" "$p99_s"
printf "%-44s %12s %9s %9s\n" "100 random users x 1 group" "$r100" "$p50_100" "$p99_100"
python3 - "$r1" "$rb" "$r100" <<'PY'
import sys
r1, rb, r100 = map(float, sys.argv[1:])
print("1x1 / baseline: %.0f%% of the bare server's requests/s" % (100 * r1 / rb))
print("100 entities: %.0f entity lookups/s" % (100 * r100))
PY
