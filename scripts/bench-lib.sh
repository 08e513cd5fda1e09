# What the serving benchmarks share: sourced by scripts/bench-*.sh after `cd` to the checkout.
# Defines BIN (the cellar binary: CELLAR_BIN, or a release build of this checkout), wait_http
# and wrk_summary.

command -v wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
source scripts/services.sh
ensure_build_packages
if [ -n "${CELLAR_BIN:-}" ]; then
    BIN="$CELLAR_BIN"
else
    cargo build --release -j2 -p cellar >&2
    BIN="${CARGO_TARGET_DIR:-target}/release/cellar"
fi

wait_http() { # url [curl options]
    local url=$1; shift
    for _ in $(seq 1 600); do curl -sf "$@" "$url" >/dev/null 2>&1 && return 0; sleep 0.2; done
    echo "no answer from $url" >&2; return 1
}

# Reads wrk's --latency output on stdin and prints "requests/s p50_ms p99_ms"; fails on any
# non-2xx answer (a refused request would be a cheap one).
wrk_summary() {
    python3 -c '
import re, sys
out = sys.stdin.read()
def ms(label):
    m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\s*$" % label, out, re.M)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
if errors:
    sys.exit("wrk saw %s error responses" % errors.group(1))
print("%.0f %.3f %.3f" % (rps, ms("50%"), ms("99%")))
'
}
