#!/usr/bin/env bash
# Configures and builds g4 into build/ (Release, Ninja, ccache when present).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install_deps.sh
extra=()
[ "${CI:-}" = "true" ] && extra+=(-DG4_WERROR=ON)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${extra[@]}" "$@" >/dev/null
cmake --build build -j "$(nproc)"
