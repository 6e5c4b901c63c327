"""Checks that checkpoints written by `g4 convert` load in transformers with unchanged logits.

Usage: python3 tools/check_hf_roundtrip.py ORIGINAL_DIR CONVERTED_DIR [...pairs]
For each pair, loads both with transformers (the class named in config.json), runs the same
random batch through each in fp32 and prints the largest absolute logit difference. Exits
non-zero when a difference exceeds 1e-5 or a tensor fails to load.
"""
import sys

import torch
import transformers


def load(path):
    cfg = transformers.AutoConfig.from_pretrained(path)
    cls = getattr(transformers, cfg.architectures[0])
    model, info = cls.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "mismatched_keys" or (k == "mismatched_keys" and v)}
    return model.eval(), bad


def main():
    args = sys.argv[1:]
    worst = 0.0
    ok = True
    for orig, conv in zip(args[::2], args[1::2]):
        a, _ = load(orig)
        b, problems = load(conv)
        vocab = a.config.get_text_config().vocab_size
        ids = torch.randint(3, vocab, (2, 24), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max().item()
        worst = max(worst, diff)
        status = "ok" if diff <= 1e-5 and not problems else "FAIL"
        ok = ok and status == "ok"
        print(f"{status} {conv}: max |logits(original) - logits(g4 convert)| = {diff:.3e}"
              + (f" loading problems: {problems}" if problems else ""))
    print(f"worst difference {worst:.3e}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
