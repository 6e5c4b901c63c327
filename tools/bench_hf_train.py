#!/usr/bin/env python3
"""Competitor side of g4's training benchmark: one Gemma 4 training step in Hugging Face transformers.

Builds a text-only Gemma 4 (transformers' own Gemma4TextConfig / Gemma4ForCausalLM, random init) with the
real widths of a released model and N layers, trains it on one packed batch (B=1, several documents whose
position_ids restart at 0) and reports tokens/s, step time, peak memory and MFU against --peak-tflops (default
989, the H100/H200 SXM datasheet dense bf16 peak; `g4 bench train` computes both engines' MFU itself).

  python3 tools/bench_hf_train.py --shape 26b-a4b --layers 4 --seq 4096 --steps 10 --warmup 3 \
      --precision fp32-autocast --json hf.json
  python3 tools/bench_hf_train.py --check-only --shape e4b      # tiny widths on the CPU, asserts, 2 steps
  python3 tools/bench_hf_train.py --config CONFIG.json --device cpu --seq 64 --steps 1 --warmup 0
      # the config g4 trains (a tiny built-in shape or a --config file), as `g4 bench train` writes it

With --lora R the model is wrapped by peft (LoraConfig: rank R, --lora-alpha, dropout 0, --lora-targets held to the
text decoder; entries ending in experts.gate_up_proj / experts.down_proj go to target_parameters) and only the
adapters train: the base in bf16 (frozen), the adapters in fp32 (peft's default), forward and backward under
torch.autocast(bfloat16), which is g4's LoRA recipe.

With --inputs FILE (a safetensors file `g4 bench train --images N --audio-seconds S` writes) the model is
transformers' Gemma4ForConditionalGeneration built from --config and trains on exactly that row: input_ids,
position_ids, labels, mm_token_type_ids and the processed media (pixel_values, image_position_ids, input_features,
input_features_mask), through its vision and audio towers.

Exit status: 0 ok, 3 out of GPU memory (the summary / JSON then says {"oom": true, ...}).
"""
import argparse, contextlib, json, os, random, re, sys, time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU host has no network; kernel look-ups must fail fast
import torch
import transformers
from transformers import AutoModelForCausalLM, Gemma4TextConfig
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from torch.utils.flop_counter import FlopCounterMode

# Text-decoder widths of google/gemma-4-26B-A4B, gemma-4-31B and gemma-4-E4B (config.json "text_config").
SHAPES = {
    "26b-a4b": dict(hidden_size=2816, intermediate_size=2112, num_attention_heads=16, num_key_value_heads=8,
                    head_dim=256, global_head_dim=512, num_global_key_value_heads=2, attention_k_eq_v=True,
                    enable_moe_block=True, num_experts=128, top_k_experts=8, moe_intermediate_size=704,
                    vocab_size=262144, hidden_size_per_layer_input=0, sliding_window=1024),
    "31b": dict(hidden_size=5376, intermediate_size=21504, num_attention_heads=32, num_key_value_heads=16,
                head_dim=256, global_head_dim=512, num_global_key_value_heads=4, attention_k_eq_v=True,
                enable_moe_block=False, vocab_size=262144, hidden_size_per_layer_input=0, sliding_window=1024),
    "e4b": dict(hidden_size=2560, intermediate_size=10240, num_attention_heads=8, num_key_value_heads=2,
                head_dim=256, global_head_dim=512, attention_k_eq_v=False, enable_moe_block=False,
                vocab_size=262144, vocab_size_per_layer_input=262144, hidden_size_per_layer_input=256,
                # The release shares K/V over its last 18 of 42 layers; a short stack keeps every layer's own K/V.
                num_kv_shared_layers=0, sliding_window=512),
}
COMMON = dict(final_logit_softcapping=30.0, tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
              rms_norm_eps=1e-6, use_double_wide_mlp=False, attention_bias=False, attention_dropout=0.0,
              rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "proportional", "rope_theta": 1e6,
                                                  "partial_rotary_factor": 0.25}})
# --check-only: the same structure at widths a laptop CPU trains in seconds (head dims still differ by layer type).
TINY = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            global_head_dim=32, num_global_key_value_heads=1, num_experts=8, top_k_experts=2,
            moe_intermediate_size=32, vocab_size=512, vocab_size_per_layer_input=512, sliding_window=48)


def sync(dev):
    """Wait for the device's queued work (a no-op on the CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def reset_peak(dev):
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_allocated(dev):
    """Peak bytes allocated on the GPU since reset_peak (0 on the CPU: not tracked)."""
    return torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else 0


def record_oom(result, batch, err):
    """A batch size that did not fit: recorded and said instead of a number, so the others still run."""
    result["runs"].append(dict(batch=batch, oom=True, error=str(err).splitlines()[0][:200]))
    print(f"  HF batch {batch:4d}: out of memory", flush=True)
    torch.cuda.empty_cache()


def write_json(path, result):
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


def layer_types(n):
    # 5 sliding then 1 full, and the last layer always full: transformers forces that itself (with a warning),
    # and for n < 6 it guarantees a head-dim-512 layer in the stack.
    return ["full_attention" if i % 6 == 5 or i == n - 1 else "sliding_attention" for i in range(n)]


def config_from_file(path, seq):
    """The config `g4 bench train` trained, as it wrote it (model_config_to_json): a gemma4_text config, or a gemma4
    one with text/vision/audio sub-configs."""
    with open(path) as f:
        d = json.load(f)
    kind = d.get("model_type")
    if kind not in ("gemma4_text", "gemma4"):
        sys.exit(f"{path}: model_type {kind!r} is not gemma4_text or gemma4")
    cfg = transformers.CONFIG_MAPPING[kind].from_dict(d)
    text = cfg.get_text_config()
    text.max_position_embeddings = max(text.max_position_embeddings or 0, seq)
    return cfg


def make_config(shape, layers, seq, tiny):
    kw = dict(COMMON, **SHAPES[shape])
    if tiny:
        kw.update(TINY)  # MoE / K=V keys are inert where the shape disables them
        if kw["hidden_size_per_layer_input"]:
            kw["hidden_size_per_layer_input"] = 16
    return Gemma4TextConfig(num_hidden_layers=layers, layer_types=layer_types(layers),
                            max_position_embeddings=max(seq, 8192), **kw)


def packed_batch(seq, vocab, seed, doc_min, doc_max, given=None):
    """B=1 x seq tokens: documents of seeded uniform lengths, the last one truncated to fit (or the
    lengths `g4 bench train` used, so both sides train on the same document layout)."""
    rng = random.Random(seed)
    lengths = list(given or [])
    if given and sum(lengths) != seq:
        sys.exit(f"--documents add up to {sum(lengths)} tokens, not --seq {seq}")
    while sum(lengths) < seq:
        lengths.append(min(rng.randint(doc_min, doc_max), seq - sum(lengths)))
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (1, seq), generator=g)  # skip pad/eos/bos ids 0..2
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    labels = input_ids.clone()
    labels[0, (position_ids[0] == 0).nonzero().flatten()] = -100  # no loss across a document boundary
    return input_ids, position_ids, labels, lengths


def visible_pairs(lengths, window=None):
    """(query, key) pairs attention computes under causal + document (+ sliding window) masks.
    transformers' sliding mask keeps key k for query q iff q - window < k <= q (the window counts q itself)."""
    total = 0
    for n in lengths:
        if window is None or n <= window:
            total += n * (n + 1) // 2
        else:
            total += window * (window + 1) // 2 + (n - window) * window
    return total


def layer_geometry(cfg, i):
    """(head_dim, kv_heads, has_k, has_v) of layer i, as Gemma4TextAttention resolves them."""
    lc = cfg.per_layer_config[i]
    full = cfg.layer_types[i] == "full_attention"
    kv_shared = i >= cfg.num_hidden_layers - cfg.num_kv_shared_layers > 0
    return lc.head_dim, lc.num_key_value_heads, not kv_shared, not kv_shared and not (cfg.attention_k_eq_v and full)


def matmul_macs_per_token(cfg):
    """Multiply-adds one token costs in the forward's matmuls (see train_flops_per_step)."""
    H, nH, L = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers
    P = cfg.hidden_size_per_layer_input or 0
    macs = H * cfg.vocab_size + H * L * P
    for i in range(L):
        d, kv, has_k, has_v = layer_geometry(cfg, i)
        macs += H * nH * d * 2 + H * kv * d * (has_k + has_v)
        wide = 2 if cfg.use_double_wide_mlp and i >= L - cfg.num_kv_shared_layers > 0 else 1
        macs += 3 * H * cfg.intermediate_size * wide
        if cfg.enable_moe_block:
            macs += H * cfg.num_experts + cfg.top_k_experts * 3 * H * cfg.moe_intermediate_size
        macs += 2 * H * P
    return macs


def attention_flops(cfg, lengths):
    """Forward FLOPs of QK^T and PV over the pairs each layer's mask leaves visible."""
    total = 0
    for i in range(cfg.num_hidden_layers):
        window = cfg.sliding_window if cfg.layer_types[i] == "sliding_attention" else None
        total += 4 * layer_geometry(cfg, i)[0] * cfg.num_attention_heads * visible_pairs(lengths, window)
    return total


def train_flops_per_step(cfg, lengths):
    """Model FLOPs of one training step = 3 x forward (backward = 2 x forward).

    forward = 2 x T x (multiply-adds per token of every matmul) + attention, where per token:
      per layer: q_proj H*nH*d, k_proj H*kv*d, v_proj H*kv*d (absent on K=V full layers; k/v absent on
        KV-shared layers), o_proj nH*d*H, dense MLP 3*H*I (I doubled on KV-shared layers when
        use_double_wide_mlp), MoE router H*E plus K selected experts x 3*H*I_moe, PLE gate H*P + projection P*H;
      once: PLE model projection H*(L*P), tied LM head H*V;
    and attention per layer = 4 x d x nH x visible (query, key) pairs (QK^T and PV, 2 FLOPs per MAC each),
    pairs counted exactly from the documents under the layer's causal / sliding-window mask.
    Norms, RoPE, softmax, activations, embedding gathers and the loss are not counted.
    """
    return 3 * (2 * sum(lengths) * matmul_macs_per_token(cfg) + attention_flops(cfg, lengths))


def wrap_lora(model, a):
    """peft's LoRA over the decoder's projections (a regex, so that a multimodal model's towers, whose modules share
    the names, are left alone, as g4's adapters are) and, as target_parameters, the routed experts' weights."""
    from peft import LoraConfig, get_peft_model
    targets = [t for t in a.lora_targets.split(",") if t]
    experts = [t for t in targets if t.endswith("experts.gate_up_proj") or t.endswith("experts.down_proj")]
    modules = [t for t in targets if t not in experts]
    regex = r"model\.(?:language_model\.)?layers\.\d+\.(?:.*\.)?(?:%s)" % "|".join(map(re.escape, modules))
    config = LoraConfig(r=a.lora, lora_alpha=a.lora_alpha, lora_dropout=0.0, bias="none",
                        target_modules=regex if modules else [], target_parameters=experts or None)
    return get_peft_model(model, config)


def try_impls(names, apply, step):
    """Keep the first implementation that both loads and runs a forward+backward; OOM is not a 'doesn't work'."""
    errors = {}
    for name in names:
        try:
            apply(name)
            step()
            return name, errors
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:  # missing package, unsupported head dim / dtype, ...
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    raise RuntimeError(f"no implementation ran: {errors}")


def check_masks_and_packing(model, cfg, ids, pos, lengths):
    """--check-only: transformers must detect the packing from position_ids alone and never attend across
    documents, and the pair counts used for FLOPs must equal the masks it builds."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps it with --lora
    with torch.no_grad():
        emb = base.get_input_embeddings()(ids)
        for kind, fn, window in (("full_attention", create_causal_mask, None),
                                 ("sliding_attention", create_sliding_window_causal_mask, cfg.sliding_window)):
            m = fn(config=cfg, inputs_embeds=emb, attention_mask=None, past_key_values=None, position_ids=pos)
            assert m is not None and m.dtype == torch.bool, f"{kind}: expected a boolean packed mask, got {m}"
            assert int(m.sum()) == visible_pairs(lengths, window), f"{kind}: pair count differs from the mask"
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0].float()
        tol = 1e-4 if model.dtype == torch.float32 else 5e-2
        start = 0
        for n in lengths[:3]:
            alone = model(input_ids=ids[:, start:start + n], use_cache=False).logits[0].float()
            err = (alone - packed[start:start + n]).abs().max().item()
            assert err < tol, f"document at {start} sees its neighbours: max |logit diff| {err}"
            start += n
        # The projections' FLOPs as torch counts them: eager experts run one 2-D mm per selected expert, and only
        # the linear layers are aten.mm (RoPE's outer product is a bmm, attention is sdpa / bmm).
        if cfg.enable_moe_block:
            model.set_experts_implementation("eager")
        # The base's projections: with --lora, peft's adapters are switched off for the count.
        adapters_off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with adapters_off, FlopCounterMode(display=False) as counter:
            model(input_ids=ids, position_ids=pos, use_cache=False)
        mm = sum(n for op, n in counter.get_flop_counts()["Global"].items() if str(op) in ("aten.mm", "aten.addmm"))
        assert mm == 2 * ids.numel() * matmul_macs_per_token(cfg), (mm, 2 * ids.numel() * matmul_macs_per_token(cfg))
    print(f"check: packed masks = causal x document (x window) with the exact pair counts; per-document logits "
          f"match isolated forwards on {min(3, len(lengths))} documents; projection FLOPs = torch's count {mm:.4e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="26b-a4b")
    ap.add_argument("--config", help="a config.json to build instead of --shape (what g4 bench train wrote)")
    ap.add_argument("--inputs", help="safetensors of the row to train on, media included (needs --config and "
                                     "--documents)")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 6; 3 with --check-only)")
    ap.add_argument("--seq", type=int, default=None, help="tokens in the packed batch (default 4096; 256 check)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--accum", type=int, default=1, help="micro-batches (the same packed row) per optimizer step")
    ap.add_argument("--precision", choices=["bf16", "fp32-autocast"], default="fp32-autocast")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", help="write the result object here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="MFU denominator (datasheet dense bf16 peak)")
    ap.add_argument("--doc-min", type=int, default=256)
    ap.add_argument("--doc-max", type=int, default=2048)
    ap.add_argument("--attn", default="flash_attention_3,flash_attention_2,sdpa,flex_attention",
                    help="attention implementations to try, in order")
    # batched_mm is left out by default: it gathers a copy of the expert weights per (token, expert) pair, meant
    # for decoding; at 4096 x 8 pairs of 26B-A4B that is hundreds of GB.
    ap.add_argument("--experts", default="grouped_mm,eager", help="MoE experts implementations to try, in order")
    ap.add_argument("--documents", help="comma-separated document lengths (overrides --doc-min/--doc-max)")
    ap.add_argument("--check-only", action="store_true", help="tiny widths on the CPU, correctness asserts, 2 steps")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (peft); 0: full fine-tuning")
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                    help="comma-separated PEFT targets; experts.gate_up_proj / experts.down_proj: the routed experts")
    ap.add_argument("--recompute", action="store_true", help="gradient checkpointing (g4's --recompute)")
    a = ap.parse_args()
    if a.check_only:
        a.device, a.steps, a.warmup = "cpu", 2, 0
        a.doc_min, a.doc_max = min(a.doc_min, 24), min(a.doc_max, 120)  # documents longer and shorter than the window
    a.layers = a.layers or (3 if a.check_only else 6)
    a.seq = a.seq or (256 if a.check_only else 4096)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(a.seed)
    if cuda:
        # Only matmuls left in fp32 (e.g. experts under autocast) are affected; HF's Trainer offers the same (tf32).
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    if a.config:
        cfg = config_from_file(a.config, a.seq)
        a.shape, a.layers = os.path.basename(a.config), cfg.get_text_config().num_hidden_layers
    else:
        cfg = make_config(a.shape, a.layers, a.seq, a.check_only)
    text_cfg = cfg.get_text_config()
    given = [int(n) for n in a.documents.split(",")] if a.documents else None
    media = {}
    if a.inputs:
        if not (a.config and given):
            sys.exit("--inputs needs --config and --documents (g4 bench train passes all three)")
        ids, pos, labels, media = load_inputs(a.inputs, a.seq)
        lengths = given
        if sum(lengths) != a.seq:
            sys.exit(f"--documents add up to {sum(lengths)} tokens, not --seq {a.seq}")
    else:
        ids, pos, labels, lengths = packed_batch(a.seq, text_cfg.vocab_size, a.seed, a.doc_min, a.doc_max, given)
    flops = train_flops_per_step(text_cfg, lengths) * a.accum
    base = dict(shape=a.shape, layers=a.layers, seq=a.seq, precision=a.precision, check_only=a.check_only,
                layer_types=text_cfg.layer_types, doc_lengths=lengths, flops_per_step=flops,
                torch_version=torch.__version__, transformers_version=transformers.__version__,
                gpu_name=torch.cuda.get_device_name(dev) if cuda else "cpu")
    print(f"g4-vs-HF bench: Gemma 4 {a.shape}, {a.layers} layers ({text_cfg.layer_types.count('full_attention')} full "
          f"attention, the last always full), seq {a.seq} in {len(lengths)} documents, {a.precision}, "
          f"{'tiny widths, ' if a.check_only else ''}{base['gpu_name']}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}")
    if a.shape == "e4b":
        print("note: num_kv_shared_layers = 0 (the E4B release shares K/V over its last 18 of 42 layers)")

    result = dict(base)
    try:
        result.update(run(a, cfg, dev, ids, pos, labels, lengths, flops, media))
        status = 0
    except torch.cuda.OutOfMemoryError as e:
        result.update(oom=True, error=str(e).splitlines()[0][:300],
                      peak_alloc_bytes=torch.cuda.max_memory_allocated(dev) if cuda else 0,
                      peak_reserved_bytes=torch.cuda.max_memory_reserved(dev) if cuda else 0)
        print(f"OUT OF MEMORY with {a.layers} layers: {result['error']}")
        status = 3
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return status


def load_inputs(path, seq):
    """The row g4 trained: ids, positions and labels [1, seq] and the media under transformers' names."""
    from safetensors.torch import load_file
    t = load_file(path)
    for k in ("input_ids", "position_ids", "labels", "mm_token_type_ids"):
        if k not in t or tuple(t[k].shape) != (1, seq):
            sys.exit(f"{path}: {k} missing or not [1, {seq}]")
    media = {k: t[k] for k in ("mm_token_type_ids", "pixel_values", "image_position_ids", "input_features",
                               "input_features_mask") if k in t}
    if "input_features_mask" in media:
        media["input_features_mask"] = media["input_features_mask"].bool()
    return t["input_ids"].long(), t["position_ids"].long(), t["labels"].long(), media


def run(a, cfg, dev, ids, pos, labels, lengths, flops, media=None):
    cuda = dev.type == "cuda"
    media = media or {}
    dtype = torch.bfloat16 if a.precision == "bf16" else torch.float32
    if a.lora:  # the frozen base in bf16 unless fp32-autocast is asked for; the adapters are fp32 either way
        dtype = torch.float32 if a.precision == "fp32-autocast" else torch.bfloat16
    conditional = cfg.model_type == "gemma4"
    with torch.device(dev):  # initialise on the GPU: the CPU is far too slow for billions of random weights
        if conditional:  # the towers too
            model = transformers.Gemma4ForConditionalGeneration._from_config(cfg, dtype=dtype,
                                                                              attn_implementation="sdpa")
        else:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation="sdpa")
    want = "Gemma4ForConditionalGeneration" if conditional else "Gemma4ForCausalLM"
    assert type(model).__name__ == want, type(model)
    hf_model = model  # set_attn_implementation & co. on the transformers model, under peft's wrapper too
    n_params = sum(p.numel() for p in model.parameters())  # the tied LM head appears once
    if a.recompute:  # non-reentrant: the frozen embedding's output needs no requires_grad for it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if a.lora:
        model = wrap_lora(model, a)
    model.train()
    ids, pos, labels = ids.to(dev), pos.to(dev), labels.to(dev)
    # Float media in the weights' dtype (the towers' first layers take them as they are).
    media = {k: (v.to(dev, dtype) if v.is_floating_point() else v.to(dev)) for k, v in media.items()}
    params = [p for p in model.parameters() if p.requires_grad]  # all, or the adapters
    n_trainable = sum(p.numel() for p in params)

    if a.check_only:
        check_masks_and_packing(model, cfg, ids, pos, lengths)

    def loss_fn():
        # use_cache=False matters: with a cache object transformers skips packed-sequence detection (and the mask
        # would let documents attend to each other).
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "fp32-autocast" or a.lora > 0):
            return model(input_ids=ids, position_ids=pos, labels=labels, use_cache=False, **media).loss

    def fwd_bwd():
        loss_fn().backward()
        model.zero_grad(set_to_none=True)

    attn, attn_errors = try_impls(a.attn.split(","), hf_model.set_attn_implementation, fwd_bwd)
    experts, experts_errors = (None, {})
    if cfg.get_text_config().enable_moe_block:
        experts, experts_errors = try_impls(a.experts.split(","), hf_model.set_experts_implementation, fwd_bwd)
    # grouped_mm is not autocast-aware: transformers casts its input to the weight dtype, so under fp32-autocast
    # the experts multiply in fp32 (TF32 where torch allows) while everything else is bf16; eager's F.linear is bf16.
    experts_dtype = None if experts is None else (
        "fp32" if a.precision == "fp32-autocast" and experts != "eager" else "bf16")
    print(f"attn_implementation={attn} experts_implementation={experts}"
          + (f" (expert matmuls in {experts_dtype})" if experts else "") + f" params={n_params / 1e6:.1f}M "
          f"trainable={n_trainable / 1e6:.3f}M "
          f"FLOPs/step={flops:.4e}" + "".join(f"\n  skipped {k}: {v}" for k, v in {**attn_errors,
                                                                                 **experts_errors}.items()))

    try:
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, betas=(0.9, 0.95), fused=True)
    except RuntimeError:  # fused AdamW is CUDA-only in older torch; the GPU run always has it
        opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, betas=(0.9, 0.95), foreach=True)

    def step():
        loss = 0
        for _ in range(a.accum):  # gradient accumulation: the mean over the micro-batches
            micro = loss_fn() / a.accum
            micro.backward()
            loss = loss + micro.detach()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss, norm  # no .item(): a host sync per step would understate HF

    losses = [step() for _ in range(a.warmup)]
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)  # steady state: weights + grads + AdamW state + activations
    t0 = time.perf_counter()
    losses += [step() for _ in range(a.steps)]
    if cuda:
        torch.cuda.synchronize(dev)
    dt = (time.perf_counter() - t0) / a.steps
    norms = [float(n) for _, n in losses]  # before clipping
    losses = [float(x) for x, _ in losses]
    assert all(map(lambda x: x == x and abs(x) != float("inf"), losses)), f"non-finite loss: {losses}"
    r = dict(attn_implementation=attn, experts_implementation=experts, experts_matmul_dtype=experts_dtype,
             params=n_params, trainable_params=n_trainable, lora=a.lora, recompute=a.recompute, tf32=cuda,
             tokens_per_s=a.seq * a.accum / dt, accum=a.accum, step_ms=dt * 1e3, mfu=flops / dt / (a.peak_tflops * 1e12) if a.peak_tflops > 0 else 0.0, mfu_peak_flops=a.peak_tflops * 1e12,
             peak_alloc_bytes=torch.cuda.max_memory_allocated(dev) if cuda else 0,
             peak_reserved_bytes=torch.cuda.max_memory_reserved(dev) if cuda else 0,
             loss_first=losses[0], loss_last=losses[-1], losses=losses, grad_norms=norms, skipped=dict(attn_errors, **experts_errors))
    mfu = f"MFU {100 * r['mfu']:.1f}% (of {a.peak_tflops:.0f} TFLOP/s)" if a.peak_tflops > 0 else "MFU n/a"
    print(f"step {r['step_ms']:.1f} ms  {r['tokens_per_s']:.0f} tokens/s  {mfu}  peak alloc {r['peak_alloc_bytes'] / 2**30:.2f} GiB  "
          f"reserved {r['peak_reserved_bytes'] / 2**30:.2f} GiB  loss {losses[0]:.4f} -> {losses[-1]:.4f}  "
          f"gradient norm {norms[0]:.4g} -> {norms[-1]:.4g}")
    return r


if __name__ == "__main__":
    sys.exit(main())
