#!/usr/bin/env python3
"""Differential probe: g4's image, audio and video processors against transformers' on random files.

Each trial writes random media files and runs them through both sides:
  images  random sizes (1x1 to 3000x3000, thin ones like 1x4000 and 3000x2), PNG (grey, grey+alpha, RGB, RGBA,
          palette, 16-bit grey) and JPEG (grey, RGB, random quality), at one soft-token budget of
          70/140/280/560/1120 per trial; transformers: `load_image` (Pillow) then `Gemma4ImageProcessor` (the
          torchvision backend AutoImageProcessor gives);
  audio   WAVs of random lengths (0, 1, under a frame, exact hops, 30 s and over), 1-3 channels, PCM 8/16/24/32
          and IEEE float 32/64, plain or WAVE_FORMAT_EXTENSIBLE, sometimes at 8/22.05/44.1/48 kHz; transformers: the samples as soundfile reads
          them (decoded here from the bytes: PCM / 2^(bits-1), 8-bit (x-128)/128, channels averaged as librosa's
          to_mono), at another rate resampled to 16 kHz as load_audio's librosa.load does (soxr_hq,
          tools/librosa_resample.py), through `Gemma4AudioFeatureExtractor`, all clips of the trial in one call;
  video   T frames (PNG) of one size at a random fps, n sampled; transformers: `Gemma4VideoProcessor` with
          `VideoMetadata` (total frames, fps) and `num_frames=n`.
g4 makes the same inputs with `g4 forward MODEL --prompt '' --image F ... --audio F ... --video F1,F2,...
--video-fps R --video-frames n --max-soft-tokens N --out OUT`, which writes the processed tensors into OUT beside
the logits. MODEL is a tiny Gemma4ForConditionalGeneration made here (the published processor config; the
trial's patch size and pooling kernel, 16 and 3 as released half of the time, else 14/2, 6/3 or 8/4, in the tower
and both processors) with the test tokenizer plus the media tokens at its ids.

Compared at the level MULTIMODAL.md §11 asks:
  exact    image sizes, soft-token counts (images, video frames, audio clips: the number of placeholders in g4's
           input_ids against transformers' `replace_*_token` on its own outputs), image_position_ids /
           video_position_ids, input_features_mask, the video's sampled frames and timestamp text, shapes;
  pixels   pixel_values / pixel_values_videos as uint8 codes (x * 255): g4 follows torchvision's fixed-point
           resize, so the codes must be equal (the spec allows 2/255; a difference is reported as a failure,
           with its size);
  audio    input_features within 1e-4 absolute (the FFT may differ; §6.1); for a resampled clip (g4's filter is
           soxr HQ's specification, not its coefficients: tests/io/resample_test.cpp) within 2e-3 in the mel bins
           below the pass-band edge (0.914 of the lower Nyquist) after frame 0, and 0.5 elsewhere (the
           transition band's shape and soxr's start-up differ; a clip not resampled, or at the wrong rate, is
           off by far more).
A case one side refuses and the other accepts is a failure, unless it is listed in G4_REFUSES / HF_REFUSES (cases
where g4 refuses by design, or transformers' behaviour is an accident); such a medium is set aside and the rest of
the trial compared. `--only-trial N` reruns one trial of a seed.

  python3 tools/probe_processors_vs_transformers.py --trials 40 --seed 0 [--g4 build/g4] [--keep DIR]
            [--only image,audio,video]

Needs torch, torchvision, Pillow, transformers and soxr (CPU only).
"""
import json, os, random, shutil, struct, subprocess, sys, tempfile, types

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from probe_common import run_trials, trial_parser
from librosa_resample import librosa_resample

BUDGETS = [70, 140, 280, 560, 1120]
TEST_DATA = os.path.join(HERE, "..", "tests", "data")
# The media tokens at tiny-mm-e's ids (its config is the model's base).
MEDIA_TOKENS = {300: "<|image>", 301: "<image|>", 302: "<|audio>", 303: "<audio|>", 304: "<|image|>",
                305: "<|audio|>", 306: "<|video|>"}


# (patch_size, pooling_kernel_size) of the processor and the tower: the published one most often.
GEOMETRIES = [(16, 3), (16, 3), (16, 3), (14, 2), (6, 3), (8, 4)]


def make_model_dir(d, patch=16, pooling=3):
    """A tiny multimodal model whose vision tower takes the processor's patches (the published processor
    config, with this patch size and pooling kernel)."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    cfg = json.load(open(os.path.join(TEST_DATA, "hf-gemma4-mm", "tiny-mm-e", "config.json")))
    # position_embedding_size 8192: a 1x4000 image at 1120 tokens is 1120 k patches wide.
    cfg["vision_config"].update(patch_size=patch, pooling_kernel_size=pooling, position_embedding_size=8192,
                                num_hidden_layers=1)
    cfg["audio_config"]["num_hidden_layers"] = 1
    torch.manual_seed(0)
    model = Gemma4ForConditionalGeneration(Gemma4Config(**cfg)).eval()
    model.save_pretrained(d, safe_serialization=True)
    proc = json.load(open(os.path.join(TEST_DATA, "hf-gemma4-mm", "processor", "processor_config.json")))
    for k in ("image_processor", "video_processor"):
        proc[k].update(patch_size=patch, pooling_kernel_size=pooling)
    json.dump(proc, open(os.path.join(d, "processor_config.json"), "w"), indent=1)
    tok = json.load(open(os.path.join(TEST_DATA, "tokenizers", "plain.json")))
    for i, content in MEDIA_TOKENS.items():
        tok["added_tokens"].append(dict(id=i, content=content, single_word=False, lstrip=False, rstrip=False,
                                        normalized=False, special=True))
    json.dump(tok, open(os.path.join(d, "tokenizer.json"), "w"))
    return proc


# ---------------------------------------------------------------------------------------------- images

def draw_size(r):
    kind = r.random()
    if kind < 0.15:  # tiny
        return r.randint(1, 8), r.randint(1, 8)
    if kind < 0.35:  # thin: 1x4000, 3000x2 and the like
        long, short = r.randint(200, 4000), r.randint(1, 4)
        return (short, long) if r.random() < 0.5 else (long, short)
    if kind < 0.45:  # large
        return r.randint(1500, 3000), r.randint(1500, 3000)
    return r.randint(9, 700), r.randint(9, 700)


def draw_image(r, path_base):
    """A random image file (PNG or JPEG, of a random mode) and its extension."""
    h, w = draw_size(r)
    g = np.random.default_rng(r.randrange(1 << 30))
    # Smooth gradients plus noise: resampling sees both edges and flat regions.
    yy, xx = np.mgrid[0:h, 0:w]
    base = (128 + 100 * np.sin(xx / max(1, w) * r.uniform(1, 20)) * np.cos(yy / max(1, h) * r.uniform(1, 20)))
    mode = r.choice(["L", "LA", "RGB", "RGBA", "P", "I;16", "JPEG-L", "JPEG-RGB"])
    noise = lambda *s: g.integers(-40, 41, size=(h, w) + s)
    rgb = np.clip(base[..., None] + noise(3), 0, 255).astype(np.uint8)
    if mode == "L":
        img = Image.fromarray(rgb[..., 0], "L")
    elif mode == "LA":
        img = Image.fromarray(np.dstack([rgb[..., 0], g.integers(0, 256, (h, w))]).astype(np.uint8), "LA")
    elif mode in ("RGB", "JPEG-RGB"):
        img = Image.fromarray(rgb, "RGB")
    elif mode == "RGBA":
        img = Image.fromarray(np.dstack([rgb, g.integers(0, 256, (h, w))]).astype(np.uint8), "RGBA")
    elif mode == "P":
        img = Image.fromarray(rgb, "RGB").quantize(colors=r.choice([2, 16, 256]))
    elif mode == "I;16":  # 16-bit grey: Pillow's convert("RGB") clips at 255
        img = Image.fromarray(g.integers(0, r.choice([256, 1024, 65536]), (h, w)).astype(np.uint16))
    else:
        img = Image.fromarray(rgb[..., 0], "L")
    if mode.startswith("JPEG"):
        path = path_base + ".jpg"
        img.save(path, quality=r.choice([50, 75, 90, 95, 100]), subsampling=r.choice([0, 1, 2]))
    else:
        path = path_base + ".png"
        img.save(path)
    return path, f"{mode} {h}x{w}"


def hf_images(paths, budget, patch, pooling):
    from transformers import Gemma4ImageProcessor
    from transformers.image_utils import load_image
    proc = Gemma4ImageProcessor(max_soft_tokens=budget, patch_size=patch, pooling_kernel_size=pooling)
    out = proc(images=[load_image(p) for p in paths], return_tensors="pt")
    ns = types.SimpleNamespace(boi_token="", image_token="x", eoi_token="")
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    counts = [len(Gemma4Processor.replace_image_token(ns, out, i)) for i in range(len(paths))]
    return out["pixel_values"], out["image_position_ids"], counts


# ---------------------------------------------------------------------------------------------- audio

AUDIO_FORMATS = [("pcm", 8), ("pcm", 16), ("pcm", 24), ("pcm", 32), ("float", 32), ("float", 64)]


def draw_length(r):
    if r.random() < 0.15:  # no valid frame: refused by g4 (G4_REFUSES), so rarer
        return r.choice([0, 1, r.randint(2, 159), 160])
    return r.choice([161, 320, 321, r.randint(162, 2000), 128 * r.randint(2, 100), 160 * r.randint(2, 200),
                     r.randint(2000, 40000), 480000, r.randint(480001, 500000)])


def write_wav(path, samples, bits, fmt, extensible, rate=16000):
    """A WAV file of `samples` ([n, channels] in [-1, 1)); returns the samples as soundfile would read them."""
    n, ch = samples.shape
    if fmt == "float":
        data = samples.astype("<f4" if bits == 32 else "<f8")
        back = data.astype(np.float64)
    elif bits == 8:
        data = np.clip(np.round(samples * 128 + 128), 0, 255).astype(np.uint8)
        back = (data.astype(np.float64) - 128) / 128
    else:
        q = np.clip(np.round(samples * 2.0 ** (bits - 1)), -2.0 ** (bits - 1), 2.0 ** (bits - 1) - 1).astype(np.int64)
        back = q / 2.0 ** (bits - 1)
        if bits == 24:
            u = (q & 0xFFFFFF).astype(np.uint32)
            data = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], -1).astype(np.uint8)
        else:
            data = q.astype("<i2" if bits == 16 else "<i4")
    payload = data.tobytes()
    tag = 3 if fmt == "float" else 1
    block = ch * bits // 8
    fmt_body = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, ch, rate, rate * block, block, bits)
    if extensible:
        guid = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt_body += struct.pack("<HHI", 22, bits, 0) + guid
    chunks = b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    if fmt == "float" and not extensible:
        chunks += b"fact" + struct.pack("<II", 4, n)
    chunks += b"data" + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks)
    return back.mean(axis=1) if ch > 1 else back[:, 0]  # librosa.to_mono: the mean over channels


def draw_clip(r, path):
    n, ch = draw_length(r), r.choice([1, 1, 2, 3])
    fmt, bits = r.choice(AUDIO_FORMATS)
    g = np.random.default_rng(r.randrange(1 << 30))
    t = np.arange(n) / 16000
    tone = 0.5 * np.sin(2 * np.pi * r.uniform(50, 7000) * t)[:, None] + 0.1 * g.standard_normal((n, ch))
    samples = np.clip(tone * r.choice([1.0, 0.01, 1.5]), -1, 1 - 2.0 ** -31)
    rate = 16000 if r.random() < 0.93 else r.choice([8000, 22050, 44100, 48000])
    wave = write_wav(path, samples, bits, fmt, r.random() < 0.3, rate)
    if rate != 16000:  # load_audio(sampling_rate=16000): librosa.load reads float32, then resamples
        wave = librosa_resample(wave.astype(np.float32), rate, 16000)
    return wave, rate, f"{n} samples x{ch} {fmt}{bits}" + (f" at {rate} Hz" if rate != 16000 else "")


def hf_audio(waves):
    from transformers import Gemma4AudioFeatureExtractor
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    fe = Gemma4AudioFeatureExtractor()
    out = fe([w.astype(np.float32) for w in waves], return_tensors="pt")
    ns = types.SimpleNamespace(boa_token="", audio_token="x", eoa_token="")
    counts = [len(Gemma4Processor.replace_audio_token(ns, out, i)) for i in range(len(waves))]
    return out["input_features"], out["input_features_mask"], counts


# ---------------------------------------------------------------------------------------------- video

def draw_video(r, d):
    T = r.randint(1, 40)
    h, w = r.choice([(r.randint(8, 120), r.randint(8, 120)), (r.randint(1, 4), r.randint(50, 400))])
    g = np.random.default_rng(r.randrange(1 << 30))
    frames = g.integers(0, 256, (T, h, w, 3)).astype(np.uint8)
    paths = []
    for i, f in enumerate(frames):
        paths.append(os.path.join(d, f"frame{i:03d}.png"))
        Image.fromarray(f).save(paths[-1])
    fps = r.choice([24.0, 30.0, 1.0, 0.3, 2.5, 60.0, 0.1])
    n = r.randint(1, T)
    return paths, frames, fps, n, f"{T} frames {h}x{w} at {fps} fps, {n} sampled"


def hf_video(frames, fps, n, budget, patch, pooling):
    from transformers import Gemma4VideoProcessor
    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
    vp = Gemma4VideoProcessor(max_soft_tokens=budget, patch_size=patch, pooling_kernel_size=pooling)
    out = vp(videos=[frames], video_metadata=[{"total_num_frames": len(frames), "fps": fps}], num_frames=n,
             do_sample_frames=True, return_metadata=True, return_tensors="pt",
             input_data_format="channels_last")  # frames of height 1 or 3 are ambiguous otherwise
    ns = types.SimpleNamespace(boi_token="<|image>", video_token="", eoi_token="<image|>")
    text = Gemma4Processor.replace_video_token(ns, out, 0)
    return out["pixel_values_videos"], out["video_position_ids"], out["num_soft_tokens_per_video"][0], text


# ---------------------------------------------------------------------------------------------- g4

def run_g4(g4, args):
    p = subprocess.run([g4] + args, capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def codes(x):
    return torch.round(x.double() * 255)


def compare_images(g4out, hf, problems):
    pv, pos, counts = hf
    ids = g4out["input_ids"][0]
    got = int((ids == 304).sum())
    if got != sum(counts):
        problems.append(f"image soft tokens: g4 {got}, transformers {counts}")
    compare_pixels(g4out, "pixel_values", "image_position_ids", pv, pos, problems)


def compare_pixels(g4out, name, pos_name, pv, pos, problems):
    """g4's processed pixels `name` and positions `pos_name` against transformers': the same shape and
    positions, the same pixel codes, the same floats. False when the shapes differ (nothing else compares)."""
    gpv, gpos = g4out[name], g4out[pos_name]
    if tuple(gpv.shape) != tuple(pv.shape):
        problems.append(f"{name} shape: g4 {tuple(gpv.shape)}, transformers {tuple(pv.shape)}")
        return False
    if not torch.equal(gpos.long(), pos.long()):
        problems.append(f"{pos_name} differ")
    dc = (codes(gpv) - codes(pv)).abs()
    if dc.max() > 0:
        problems.append(f"{name}: {int((dc > 0).sum())} codes differ, by up to {int(dc.max())}")
    elif not torch.equal(gpv, pv.float()):
        problems.append(f"{name}: same codes, floats differ by {(gpv - pv).abs().max().item():.2e}")
    return True


def mel_bin_top_hz():
    """The highest frequency (Hz) each of the extractor's 128 mel filters reaches (0 for the lowest ones, narrower
    than an FFT bin, which are zero)."""
    from transformers import Gemma4AudioFeatureExtractor
    fb = Gemma4AudioFeatureExtractor().mel_filters  # [257, 128]
    return np.array([np.nonzero(fb[:, m] > 0)[0].max(initial=0) * 16000 / 512 for m in range(fb.shape[1])])


def compare_audio(g4out, hf, problems):
    f, m, counts, rates = hf
    got = int((g4out["input_ids"][0] == 305).sum())
    if got != sum(counts):
        problems.append(f"audio soft tokens: g4 {got}, transformers {counts}")
    gf, gm = g4out["input_features"], g4out["input_features_mask"]
    if tuple(gf.shape) != tuple(f.shape) or tuple(gm.shape) != tuple(m.shape):
        problems.append(f"input_features shape: g4 {tuple(gf.shape)} / {tuple(gm.shape)}, "
                        f"transformers {tuple(f.shape)} / {tuple(m.shape)}")
        return
    if not torch.equal(gm.bool(), m.bool()):
        problems.append(f"input_features_mask: {int((gm.bool() != m.bool()).sum())} frames differ")
    if not f.numel():
        return
    err = (gf.double() - f.double()).abs()
    top = torch.from_numpy(mel_bin_top_hz())
    for i, rate in enumerate(rates):
        e = err[i]
        if rate == 16000:
            if e.max().item() > 1e-4:
                problems.append(f"input_features of clip {i}: max error {e.max().item():.3e} (tolerance 1e-4)")
            continue
        pass_band = top <= 0.91374 * min(rate, 16000) / 2
        kept = e[1:, pass_band].max().item() if e.shape[0] > 1 and pass_band.any() else 0.0
        if kept > 2e-3:
            problems.append(f"input_features of clip {i} (resampled from {rate} Hz): max error {kept:.3e} in the "
                            f"pass-band mel bins after frame 0 (tolerance 2e-3)")
        if e.max().item() > 0.5:
            problems.append(f"input_features of clip {i} (resampled from {rate} Hz): max error {e.max().item():.3e} "
                            f"(tolerance 0.5 in the transition band and frame 0)")


def compare_video(g4out, hf, g4text, problems):
    pv, pos, per_frame, text = hf
    if not compare_pixels(g4out, "pixel_values_videos", "video_position_ids", pv, pos, problems):
        return
    got = int((g4out["input_ids"][0] == 306).sum())
    if got != per_frame * pv.shape[1]:
        problems.append(f"video soft tokens: g4 {got}, transformers {per_frame} x {pv.shape[1]} frames")
    CHECKED["video text"] += g4text is not None
    if g4text is not None and g4text != text:
        problems.append(f"video text: g4 {g4text!r}, transformers {text!r}")


# Disagreements that are decisions, not defects: a substring of the refusing side's error -> why. Anything else
# one side refuses and the other accepts is a failure.
G4_REFUSES = {  # substring of g4's error -> (the medium, why)
    "audio clip": ("audio", "a clip of at most 160 samples gives transformers no valid frame and an empty "
                            "<|audio><audio|>; g4 refuses it, naming the clip"),
    "too short for one 20 ms frame": ("audio", "a batch whose longest clip is under 129 samples gives transformers "
                                               "0 frames (input_features [n, 0, 128]); g4 refuses it"),
}
HF_REFUSES = {
    "permute(sparse_coo)": "transformers' video processor fails on a video of one sampled frame (the frames reach "
                           "its channels-last permute with 3 dimensions); g4 takes it as a one-frame video",
}


KNOWN = []  # the known disagreements met (printed at the end)
CHECKED = {"video text": 0}


def trial(r, d, models, g4, what):
    problems, parts, args = [], [], {}  # args: the g4 options of each medium
    patch, pooling = r.choice(GEOMETRIES)
    model = models(patch, pooling)
    budget = r.choice(BUDGETS)
    hf = {}
    if "image" in what and r.random() < 0.8:
        paths = []
        for i in range(r.randint(1, 3)):
            p, desc = draw_image(r, os.path.join(d, f"image{i}"))
            paths.append(p)
            parts.append(desc)
        try:
            hf["image"] = hf_images(paths, budget, patch, pooling)
        except Exception as e:
            hf["image"] = e
        args["image"] = [x for p in paths for x in ("--image", p)]
    if "audio" in what and r.random() < 0.6:
        waves, rates = [], []
        for i in range(r.randint(1, 3)):
            w, rate, desc = draw_clip(r, os.path.join(d, f"clip{i}.wav"))
            waves.append(w)
            rates.append(rate)
            parts.append(desc)
            args.setdefault("audio", []).extend(["--audio", os.path.join(d, f"clip{i}.wav")])
        try:
            hf["audio"] = hf_audio(waves) + (rates,)
        except Exception as e:
            hf["audio"] = e
    if "video" in what and (r.random() < 0.4 or not args):
        paths, frames, fps, n, desc = draw_video(r, d)
        parts.append(desc)
        # g4 runs the frames through the tiny tower (attention over every frame's patches): large budgets only
        # with few frames, or a trial takes minutes.
        vbudget = r.choice(BUDGETS) if n <= 4 else r.choice(BUDGETS[:2])
        try:
            hf["video"] = hf_video(frames, fps, n, vbudget, patch, pooling)
        except Exception as e:
            hf["video"] = e
        # g4's video budget is the processor config's: a per-trial config in a copy of the model directory.
        vmodel = os.path.join(d, "model")
        os.makedirs(vmodel)
        for f in os.listdir(model):
            os.symlink(os.path.join(model, f), os.path.join(vmodel, f))
        os.remove(os.path.join(vmodel, "processor_config.json"))
        proc = json.load(open(os.path.join(model, "processor_config.json")))
        proc["video_processor"]["max_soft_tokens"] = vbudget
        json.dump(proc, open(os.path.join(vmodel, "processor_config.json"), "w"))
        model = vmodel
        args["video"] = ["--video", ",".join(paths), "--video-fps", repr(fps), "--video-frames", str(n)]
        parts[-1] += f" at {vbudget} tokens"
    summary = f"patch {patch} pooling {pooling} budget {budget}: " + "; ".join(parts)
    out = os.path.join(d, "g4.safetensors")
    notes = []
    # A medium with a known disagreement is set aside and the rest run again, so it hides nothing else.
    while args:
        rc, log = run_g4(g4, ["forward", model, "--prompt", "", "--max-soft-tokens", str(budget), "--out", out,
                              "--overwrite"] + [x for k in args for x in args[k]])
        refused = [k for k, v in hf.items() if isinstance(v, Exception)]
        if rc:
            said = log.strip().splitlines()[-1][:300]
            known = [(medium, why) for key, (medium, why) in G4_REFUSES.items() if key in said]
            if refused and (not known or known[0][0] in refused):
                notes.append(f"both refuse ({', '.join(refused)}): g4 says {said}")
                return problems, summary, "; ".join(notes)
            if not known:
                problems.append(f"g4 refuses what transformers accepts: {said}")
                return problems, summary, None
            KNOWN.append(known[0][1])
            notes.append(f"g4 refuses the {known[0][0]} by design: {said}")
            del args[known[0][0]], hf[known[0][0]]
            continue
        if refused:
            for k in refused:
                known = [why for key, why in HF_REFUSES.items() if key in str(hf[k])]
                if not known:
                    problems.append(f"transformers refuses the {k} ({type(hf[k]).__name__}: {str(hf[k])[:200]}), "
                                    f"g4 accepts")
                    return problems, summary, None
                KNOWN.append(known[0])
                notes.append(f"transformers refuses the {k} by accident")
                del args[k], hf[k]
            continue
        ours = load_file(out)
        if "image" in hf:
            compare_images(ours, hf["image"], problems)
        if "audio" in hf:
            compare_audio(ours, hf["audio"], problems)
        if "video" in hf:
            compare_video(ours, hf["video"], video_text(ours, model), problems)
        break
    return problems, summary, "; ".join(notes) or None


def video_text(ours, model):
    """g4's video text: its tokens from the first <|image> of a frame to the last <image|>, soft tokens dropped
    (transformers' replace_video_token output, with its <|video|> tokens dropped the same way)."""
    ids = ours["input_ids"][0].tolist()
    types_ = ours["mm_token_type_ids"][0].tolist()
    vid = [i for i, t in enumerate(types_) if t == 2]
    if not vid:
        return None
    tok = json.load(open(os.path.join(model, "tokenizer.json")))
    vocab = {i: s for s, i in tok["model"]["vocab"].items()}
    vocab.update({t["id"]: t["content"] for t in tok["added_tokens"]})
    # The text runs from the first frame's timestamp: back from the first video token to the token after the
    # last image/audio end (or the start).
    first_boi = vid[0] - 1
    start = first_boi
    while start > 0 and ids[start - 1] not in (301, 303, 2) and types_[start - 1] == 0:
        start -= 1
    end = vid[-1] + 1  # the last <image|>
    text = "".join(vocab[i] for i in ids[start:end + 1] if i != 306)
    return text.replace("\u2581", " ").strip()


def main():
    ap = trial_parser(__doc__, "/tmp/g4_probe_mm_failures")
    ap.add_argument("--only", default="image,audio,video")
    a = ap.parse_args()
    g4 = os.path.abspath(a.g4)
    what = set(a.only.split(","))
    made = {}

    def models(patch, pooling):  # one model directory per geometry, made when first drawn
        if (patch, pooling) not in made:
            made[patch, pooling] = tempfile.mkdtemp(prefix="g4_probe_mm_model_")
            make_model_dir(made[patch, pooling], patch, pooling)
        return made[patch, pooling]

    def one(t, d, info):
        problems, summary, note = trial(random.Random(a.seed * 100003 + t), d, models, g4, what)
        info["summary"] = summary + (f" [{note}]" if note else "")
        return problems

    failures = run_trials(a.trials, a.seed, a.keep, one, a.only_trial)
    for m in made.values():
        shutil.rmtree(m)
    print(f"video timestamp texts compared: {CHECKED['video text']}")
    for why in sorted(set(KNOWN)):
        print(f"known disagreement, {KNOWN.count(why)} trial(s): {why}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
