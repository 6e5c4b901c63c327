#!/usr/bin/env python3
"""Differential probe: g4's vision and audio towers (and the merge into the decoder) against transformers.

Each trial draws a tiny Gemma4ForConditionalGeneration: a text config from tools/probe_vs_transformers.py's
space (dense or MoE, PLE, KV sharing, windows, ...; sometimes `use_bidirectional_attention: "vision"`), a vision
config (width, heads, head dim, layers, patch size, pooling kernel, position table, clipped linears with finite
random bounds or not, standardisation, eps) and an audio config (width, heads, layers, conv kernel, subsampling
channels, output width, attention chunk and left context, logit cap, invalid logit, activation clipping, residual
weight, clipped linears), random weights (tools/make_hf_fixtures.py's `randomize`, plus random standardisation and clip bounds), and a random
batch: 1-2 rows of text with images (random patch grids within a random budget, processor layout: row-major
patches, (x, y) positions, (-1, -1) padding), a video of 1-3 frames and audio clips (random log-mel features, a
valid prefix per clip, invalid frames 0), each placeholder run as the processor writes it, right padding.
transformers (fp32 and fp64; text and vision eager, the audio tower's mask built as sdpa builds it: its eager
mask is inverted, MULTIMODAL.md §12.3) gives logits, loss and every gradient; `g4 forward --grads` on the saved
checkpoint gives ours; both are checked with tools/probe_common.py's `check_outputs_within_rounding` (transformers'
own f32 error against f64 is the yardstick; an ill-conditioned tower, whose whole effect on the logits is one
direction, can make that one error small by chance, so a failing trial is checked again against the largest over
ulp-jittered copies of the model). The top-level tie_word_embeddings stays at its default while
text_config's is drawn, so the two may disagree (transformers follows the top one). In the f64 run transformers'
f32 islands (pooler, audio attention, RoPE) run in f64 too (FloatIsF64). Not drawn: pooling kernel 1 (transformers'
pooler fails on it), grouped KV heads in the vision tower (g4 refuses them by name; no released model has them).

  python3 tools/probe_towers_vs_transformers.py --trials 30 --seed 0 [--g4 build/g4] [--keep DIR]
            [--only vision|audio]

Failing trials keep their directory (spec, weights, inputs, outputs); `--only-trial N` reruns one trial of a seed.
Needs torch, torchvision (transformers' Gemma 4 processing module imports it) and transformers (CPU only).
"""
import copy, os, random, sys, types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
from safetensors.torch import load_file, save_file

import probe_common
import probe_vs_transformers as text_probe
from make_hf_fixtures import randomize

# Media token ids: the last seven of the vocabulary.
TOKENS = ["boi_token_id", "eoi_token_id", "boa_token_id", "eoa_token_id", "image_token_id", "audio_token_id",
          "video_token_id"]


def draw_vision(r):
    heads = r.choice([1, 2, 3, 4])
    return dict(hidden_size=r.choice([8, 16, 24, 32]), intermediate_size=r.choice([8, 16, 40]),
                num_hidden_layers=r.randint(1, 3), num_attention_heads=heads, num_key_value_heads=heads,
                head_dim=r.choice([4, 8, 12, 16]), patch_size=r.choice([1, 2, 3, 4, 6]),
                pooling_kernel_size=r.choice([2, 3]),  # transformers' pooler fails at 1 (split sizes)
                position_embedding_size=r.choice([16, 40]),
                use_clipped_linears=r.random() < 0.5, standardize=r.random() < 0.4,
                rms_norm_eps=r.choice([1e-6, 1e-5]), hidden_activation="gelu_pytorch_tanh",
                rope_parameters={"rope_type": "default", "rope_theta": r.choice([100.0, 10000.0])})


def draw_audio(r):
    heads = r.choice([1, 2, 4])
    chunk = r.choice([12, 12, 4, 6])
    return dict(hidden_size=heads * r.choice([4, 8, 16]), num_attention_heads=heads,
                num_hidden_layers=r.randint(1, 2), conv_kernel_size=r.choice([3, 5, 7]),
                subsampling_conv_channels=[128, r.choice([4, 8, 16])], output_proj_dims=r.choice([8, 24, 48]),
                attention_chunk_size=chunk, attention_context_right=0,
                attention_context_left=r.choice([chunk + 1, chunk + 1, 2, chunk // 2 + 1, 2 * chunk + 1]),
                attention_logit_cap=r.choice([50.0, 5.0]), residual_weight=r.choice([0.5, 1.0]),
                attention_invalid_logits_value=r.choice([-1e9, -1e4]),
                gradient_clipping=r.choice([1e10, 1e10, 2.0, 0.5]),  # clamps the conformer's activations
                use_clipped_linears=r.random() < 0.5, rms_norm_eps=r.choice([1e-6, 1e-5]), hidden_act="silu")


def draw_spec(r, only):
    spec = text_probe.draw_config(r)
    t = spec["text"]
    t["vocab_size"] = t["vocab_size_per_layer_input"] = max(t["vocab_size"], 97)
    if r.random() < 0.5:
        t["use_bidirectional_attention"] = "vision"
    spec["kind"] = "cond"
    spec["vision"] = draw_vision(r) if only != "audio" else None
    spec["audio"] = draw_audio(r) if only != "vision" and (only == "audio" or r.random() < 0.7) else None
    spec["ids"] = {k: t["vocab_size"] - 7 + i for i, k in enumerate(TOKENS)}
    return spec


def build(spec):
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    ids = dict(spec["ids"])
    ids["eoa_token_index"] = ids["eoa_token_id"]
    cfg = Gemma4Config(text_config=spec["text"], vision_config=spec["vision"], audio_config=spec["audio"], **ids)
    cfg._attn_implementation = "eager"
    cfg.text_config._attn_implementation = "eager"
    if spec["vision"]:
        cfg.vision_config._attn_implementation = "eager"
    if spec["audio"]:
        cfg.audio_config._attn_implementation = "sdpa"  # the boolean mask its attention needs (§12.3)
    return Gemma4ForConditionalGeneration(cfg)


def randomize_buffers(model, r):
    """Standardisation and finite clip bounds (transformers makes them 0/1 and ±inf)."""
    g = torch.Generator().manual_seed(r.randrange(1 << 30))
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name.endswith("std_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
            elif name.endswith("std_scale"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
            elif name.endswith(("input_min", "output_min")):
                b.fill_(-r.choice([0.05, 0.3, 1.0, 3.0]))
            elif name.endswith(("input_max", "output_max")):
                b.fill_(r.choice([0.05, 0.3, 1.0, 3.0]))


def draw_image(r, v, max_patches, g):
    """One processed image of a random grid within max_patches: pixel_values [P, 3 p^2], positions [P, 2]."""
    k = v["pooling_kernel_size"]
    cells = max_patches // (k * k)
    side = v["position_embedding_size"] // k  # positions index the table: at most its size per axis
    ch = r.randint(1, min(cells, side))
    cw = r.randint(1, min(cells // ch, side))
    ph, pw = ch * k, cw * k
    pv = torch.zeros(max_patches, 3 * v["patch_size"] ** 2)
    pv[:ph * pw] = torch.rand(ph * pw, pv.shape[1], generator=g)
    pos = torch.full((max_patches, 2), -1, dtype=torch.long)
    ys, xs = torch.meshgrid(torch.arange(ph), torch.arange(pw), indexing="ij")
    pos[:ph * pw, 0], pos[:ph * pw, 1] = xs.reshape(-1), ys.reshape(-1)
    return pv, pos, ch * cw


def audio_tokens(mask):
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    ns = types.SimpleNamespace(boa_token="", audio_token="x", eoa_token="")
    return len(Gemma4Processor.replace_audio_token(ns, {"input_features_mask": [mask.numpy()]}, 0))


def draw_batch(r, spec):
    """Token rows with the media's placeholder runs, and the media tensors under transformers' names."""
    g = torch.Generator().manual_seed(r.randrange(1 << 30))
    ids, v, a = spec["ids"], spec["vision"], spec["audio"]
    text_vocab = spec["text"]["vocab_size"] - 7
    batch, runs = {}, []  # runs: (token list, type) in prompt order
    if v:
        # Budget: the soft tokens of the largest image (transformers pools to max_patches // k^2).
        k = v["pooling_kernel_size"]
        max_patches = k * k * r.randint(1, 12)
        images = [draw_image(r, v, max_patches, g) for _ in range(r.randint(0, 3))]
        if images:
            batch["pixel_values"] = torch.stack([i[0] for i in images])
            batch["image_position_ids"] = torch.stack([i[1] for i in images])
            runs += [([ids["boi_token_id"]] + [ids["image_token_id"]] * n + [ids["eoi_token_id"]], 1)
                     for _, _, n in images]
        if r.random() < 0.4:
            frames = r.randint(1, 3)
            one = draw_image(r, v, max_patches, g)
            pv = torch.rand(frames, *one[0].shape, generator=g) * (one[1][:, :1] >= 0)
            batch["pixel_values_videos"] = pv.unsqueeze(0)
            batch["video_position_ids"] = one[1].expand(frames, -1, -1).unsqueeze(0).clone()
            runs += [([ids["boi_token_id"]] + [ids["video_token_id"]] * one[2] + [ids["eoi_token_id"]], 2)
                     for _ in range(frames)]
    if a:
        clips = r.randint(1, 3)
        F = r.randint(1, 60)
        feats = torch.randn(clips, F, 128, generator=g) * 2 - 3
        mask = torch.zeros(clips, F, dtype=torch.bool)
        for c in range(clips):
            mask[c, :r.randint(1, F)] = True
        feats = feats * mask[..., None]
        batch["input_features"], batch["input_features_mask"] = feats, mask
        runs += [([ids["boa_token_id"]] + [ids["audio_token_id"]] * audio_tokens(mask[c]) + [ids["eoa_token_id"]], 3)
                 for c in range(clips)]
    # Rows: runs in order, text between them, split over 1-2 rows; right padding.
    B = r.randint(1, 2)
    rows = [[] for _ in range(B)]
    for i, (toks, kind) in enumerate(runs):
        row = rows[min(B - 1, i * B // max(1, len(runs)))]
        row += [(t, 0) for t in torch.randint(3, text_vocab, (r.randint(0, 4),), generator=g).tolist()]
        row += [(t, kind if t not in (ids["boi_token_id"], ids["eoi_token_id"], ids["boa_token_id"],
                                      ids["eoa_token_id"]) else 0) for t in toks]
    for row in rows:
        row += [(t, 0) for t in torch.randint(3, text_vocab, (r.randint(1, 6),), generator=g).tolist()]
    S = max(len(x) for x in rows)
    input_ids = torch.zeros(B, S, dtype=torch.long)
    types_ = torch.zeros(B, S, dtype=torch.long)
    am = torch.zeros(B, S, dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, :len(row)] = torch.tensor([t for t, _ in row])
        types_[b, :len(row)] = torch.tensor([k for _, k in row])
        am[b, :len(row)] = 1
    labels = input_ids.clone()
    labels[am == 0] = -100
    batch.update(input_ids=input_ids, attention_mask=am, mm_token_type_ids=types_, labels=labels)
    return batch


class FloatIsF64:
    """transformers computes some steps in f32 whatever the model's dtype (.float() in the audio attention and the
    vision pooler's one-hot matmul, .to(torch.float) in the text RoPE); in the f64 reference that mixes f32 and f64
    (a matmul refuses), so while this is active a cast to f32 gives f64."""

    def __enter__(self):
        self.float, self.to = torch.Tensor.float, torch.Tensor.to
        to = self.to

        def to_f64(t, *a, **k):
            a = tuple(torch.float64 if x is torch.float32 else x for x in a)
            if k.get("dtype") is torch.float32:
                k["dtype"] = torch.float64
            return to(t, *a, **k)

        torch.Tensor.float = lambda t, *a, **k: t.double(*a, **k)
        torch.Tensor.to = to_f64

    def __exit__(self, *exc):
        torch.Tensor.float, torch.Tensor.to = self.float, self.to


def in_dtype(batch, dtype):
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}


def compare(d, spec, batch, g4, r):
    torch.manual_seed(0)
    model = build(spec)
    randomize(model, 1234)
    randomize_buffers(model, r)
    model = model.float().eval()
    if spec["text"].get("enable_moe_block"):
        model.set_experts_implementation("eager")
    model.save_pretrained(d, safe_serialization=True)
    hf32 = text_probe.hf_outputs(model, batch)
    with FloatIsF64():
        hf64 = text_probe.hf_outputs(copy.deepcopy(model).double(), in_dtype(batch, torch.float64))
    save_file({k: v.contiguous() for k, v in batch.items()}, os.path.join(d, "inputs.safetensors"))
    save_file({k: v.float().contiguous() for k, v in hf32.items()}, os.path.join(d, "hf.safetensors"))
    probe_common.run_g4(g4, ["forward", d, "--inputs", os.path.join(d, "inputs.safetensors"), "--out",
                           os.path.join(d, "g4.safetensors"), "--grads"])
    ours = load_file(os.path.join(d, "g4.safetensors"))
    return probe_common.check_outputs_within_rounding(ours, model, batch, text_probe.hf_outputs, hf32, hf64,
                                                      batch["attention_mask"].bool())


def summary(spec, batch):
    parts = []
    v, a = spec["vision"], spec["audio"]
    if v:
        parts.append(f"vision L{v['num_hidden_layers']} p{v['patch_size']} k{v['pooling_kernel_size']} "
                     f"h{v['num_attention_heads']}x{v['head_dim']}{' clip' if v['use_clipped_linears'] else ''}"
                     f"{' std' if v['standardize'] else ''}: "
                     f"{len(batch.get('pixel_values', []))} images, "
                     f"{batch['pixel_values_videos'].shape[1] if 'pixel_values_videos' in batch else 0} frames")
    if a:
        parts.append(f"audio L{a['num_hidden_layers']} d{a['hidden_size']} h{a['num_attention_heads']} "
                     f"chunk {a['attention_chunk_size']} conv {a['conv_kernel_size']}"
                     f"{' clip' if a['use_clipped_linears'] else ''}: "
                     f"{len(batch.get('input_features', []))} clips")
    t = spec["text"]
    parts.append(f"text L{t['num_hidden_layers']}{' moe' if t.get('enable_moe_block') else ''}"
                 f"{' bidir' if t.get('use_bidirectional_attention') else ''} "
                 f"batch {tuple(batch['input_ids'].shape)}")
    return "; ".join(parts)


# (attention_chunk_size, attention_context_left) pairs whose relative table is not the released one's (there
# (12, 13): half the context equals context_left - 1): shorter and longer left contexts.
AUDIO_CONTEXTS = [(4, 3), (4, 9), (12, 25)]


def write_audio_context_reference(path):
    """tiny-mm-e's audio tower under other chunk/context pairs, on the fixture's recorded features: what
    tests/model/audio_tower_test.cpp's AudioTower.OtherChunkAndContextFollowTransformers compares."""
    from transformers import AutoConfig, Gemma4ForConditionalGeneration
    fixture = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "hf-gemma4-mm",
                           "tiny-mm-e")
    ref = load_file(os.path.join(fixture, "reference.safetensors"))
    out = {}
    for chunk, left in AUDIO_CONTEXTS:
        cfg = AutoConfig.from_pretrained(fixture)
        cfg.audio_config.attention_chunk_size, cfg.audio_config.attention_context_left = chunk, left
        model = Gemma4ForConditionalGeneration.from_pretrained(
            fixture, config=cfg, dtype=torch.float32,
            attn_implementation={"": "eager", "text_config": "eager", "vision_config": "eager",
                                 "audio_config": "sdpa"}).eval()
        with torch.no_grad():
            o = model.model.audio_tower(ref["input_features"], attention_mask=ref["input_features_mask"])
        out[f"chunk{chunk}_left{left}.last_hidden_state"] = o.last_hidden_state.contiguous()
        out[f"chunk{chunk}_left{left}.output_mask"] = o.attention_mask.contiguous()
    save_file(out, path)
    print(f"wrote {len(out)} tensors to {path}")


def main():
    ap = probe_common.trial_parser(__doc__, "/tmp/g4_probe_tower_failures")
    ap.add_argument("--only", choices=["vision", "audio"], default=None)
    ap.add_argument("--write-audio-context-reference", metavar="OUT",
                    help="write the test data of tiny-mm-e's audio tower at other chunk/context sizes and exit")
    a = ap.parse_args()
    if a.write_audio_context_reference:
        return write_audio_context_reference(a.write_audio_context_reference)
    g4 = os.path.abspath(a.g4)

    def trial(t, d, info):
        r = random.Random(a.seed * 100003 + t)
        spec = draw_spec(r, a.only)
        batch = draw_batch(r, spec)
        info["spec"], info["summary"] = spec, summary(spec, batch)
        return compare(d, spec, batch, g4, r)

    failures = probe_common.run_trials(a.trials, a.seed, a.keep, trial, a.only_trial)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
