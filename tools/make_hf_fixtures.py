"""Reference fixtures from Hugging Face transformers for tiny Gemma 4 models.

Run on a machine with torch + transformers (>= 5.17):  python3 tools/make_hf_fixtures.py OUTDIR [NAME ...]
Each fixture directory gets config.json + model.safetensors (save_pretrained, fp32) and
reference.safetensors: the inputs, logits, loss, the gradient of every parameter and a greedy
generation with the KV cache. The shapes here are deliberately different from the three public
fixtures (widths, head dims, layer patterns, windows, expert counts, top-k, untied heads, no
softcap, partial rotary factors) so the engine is checked on models it was not written against.
A `packed` fixture also checks documents packed in one row (position ids restarting at 0): its
reference logits are those of each document run on its own.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def randomize(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:  # norms, router scale, per_expert_scale
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.copy_(0.6 + 0.8 * torch.rand(b.shape, generator=g))


def text(**kw):
    base = dict(vocab_size=300, vocab_size_per_layer_input=300, hidden_size=48, intermediate_size=80,
                num_hidden_layers=5, num_attention_heads=6, num_key_value_heads=3, head_dim=8, global_head_dim=24,
                sliding_window=5, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=2, eos_token_id=1,
                final_logit_softcapping=30.0, max_position_embeddings=2048,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                             "full_attention"])
    base.update(kw)
    return base


FIXTURES = {
    # MoE with 6 experts, top-3, K=V with 2 global kv heads, untied head, no softcap, eps 1e-5.
    "var-moe-untied": dict(kind="cond", seed=21, seq=17, text=text(
        attention_k_eq_v=True, num_global_key_value_heads=2, enable_moe_block=True, num_experts=6,
        top_k_experts=3, moe_intermediate_size=20, tie_word_embeddings=False, final_logit_softcapping=None,
        rms_norm_eps=1e-5,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 5000.0},
                         "full_attention": {"rope_type": "proportional", "rope_theta": 200000.0,
                                            "partial_rotary_factor": 0.5}})),
    # PLE, 7 layers with 3 KV-shared (sources of both types), double-wide MLP, window 4, 1 global kv head.
    "var-ple-shared": dict(kind="causal", seed=22, seq=23, text=text(
        num_hidden_layers=7, hidden_size_per_layer_input=4, num_kv_shared_layers=3, use_double_wide_mlp=True,
        sliding_window=4, global_head_dim=16, num_global_key_value_heads=1, attention_k_eq_v=False,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "sliding_attention",
                     "full_attention", "sliding_attention", "full_attention"])),
    # Sliding layers only up to the last, top-1 routing over 4 experts, one kv head everywhere.
    "var-moe-top1": dict(kind="causal", seed=23, seq=15, text=text(
        num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=32, global_head_dim=64,
        hidden_size=64, sliding_window=6, enable_moe_block=True, num_experts=4, top_k_experts=1,
        moe_intermediate_size=16, final_logit_softcapping=15.0,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"])),
}


def build(spec):
    tc = dict(spec["text"])
    if spec["kind"] == "causal":
        cfg = Gemma4TextConfig(**tc)
        cfg._attn_implementation = "eager"
        return Gemma4ForCausalLM(cfg)
    cfg = Gemma4Config(text_config=tc, vision_config=None, audio_config=None,
                       tie_word_embeddings=tc.get("tie_word_embeddings", True))
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    return Gemma4ForConditionalGeneration(cfg)


def grads(model):
    return {"grad." + n: p.grad.detach().float().contiguous() for n, p in model.named_parameters() if p.grad is not None}


def make(out, name, spec):
    torch.manual_seed(spec["seed"])
    model = build(spec)
    randomize(model, spec["seed"])
    model = model.float().eval()
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    V, S, B = spec["text"]["vocab_size"], spec["seq"], 2
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    ids = torch.randint(3, V, (B, S), generator=g)
    am = torch.ones(B, S, dtype=torch.long)
    pad = 4
    ids[1, S - pad:] = 0
    am[1, S - pad:] = 0
    labels = ids.clone()
    labels[am == 0] = -100
    model.zero_grad()
    o = model(input_ids=ids, attention_mask=am, labels=labels, use_cache=False)
    o.loss.backward()
    ref = {"input_ids": ids, "attention_mask": am, "labels": labels, "logits": o.logits.detach().float(),
           "loss": o.loss.detach().reshape(1)}
    ref.update(grads(model))
    prompt = ids[:1, :S - 3].clone()
    with torch.no_grad():
        gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                             do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
    ref["generate.prompt"] = prompt
    ref["generate.output"] = gen
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))
    meta = dict(name=name, kind=spec["kind"], seed=spec["seed"], batch=B, seq=S, pad_rows={"1": pad},
                loss=float(o.loss), transformers=__import__("transformers").__version__, torch=torch.__version__,
                attn_implementation="eager", dtype="float32",
                loss_definition="mean token cross-entropy over labels != -100 after shifting labels left by one",
                generate="greedy, 8 new tokens, from generate.prompt, use_cache=True")
    json.dump(meta, open(os.path.join(d, "reference.json"), "w"), indent=1)
    print(name, "loss", float(o.loss), "gen", gen[0, prompt.shape[1]:].tolist(), flush=True)
    return model


def make_packed(out, model, src_name):
    """Three documents in one row, position ids restarting; reference = each document alone."""
    d = os.path.join(out, src_name + "-packed")
    os.makedirs(d, exist_ok=True)
    V = model.config.get_text_config().vocab_size
    g = torch.Generator().manual_seed(99)
    lens = [7, 9, 5]
    docs = [torch.randint(3, V, (1, n), generator=g) for n in lens]
    ids = torch.cat(docs, dim=1)
    pos = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0)
    labels = ids.clone()
    start = 0
    for n in lens:  # the last token of a document does not predict the next document's first
        start += n
        if start < ids.shape[1]:
            labels[0, start] = -100
    with torch.no_grad():
        alone = torch.cat([model(input_ids=doc, use_cache=False).logits for doc in docs], dim=1)
    model.zero_grad()
    o = model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False)
    o.loss.backward()
    diff = (o.logits.detach() - alone).abs().max().item()
    print(src_name + "-packed", "HF packed vs documents alone: max |diff|", diff, flush=True)
    ref = {"input_ids": ids, "position_ids": pos, "labels": labels, "logits": alone.float(),
           "hf_packed_logits": o.logits.detach().float(), "loss": o.loss.detach().reshape(1)}
    ref.update(grads(model))
    save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(d, "reference.safetensors"))
    json.dump(dict(name=src_name + "-packed", model=src_name, doc_lengths=lens, hf_packed_vs_alone=diff,
                   note="logits: each document run alone; loss/grads: HF packed forward with position_ids"),
              open(os.path.join(d, "reference.json"), "w"), indent=1)


def main():
    out = sys.argv[1]
    names = sys.argv[2:] or list(FIXTURES)
    for name in names:
        model = make(out, name, FIXTURES[name])
        if name == "var-ple-shared":
            make_packed(out, model, name)


if __name__ == "__main__":
    main()
