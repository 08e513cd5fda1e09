#!/usr/bin/env bash
# Serving benchmark of this checkout against an earlier revision, in one run on one machine:
# builds both in release mode (the revision in a worktree with its own target directory),
# then runs scripts/bench-serving.sh against each binary in turn, alternating, so drift of a
# shared machine falls on both alike.
# Usage: scripts/bench-compare.sh REVISION [rounds, default 3] [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
REV="${1:?usage: scripts/bench-compare.sh REVISION [rounds] [seconds]}"
ROUNDS="${2:-3}"
DURATION="${3:-10}"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
BASE_TARGET="$TARGET-baseline"

source scripts/services.sh
ensure_build_packages
cargo build --release -j2 -p cellar >&2
CURRENT_BIN="$TARGET/release/cellar"

BASE_TREE=$(mktemp -d /tmp/cellar-baseline.XXXXXX)
LOGS=$(mktemp -d /tmp/cellar-compare.XXXXXX)
cleanup() { git worktree remove --force "$BASE_TREE" >/dev/null 2>&1 || rm -rf "$BASE_TREE"; }
trap cleanup EXIT
git worktree add --detach "$BASE_TREE" "$REV" >&2
# Dependencies built for this checkout are reused; the revision's own crates never are
# (cargo would take them for this checkout's).
if [ ! -d "$BASE_TARGET/release" ] && [ -d "$TARGET/release" ]; then
    mkdir -p "$BASE_TARGET"
    cp -a "$TARGET/release" "$BASE_TARGET/"
    rm -rf "$BASE_TARGET"/release/{.fingerprint,deps,build,incremental}/cellar*
fi
(cd "$BASE_TREE" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release -j2 -p cellar >&2)
BASE_BIN="$LOGS/cellar-$REV"
cp "$BASE_TARGET/release/cellar" "$BASE_BIN"

for round in $(seq 1 "$ROUNDS"); do
    for side in baseline current; do
        bin=$BASE_BIN
        [ "$side" = current ] && bin=$CURRENT_BIN
        echo "round $round: $side" >&2
        CELLAR_BIN="$bin" bash scripts/bench-serving.sh "$DURATION" >"$LOGS/$side-$round.txt"
    done
done

echo "revision $REV ($(git log -1 --format=%h "$REV")) against $(git log -1 --format=%h HEAD)$(git diff --quiet HEAD || echo ' with uncommitted changes')"
grep '^machine:' "$LOGS/current-1.txt"
python3 - "$LOGS" "$ROUNDS" <<'PY'
import re, statistics, sys
logs, rounds = sys.argv[1], int(sys.argv[2])
cases = ["1 random user x 1 group (local tier)", "1 user, 1 article x home_feed_ranker",
         "100 random users x 1 group"]
def rows(side, r):
    text = open("%s/%s-%d.txt" % (logs, side, r)).read()
    out = {}
    for case in cases:
        m = re.search(re.escape(case) + r"\s+(\d+)\s+([\d.]+)\s+([\d.]+)", text)
        out[case] = (float(m.group(1)), float(m.group(3)))
    return out
data = {side: [rows(side, r) for r in range(1, rounds + 1)] for side in ("baseline", "current")}
print("%-40s %22s %22s %8s" % ("case (median of %d rounds)" % rounds, "baseline req/s, p99", "current req/s, p99", "ratio"))
for case in cases:
    med = {}
    for side in data:
        rps = statistics.median(r[case][0] for r in data[side])
        p99 = statistics.median(r[case][1] for r in data[side])
        med[side] = (rps, p99)
    b, c = med["baseline"], med["current"]
    print("%-40s %13.0f %6.2f ms %13.0f %6.2f ms %7.2f" % (case, b[0], b[1], c[0], c[1], c[0] / b[0]))
PY
echo "per-run results: $LOGS"
