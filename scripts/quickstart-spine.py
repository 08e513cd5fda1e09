#!/usr/bin/env python3
"""A spine for the quickstart's features: ROWS labelled (user_id, article_id, event_timestamp)
rows over the quickstart's users and articles, at times in the last day before the sample
data's anchor (when its profiles were written), as CSV on stdout. Reproducible: the same rows for the same data dir and ROWS.

Usage: scripts/quickstart-spine.py ROWS [DATA_DIR, default .cellar] > spine.csv
"""
import random
import sys
from datetime import datetime, timezone

rows = int(sys.argv[1])
data_dir = sys.argv[2] if len(sys.argv) > 2 else ".cellar"
try:
    with open(f"{data_dir}/quickstart-anchor") as f:
        anchor = int(f.read().strip())
except OSError:
    sys.exit(f"{data_dir}/quickstart-anchor not found: run the quickstart first")
rng = random.Random(7)
out = sys.stdout
out.write("user_id,article_id,event_timestamp,label\n")
day = 86_400_000
for _ in range(rows):
    ms = anchor - rng.randrange(day)
    ts = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    out.write(f"u{rng.randrange(10_000)},a{rng.randrange(100_000)},{ts}Z,{rng.randrange(2)}\n")
