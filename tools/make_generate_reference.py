"""Greedy generations from Hugging Face transformers for the tiny fixtures, for the generation engine's tests.

Run on a machine with torch + transformers (>= 5.17):
    python3 tools/make_generate_reference.py tests/data/hf-gemma4 tests/data/hf-gemma4-varied

For every fixture directory (config.json + model.safetensors) below the given roots, writes
generate_reference.json: prompts of several lengths (1 token, shorter and longer than the sliding
window, across page boundaries) and, for each, transformers' greedy continuation (fp32, eager
attention, use_cache=True, end-of-sequence ignored) with the log-probability of every chosen token
(log_softmax of the raw logits in fp32). Each prompt is generated on its own (batch 1), so no padding
enters the reference; the engine then runs them all in one batch.
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

PROMPT_LENGTHS = [1, 4, 7, 13, 22]
NEW_TOKENS = 12


def fixture_dirs(roots):
    for root in roots:
        for name in sorted(os.listdir(root)):
            d = os.path.join(root, name)
            if os.path.exists(os.path.join(d, "config.json")) and os.path.exists(os.path.join(d, "model.safetensors")):
                yield d


def main():
    torch.backends.cuda.matmul.allow_tf32 = False
    for d in fixture_dirs(sys.argv[1:]):
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager")
        model.eval()
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        g = torch.Generator().manual_seed(4242)
        cases = []
        for n in PROMPT_LENGTHS:
            prompt = torch.randint(3, cfg.vocab_size, (1, n), generator=g)
            with torch.no_grad():
                out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                     min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True, pad_token_id=0,
                                     eos_token_id=None, output_logits=True, return_dict_in_generate=True)
            new = out.sequences[0, n:].tolist()
            logprobs = [torch.log_softmax(step[0].float(), dim=-1)[tok].item() for step, tok in zip(out.logits, new)]
            cases.append(dict(prompt=prompt[0].tolist(), output=new, logprobs=logprobs))
        ref = dict(transformers=transformers.__version__, torch=torch.__version__, dtype="float32",
                   attn_implementation="eager", new_tokens=NEW_TOKENS,
                   method="greedy, each prompt alone (batch 1), use_cache=True, eos ignored; logprobs = "
                          "log_softmax of the raw logits (after the final softcap) at each chosen token",
                   cases=cases)
        with open(os.path.join(d, "generate_reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
        print(d, [c["output"][:4] for c in cases], flush=True)


if __name__ == "__main__":
    main()
