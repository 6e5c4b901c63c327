#!/usr/bin/env python3
"""Checks that a LoRA adapter g4 trained loads with `peft` onto the transformers model and computes g4's logits.

Usage: python3 tools/check_peft_reload.py BASE ADAPTER INPUTS.safetensors G4_OUT.safetensors [--tol 1e-4]

BASE: the Hugging Face base model directory: a g4 LoRA checkpoint directory when it holds the base
(lora.save_base true, or a run on a built-in shape: config.json and model.safetensors there), else the
run's model.path (an adapter-only checkpoint's lora_base.json names it). ADAPTER: the PEFT adapter
directory (the checkpoint's adapter/: adapter_config.json + adapter_model.safetensors; adapters on the
routed experts are PEFT's target_parameters). INPUTS: input_ids [B, S] (+ optional attention_mask), as
`g4 forward --inputs` reads them. G4_OUT: what g4 computed on those inputs, with `logits` [B, S, V], e.g.

  g4 convert BASE merged --merge-lora CKPT/adapter
  g4 forward merged --inputs in.safetensors --out g4.safetensors
  python3 tools/check_peft_reload.py BASE CKPT/adapter in.safetensors g4.safetensors

Loads BASE in fp32 with the class config.json names, applies ADAPTER with peft.PeftModel.from_pretrained
(which refuses keys it cannot place, so the names are checked too), runs INPUTS on the CPU and prints the
largest |logit difference|. Exits non-zero above the tolerance.
"""
import argparse
import sys

import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base")
    ap.add_argument("adapter")
    ap.add_argument("inputs")
    ap.add_argument("g4_out")
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()

    cfg = transformers.AutoConfig.from_pretrained(a.base)
    cls = getattr(transformers, cfg.architectures[0])
    base = cls.from_pretrained(a.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, a.adapter, is_trainable=False).eval()
    # lora.Linear modules and ParamWrappers (one per adapted expert weight, nested where a layer adapts both).
    adapted = sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A"))
    inputs = load_file(a.inputs)
    want = load_file(a.g4_out)["logits"].float()
    kwargs = {"input_ids": inputs["input_ids"].long()}
    if "attention_mask" in inputs:
        kwargs["attention_mask"] = inputs["attention_mask"].long()
    with torch.no_grad():
        got = model(**kwargs).logits.float()
    if got.shape != want.shape:
        sys.exit(f"FAIL: transformers + peft logits {tuple(got.shape)} but g4's {tuple(want.shape)}")
    diff = (got - want).abs().max().item()
    status = "ok" if diff <= a.tol else "FAIL"
    print(f"{status}: {adapted} LoRA modules; max |logits(transformers + peft) - logits(g4)| = {diff:.3e} "
          f"(tolerance {a.tol:g})")
    sys.exit(0 if status == "ok" else 1)


if __name__ == "__main__":
    main()
