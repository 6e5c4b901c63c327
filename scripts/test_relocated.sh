#!/usr/bin/env bash
# Runs a test binary against a copy of tests/data and recipes/ in a temporary folder, with
# G4_TEST_DATA pointing there: the suite must not depend on the absolute path it was built in.
#   scripts/test_relocated.sh TEST_BINARY SOURCE_ROOT [GTEST_FILTER]
set -euo pipefail
bin=$1
src=$2
filter=${3:-'TestPaths.*:HfConfig.*:SafetensorsRead.*:LoadTokenizer.*'}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/g4-relocated.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tests"
cp -r "$src/tests/data" "$tmp/tests/data"
cp -r "$src/recipes" "$tmp/recipes"
out=$(G4_TEST_DATA="$tmp/tests/data" "$bin" --gtest_brief=1 --gtest_filter="$filter" 2>&1) || { echo "$out"; exit 1; }
echo "$out"
# The check that the copy was read must have run, not been skipped.
if grep -q "SKIPPED" <<<"$out"; then echo "test_relocated: a test was skipped"; exit 1; fi
