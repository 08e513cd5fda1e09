#!/usr/bin/env bash
# How fast the web console's pages answer, on one `cellar quickstart` (release build, 10,000
# users and 100,000 articles) with a batch ingestion, a finished job, a dead letter and a few
# minutes of sampled metrics behind it: each page fetched REPEAT times by curl, one at a time,
# after a warm-up; prints median, p99 and max of each, with `/health` (the same request
# through the same listener, nothing rendered) as the floor.
# Usage: scripts/bench-console.sh [repeat, default 200]
set -euo pipefail
cd "$(dirname "$0")/.."
REPEAT="${1:-200}"
source scripts/bench-lib.sh

WORK=$(mktemp -d /tmp/cellar-bench-console.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GRPC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
mkdir -p "$WORK/repo"
{
    echo "user_id,ts,country,age"
    for i in $(seq 0 999); do echo "p$i,2026-01-01T00:00:00Z,SE,$((20 + i % 80))"; done
} >"$WORK/profiles.csv"
cat >"$WORK/repo/import.yaml" <<EOF
kind: Ingestion
name: profile_import
batch: { files: { path: "$WORK/profiles.csv", format: csv } }
into: user_profile
key: user_id
event_time: ts
features: { country: country, age: age }
EOF
CELLAR_INGEST__MAX_ATTEMPTS=1 "$BIN" --data-dir "$WORK/data" --repo "$WORK/repo" quickstart \
    --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$GRPC" >"$WORK/cellar.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
wait_http "$URL/health"

# Something on every page: a finished job, a dead letter, reads for the charts.
JOB=$(curl -sf "$URL/v1/jobs" -d '{"ingestion": "profile_import"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
curl -sf "$URL/v1/events" -d '{"topic": "user-actions", "events": [{"type": "article_clicked", "user_id": "u1", "ts": "not a time", "article_id": "a1"}]}' >/dev/null
for round in $(seq 1 3); do
    for i in $(seq 0 20); do
        curl -sf "$URL/v1/features" -d "{\"entities\": {\"user_id\": [\"u$i\", \"u$((i + 100))\"]}, \"groups\": [\"user_profile\", \"recent_clicked_articles\"]}" >/dev/null
    done
    sleep 10
done
for _ in $(seq 1 100); do
    state=$(curl -sf "$URL/v1/jobs/$JOB" | python3 -c 'import json,sys; print(json.load(sys.stdin)["job"]["state"])')
    [ "$state" = succeeded ] && break
    sleep 0.2
done

PAGES=(
    "/health"
    "/ui"
    "/ui/groups/user_profile"
    "/ui/groups/user_profile?user_id=u1,u2,u3,u4,u5,u6,u7,u8,u9,u10"
    "/ui/groups/recent_clicked_articles?user_id=u7&top_n=10"
    "/ui/groups/feed_context"
    "/ui/stream"
    "/ui/jobs"
    "/ui/jobs/$JOB"
    "/ui/registry"
    "/ui/registry?plan=$WORK/repo"
)
printf '%-62s %8s %8s %8s\n' page "p50 ms" "p99 ms" "max ms"
for page in "${PAGES[@]}"; do
    status=$(curl -s -o /dev/null -w '%{http_code}' "$URL$page")
    [ "$status" = 200 ] || { echo "$page answered $status" >&2; exit 1; }
    for _ in $(seq 1 10); do curl -s -o /dev/null "$URL$page"; done
    for _ in $(seq 1 "$REPEAT"); do curl -s -o /dev/null -w '%{time_total}\n' "$URL$page"; done |
        python3 -c '
import sys
t = sorted(float(l) * 1000 for l in sys.stdin)
print("%-62s %8.2f %8.2f %8.2f" % (sys.argv[1], t[len(t) // 2], t[int(len(t) * 0.99) - 1], t[-1]))
' "$page"
done
