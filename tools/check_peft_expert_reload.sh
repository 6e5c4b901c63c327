#!/usr/bin/env bash
# PEFT reload parity for LoRA on the routed experts (docs/lora.md): trains a tiny MoE with adapters
# on q_proj and both expert weights, then checks with tools/check_peft_reload.py that peft loads
# the adapter onto transformers' model and gives g4's logits, twice:
#   (a) on the checkpoint g4 wrote with its base (per_expert_scale all ones);
#   (b) adapter-only checkpoints of a run on a base whose per_expert_scale is not all ones.
# Needs torch, transformers and peft (the GPU host has them; CPU is enough).
#   tools/check_peft_expert_reload.sh [G4_BINARY] [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
G4=${1:-build/g4}
W=${2:-/tmp/g4_peft_experts}
rm -rf "$W"; mkdir -p "$W"
cat > "$W/recipe.yaml" <<EOF
model:
  name: tiny-moe
  config: {hidden_size: 64, intermediate_size: 64, num_hidden_layers: 2, num_experts: 4, moe_intermediate_size: 32, head_dim: 16, global_head_dim: 32, sliding_window: 16}
tokenizer: $PWD/recipes/data/kjv-tokenizer
data:
  train: [$PWD/tests/data/text/genesis.txt]
  seq_len: 64
optimizer:
  lr: 2.0e-2
train:
  steps: 8
  batch_size: 2
checkpoint:
  every: 8
lora:
  rank: 8
  alpha: 16
  targets: [q_proj, experts.gate_up_proj, experts.down_proj]
EOF
python3 -c "import torch; from safetensors.torch import save_file; torch.manual_seed(0); save_file({'input_ids': torch.randint(0, 1000, (2, 16))}, '$W/in.safetensors')"

# (a) the base g4 wrote, the adapter beside it
"$G4" train "$W/recipe.yaml" checkpoint.dir="$W/named"
C=$W/named/checkpoints/step-00000008
"$G4" convert "$C" "$W/merged_a" --merge-lora "$C/adapter"
"$G4" forward "$W/merged_a" --inputs "$W/in.safetensors" --out "$W/g4_a.safetensors"
python3 tools/check_peft_reload.py "$C" "$C/adapter" "$W/in.safetensors" "$W/g4_a.safetensors"

# (b) a base with per_expert_scale away from ones; adapter-only checkpoints
mkdir "$W/base2" && cp "$C/config.json" "$W/base2/"
python3 - <<EOF
import torch
from safetensors.torch import load_file, save_file
sd = load_file("$C/model.safetensors"); g = torch.Generator().manual_seed(0)
for k in sd:
    if k.endswith("per_expert_scale"): sd[k] = 0.7 + 0.6 * torch.rand(sd[k].shape, generator=g)
save_file(sd, "$W/base2/model.safetensors", metadata={"format": "pt"})
EOF
sed "1,3c model:\n  path: $W/base2" "$W/recipe.yaml" > "$W/recipe_path.yaml"
"$G4" train "$W/recipe_path.yaml" checkpoint.dir="$W/path"
D=$W/path/checkpoints/step-00000008
"$G4" convert "$W/base2" "$W/merged_b" --merge-lora "$D/adapter"
"$G4" forward "$W/merged_b" --inputs "$W/in.safetensors" --out "$W/g4_b.safetensors"
python3 tools/check_peft_reload.py "$W/base2" "$D/adapter" "$W/in.safetensors" "$W/g4_b.safetensors"
