#!/usr/bin/env python3
"""Records transformers' outputs for the defects tools/probe_diffusion_vs_transformers.py found, as small inputs and
expected values the CPU tests read without torch (tests/data/hf-diffusion-gemma/probe/).

  forward_masks.safetensors (tiny-dg-a): transformers' DiffusionGemmaForBlockDiffusion.forward on the fixture's
    forward inputs with row 1 right-padded (4 pads; right padding keeps every padded query's keys real, so the
    padded keys' values do not depend on the attention implementation):
      nomask.*  attention_mask, no decoder_attention_mask: the canvas attends to every cached key, padding included
      decmask.* no attention_mask, a decoder_attention_mask that masks context keys the encoder saw and canvas keys

  python3 tools/record_diffusion_probe_cases.py [--out tests/data/hf-diffusion-gemma/probe]
"""
import argparse, os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from safetensors.torch import load_file, save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "data", "hf-diffusion-gemma", "probe"))
    a = ap.parse_args()
    from transformers import DiffusionGemmaForBlockDiffusion
    fixture = os.path.join(HERE, "..", "tests", "data", "hf-diffusion-gemma", "tiny-dg-a")
    model = DiffusionGemmaForBlockDiffusion.from_pretrained(fixture, dtype=torch.float32).eval()
    ref = load_file(os.path.join(fixture, "reference.safetensors"))
    ids, canvas = ref["fwd.input_ids"].clone(), ref["fwd.canvas_ids"].clone()
    B, S = ids.shape
    C = canvas.shape[1]
    am = torch.ones(B, S, dtype=torch.long)
    ids[1, S - 4:] = 0
    am[1, S - 4:] = 0
    dec = torch.ones(B, S + C, dtype=torch.long)
    dec[0, [1, 5]] = 0  # context keys the encoder attended
    dec[1, S - 4:] = 0
    dec[1, S + 2] = 0  # a canvas key
    out = {}
    with torch.no_grad():
        out["nomask.input_ids"], out["nomask.attention_mask"], out["canvas_ids"] = ids, am, canvas
        out["nomask.logits"] = model(input_ids=ids, attention_mask=am, decoder_input_ids=canvas).logits
        out["decmask.decoder_attention_mask"] = dec
        out["decmask.logits"] = model(input_ids=ids, decoder_input_ids=canvas, decoder_attention_mask=dec).logits
        # What g4 gave before the fix (the canvas not seeing padded keys) must differ from transformers by far more
        # than the tests' tolerance, or the tests would not tell the two apart.
        masked = model(input_ids=ids, attention_mask=am, decoder_input_ids=canvas,
                       decoder_attention_mask=torch.cat([am, torch.ones(B, C, dtype=torch.long)], 1)).logits
        print("nomask: padded keys move row 1 by", (masked - out["nomask.logits"]).abs().max().item())
    os.makedirs(a.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(a.out, "forward_masks.safetensors"))


if __name__ == "__main__":
    main()
