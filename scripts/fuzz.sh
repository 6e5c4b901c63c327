#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, ASan + UBSan, clang) into build-fuzz and runs each for a
# fixed seed and number of inputs, starting from its seed corpus (fuzz/corpus/<target>) and
# dictionary (fuzz/dict/<target>.dict). Prints one row per target; exits non-zero on any finding.
# Usage: scripts/fuzz.sh [runs per target, default 3000] [target ...]
# Env: JOBS (build parallelism), FUZZ_SEED (default 1), FUZZ_FLAGS (extra libFuzzer flags, e.g.
# -max_total_time=3600 for a long campaign). Inputs that fail land in build-fuzz/findings/; the
# inputs a run found interesting in build-fuzz/corpus/<target> (kept, so a later run resumes).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3000}
shift || true
jobs=${JOBS:-$(nproc)}
extra=()
[ "${CI:-}" = "true" ] && extra+=(-DG4_WERROR=ON)
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DG4_FUZZ=ON \
  -DG4_CUDA=OFF -DG4_BUILD_TESTS=OFF "${extra[@]}" >/dev/null
cmake --build build-fuzz -j "$jobs" --target fuzz_targets
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for d in fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi
mkdir -p build-fuzz/findings
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
failed=0
printf '%-20s %8s %8s %8s\n' target runs crashes seconds
for t in "${targets[@]}"; do
  work=build-fuzz/corpus/$t
  mkdir -p "$work"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  log=build-fuzz/findings/$t.log
  start=$(date +%s%N)
  # Limits: 1 GiB of RSS and 512 MiB in one allocation (a parser must check sizes before it
  # allocates), 10 s per input (a hang is a finding too).
  rc=0
  "build-fuzz/fuzz_$t" "$work" "fuzz/corpus/$t" "${dict[@]}" -seed="${FUZZ_SEED:-1}" -runs="$runs" \
    -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/findings/$t-" ${FUZZ_FLAGS:-} >"$log" 2>&1 || rc=$?
  ms=$((($(date +%s%N) - start) / 1000000))
  done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  crashes=0
  if [ "$rc" -ne 0 ]; then
    crashes=1
    failed=1
  fi
  printf '%-20s %8s %8s %8d.%d\n' "$t" "${done_runs:-0}" "$crashes" $((ms / 1000)) $((ms % 1000 / 100))
  if [ "$rc" -ne 0 ]; then
    echo "  finding in $t (exit $rc); log: $log" >&2
    grep -m1 -E 'ERROR: (AddressSanitizer|libFuzzer)|runtime error|non-g4 exception|SUMMARY' "$log" | sed 's/^/  /' >&2 || true
  fi
done
exit $failed
