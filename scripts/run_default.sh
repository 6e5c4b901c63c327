#!/usr/bin/env bash
# The README's main job: builds g4, writes the King James Bible corpus (Debian's bible-kjv-text),
# trains the built-in tiny Gemma 4 MoE on it from scratch for a few minutes on the CPU, and ends
# with a Hugging Face checkpoint, a loss curve, a summary and sampled text.
# Extra arguments are recipe overrides, e.g.: ./scripts/run_default.sh train.steps=50
# Run again, it continues the run in runs/tiny-moe-kjv (--resume; a finished one only summarises):
# g4 train refuses to start afresh over an earlier run. Remove that directory to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
./scripts/fetch_corpus.sh
./build/g4 train recipes/tiny-moe-kjv.yaml --resume "$@"
