#!/usr/bin/env bash
# The README's main job on the embedded default: builds g4, then inspects the bundled tiny
# Gemma 4 MoE checkpoint, computes its loss and gradients on a reference batch, generates from
# it, and round-trips it through the Hugging Face converter.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
model=tests/data/hf-gemma4/tiny-moe
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
./build/g4 inspect "$model"
echo
./build/g4 forward "$model" --inputs "$model/reference.safetensors" --out "$out/forward.safetensors" --grads
echo -n "greedy continuation of 2,17,33,4,90,12: "
./build/g4 generate "$model" --prompt-ids 2,17,33,4,90,12 --max-new-tokens 12
./build/g4 convert "$model" "$out/converted"
