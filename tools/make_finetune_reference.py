"""Fine-tuning reference: transformers + torch.optim.AdamW on tiny Gemma 4 fixtures.

Usage: python3 tools/make_finetune_reference.py FIXTURES_DIR OUT_DIR
For each model, runs STEPS optimizer steps on fixed batches in fp32 with AdamW (decay on
matrices only, like g4: no decay for 1-D tensors and embeddings) and global-norm clipping, and
writes OUT_DIR/<name>/reference.safetensors (the batches and the loss of every step) plus the
starting checkpoint. MoE models get per_expert_scale = 1 and frozen: g4 folds that scale into
the expert down projections, so it is not a separately trained parameter there.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoConfig
import transformers

# A fine-tuning learning rate. Much larger ones (2e-3 moves these 0.05-scale weights by ~4% a step)
# make the trajectory chaotic: torch's own fp32 and fp64 runs then differ by 1e-3 in loss after
# four steps, so no implementation could be compared at 1e-5. At 1e-4 they agree to ~1e-6.
STEPS, LR, BETAS, EPS, WD, CLIP = 6, 1e-4, (0.9, 0.95), 1e-8, 0.1, 1.0


def main():
    src_root, out_root = sys.argv[1], sys.argv[2]
    for name in ["tiny-dense-ple", "tiny-moe"]:
        src = os.path.join(src_root, name)
        cfg = AutoConfig.from_pretrained(src)
        model = getattr(transformers, cfg.architectures[0]).from_pretrained(src, dtype=torch.float32)
        model.train()
        for n, p in model.named_parameters():
            if n.endswith("per_expert_scale"):
                with torch.no_grad():
                    p.fill_(1.0)
                p.requires_grad_(False)
        out = os.path.join(out_root, name)
        os.makedirs(out, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "embed_tokens" not in n]
        no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (p.ndim < 2 or "embed_tokens" in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=LR, betas=BETAS, eps=EPS, foreach=False)
        vocab = cfg.get_text_config().vocab_size
        g = torch.Generator().manual_seed(7)
        ref, losses = {}, []
        for step in range(STEPS):
            ids = torch.randint(3, vocab, (2, 24), generator=g)
            labels = ids.clone()
            labels[0, :5] = -100  # a prompt whose tokens are not trained
            opt.zero_grad()
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], CLIP)
            opt.step()
            losses.append(float(loss))
            ref[f"batch.{step}.input_ids"] = ids
            ref[f"batch.{step}.labels"] = labels
            ref[f"grad_norm.{step}"] = norm.detach().reshape(1).float()
        ref["losses"] = torch.tensor(losses, dtype=torch.float32)
        save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(out, "reference.safetensors"))
        json.dump(dict(steps=STEPS, lr=LR, betas=BETAS, eps=EPS, weight_decay=WD, grad_clip=CLIP,
                       schedule="constant", torch=torch.__version__, transformers=transformers.__version__,
                       losses=losses), open(os.path.join(out, "reference.json"), "w"), indent=1)
        print(name, losses)


if __name__ == "__main__":
    main()
