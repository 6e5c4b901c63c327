#!/usr/bin/env python3
"""How far transformers' own bf16 tower gradients are from its fp32 ones: the yardstick for g4's GPU tower tests.

`test_gpu` `GpuVisionTower.*` / `GpuAudioTower.*` run a multimodal fixture's tower in bf16 on the GPU and compare
every tower gradient with the f32 CPU tower (relative L2 error, tests/gpu/tower_test.cpp). Whether an error there
is bf16 rounding or a defect is settled by the same measurement on the reference: this script loads the fixture
with transformers twice (fp32, and the whole model cast to bf16), feeds both the recorded inputs, takes
sum(soft_tokens * w) for a fixed random w (bf16-exact, the same on both sides, as the GPU test does) and prints each
tower parameter's relative L2 error ||g_bf16 - g_fp32|| / ||g_fp32||, worst first. `--tower loss` takes the
whole model's loss on the recorded batch instead (every vision and audio gradient), as
`GpuAudioTower.WholeMultimodalForwardMatchesTheCpu` does.

The bounds of tests/gpu/tower_test.cpp come from this script's worst errors (kTransformersBf16 there): a GPU
output or gradient may be at most twice as far from the f32 CPU as transformers' bf16 is from its fp32.

  python3 tools/check_tower_bf16_gradients.py tests/data/hf-gemma4-mm/tiny-mm-e --tower audio
  python3 tools/check_tower_bf16_gradients.py tests/data/hf-gemma4-mm/tiny-mm-bidir --tower vision --top 10

Runs on the CPU in seconds (torch's CPU bf16 matmuls accumulate in fp32, as the GPU's do). Needs torch and
transformers.
"""
import argparse, os, sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from safetensors.torch import load_file
from transformers import Gemma4ForConditionalGeneration

TOWERS = {"audio": ("model.audio_tower.", "model.embed_audio."), "vision": ("model.vision_tower.", "model.embed_vision.")}
TOWERS["loss"] = TOWERS["audio"] + TOWERS["vision"]
LOSS_INPUTS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values", "image_position_ids",
               "input_features", "input_features_mask")


def tower_gradients(fixture, ref, tower, dtype, seed):
    model = Gemma4ForConditionalGeneration.from_pretrained(fixture, dtype=dtype).eval()
    inner = model.model
    if tower == "loss":
        out = model(**{k: ref[k].to(dtype) if ref[k].is_floating_point() else ref[k] for k in LOSS_INPUTS},
                    use_cache=False)
        out.loss.backward()
        tokens = out.logits
    else:
        if tower == "audio":
            out = inner.get_audio_features(ref["input_features"].to(dtype), ref["input_features_mask"])
            valid = out.attention_mask if getattr(out, "attention_mask", None) is not None else None
            tokens = out.pooler_output if valid is None else out.pooler_output[valid]
        else:
            out = inner.get_image_features(ref["pixel_values"].to(dtype), ref["image_position_ids"])
            tokens = torch.cat(out.pooler_output)
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(tokens.shape, generator=g).to(torch.bfloat16)  # bf16-exact, so both sides use the same w
        (tokens.float() * w.float()).sum().backward()
    prefixes = TOWERS[tower]
    return {n: p.grad.detach().double() for n, p in model.named_parameters()
            if n.startswith(prefixes) and p.grad is not None}, tokens.detach().double()


def relative_errors(fixture, ref, tower, seed):
    want, want_out = tower_gradients(fixture, ref, tower, torch.float32, seed)
    got, got_out = tower_gradients(fixture, ref, tower, torch.bfloat16, seed)
    if set(want) != set(got):
        sys.exit(f"the two runs have different gradient sets: {sorted(set(want) ^ set(got))}")
    rows = []
    for name, g32 in want.items():
        norm = g32.norm().item()
        diff = (got[name] - g32).norm().item()
        rows.append((diff / norm if norm > 0 else diff, name, norm))
    rows.sort(reverse=True)
    return rows, (got_out - want_out).abs().max().item() / want_out.abs().max().item()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fixture", help="a multimodal fixture directory (config.json, model.safetensors, "
                                    "reference.safetensors with the processed inputs)")
    ap.add_argument("--tower", choices=sorted(TOWERS), default="audio")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--top", type=int, default=0, help="print only the N worst gradients (0: all)")
    a = ap.parse_args()
    ref = load_file(os.path.join(a.fixture, "reference.safetensors"))
    rows, out_err = relative_errors(a.fixture, ref, a.tower, a.seed)
    what = "logits" if a.tower == "loss" else "soft tokens"
    print(f"{a.fixture}: {a.tower}, {len(rows)} gradients; {what} max |bf16 - fp32| / max |fp32| = {out_err:.3e}")
    print(f"  {'relative L2':>11}  {'||fp32||':>10}  parameter")
    for e, name, norm in rows[:a.top or len(rows)]:
        print(f"  {e:11.3e}  {norm:10.3e}  {name}")


if __name__ == "__main__":
    main()
