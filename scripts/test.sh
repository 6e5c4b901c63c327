#!/usr/bin/env bash
# Builds g4 and runs every CPU test (GPU-only tests carry the `gpu` label and are skipped here).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
ctest --test-dir build --output-on-failure -L cpu -j "$(nproc)"
