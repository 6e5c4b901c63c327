#!/usr/bin/env bash
# Builds g4 and runs every CPU test (GPU-only tests carry the `gpu` label and are skipped here).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
./scripts/python_venv.sh build
# The openai client test skips itself where the venv is missing; here it must run.
G4_REQUIRE_OPENAI=1 ctest --test-dir build --output-on-failure -L cpu -j "$(nproc)"
