#!/usr/bin/env bash
# Makes DIR (default build/refvenv) with transformers, peft and torch (tools/requirements-reference.txt):
# what tools/probe_*.py, tools/check_*.py and the HF benchmark scripts run against. Not needed to
# build or test g4. Needs the network the first time (about 4 GB of wheels: PyPI's torch carries CUDA);
# safe to run again.
#   scripts/reference_venv.sh [DIR] && DIR/bin/python tools/probe_vs_transformers.py --trials 20
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-build/refvenv}"
req=tools/requirements-reference.txt
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$venv/requirements.txt"; then exit 0; fi
python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
cp "$req" "$venv/requirements.txt"
