#!/usr/bin/env bash
# What authentication and TLS cost on the serving path: the same 1 entity x 1 group read
# against three servers on copies of the same quickstart data: authentication off, API-key
# authentication on (every request checked and authorized), and API keys over TLS. Runs
# alternate between the three for several rounds; each case reports its best round, so noise
# on a shared machine favours none of them.
# Usage: scripts/bench-auth.sh [seconds per run, default 10] [rounds, default 3]
# [connections, default 16]
# CELLAR_BIN=path runs that binary instead of building this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION="${1:-10}"
ROUNDS="${2:-3}"
CONNS="${3:-16}"
PORT_OFF=6620
PORT_KEY=6622
PORT_TLS=6624

source scripts/bench-lib.sh

WORK=$(mktemp -d /tmp/cellar-bench-auth.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# The quickstart writes the example repo and its sample data once; each server gets a copy.
"$BIN" quickstart --data-dir "$WORK/data" --listen "127.0.0.1:$PORT_OFF" --grpc-listen "127.0.0.1:$((PORT_OFF + 1))" >"$WORK/quickstart.log" 2>&1 &
qs=$!
wait_http "http://127.0.0.1:$PORT_OFF/health"
kill "$qs"; wait "$qs" 2>/dev/null || true
for c in off key tls; do cp -a "$WORK/data" "$WORK/data-$c"; done

# An API key (only its digest goes into the config) and a certificate for 127.0.0.1.
KEY="cellar_$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
DIGEST=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
auth_config() { # file [tls]
    cat >"$1" <<TOML
[auth]
enabled = true
audit_log = "$WORK/audit.log"
[[auth.api_keys]]
name = "bench"
sha256 = "$DIGEST"
roles = ["reader"]
[[auth.roles]]
name = "reader"
grants = [{ actions = ["read_features"], resources = ["group:user_*", "service:*"] }]
TOML
    if [ "${2:-}" = tls ]; then
        printf '[server.tls]\ncert_file = "%s"\nkey_file = "%s"\n' "$WORK/cert.pem" "$WORK/key.pem" >>"$1"
    fi
}
: >"$WORK/off.toml"
auth_config "$WORK/key.toml"
auth_config "$WORK/tls.toml" tls
for c in off key tls; do
    port_var="PORT_${c^^}"; port=${!port_var}
    "$BIN" serve --config "$WORK/$c.toml" --data-dir "$WORK/data-$c" --repo "$WORK/data-$c/feature_repo" \
        --listen "127.0.0.1:$port" --grpc-listen "127.0.0.1:$((port + 1))" >"$WORK/serve-$c.log" 2>&1 &
    PIDS+=($!)
done
wait_http "http://127.0.0.1:$PORT_OFF/health"
wait_http "http://127.0.0.1:$PORT_KEY/health"
wait_http "https://127.0.0.1:$PORT_TLS/health" -k

USERS=10000
cat >"$WORK/one.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if os.getenv("BENCH_KEY") then wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY") end
math.randomseed(os.time())
request = function()
    return wrk.format(nil, nil, nil, '{"entities": {"user_id": ["u' .. math.random(0, $USERS - 1) .. '"]}, "groups": ["user_profile"]}')
end
LUA

# Every user read once by each server, so that every case reads from a warm local tier.
for c in off key tls; do
    port_var="PORT_${c^^}"; port=${!port_var}
    scheme=http; [ "$c" = tls ] && scheme=https
    python3 - "$scheme://127.0.0.1:$port" "$USERS" "$KEY" <<'PY'
import json, ssl, sys, urllib.request
url, users, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl._create_unverified_context()
for start in range(0, users, 1000):
    body = {"entities": {"user_id": ["u%d" % u for u in range(start, min(start + 1000, users))]}, "groups": ["user_profile"]}
    req = urllib.request.Request(url + "/v1/features", json.dumps(body).encode(),
                                 {"Content-Type": "application/json", "Authorization": "Bearer " + key})
    urllib.request.urlopen(req, context=ctx).read()
PY
done

# Runs wrk and prints "requests/s p50_ms p99_ms"; fails on any non-2xx answer (a refused
# request would be a cheap one).
load() { # url key
    local out
    out=$(BENCH_KEY="$2" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/one.lua" "$1")
    echo "$out" >>"$WORK/wrk.log"
    echo "$out" | wrk_summary
}

declare -A best best50 best99
for c in off key tls; do best[$c]=0; done
for round in $(seq 1 "$ROUNDS"); do
    for c in off key tls; do
        case $c in
            off) read -r r p50 p99 < <(load "http://127.0.0.1:$PORT_OFF/v1/features" "") ;;
            key) read -r r p50 p99 < <(load "http://127.0.0.1:$PORT_KEY/v1/features" "$KEY") ;;
            tls) read -r r p50 p99 < <(load "https://127.0.0.1:$PORT_TLS/v1/features" "$KEY") ;;
        esac
        echo "round $round $c: $r requests/s" >&2
        if [ "$r" -gt "${best[$c]}" ]; then best[$c]=$r; best50[$c]=$p50; best99[$c]=$p99; fi
    done
done

cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
echo
echo "machine: $(nproc) cores, $cpu; wrk -t1 -c$CONNS -d${DURATION}s over loopback, keep-alive; best of $ROUNDS alternated rounds"
echo "1 random user (of $USERS) x user_profile, local tier warm"
printf "%-44s %12s %9s %9s\n" "case" "requests/s" "p50 ms" "p99 ms"
printf "%-44s %12s %9s %9s\n" "auth off" "${best[off]}" "${best50[off]}" "${best99[off]}"
printf "%-44s %12s %9s %9s\n" "API key checked and authorized" "${best[key]}" "${best50[key]}" "${best99[key]}"
printf "%-44s %12s %9s %9s\n" "API key over TLS 1.3" "${best[tls]}" "${best50[tls]}" "${best99[tls]}"
python3 - "${best[off]}" "${best[key]}" "${best[tls]}" <<'PY'
import sys
off, key, tls = map(float, sys.argv[1:])
print("with API keys: %.1f%% of auth off's requests/s; over TLS: %.1f%%" % (100 * key / off, 100 * tls / off))
PY
