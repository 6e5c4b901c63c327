#!/usr/bin/env bash
# The README's main job: builds g4, writes the King James Bible corpus (Debian's bible-kjv-text),
# trains the built-in tiny Gemma 4 MoE on it from scratch for a few minutes on the CPU, and ends
# with a Hugging Face checkpoint, a loss curve, a summary and sampled text.
# Extra arguments are recipe overrides, e.g.: ./scripts/run_default.sh train.steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
./scripts/fetch_corpus.sh
./build/g4 train recipes/tiny-moe-kjv.yaml "$@"
