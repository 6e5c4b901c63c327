#!/usr/bin/env bash
# Builds g4 and runs every CPU test (GPU-only tests carry the `gpu` label and are skipped here), then
# a short seeded run of every fuzz target (scripts/fuzz.sh, 3000 inputs each; G4_SKIP_FUZZ=1 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
./scripts/python_venv.sh build
# The openai client test skips itself where the venv is missing; here it must run.
G4_REQUIRE_OPENAI=1 ctest --test-dir build --output-on-failure -L cpu -j "$(nproc)"
[ "${G4_SKIP_FUZZ:-}" = 1 ] || ./scripts/fuzz.sh 3000
