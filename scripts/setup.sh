#!/usr/bin/env bash
# Create .venv and install amosc with its test tools, Lava, NIR and matplotlib (idempotent).
# lava-nc 0.10.0 declares Python < 3.11; its wheel is pure Python and amosc makes it
# import on 3.11 (docs/lava.md), so it is installed without its metadata's checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[lava,nir,test,plot]"
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --ignore-requires-python "lava-nc==0.10.0"
