#!/usr/bin/env python3
"""Differential probe: g4 against transformers on block-diffusion Gemma (diffusion_gemma) models drawn at random.

Each trial draws a tiny DiffusionGemmaConfig (layer patterns, windows 2-10, head dims in both of transformers' dialects
-- global_head_dim / num_global_key_value_heads or per_layer_config --, heads and K/V heads, experts and top-k,
widths, partial rotary factors, rope thetas, the final softcap, canvas length, tied or untied weights; in the
per_layer_config dialect every full layer has the same entry, as transformers' rotary embedding reads one config per
layer type; the tiny vision tower transformers requires, never run), random weights (as tools/make_hf_fixtures.py
draws them, the encoder's layer scalars apart from the decoder's) and a random batch: input_ids with left or right
padding under an attention_mask, a canvas (decoder_input_ids), optionally self-conditioning logits and a per-row
mask, and no decoder_attention_mask (the canvas then sees every cached key, padding included), [attention_mask,
ones], or one that masks canvas keys and context keys of its own. Then:

  forward   transformers (fp32 and fp64, sdpa) gives the canvas logits, the encoder's logits (its last hidden
            state through the LM head and softcap, as g4 writes encoder_logits), the encoder's next-token loss and
            every gradient of it; `g4 forward --grads` gives ours. Against transformers in f64, with e_hf =
            transformers' own f32 error (where that fails, the largest over it and 4 ulp-jittered copies of the
            model: tools/probe_common.py), a value fails when
              logits, encoder_logits  max |g4 - hf64| > max(1e-5 max(1, max |hf64|), 10 e_hf) (valid positions)
              encoder_loss            |g4 - hf64| > max(1e-6 max(1, |hf64|), 10 e_hf)
              grads                   ||g4 - hf64|| > max(1e-4 ||hf64||, 10 e_hf, 1e-6 x the norm of all gradients)
  round trip `g4 convert`'s output loads in transformers with no missing, unexpected or mismatched key, the same
            encoder and decoder layer scalars, and canvas logits within 1e-5 max(1, max |logits|) of the original's
            (the per-expert scale is folded into down_proj and back).
  generate  transformers' `generate` draws from torch's CPU generator; under torch.manual_seed(s) `g4 generate
            --rng torch-cpu --seed s` replays the same draws, so the two must give the same tokens and tokens per
            forward: a batch of prompts of different lengths (left-padded), one to three blocks (the last one cut
            short or not), random sampler settings, adaptive stopping on or off, and an EOS id taken from an
            unconstrained first run so that EOS handling and padding run; sometimes the first block starts from a
            given canvas (decoder_input_ids) and/or self-conditioning logits, as generate's kwargs. A mismatch prints the seed, settings and
            prompts that replay it. (transformers takes the entropy bound only through sampler_config: as a
            generate() keyword it is silently ignored.)
Windows start at 2: at sliding_window 1 transformers' DynamicCache keeps every key of a sliding layer (it slices
x[-sliding_window + 1:], i.e. x[-0:]) where g4 keeps none, and its generate fails once a block is encoded.
An untied config (tie_word_embeddings false: transformers then gives the encoder, the decoder and the LM head
separate weights) must be refused by g4 with an error naming the key.

Failing trials keep their directory (config, weights, inputs, outputs) for a test case.

  python3 tools/probe_diffusion_vs_transformers.py --trials 50 --seed 0 [--g4 build/g4] [--keep DIR]
      [--no-generate]

Needs torch and transformers (CPU only).
"""
import copy, json, os, random, sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from safetensors.torch import load_file, save_file

from bench_hf_diffusion import TINY_VISION
from make_hf_fixtures import randomize
from probe_common import check_grads, check_values, run_g4, run_trials, trial_parser, within_rounding


def draw_config(r):
    """A random, valid diffusion_gemma config (small widths) as the kwargs of DiffusionGemmaConfig."""
    heads = r.choice([1, 2, 3, 4])
    kv = r.choice([d for d in (1, 2, 3) if heads % d == 0])
    head_dim = r.choice([4, 8, 12, 16])
    layers = r.randint(1, 5)
    types = [r.choice(["sliding_attention", "full_attention"]) for _ in range(layers)]
    types[-1] = "full_attention"  # transformers forces it
    experts = r.randint(2, 6)
    partial = r.choice([0.25, 0.5, 1.0])
    text = dict(model_type="diffusion_gemma_text", vocab_size=r.choice([48, 64, 97, 128]),
                hidden_size=r.choice([16, 24, 32, 48]), intermediate_size=r.choice([16, 24, 40]),
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
                # Not 1: transformers' DynamicCache keeps x[-sliding_window + 1:] of a sliding layer, which at 1 is
                # every key (x[-0:]), so its denoiser reads the whole prompt there and its generate fails.
                sliding_window=r.randint(2, 10), rms_norm_eps=r.choice([1e-6, 1e-5]), pad_token_id=0,
                bos_token_id=2, eos_token_id=1, max_position_embeddings=1024, layer_types=types,
                num_experts=experts, top_k_experts=r.randint(1, min(experts, 3)),
                moe_intermediate_size=r.choice([8, 12, 16]),
                final_logit_softcapping=r.choice([30.0, 30.0, 10.0, 50.0]),
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": r.choice([10000.0, 5000.0])},
                    "full_attention": {"rope_type": "proportional", "rope_theta": r.choice([1e6, 2e5]),
                                       "partial_rotary_factor": partial}})
    full = [i for i, t in enumerate(types) if t == "full_attention"]
    if r.random() < 0.5:  # Gemma 4's dialect: one shape for every full layer
        text["global_head_dim"] = r.choice([head_dim, 2 * head_dim, 4 * head_dim])
        if r.random() < 0.5:
            text["num_global_key_value_heads"] = r.choice([d for d in (1, 2) if heads % d == 0])
        dims = [text["global_head_dim"]]
    else:  # the released checkpoints' dialect: an entry per full layer, or none (full layers keep head_dim)
        # transformers' rotary embedding reads one config per layer type, so every full layer has the same entry.
        entry = {"head_dim": r.choice([head_dim, 2 * head_dim, 4 * head_dim]),
                 "num_key_value_heads": r.choice([d for d in (1, 2) if heads % d == 0])}
        text["per_layer_config"] = {str(i): dict(entry) for i in full} if r.random() < 0.8 else {}
        dims = [entry["head_dim"], head_dim]
    if any(d * partial % 2 for d in dims):  # the rotated part must have an even width
        text["rope_parameters"]["full_attention"]["partial_rotary_factor"] = 1.0
    tie = r.random() < 0.9
    text["tie_word_embeddings"] = tie
    return dict(text_config=text, vision_config=dict(TINY_VISION), canvas_length=r.randint(1, 8),
                tie_word_embeddings=tie)


def build(spec):
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
    cfg = DiffusionGemmaConfig(**copy.deepcopy(spec))
    # sdpa, not eager: in f64, eager attention turns a query that sees only padding (a right-padded row under a
    # sliding window) into NaN, which the next layer's zero attention weights carry into the valid rows
    # (0 x NaN); and transformers 5.17's generate raises under eager on any left-padded batch (it builds the
    # decoder's padding mask with the canvas ids' integer dtype).
    cfg._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = "sdpa"
    return DiffusionGemmaForBlockDiffusion(cfg)


def draw_batch(r, spec):
    """transformers' forward inputs (+ labels for the encoder's loss)."""
    V, C = spec["text_config"]["vocab_size"], spec["canvas_length"]
    g = torch.Generator().manual_seed(r.randrange(1 << 30))
    B, S = r.randint(1, 3), r.randint(1, 14)
    ids = torch.randint(3, V, (B, S), generator=g)
    am = torch.ones(B, S, dtype=torch.long)
    left = r.random() < 0.5  # generate left-pads; a plain forward may be given either
    for b in range(1, B):
        pad = r.randint(0, S - 1)
        if pad:
            sl = slice(0, pad) if left else slice(S - pad, S)
            ids[b, sl] = 0
            am[b, sl] = 0
    labels = ids.clone()
    labels[am == 0] = -100
    batch = dict(input_ids=ids, attention_mask=am, labels=labels,
                 decoder_input_ids=torch.randint(0, V, (B, C), generator=g))
    if r.random() < 0.5:
        batch["self_conditioning_logits"] = torch.randn(B, C, V, generator=g) * r.choice([0.5, 3.0])
        if r.random() < 0.5:
            batch["self_conditioning_mask"] = torch.rand(B, generator=g) < 0.5
    u = r.random()
    if u < 0.3:
        batch["decoder_attention_mask"] = torch.cat([am, torch.ones(B, C, dtype=torch.long)], 1)
    elif u < 0.7:  # the decoder's own mask: some canvas keys (never all of a row's) and context keys masked
        cm = (torch.rand(B, C, generator=g) < 0.7).long()
        cm[:, 0] = 1
        ctx = am * (torch.rand(B, S, generator=g) < 0.8).long() if r.random() < 0.5 else am
        batch["decoder_attention_mask"] = torch.cat([ctx, cm], 1)
    return batch


def beside(model_dir, name):
    """A path next to the checkpoint: g4 refuses to write into a model's directory."""
    return os.path.join(os.path.dirname(model_dir), name)


def softcapped(model, hidden):
    cap = model.final_logit_softcapping
    return torch.tanh(model.lm_head(hidden) / cap) * cap


def hf_outputs(model, batch):
    """Canvas logits, encoder logits, the encoder's next-token loss and its gradients, in the model's dtype.
    The logits are taken from the hidden states (transformers' forward casts its logits to f32, which would blur
    the f64 reference); the same LM head and softcap."""
    model.zero_grad()
    inputs = {k: (v.to(model.dtype) if v.is_floating_point() else v) for k, v in batch.items() if k != "labels"}
    o = model.model(**inputs, use_cache=True)
    logits = softcapped(model, o.last_hidden_state)
    enc = softcapped(model, o.encoder_last_hidden_state)
    labels = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(enc[:, :-1].reshape(-1, enc.shape[-1]), labels.reshape(-1),
                                             ignore_index=-100)
    out = {"logits": logits.detach(), "encoder_logits": enc.detach()}
    if (labels != -100).any():
        loss.backward()
        out["encoder_loss"] = loss.detach().reshape(1)
        out.update({"grad." + n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None})
    return out


def compare_forward(d, model, batch, g4, problems):
    hf32 = hf_outputs(model, batch)
    hf64 = hf_outputs(copy.deepcopy(model).double(), batch)
    save_file({k: v.contiguous() for k, v in batch.items()}, beside(d, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in hf32.items()}, beside(d, "hf.safetensors"))
    grads = "encoder_loss" in hf64
    run_g4(g4, ["forward", d, "--inputs", beside(d, "inputs.safetensors"), "--out",
                beside(d, "g4.safetensors")] + (["--grads"] if grads else []))
    ours = load_file(beside(d, "g4.safetensors"))
    mask = batch["attention_mask"].bool()
    scale = max(1.0, hf64["logits"].abs().max().item())
    enc_scale = max(1.0, hf64["encoder_logits"][mask].abs().max().item())
    renamed = {}
    if grads:
        # g4 names a tied weight once; transformers names it by its first module. Match by the tensor.
        alias = {}
        for n, p in model.named_parameters(remove_duplicate=False):
            alias.setdefault(id(p), []).append("grad." + n)
        for n, p in model.named_parameters():
            hits = [a for a in alias[id(p)] if a in ours]
            if hits:
                renamed["grad." + n] = ours[hits[0]]

    def problems_against(hf32s):  # transformers' f32 outputs: the largest error of each value counts
        found = []
        checks = [("logits", ours["logits"].reshape(hf64["logits"].shape), [h["logits"] for h in hf32s],
                   hf64["logits"], 1e-5 * scale),
                  ("encoder_logits", ours["encoder_logits"].reshape(hf64["encoder_logits"].shape)[mask],
                   [h["encoder_logits"][mask] for h in hf32s], hf64["encoder_logits"][mask], 1e-5 * enc_scale)]
        if grads:
            checks.append(("encoder_loss", ours["encoder_loss"], [h["encoder_loss"] for h in hf32s],
                           hf64["encoder_loss"], 1e-6 * max(1.0, abs(hf64["encoder_loss"].item()))))
        check_values(found, checks)
        if grads:
            check_grads(found, renamed, hf32s, hf64, [k for k in hf64 if k.startswith("grad.")])
        return found

    problems.extend(within_rounding(problems_against, model, batch, hf_outputs, hf32))
    return scale


def compare_roundtrip(d, model, batch, g4, scale, problems):
    from transformers import DiffusionGemmaForBlockDiffusion
    conv = beside(d, "converted")
    run_g4(g4, ["convert", d, conv])
    back, info = DiffusionGemmaForBlockDiffusion.from_pretrained(conv, dtype=torch.float32,
                                                                  output_loading_info=True)
    back.set_experts_implementation("eager")
    lost = {k: v for k, v in info.items() if v}
    if lost:
        problems.append(f"g4 convert: transformers reports {lost}")
    want, got = dict(model.named_buffers()), dict(back.named_buffers())
    for k in want:
        if k.endswith("layer_scalar") and not torch.equal(want[k], got[k]):
            problems.append(f"g4 convert: {k} {want[k].tolist()} came back as {got[k].tolist()}")
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        moved = (back.eval()(**inputs).logits - model(**inputs).logits).abs().max().item()
    # g4 stores router.per_expert_scale folded into experts.down_proj (written back as ones), which rounds:
    # the same f32 bound as the logits check, not bit equality.
    if moved > 1e-5 * scale:
        problems.append(f"g4 convert: transformers' logits moved by {moved:.3e}")


def g4_generate(g4, d, prompts, settings, seed, start):
    path = beside(d, "prompts.jsonl")
    with open(path, "w") as f:
        for p in prompts:
            f.write(json.dumps({"prompt_ids": p}) + "\n")
    out = beside(d, "g4_gen.jsonl")
    args = ["generate", d, "--prompts", path, "--out", out, "--overwrite", "--rng", "torch-cpu", "--seed", str(seed),
            "--max-new-tokens", str(settings["max_new_tokens"])]
    for key, value in settings.items():
        if key == "max_new_tokens":
            continue
        flag = "--" + key.replace("_", "-")
        if value is None:
            args += [flag, "none"]
        elif isinstance(value, list):
            args += [flag, ",".join(map(str, value))]
        else:
            args += [flag, repr(value)]
    if "decoder_input_ids" in start:
        args += ["--decoder-input-ids", ",".join(map(str, start["decoder_input_ids"].reshape(-1).tolist()))]
    if "self_conditioning_logits" in start:
        save_file({"self_conditioning_logits": start["self_conditioning_logits"]}, beside(d, "sc.safetensors"))
        args += ["--self-conditioning-logits", beside(d, "sc.safetensors")]
    run_g4(g4, args)
    return [json.loads(line) for line in open(out)]


def hf_generate(model, prompts, settings, seed, start):
    S = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), S, dtype=torch.long)
    am = torch.zeros(len(prompts), S, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, S - len(p):] = torch.tensor(p)
        am[b, S - len(p):] = 1
    torch.manual_seed(seed)
    with torch.no_grad():
        # entropy_bound is not a generation-config field: given to generate() as a keyword it is silently
        # passed on to the model and the sampler keeps its default 0.1. It goes in the sampler's config.
        from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig
        kw = {k: v for k, v in settings.items() if k != "entropy_bound"}
        kw["sampler_config"] = EntropyBoundSamplerConfig(entropy_bound=settings["entropy_bound"])
        # generate pops the seeding inputs out of its kwargs: pass copies.
        kw.update({k: v.clone() for k, v in start.items()})
        o = model.generate(input_ids=ids, attention_mask=am, return_dict_in_generate=True, **kw)
    return o.sequences[:, S:].tolist(), o.tokens_per_forward


def compare_generate(d, model, spec, r, g4, problems):
    V, C = spec["text_config"]["vocab_size"], spec["canvas_length"]
    prompts = [[r.randrange(3, V) for _ in range(r.randint(1, 10))] for _ in range(r.randint(1, 3))]
    adaptive = r.random() < 0.6
    settings = dict(max_new_tokens=r.randint(1, 3 * C), max_denoising_steps=r.randint(1, 5),
                    t_min=r.choice([0.4, 0.1, 0.9]), t_max=r.choice([1.0, 2.0]),
                    entropy_bound=r.choice([0.1, 1.0, 4.0]),
                    stability_threshold=r.choice([1, 2]) if adaptive else None,
                    confidence_threshold=r.choice([0.005, 0.5, 3.0]) if adaptive else None,
                    eos_token_id=None, pad_token_id=0)
    seed = r.randrange(1 << 31)
    # Sometimes the first block starts from a given canvas and/or self-conditioning logits (transformers' kwargs).
    g = torch.Generator().manual_seed(seed)
    start = {}
    if r.random() < 0.3:
        start["decoder_input_ids"] = torch.randint(0, V, (len(prompts), C), generator=g)
    if r.random() < 0.3:
        start["self_conditioning_logits"] = torch.randn(len(prompts), C, V, generator=g) * 2
    hf_tokens, _ = hf_generate(model, prompts, settings, seed, start)
    # An EOS id the first run produced (mid-sequence when possible), so the second run stops rows and pads them.
    flat = [t for row in hf_tokens for t in row]
    settings["eos_token_id"] = [flat[len(flat) // 2]] + ([1] if r.random() < 0.5 else [])
    for name, s in (("no EOS", dict(settings, eos_token_id=None)), ("EOS", settings)):
        hf_tokens, hf_tpf = hf_generate(model, prompts, s, seed, start)
        ours = g4_generate(g4, d, prompts, s, seed, start)
        g4_tokens = [row["output_ids"] for row in ours]
        if g4_tokens != hf_tokens:
            problems.append(f"generate ({name}, seed {seed}, settings {s}, prompts {prompts}, seeded with "
                            f"{sorted(start)}): "
                            f"g4 {g4_tokens}, transformers {hf_tokens}")
            continue
        g4_tpf = [row["tokens_per_forward"] for row in ours]
        if any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(g4_tpf, hf_tpf.tolist())):
            problems.append(f"generate ({name}): tokens_per_forward g4 {g4_tpf}, transformers {hf_tpf.tolist()}")


def compare(work, spec, batch, r, g4, generate):
    """work/model holds the checkpoint; inputs and outputs go beside it (g4 writes nothing into a model)."""
    d = os.path.join(work, "model")
    torch.manual_seed(0)
    model = build(spec)
    randomize(model, 1234)
    model = model.float().eval()
    model.set_experts_implementation("eager")  # grouped_mm has no f64; the fixtures use eager too
    model.save_pretrained(d, safe_serialization=True)
    problems = []
    if not spec["tie_word_embeddings"]:
        # transformers unties the encoder, the decoder and the LM head; g4 holds one stack and refuses by name.
        save_file({k: v.contiguous() for k, v in batch.items()}, beside(d, "inputs.safetensors"))
        try:
            run_g4(g4, ["forward", d, "--inputs", beside(d, "inputs.safetensors"), "--out",
                        beside(d, "g4.safetensors")])
            problems.append("an untied diffusion_gemma checkpoint was not refused")
        except RuntimeError as e:
            if "tie_word_embeddings" not in str(e):
                problems.append(f"an untied checkpoint's error does not name tie_word_embeddings: {e}")
        return problems
    scale = compare_forward(d, model, batch, g4, problems)
    compare_roundtrip(d, model, batch, g4, scale, problems)
    if generate:
        compare_generate(d, model, spec, r, g4, problems)
    return problems


def main():
    ap = trial_parser(__doc__, "/tmp/g4_probe_diffusion_failures")
    ap.add_argument("--no-generate", action="store_true", help="skip the sampling comparison")
    a = ap.parse_args()
    g4 = os.path.abspath(a.g4)

    def trial(t, d, info):
        r = random.Random(a.seed * 100003 + t)
        spec = draw_config(r)
        batch = draw_batch(r, spec)
        tc = spec["text_config"]
        info["spec"] = spec
        info["summary"] = (f"L{tc['num_hidden_layers']} E{tc['num_experts']}k{tc['top_k_experts']} "
                           f"C{spec['canvas_length']} W{tc['sliding_window']} "
                           f"{'per_layer_config' if 'per_layer_config' in tc else 'global_head_dim'} "
                           f"{'tied' if spec['tie_word_embeddings'] else 'untied'} "
                           f"batch {tuple(batch['input_ids'].shape)}"
                           f"{' sc' if 'self_conditioning_logits' in batch else ''}"
                           f"{' dec_mask' if 'decoder_attention_mask' in batch else ''}")
        return compare(d, spec, batch, r, g4, not a.no_generate)

    sys.exit(1 if run_trials(a.trials, a.seed, a.keep, trial, a.only_trial) else 0)


if __name__ == "__main__":
    main()
