#!/usr/bin/env python3
"""Competitor side of `g4 bench generate`: Hugging Face transformers' `generate` on a Gemma 4 text model.

Builds transformers' own Gemma4ForCausalLM (random init, bf16, on the GPU) with the real widths of a released
model and N layers (the layer pattern and KV sharing as `g4 bench generate` builds them), then for each batch
size runs greedy generation of random prompts and reports decode tokens/s, time to first token and peak memory.

  python3 tools/bench_hf_generate.py --model gemma-4-26b-a4b --layers 30 --batch 1,16,64 --prompt-len 512 \
      --new-tokens 128 --json hf.json

Decode tokens/s = batch x (new_tokens - 1) / (time of generate(new_tokens) - time of generate(1 token)): the
prefill and the first token are timed separately (time to first token), as `g4 bench generate` does.
"""
import argparse, os, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU host has no network
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
import transformers
from transformers import AutoModelForCausalLM, Gemma4TextConfig

from bench_hf_train import COMMON, SHAPES, layer_types, peak_allocated, record_oom, reset_peak, sync, write_json

MODELS = {"gemma-4-26b-a4b": ("26b-a4b", 30), "gemma-4-e4b": ("e4b", 42), "gemma-4-31b": ("31b", 60)}


def make_config(model, layers, context):
    shape, full_depth = MODELS[model]
    kw = dict(COMMON, **SHAPES[shape])
    layers = layers or full_depth
    if shape == "e4b":  # the release shares K/V over its last 18 of 42 layers; shorter stacks share none
        kw["num_kv_shared_layers"] = 18 if layers >= 42 else 0
    return Gemma4TextConfig(num_hidden_layers=layers, layer_types=layer_types(layers),
                            max_position_embeddings=max(context, 131072), **kw)


def timed_generate(model, ids, new_tokens):
    sync(ids.device)
    t = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                         min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    sync(ids.device)
    assert out.shape[1] == ids.shape[1] + new_tokens, out.shape
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="gemma-4-26b-a4b")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (0: full depth)")
    ap.add_argument("--batch", default="1,16,64,256")
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of this script (e.g. --layers 1)")
    ap.add_argument("--json")
    a = ap.parse_args()
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(a.seed)
    cfg = make_config(a.model, a.layers, a.prompt_len + a.new_tokens)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    print(f"HF generate: {a.model}, {cfg.num_hidden_layers} layers, transformers {transformers.__version__}, "
          f"torch {torch.__version__}, {torch.cuda.get_device_name(dev) if cuda else 'cpu'}", flush=True)
    result = dict(model=a.model, layers=cfg.num_hidden_layers, prompt_len=a.prompt_len, new_tokens=a.new_tokens,
                  transformers_version=transformers.__version__, torch_version=torch.__version__, runs=[])
    with torch.no_grad():
        warm = torch.randint(3, cfg.vocab_size, (1, 16), device=dev)
        timed_generate(model, warm, 4)
        for b in [int(x) for x in a.batch.split(",")]:
            ids = torch.randint(3, cfg.vocab_size, (b, a.prompt_len), device=dev)
            reset_peak(dev)
            try:
                t1 = timed_generate(model, ids, 1)
                tn = timed_generate(model, ids, a.new_tokens)
            except torch.cuda.OutOfMemoryError as e:
                record_oom(result, b, e)
                continue
            decode = b * (a.new_tokens - 1) / max(tn - t1, 1e-9)
            run = dict(batch=b, decode_tokens_per_s=decode, ttft_ms=1e3 * t1,
                       tpot_ms=1e3 * (tn - t1) / max(a.new_tokens - 1, 1),
                       peak_bytes=peak_allocated(dev))
            result["runs"].append(run)
            print(f"  HF batch {b:4d}: decode {decode:9.0f} tokens/s, TTFT {run['ttft_ms']:8.1f} ms, "
                  f"TPOT {run['tpot_ms']:7.2f} ms, peak {run['peak_bytes'] / 2**30:.1f} GiB", flush=True)
    write_json(a.json, result)


if __name__ == "__main__":
    main()
