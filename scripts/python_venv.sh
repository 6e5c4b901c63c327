#!/usr/bin/env bash
# Makes BUILD_DIR/pyvenv (default build/pyvenv) with the Python packages the tests drive g4 with:
# the official `openai` client (tests/serve/openai_client_test.py). Debian's Python refuses system
# pip installs (PEP 668), hence a venv. Safe to run repeatedly; needs the network only the first time.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-build}/pyvenv"
req=tests/serve/requirements.txt
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/requirements.txt"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
cp "$req" "$venv/requirements.txt"
