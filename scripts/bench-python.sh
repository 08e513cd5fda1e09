#!/usr/bin/env bash
# The Python client's benchmark, in one run against one `cellar quickstart` (release build):
#  1. 100 entities x the quickstart's `home_feed_ranker` into a pandas DataFrame, one caller
#     in a loop: Cellar's client against Feast 0.67's `FeatureStore.get_online_features` with
#     its `remote` online store pointed at the same server (Feast's registry holds the same
#     entities, feature views and feature service); the two DataFrames are compared first.
#  2. 1,000 entities: the client's Arrow answer against its JSON answer.
# Usage: scripts/bench-python.sh [seconds per measurement, default 10]
# Python packages (the client, pandas, Feast) go into a virtualenv under ~/.cache.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-10}"
source scripts/bench-lib.sh

VENV="$HOME/.cache/cellar-bench-py"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check 'feast==0.67.*' ./python >&2

WORK=$(mktemp -d /tmp/cellar-bench-python.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
GRPC=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" --data-dir "$WORK/data" --repo "$WORK/repo" quickstart \
    --listen "127.0.0.1:$PORT" --grpc-listen "127.0.0.1:$GRPC" >"$WORK/cellar.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
wait_http "http://127.0.0.1:$PORT/health"

"$VENV/bin/python" - "$WORK" "http://127.0.0.1:$PORT" "$SECONDS_EACH" <<'EOF'
import logging, os, random, sys, time
import pandas as pd
from cellar import Client

work, url, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
logging.disable(logging.WARNING)
rng = random.Random(20)

def batches(n, count=200):
    return [
        {"user_id": [f"u{rng.randrange(10_000)}" for _ in range(n)],
         "article_id": [f"a{rng.randrange(100_000)}" for _ in range(n)]}
        for _ in range(count)
    ]

def rate(name, n, read):
    """Rows per second of `read` over entity batches of n, one caller, after a warm-up."""
    work_list = batches(n)
    for b in work_list[:5]:
        read(b)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        read(work_list[done % len(work_list)])
        done += 1
    elapsed = time.perf_counter() - start
    rows = done * n / elapsed
    print(f"{name:<44} {done:>6} requests  {rows:>10,.0f} rows/s  {1000 * elapsed / done:>7.2f} ms/request")
    return rows

client = Client(url)

# Feast: the same entities, views and service, its online reads sent to Cellar.
from feast import Entity, FeatureService, FeatureStore, FeatureView, Field, FileSource
from feast.repo_config import RepoConfig
from feast.types import Array, Float64, Int64, String
from feast.value_type import ValueType
os.makedirs(f"{work}/feast", exist_ok=True)
store = FeatureStore(config=RepoConfig(
    project="bench", provider="local", registry=f"{work}/feast/registry.db",
    online_store={"type": "remote", "path": url},
    entity_key_serialization_version=3,
))
source = FileSource(name="unused", path=f"{work}/feast/unused.parquet", timestamp_field="event_timestamp")
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
article = Entity(name="article", join_keys=["article_id"], value_type=ValueType.STRING)
views = [
    FeatureView(name="user_profile", entities=[user], source=source,
                schema=[Field(name="country", dtype=String), Field(name="age", dtype=Int64),
                        Field(name="keywords", dtype=Array(String))]),
    FeatureView(name="recent_clicked_articles", entities=[user], source=source,
                schema=[Field(name="article_id", dtype=Array(String))]),
    FeatureView(name="article_stats", entities=[article], source=source,
                schema=[Field(name="ctr_7d", dtype=Float64)]),
]
# Feast's remote store sends the service's name: Cellar answers its own home_feed_ranker.
service = FeatureService(name="home_feed_ranker", features=views)
store.apply([user, article, *views, service])

def feast_read(b):
    rows = [{"user_id": u, "article_id": a} for u, a in zip(b["user_id"], b["article_id"])]
    return store.get_online_features(features=service, entity_rows=rows).to_df()

def cellar_read(b, **kw):
    return client.get_online_features(service="home_feed_ranker", entities=b, **kw).to_pandas()

def plain(values):
    return [None if v is None or (not hasattr(v, "__len__") and pd.isna(v)) else
            (list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v) for v in values]

# The same answer from both, before anything is timed (Feast's frame puts the clicks feature,
# also named article_id, over the article_id key column).
sample = batches(100, 1)[0]
ours, theirs = cellar_read(sample), feast_read(sample)
for mine, feasts in [("country", "country"), ("age", "age"), ("keywords", "keywords"),
                     ("recent_clicked_articles__article_id", "article_id"), ("ctr_7d", "ctr_7d")]:
    a, b = plain(ours[mine]), plain(theirs[feasts])
    assert a == b, f"{mine} differs: {a[:3]} vs {b[:3]}"
print(f"100 entities: Cellar's client and Feast's agree on {len(ours)} rows x 5 features "
      f"({ours['age'].notna().sum()} users and {ours['ctr_7d'].notna().sum()} articles found)")

print(f"\n100 entities x home_feed_ranker (5 features of 3 groups) into pandas, {seconds:.0f} s each:")
feast = rate("Feast 0.67 FeatureStore (remote -> Cellar)", 100, feast_read)
json_100 = rate("Cellar client, JSON answer", 100, lambda b: cellar_read(b, arrow=False))
arrow_100 = rate("Cellar client, Arrow answer (default)", 100, lambda b: cellar_read(b, arrow=True))
print(f"Cellar's client / Feast: {arrow_100 / feast:.1f}x (JSON answer: {json_100 / feast:.1f}x)")

print(f"\n1,000 entities x home_feed_ranker into pandas:")
json_1000 = rate("Cellar client, JSON answer", 1000, lambda b: cellar_read(b, arrow=False))
arrow_1000 = rate("Cellar client, Arrow answer", 1000, lambda b: cellar_read(b, arrow=True))
print(f"Arrow / JSON: {arrow_1000 / json_1000:.1f}x")
EOF
