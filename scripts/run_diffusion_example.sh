#!/usr/bin/env bash
# The README's block-diffusion example: builds g4, trains the main job's tiny Gemma 4 MoE on the
# King James Bible if its checkpoint is not there yet, adapts that checkpoint into a tiny
# diffusion_gemma (g4 convert --to-diffusion, 16-token canvases), fine-tunes it as NeMo Automodel
# trains DiffusionGemma (recipes/diffusion/tiny-kjv-diffusion.yaml: 64-token prompts, 32-token
# continuations denoised block by block), then samples continuations of held-out-style prompts with
# transformers' block-diffusion sampler and writes them into the run's summary. All on the CPU.
# Extra arguments are overrides of the diffusion recipe, e.g.: ./scripts/run_diffusion_example.sh train.steps=50
# Run again, the runs continue from their checkpoints (--resume; g4 train refuses to start afresh
# over an earlier run). Remove runs/tiny-kjv-diffusion to start the fine-tuning over.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh
./scripts/fetch_corpus.sh
ar=runs/tiny-moe-kjv/checkpoints/step-00000300
[ -d "$ar" ] || ./build/g4 train recipes/tiny-moe-kjv.yaml --resume
./build/g4 convert "$ar" runs/tiny-kjv-diffusion-init --to-diffusion --canvas-length 16 --overwrite
./build/g4 train recipes/diffusion/tiny-kjv-diffusion.yaml --resume "$@"
last=$(ls -d runs/tiny-kjv-diffusion/checkpoints/step-* | sort | tail -1)
summary=runs/tiny-kjv-diffusion/samples.txt
{
  echo "Block-diffusion samples of $last (32 new tokens = 2 blocks of 16, 16 denoising steps at most per block):"
  for prompt in "And God said" "In the beginning" "The LORD is my shepherd"; do
    echo
    echo "prompt: $prompt"
    ./build/g4 generate "$last" --prompt "$prompt" --max-new-tokens 32 --max-denoising-steps 16 --seed 1
  done
} | tee "$summary"
echo "samples written to $summary"
