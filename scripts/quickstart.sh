#!/usr/bin/env bash
# Builds Cellar (installing the system packages the build needs, when missing) and runs the
# quickstart: an example feature repo, applied, with sample data, served on 127.0.0.1:6566.
# Usage: scripts/quickstart.sh [cellar quickstart flags, e.g. --listen ADDR --data-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_build_packages
exec cargo run --release -j2 -p cellar -- quickstart "$@"
