#!/usr/bin/env bash
# The README's test command: set up, lint, type-check, run the whole suite against real
# nats-server and redis-server processes the tests start on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check ssmd_infra runtime tests bench __main__.py
.venv/bin/ruff format --check ssmd_infra runtime tests bench __main__.py
.venv/bin/mypy
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
