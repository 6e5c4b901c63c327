#!/usr/bin/env bash
# Builds the CPU engine and its tests with ASan + UBSan (G4_SANITIZE=ON, into build-asan) and runs
# the CPU suite: a memory error or undefined behaviour fails the test that hits it.
# Usage: scripts/test_sanitized.sh [ctest args...]
# Env: JOBS (build and test parallelism); TESTS="io data_pipeline" builds and runs only those
# test folders (the whole suite takes a long time on a small machine).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${JOBS:-$(nproc)}
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DG4_CUDA=OFF -DG4_SANITIZE=ON \
      -DG4_WERROR=ON >/dev/null
select=()
if [ -n "${TESTS:-}" ]; then
  read -r -a names <<<"$TESTS"
  cmake --build build-asan -j "$jobs" --target "${names[@]/#/test_}"
  select=(-R "^($(IFS='|'; echo "${names[*]}"))\$")
else
  cmake --build build-asan -j "$jobs"
fi
# OpenMP and OpenBLAS keep thread pools alive at exit; MPI's own allocations are not ours to check.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
ctest --test-dir build-asan --output-on-failure -L cpu -j "$jobs" "${select[@]}" "$@"
