#!/usr/bin/env python3
"""Differential probe: g4 against transformers on Gemma 4 text models drawn at random.

Each trial draws a tiny Gemma 4 text config from the whole space the architecture allows (dense or MoE, top-k,
per-layer inputs, KV sharing, K=V global attention, double-wide MLP, windows, head dims, partial rotary factors,
rope thetas, softcap or none, tied or untied head, causal LM or the conditional-generation wrapper, layer
patterns), random weights (as tools/make_hf_fixtures.py draws them), and a random batch (rows of any length,
right padding, or documents packed in one row with position ids restarting). transformers (fp32, eager) gives
logits, loss and every gradient in fp32 and in fp64; `g4 forward --grads` on the saved checkpoint (f32) gives ours;
then `g4 generate --greedy` (the engine, KV cache) decodes half of the first row, and `g4 convert`'s output must
load in transformers (no missing, unexpected or mismatched keys) with every tensor the original's bit for bit (MoE:
each expert's down weight torch's f32 product with its per_expert_scale, the scales ones, as g4 folds them) and
the same logits (bit for bit for dense models; MoE within f32 noise, see the check). Against transformers in f64, with
e_hf = transformers' own f32 error (a deep random model amplifies rounding; where that fails a check, the largest
over it and 4 copies of the model with each weight moved by at most one ulp: tools/probe_common.py), a trial fails when:
  logits  max |g4 - hf64| over valid positions > max(1e-5 * max(1, max |hf64|), 10 e_hf)
  loss    |g4 - hf64| > max(1e-6 * max(1, |hf64|), 10 e_hf)
  grads   ||g4 - hf64|| > max(1e-4 ||hf64||, 10 e_hf, 1e-6 x the norm of all gradients) for any parameter, or
          a nonzero gradient g4 does not give
  decode  a generated token is not the argmax of transformers' full forward (no cache) over its prefix, by
          more than 1e-3 (transformers' cached generate is not the reference: at sliding_window 1 it departs
          from its own forward)
Failing trials keep their directory (config, weights, inputs, both outputs) for a test case.

  python3 tools/probe_vs_transformers.py --trials 50 --seed 0 [--g4 build/g4] [--keep DIR]

Needs torch and transformers (CPU only).
"""
import copy, json, os, random, sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from safetensors.torch import load_file, save_file

from make_hf_fixtures import build, randomize
from probe_common import NOISE, check_outputs_within_rounding, error, run_g4, run_trials, trial_parser


def draw_config(r):
    """A random, valid Gemma 4 text config (small widths) and the model kind."""
    heads = r.choice([1, 2, 3, 4, 6])
    kv = r.choice([d for d in (1, 2, 3) if heads % d == 0])
    head_dim = r.choice([4, 8, 12, 16, 32])
    global_head_dim = r.choice([head_dim, 2 * head_dim, 4 * head_dim])
    layers = r.randint(1, 7)
    types = [r.choice(["sliding_attention", "full_attention"]) for _ in range(layers)]
    types[-1] = "full_attention"  # transformers forces it (and warns); every release ends with a full layer
    cfg = dict(vocab_size=r.choice([64, 97, 256, 300]), hidden_size=r.choice([16, 24, 32, 48, 64]),
               intermediate_size=r.choice([16, 40, 64, 96]), num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim,
               global_head_dim=global_head_dim, sliding_window=r.randint(1, 12),
               rms_norm_eps=r.choice([1e-6, 1e-5]), pad_token_id=0, bos_token_id=2, eos_token_id=1,
               final_logit_softcapping=r.choice([None, 30.0, 10.0]), max_position_embeddings=4096,
               layer_types=types, tie_word_embeddings=r.random() < 0.7,
               hidden_activation="gelu_pytorch_tanh", use_double_wide_mlp=r.random() < 0.25)
    cfg["vocab_size_per_layer_input"] = cfg["vocab_size"]
    if r.random() < 0.4:
        cfg["attention_k_eq_v"] = True
        cfg["num_global_key_value_heads"] = r.choice([d for d in (1, 2) if heads % d == 0])
    elif r.random() < 0.3:
        cfg["num_global_key_value_heads"] = r.choice([d for d in (1, 2, 3) if heads % d == 0])
    if r.random() < 0.4:
        cfg["hidden_size_per_layer_input"] = r.choice([2, 4, 8])
    else:
        cfg["hidden_size_per_layer_input"] = 0
    if layers >= 3 and r.random() < 0.35:
        # A shared layer reads the last non-shared layer of its type, so each shared type needs one
        # (transformers raises a KeyError otherwise; g4 refuses such a config by name).
        valid = [n for n in range(1, layers - 1) if set(types[layers - n:]) <= set(types[:layers - n])]
        if valid:
            cfg["num_kv_shared_layers"] = r.choice(valid)
    if r.random() < 0.4:
        experts = r.randint(2, 8)
        cfg.update(enable_moe_block=True, num_experts=experts, top_k_experts=r.randint(1, min(experts, 4)),
                   moe_intermediate_size=r.choice([8, 16, 20, 32]))
    partial = r.choice([0.25, 0.5, 1.0])
    if global_head_dim * partial % 2:
        partial = 1.0
    cfg["rope_parameters"] = {
        "sliding_attention": {"rope_type": "default", "rope_theta": r.choice([10000.0, 5000.0])},
        "full_attention": {"rope_type": "proportional", "rope_theta": r.choice([1e6, 2e5]),
                           "partial_rotary_factor": partial}}
    return dict(kind=r.choice(["causal", "cond"]), text=cfg)


def draw_batch(r, vocab):
    """input_ids, attention_mask or position_ids (packed), labels."""
    g = torch.Generator().manual_seed(r.randrange(1 << 30))
    if r.random() < 0.3:  # documents packed in one row
        lens = [r.randint(1, 12) for _ in range(r.randint(2, 4))]
        ids = torch.randint(3, vocab, (1, sum(lens)), generator=g)
        pos = torch.cat([torch.arange(n) for n in lens]).unsqueeze(0)
        labels = ids.clone()
        start = 0
        for n in lens[:-1]:
            start += n
            labels[0, start] = -100  # a document's last token does not predict the next one's first
        return dict(input_ids=ids, position_ids=pos, labels=labels)
    B, S = r.randint(1, 3), r.randint(2, 40)
    ids = torch.randint(3, vocab, (B, S), generator=g)
    am = torch.ones(B, S, dtype=torch.long)
    for b in range(1, B):
        pad = r.randint(0, S - 1)
        if pad:
            ids[b, S - pad:] = 0
            am[b, S - pad:] = 0
    labels = ids.clone()
    labels[am == 0] = -100
    return dict(input_ids=ids, attention_mask=am, labels=labels)


def g4_greedy(g4, model_dir, prompt, new_tokens):
    out = run_g4(g4, ["generate", model_dir, "--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens",
                      str(new_tokens), "--greedy"])
    return [int(t) for t in out.strip().splitlines()[-1].split(",")]  # the new token ids


def hf_outputs(model, batch):
    """transformers' logits, loss and every parameter gradient on `batch`, in the model's dtype."""
    model.zero_grad()
    o = model(**batch, use_cache=False)
    o.loss.backward()
    out = {"logits": o.logits.detach(), "loss": o.loss.detach().reshape(1)}
    out.update({"grad." + n: p.grad.detach() for n, p in model.named_parameters() if p.grad is not None})
    return out


def engine_problems(model, d, prompts, r, g4):
    """Several requests of different lengths in one `g4 generate --prompts` run, on small KV pages (and
    sometimes a pool too small for all of them, so requests are preempted and resumed): greedy rows
    must take transformers' argmax, and every sampled token's raw log-prob must be transformers'
    log-softmax of the same position of the uncached forward over prompt + generated tokens."""
    reqs = []
    for i, p in enumerate(prompts):
        req = {"prompt_ids": p, "max_tokens": r.randint(1, 8), "logprobs": 0}
        if i % 2:
            req.update(temperature=r.choice([0.5, 1.0, 1.5]), seed=r.randrange(1000), top_k=r.choice([0, 5]),
                       n=r.choice([1, 2]))
        reqs.append(req)
    path, out = os.path.join(d, "prompts.jsonl"), os.path.join(d, "generated.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in reqs)
    page = r.choice([1, 2, 3, 16])
    args = ["generate", d, "--prompts", path, "--out", out, "--overwrite", "--page-size", str(page)]
    if r.random() < 0.5:  # a pool that holds the longest request but not all of them at once
        longest = max(len(q["prompt_ids"]) + q["max_tokens"] for q in reqs)
        # The engine needs the pages a window can straddle plus one (src/generate/engine.cpp).
        window = model.config.get_text_config().sliding_window
        args += ["--num-pages", str(max(-(-longest // page) + 1, -(-(window - 1) // page) + 2))]
    try:
        run_g4(g4, args)
    except RuntimeError as e:
        return [f"generate --prompts ({' '.join(args[5:])}): {e}"]
    problems = []
    results = [json.loads(line) for line in open(out)]
    for res in results:
        req = reqs[res["index"]] if "index" in res else None
        prompt = req["prompt_ids"]
        toks, lps = res["token_ids"], res["logprobs"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + toks])).logits[0, len(prompt) - 1:-1].double()
        ref = torch.log_softmax(logits, -1)
        for i, tok in enumerate(toks):
            if abs(lps[i] - ref[i, tok].item()) > 2e-4:
                problems.append(f"request {res['index']} (page {page}): token {i} log-prob {lps[i]:.6f}, "
                                f"transformers {ref[i, tok].item():.6f}")
                break
            if "temperature" not in req and ref[i].max().item() - ref[i, tok].item() > 1e-3:
                problems.append(f"request {res['index']} (greedy, page {page}): token {i} is not the argmax")
                break
    return problems


def compare(d, spec, batch, g4, r):
    torch.manual_seed(0)
    model = build(spec)
    randomize(model, 1234)
    model = model.float().eval()
    if spec["text"].get("enable_moe_block"):
        model.set_experts_implementation("eager")  # grouped_mm has no f64; the fixtures use eager too
    model.save_pretrained(d, safe_serialization=True)
    hf32 = hf_outputs(model, batch)
    hf64 = hf_outputs(copy.deepcopy(model).double(), batch)
    save_file({k: v.contiguous() for k, v in batch.items()}, os.path.join(d, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in hf32.items()}, os.path.join(d, "hf.safetensors"))
    run_g4(g4, ["forward", d, "--inputs", os.path.join(d, "inputs.safetensors"), "--out",
                os.path.join(d, "g4.safetensors"), "--grads"])
    ours = load_file(os.path.join(d, "g4.safetensors"))
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    problems = check_outputs_within_rounding(ours, model, batch, hf_outputs, hf32, hf64, mask)
    # The round trip: what `g4 convert` writes loads in transformers with the same logits (bit for bit for dense models; MoE within f32 noise, see the check).
    conv = os.path.join(d, "converted")
    run_g4(g4, ["convert", d, conv])
    import transformers
    cls = getattr(transformers, type(model).__name__)
    back, info = cls.from_pretrained(conv, dtype=torch.float32, attn_implementation="eager",
                                     output_loading_info=True)
    if back.config.get_text_config().enable_moe_block:
        back.set_experts_implementation("eager")
    lost = {k: v for k, v in info.items() if v}
    if lost:
        problems.append(f"g4 convert: transformers reports {lost}")
    # Dense weights come back bit for bit. g4 folds per_expert_scale into the experts' down projection
    # (docs/architecture.md) and exports ones: each expert's down weight must be exactly torch's f32
    # product with its scale, and then the logits are those of that folded checkpoint.
    want = {n: t.detach().clone() for n, t in model.state_dict().items()}
    for n in [n for n in want if n.endswith("router.per_expert_scale")]:
        down = n[:-len("router.per_expert_scale")] + "experts.down_proj"
        want[down] = want[down] * want[n][:, None, None]
        want[n] = torch.ones_like(want[n])
    got = back.state_dict()
    changed = [n for n in want if n in got and not torch.equal(want[n], got[n])]
    if changed:
        problems.append(f"g4 convert: {len(changed)} tensors differ from the original (folded), e.g. {changed[:3]}")
    reference = copy.deepcopy(model)
    reference.load_state_dict(want)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        moved = (back.eval()(**inputs).logits - reference(**inputs).logits)[mask].abs().max().item()
    # With equal tensors and an equal config.json, transformers' MoE logits can still differ in the last
    # bits between the folded original and the reloaded output (4.8e-7 on seed 10, trial 15; the cause
    # is in how transformers loads them, not the weights, which are checked above): f32 noise is allowed.
    noise = NOISE * error(hf32["logits"][mask], hf64["logits"][mask])
    if moved > (noise if spec["text"].get("enable_moe_block") else 0):
        problems.append(f"g4 convert: transformers' logits moved by {moved:.3e}")
    # Greedy decoding through the engine: each token must be the argmax of transformers' full forward
    # (no cache) over the prefix, unless its top two logits are within 1e-3. transformers' own cached
    # generate is not the reference: at sliding_window 1 it departs from its own forward.
    prompt = batch["input_ids"][0, :max(1, int(mask[0].sum()) // 2)].tolist()
    try:
        gen = g4_greedy(g4, d, prompt, 6)
    except RuntimeError as e:
        problems.append(f"generate: {e}")
        return problems
    with torch.no_grad():
        full = model(input_ids=torch.tensor([prompt + gen])).logits[0, len(prompt) - 1:-1]
    for i, tok in enumerate(gen):
        top2 = full[i].topk(2)
        if tok != top2.indices[0].item() and (top2.values[0] - full[i, tok]).item() > 1e-3:
            problems.append(f"greedy token {i}: g4 {gen}, transformers' argmax there {top2.indices[0].item()} "
                            f"(by {(top2.values[0] - full[i, tok]).item():.2e})")
            break
    prompts = [row[:max(1, int(m.sum()) - r.randint(0, 3))].tolist() for row, m in zip(batch["input_ids"], mask)]
    prompts += [prompts[0]] * r.randint(0, 2)  # the same prompt again: shared prefix pages
    return problems + engine_problems(model, d, prompts, r, g4)


def main():
    ap = trial_parser(__doc__, "/tmp/g4_probe_failures")
    a = ap.parse_args()
    g4 = os.path.abspath(a.g4)

    def trial(t, d, info):
        r = random.Random(a.seed * 100003 + t)
        spec = draw_config(r)
        batch = draw_batch(r, spec["text"]["vocab_size"])
        info["spec"] = spec
        info["summary"] = (f"{spec['kind']} L{spec['text']['num_hidden_layers']} "
                           f"{'moe' if spec['text'].get('enable_moe_block') else 'dense'} "
                           f"batch {tuple(batch['input_ids'].shape)}{' packed' if 'position_ids' in batch else ''}")
        return compare(d, spec, batch, g4, r)

    failures = run_trials(a.trials, a.seed, a.keep, trial, a.only_trial)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
