#!/usr/bin/env bash
# The README's RL example: builds g4, writes arithmetic problems of the built-in task as chat
# data (half of the replies without the final "Answer:" line the verifier reads), fine-tunes a
# tiny Gemma 4 on them from scratch (g4 train), then runs GRPO from it (g4 rl), measuring accuracy
# on held-out problems before the first step and every 10 steps; about twenty minutes on 2 CPU
# cores. Extra arguments are overrides
# of the GRPO recipe, e.g.: ./scripts/run_rl_example.sh train.device=cuda
# Run again, both runs continue from their checkpoints (--resume; g4 train and g4 rl refuse to
# start afresh over an earlier run). Remove runs/arithmetic to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
mkdir -p runs/arithmetic
./build/g4 task arithmetic --difficulty 1 --count 6000 --sft --answer-line-fraction 0.5 --overwrite \
  --out runs/arithmetic/sft.jsonl
./build/g4 train recipes/rl/tiny-arithmetic-sft.yaml --resume
./build/g4 rl recipes/rl/tiny-arithmetic-grpo.yaml --resume "$@"
