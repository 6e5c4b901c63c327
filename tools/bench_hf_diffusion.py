#!/usr/bin/env python3
"""Competitor side of `g4 bench generate --model diffusiongemma-26b-a4b`: transformers' DiffusionGemma `generate`.

Builds transformers' own DiffusionGemmaForBlockDiffusion (random init, bf16, on the GPU) with the 26B-A4B text
widths (as `g4 bench generate` builds them: N layers, full attention every sixth and last; a tiny vision tower,
which transformers requires and never runs for text), then for each batch size samples `--blocks` canvases after a
random prompt with a fixed number of denoising steps (adaptive stopping off, no EOS: the same work on both sides)
and reports tokens/s, decoder passes per token and time per block.

  python3 tools/bench_hf_diffusion.py --layers 30 --batch 1,8 --prompt-len 256 --blocks 2 --steps 48 --json hf.json
"""
import argparse, os, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU host has no network
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import transformers

from bench_hf_train import COMMON, SHAPES, layer_types, peak_allocated, record_oom, reset_peak, sync, write_json

TINY_VISION = dict(model_type="gemma4_vision", hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                   num_attention_heads=1, num_key_value_heads=1, head_dim=8, patch_size=2, pooling_kernel_size=1,
                   position_embedding_size=4)


def make_model(layers, canvas, dev):
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    kw = dict(COMMON, **SHAPES["26b-a4b"])
    for k in ("enable_moe_block", "attention_k_eq_v", "hidden_size_per_layer_input", "num_kv_shared_layers",
              "vocab_size_per_layer_input", "use_double_wide_mlp"):
        kw.pop(k, None)
    text = dict(kw, model_type="diffusion_gemma_text", num_hidden_layers=layers, layer_types=layer_types(layers))
    cfg = DiffusionGemmaConfig(text_config=text, vision_config=TINY_VISION, canvas_length=canvas)
    with torch.device(dev):
        model = DiffusionGemmaForBlockDiffusion._from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.eval(), cfg


def timed(model, ids, new_tokens, steps):
    sync(ids.device)
    t = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         max_denoising_steps=steps, t_min=0.4, t_max=0.8, stability_threshold=None,
                         confidence_threshold=None, eos_token_id=None, pad_token_id=0)
    sync(ids.device)
    seqs = out.sequences if hasattr(out, "sequences") else out
    assert seqs.shape[1] == ids.shape[1] + new_tokens, seqs.shape
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="diffusiongemma-26b-a4b")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--canvas", type=int, default=256)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of this script (e.g. --layers 1)")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    model, cfg = make_model(a.layers, a.canvas, dev)
    print(f"HF DiffusionGemma generate: {a.layers} layers, canvas {a.canvas}, {a.steps} denoising steps, "
          f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}",
          flush=True)
    result = dict(model=a.model, layers=a.layers, prompt_len=a.prompt_len, canvas=a.canvas, blocks=a.blocks,
                  steps=a.steps, transformers_version=transformers.__version__, torch_version=torch.__version__,
                  runs=[])
    vocab = cfg.text_config.vocab_size
    with torch.no_grad():
        timed(model, torch.randint(3, vocab, (1, 16), device=dev), a.canvas, 2)  # warm-up
        for b in [int(x) for x in a.batch.split(",")]:
            ids = torch.randint(3, vocab, (b, a.prompt_len), device=dev)
            reset_peak(dev)
            try:
                t = timed(model, ids, a.blocks * a.canvas, a.steps)
            except torch.cuda.OutOfMemoryError as e:
                record_oom(result, b, e)
                continue
            tokens = b * a.blocks * a.canvas
            run = dict(batch=b, tokens_per_s=tokens / t, seconds=t, ms_per_block=1e3 * t / a.blocks,
                       peak_bytes=peak_allocated(dev))
            result["runs"].append(run)
            print(f"  HF batch {b:4d}: {run['tokens_per_s']:9.1f} tokens/s, {run['ms_per_block']:9.1f} ms per block, "
                  f"peak {run['peak_bytes'] / 2**30:.1f} GiB", flush=True)
    write_json(a.json, result)


if __name__ == "__main__":
    main()
