#!/usr/bin/env bash
# The README's main job: set up, then run the local pipeline on the small dev environment
# against the Kalshi simulator, with a live per-shard table. Extra arguments go to
# `ssmd local up` (e.g. `--for 30`, or `--kalshi demo --kalshi-key-id ID
# --kalshi-private-key PEM` to capture Kalshi's demo environment instead).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ssmd local up kalshi-dev --data-dir data/local "$@"
