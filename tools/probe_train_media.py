#!/usr/bin/env python3
"""Attacks `g4 train` on its two paths with inputs of their own, on the CPU: multimodal SFT (images and audio in the
JSONL rows, the vision and audio towers) and block-diffusion training (the `dllm` objective).

Usage: python3 tools/probe_train_media.py [--g4 build-cpu/g4] [--only NAME] [--list] [--work DIR] [--seed S]
                                          [--kills N] [--sections media,mmrecipe,dllm,interrupt]

Every case runs the real binary and states what it expects: an exit status, an error naming the file, line, key or
shape at fault, or metrics equal to an uninterrupted run's. A case that crashes (a signal, an abort), prints a
library's exception text, runs out of memory, trains on something other than it was given without saying so, loses
a checkpoint or a metrics line, or resumes to other losses is a DEFECT. The script prints one PASS/DEFECT line per
case, then the table of defects, and exits non-zero when there is any.

- media: odd files in the rows (missing, directories, empty, truncated or corrupt PNG/JPEG/WAV, 1x1 and huge
  declared sizes, every PNG colour type, CMYK JPEG, WAVs of 0 and 1 samples, stereo, 8-bit, float, rates of 0 and
  10 MHz, long clips), placeholders written in the text, relative paths, URLs, mistyped paths, unknown keys, rows
  longer than data.seq_len. On tiny-mm-e (vision and audio towers, tests/data/hf-gemma4-mm) with the example's
  tokenizer (recipes/multimodal/data). The media files are written here in pure Python (PNG through zlib, WAV
  through struct); the JPEG cases need Pillow and are skipped, saying so, without it.
- mmrecipe: the media keys mistyped and out of range, media for models without towers.
- dllm: the diffusion keys out of range, a diffusion objective on an autoregressive checkpoint and the reverse, the
  adaptation (`g4 convert --to-diffusion`) of a tiny MoE trained here for one step, data shorter than one example.
- interrupt: both paths killed at fixed points (after a step, halfway through a checkpoint) and by SIGINT / SIGTERM
  / SIGKILL at seeded random moments (--kills each), resumed with --resume: complete checkpoints whole, and the
  losses (the diffusion terms too: the corruption draws and self-conditioning coins are seeded by the step) equal to
  the uninterrupted run's bit for bit; a multimodal run without the media cache equals one with it.
"""
import io, json, os, shutil, struct, zlib

from probe_commands import (ROOT, Cases, curve, expect_error, expect_success, interrupted_run_problems, metric_lines,
                            nest, record)
from probe_train import write_recipe as sft_recipe

CASES = Cases()
case = CASES.add
MM_MODEL = os.path.join(ROOT, "tests/data/hf-gemma4-mm/tiny-mm-e")
MM_TOKENIZER = os.path.join(ROOT, "recipes/multimodal/data/tokenizer.json")
KJV_TOKENIZER = os.path.join(ROOT, "recipes/data/kjv-tokenizer")
CHAT_TOKENIZER = os.path.join(ROOT, "recipes/data/kjv-chat-tokenizer")  # the same 2048 tokens, with <|turn>
GENESIS = os.path.join(ROOT, "tests/data/text/genesis.txt")
MM_CURVE = ("loss", "validation_loss", "lr", "grad_norm")
DLLM_CURVE = MM_CURVE + ("diffusion_loss", "ar_loss")


def write_json(path, r):
    with open(path, "w") as f:
        json.dump(r, f, indent=1)  # JSON is YAML
    return path


def mm_recipe(path, run_dir, data, **over):
    """One step of tiny-mm-e over `data` (a chat JSONL), one row per step, no validation."""
    r = {"model": {"path": MM_MODEL}, "tokenizer": MM_TOKENIZER,
         "data": {"train": [data], "format": "chat", "seq_len": 256, "max_soft_tokens": 70, "validation_fraction": 0},
         "optimizer": {"lr": 3e-3, "weight_decay": 0.0}, "schedule": {"kind": "constant"},
         "train": {"steps": 1, "batch_size": 1}, "checkpoint": {"dir": run_dir, "every": 0, "keep": 2},
         "log": {"validation_every": 0, "samples": 0}}
    for k, v in over.items():
        nest(r, k, v)
    return write_json(path, r)


def dllm_recipe(path, run_dir, model, **over):
    """Two block-diffusion steps of `model` on Genesis: examples of 12 prompt and 12 continuation tokens."""
    r = {"model": {"path": model}, "tokenizer": KJV_TOKENIZER,
         "data": {"train": [GENESIS], "seq_len": 32, "prompt_tokens": 12, "continuation_tokens": 12,
                  "validation_fraction": 0.2},
         "dllm": {"mode": "block_diffusion"},
         "optimizer": {"lr": 3e-3, "weight_decay": 0.01}, "schedule": {"kind": "cosine", "warmup_steps": 1},
         "train": {"steps": 2, "batch_size": 2}, "checkpoint": {"dir": run_dir, "every": 0, "keep": 2},
         "log": {"validation_every": 0, "validation_batches": 1}}
    for k, v in over.items():
        nest(r, k, v)
    return write_json(path, r)


# ------------------------------------------------------------------------------------------------- media files

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(w, h, color_type=2, depth=8, raw=None, magic=PNG_MAGIC):
    """A PNG of a deterministic pattern (or of the filtered scanlines `raw`); color types 0 grey, 2 RGB, 3 palette,
    4 grey + alpha, 6 RGBA."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    row = (w * channels * depth + 7) // 8
    if raw is None:
        raw = b"".join(b"\0" + bytes((x * 7 + y * 13) % 256 for x in range(row)) for y in range(h))
    chunks = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0))
    if color_type == 3:
        chunks += png_chunk(b"PLTE", bytes(range(256)) * 3)
    return magic + chunks + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")


def wav(n, rate=16000, channels=1, bits=16, fmt=1, declared=None):
    """A WAV of n frames of a 440 Hz tone; fmt 1 PCM, 3 IEEE float; `declared` overrides the data chunk's size."""
    import math
    v = [math.sin(2 * math.pi * 440 * i / max(rate, 1)) * 0.5 for i in range(n) for _ in range(channels)]
    if fmt == 3:
        data = struct.pack(f"<{len(v)}{'f' if bits == 32 else 'd'}", *v)
    elif bits == 8:
        data = bytes(int(128 + 127 * x) for x in v)
    elif bits == 16:
        data = struct.pack(f"<{len(v)}h", *(int(32767 * x) for x in v))
    else:
        data = b"".join(int(x * (2 ** (bits - 1) - 1)).to_bytes(bits // 8, "little", signed=True) for x in v)
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, rate * block, block, bits)
    size = len(data) if declared is None else declared
    return (b"RIFF" + struct.pack("<I", 4 + 8 + 16 + 8 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) +
            fmt_chunk + b"data" + struct.pack("<I", size) + data)


def pillow():
    try:
        from PIL import Image
        return Image
    except ImportError:
        return None


def jpeg(w, h, mode="RGB", **save):
    Image = pillow()
    channels = {"RGB": 3, "L": 1, "CMYK": 4}[mode]
    img = Image.frombytes(mode, (w, h), bytes((i * 7 + i // 97) % 256 for i in range(w * h * channels)))
    out = io.BytesIO()
    img.save(out, "JPEG", quality=90, **save)
    return out.getvalue()


def jpeg_with_size(data, w, h):
    """The JPEG with its frame header (SOF0/SOF2) declaring w x h."""
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = data.find(marker)
        if at >= 0:
            return data[:at + 5] + struct.pack(">HH", h, w) + data[at + 9:]
    raise ValueError("no SOF marker")


def conversation(*parts, reply="Mostly white."):
    """A chat row: one user turn with `parts` (strings are text parts), one reply."""
    content = [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]
    return {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": reply}]}


def image(path):
    return {"type": "image", "path": path}


def audio(path):
    return {"type": "audio", "path": path}


class Ctx:
    def __init__(self, g4, work, a):
        self.g4, self.work, self.rng, self.kills = g4, work, a.rng, a.kills
        self.n = 0

    def dir(self, name):
        """A fresh directory for one case."""
        self.n += 1
        d = os.path.join(self.work, f"{self.n:03d}-" + "".join(c if c.isalnum() else "-" for c in name)[:40])
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def media_run(self, name, files, rows, *over, **recipe_over):
        """Writes `files` ({name: bytes, or None for a directory}) and `rows` (rows.jsonl) into a fresh directory;
        returns the arguments of a one-step run on them and that directory."""
        d = self.dir(name)
        for f, data in files.items():
            p = os.path.join(d, f)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            if data is None:
                os.makedirs(p, exist_ok=True)
            else:
                open(p, "wb").write(data)
        with open(os.path.join(d, "rows.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        recipe = mm_recipe(os.path.join(d, "recipe.yaml"), os.path.join(d, "run"), os.path.join(d, "rows.jsonl"),
                           **recipe_over)
        return ["train", recipe] + list(over), d


# ----------------------------------------------------------------------------------------------------------- media

def media_table():
    """(name, files, rows, wants: None = trains, else the strings the error must hold, overrides). Each file is
    used by the first row; errors must name the row (rows.jsonl:1) and the file."""
    small = png(20, 12)
    cut_png = small[:len(small) // 2]
    garbage_idat = PNG_MAGIC + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20, 12, 8, 2, 0, 0, 0)) + \
        png_chunk(b"IDAT", bytes(range(200))) + png_chunk(b"IEND", b"")
    short_idat = png(20, 12, raw=b"\0" * 61 * 3)  # 3 of 12 scanlines
    tone = wav(4000)
    err = ["rows.jsonl:1"]
    rows1 = lambda *parts: [conversation(*parts)]
    t = [
        ("missing image file", {}, rows1(image("gone.png"), "What?"), err + ["gone.png"], ()),
        ("directory as image", {"dir.png": None}, rows1(image("dir.png"), "What?"), err + ["dir.png", "directory"], ()),
        ("empty image file", {"empty.png": b""}, rows1(image("empty.png"), "What?"), err + ["empty.png"], ()),
        ("PNG cut mid-stream", {"cut.png": cut_png}, rows1(image("cut.png"), "What?"), err + ["cut.png"], ()),
        ("PNG with the wrong magic", {"magic.png": png(20, 12, magic=b"\x89PNX\r\n\x1a\n")},
         rows1(image("magic.png"), "What?"), err + ["magic.png"], ()),
        ("PNG: a valid header, garbage data", {"garbage.png": garbage_idat}, rows1(image("garbage.png"), "What?"),
         err + ["garbage.png"], ()),
        ("PNG: a valid header, too few scanlines", {"short.png": short_idat}, rows1(image("short.png"), "What?"),
         err + ["short.png"], ()),
        ("text file named .png", {"text.png": b"hello, not an image\n"}, rows1(image("text.png"), "What?"),
         err + ["text.png"], ()),
        ("1x1 image", {"one.png": png(1, 1)}, rows1(image("one.png"), "What?"), None, ()),
        ("1x20 image (one patch cell wide)", {"thin.png": png(1, 20)}, rows1(image("thin.png"), "What?"), None, ()),
        # tiny-mm-e's tower embeds 128 positions a side; 1x3000 resizes to 18 x 1260 pixels, 210 patches high.
        ("1x3000 image (more patches a side than the tower has positions)", {"thin.png": png(1, 3000)},
         rows1(image("thin.png"), "What?"), err + ["thin.png", "position_embedding_size 128"], ()),
        ("grey PNG", {"g.png": png(20, 12, 0)}, rows1(image("g.png"), "What?"), None, ()),
        ("grey+alpha PNG", {"ga.png": png(20, 12, 4)}, rows1(image("ga.png"), "What?"), None, ()),
        ("RGBA PNG", {"rgba.png": png(20, 12, 6)}, rows1(image("rgba.png"), "What?"), None, ()),
        ("palette PNG", {"p.png": png(20, 12, 3)}, rows1(image("p.png"), "What?"), None, ()),
        ("16-bit RGB PNG", {"rgb16.png": png(20, 12, 2, 16)}, rows1(image("rgb16.png"), "What?"), None, ()),
        ("16-bit grey PNG", {"g16.png": png(20, 12, 0, 16)}, rows1(image("g16.png"), "What?"), None, ()),
        ("1-bit grey PNG", {"g1.png": png(20, 12, 0, 1)}, rows1(image("g1.png"), "What?"), None, ()),
        ("PNG declaring 100000x100000 pixels", {"bomb.png": png(100000, 100000, 0, raw=b"\0" * 100)},
         rows1(image("bomb.png"), "What?"), err + ["bomb.png", "pixels"], ()),
        ("PNG declaring 2^31-1 x 1 pixels", {"wide.png": png(2 ** 31 - 1, 1, 0, raw=b"\0" * 100)},
         rows1(image("wide.png"), "What?"), err + ["wide.png"], ()),
        ("PNG declaring 0x0 pixels", {"zero.png": png(0, 0, raw=b"")}, rows1(image("zero.png"), "What?"),
         err + ["zero.png"], ()),
        ("a 16 M-pixel grey PNG (16 KB of zlib)", {"big.png": png(4000, 4000, 0,
                                                                              raw=b"\0" * 4001 * 4000)},
         rows1(image("big.png"), "What?"), None, ()),
        # audio
        ("missing audio file", {}, rows1(audio("gone.wav"), "What?"), err + ["gone.wav"], ()),
        ("directory as audio", {"dir.wav": None}, rows1(audio("dir.wav"), "What?"), err + ["dir.wav", "directory"],
         ()),
        ("empty WAV file", {"empty.wav": b""}, rows1(audio("empty.wav"), "What?"), err + ["empty.wav"], ()),
        ("WAV of 0 samples", {"zero.wav": wav(0)}, rows1(audio("zero.wav"), "What?"), err + ["zero.wav"], ()),
        ("WAV of 1 sample", {"one.wav": wav(1)}, rows1(audio("one.wav"), "What?"), err + ["one.wav"], ()),
        ("WAV of 161 samples (one valid frame)", {"f.wav": wav(161)}, rows1(audio("f.wav"), "What?"), None, ()),
        ("stereo WAV", {"st.wav": wav(4000, channels=2)}, rows1(audio("st.wav"), "What?"), None, ()),
        ("8-bit WAV", {"b8.wav": wav(4000, bits=8)}, rows1(audio("b8.wav"), "What?"), None, ()),
        ("24-bit WAV", {"b24.wav": wav(4000, bits=24)}, rows1(audio("b24.wav"), "What?"), None, ()),
        ("float32 WAV", {"f32.wav": wav(4000, bits=32, fmt=3)}, rows1(audio("f32.wav"), "What?"), None, ()),
        ("float64 WAV", {"f64.wav": wav(4000, bits=64, fmt=3)}, rows1(audio("f64.wav"), "What?"), None, ()),
        # the header is 44 bytes: sample 100 of a mono float32 file starts at byte 444
        ("float WAV with a NaN sample", {"nan.wav": (lambda b: b[:444] + struct.pack("<f", float("nan")) + b[448:])(
            wav(4000, bits=32, fmt=3))}, rows1(audio("nan.wav"), "What?"), err + ["nan.wav", "sample 100", "NaN"], ()),
        ("WAV at 44.1 kHz (resampled)", {"cd.wav": wav(11025, rate=44100)}, rows1(audio("cd.wav"), "What?"), None,
         ()),
        ("WAV at a sample rate of 0", {"r0.wav": wav(4000, rate=0)}, rows1(audio("r0.wav"), "What?"),
         err + ["r0.wav", "rate"], ()),
        ("WAV at 10 MHz", {"r10m.wav": wav(4000, rate=10_000_000)}, rows1(audio("r10m.wav"), "What?"),
         err + ["r10m.wav", "10000000"], ()),
        ("WAV of 12-bit samples", {"b12.wav": wav(10, bits=16)[:34] + struct.pack("<H", 12) + wav(10)[36:]},
         rows1(audio("b12.wav"), "What?"), err + ["b12.wav"], ()),
        ("WAV of 0 channels", {"c0.wav": wav(10)[:22] + struct.pack("<H", 0) + wav(10)[24:]},
         rows1(audio("c0.wav"), "What?"), err + ["c0.wav"], ()),
        ("WAV with the wrong magic", {"magic.wav": b"RIFX" + tone[4:]}, rows1(audio("magic.wav"), "What?"),
         err + ["magic.wav"], ()),
        ("WAV cut mid-stream (data chunk longer than the file)", {"cut.wav": tone[:len(tone) // 2 + 1]},
         rows1(audio("cut.wav"), "What?"), None, ()),
        ("WAV declaring 4 GiB of data", {"huge.wav": wav(4000, declared=0xFFFFFFFF)},
         rows1(audio("huge.wav"), "What?"), None, ()),
        ("WAV cut inside its header", {"head.wav": tone[:30]}, rows1(audio("head.wav"), "What?"),
         err + ["head.wav"], ()),
        ("an image file given as audio", {"img.wav": small}, rows1(audio("img.wav"), "What?"), err + ["img.wav"], ()),
        ("a WAV given as an image", {"snd.png": tone}, rows1(image("snd.png"), "What?"), err + ["snd.png"], ()),
        ("60 s of audio (750 soft tokens, the extractor's 30 s cap), seq_len 1024",
         {"long.wav": wav(60 * 16000)}, rows1(audio("long.wav"), "What?"), None, ("data.seq_len=1024",)),
        ("60 s of audio in a 256-token row: refused, never cut", {"long.wav": wav(60 * 16000)},
         rows1(audio("long.wav"), "What?"), err + ["longer than"], ()),
        # placeholders and rows
        ("an image placeholder written in the text, one image", {"a.png": small},
         rows1(image("a.png"), "Look <|image|> here"), err + ["2 image placeholder(s)", "1 image(s)"], ()),
        ("an image placeholder written in the text, no image", {}, rows1("Look <|image|> here"),
         err + ["<|image|>"], ()),
        ("an audio placeholder written in the text, no clip", {}, rows1("Hear <|audio|> this"),
         err + ["<|audio|>"], ()),
        ("an image placeholder in a string content", {}, [{"messages": [
            {"role": "user", "content": "Look <|image|> here"}, {"role": "assistant", "content": "Yes."}]}],
         err + ["<|image|>"], ()),
        ("an image placeholder in the reply", {"a.png": small}, [{"messages": [
            {"role": "user", "content": [image("a.png"), {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": "This: <|image|>"}]}], err + ["image placeholder"], ()),
        ("an image boundary token <|image> written in the text", {}, rows1("Look <|image> here"),
         err + ["<|image>"], ()),
        ("image in the system message", {"a.png": small}, [{"messages": [
            {"role": "system", "content": [image("a.png")]}, {"role": "user", "content": "What?"},
            {"role": "assistant", "content": "Yes."}]}], err + ["system"], ()),
        ("image in the reply", {"a.png": small}, [{"messages": [
            {"role": "user", "content": "Draw."},
            {"role": "assistant", "content": [image("a.png"), {"type": "text", "text": "Here."}]}]}], None, ()),
        ("two images and a clip in one turn", {"a.png": small, "b.png": png(30, 30, 6), "t.wav": tone},
         rows1(image("a.png"), audio("t.wav"), image("b.png"), "Compare."), None, ()),
        ("the same image twice", {"a.png": small}, rows1(image("a.png"), image("a.png"), "Same?"), None, ()),
        ("an image of 70 soft tokens in a 64-token row (split)", {"a.png": png(200, 200)},
         rows1(image("a.png"), "What?"), err + ["longer than"], ("data.seq_len=64", "data.overlong=split")),
        ("an image of 70 soft tokens in a 64-token row (truncate)", {"a.png": png(200, 200)},
         rows1(image("a.png"), "What?"), err + ["longer than"], ("data.seq_len=64", "data.overlong=truncate")),
        ("path relative to the JSONL's folder", {"sub/a.png": small}, rows1(image("sub/a.png"), "What?"), None, ()),
        ("absolute path", {"a.png": small}, None, None, ()),  # rows filled in below
        ("a URL instead of a path", {}, rows1(image("https://example.com/cat.png"), "What?"),
         err + ["https://example.com/cat.png"], ()),
        ("a data: URI instead of a path", {}, rows1(image("data:image/png;base64,iVBORw0KGgo="), "What?"),
         err + ["data:image/png"], ()),
        ("path is a number", {}, rows1({"type": "image", "path": 5}, "What?"), err + ["'path'"], ()),
        ("path is null", {}, rows1({"type": "image", "path": None}, "What?"), err + ["'path'"], ()),
        ("path is a list", {}, rows1({"type": "image", "path": ["a.png"]}, "What?"), err + ["'path'"], ()),
        ("path is empty", {}, rows1({"type": "image", "path": ""}, "What?"), err + ["'path'"], ()),
        ("part without a path (transformers' 'image' key)", {"a.png": small},
         rows1({"type": "image", "image": "a.png"}, "What?"), err + ["'path'"], ()),
        ("part with 'url' (transformers' key)", {"a.png": small},
         rows1({"type": "image", "url": "a.png"}, "What?"), err + ["'path'"], ()),
        ("image_url part (OpenAI)", {}, rows1({"type": "image_url", "image_url": {"url": "a.png"}}, "What?"),
         err + ["image_url"], ()),
        ("part type missing", {}, rows1({"path": "a.png"}, "What?"), err + ["'type'"], ()),
        ("part type is a number", {}, rows1({"type": 3, "path": "a.png"}, "What?"), err + ["'type'"], ()),
        ("a part that is a string", {}, [{"messages": [
            {"role": "user", "content": ["a.png"]}, {"role": "assistant", "content": "Yes."}]}], err + ["part"], ()),
        ("unknown key in an image part", {"a.png": small}, rows1({"type": "image", "path": "a.png", "detial": "high"},
                                                                 "What?"), err + ["detial"], ()),
        ("unknown key in a text part", {}, rows1({"type": "text", "text": "What?", "path": "a.png"}),
         err + ["'path'"], ()),
        ("row-level 'images' list (TRL's format) beside text-only messages", {"a.png": small},
         [dict(conversation("What?"), images=["a.png"])], err + ["images"], ()),
    ]
    return t


def media_case(name, files, rows, wants, over):
    def fn(ctx):
        r = rows
        if name == "absolute path":
            d = ctx.dir("abs-src")
            src = os.path.join(d, "a.png")
            open(src, "wb").write(files.pop("a.png"))
            r = [conversation(image(src), "What?")]
        args, d = ctx.media_run(name, files, r, *over)
        if wants is None:
            expect_success("media", name + ": trains", ctx.g4, args)
        else:
            expect_error("media", name, ctx.g4, args, wants)
    return fn


def register_media():
    jpegs = []
    if pillow():
        j = jpeg(40, 24)
        big = jpeg(200, 120)
        scan = big.find(b"\xff\xda") + 14  # the scan's entropy-coded data starts here (3 components)
        noise = bytes((i * 7919 + 13) % 255 for i in range(3000))  # no 0xFF: no marker inside
        jpegs = [
            ("JPEG: trains", {"a.jpg": j}, None),
            ("grey JPEG", {"g.jpg": jpeg(40, 24, "L")}, None),
            ("CMYK JPEG (Adobe)", {"c.jpg": jpeg(40, 24, "CMYK")}, None),
            ("progressive JPEG", {"p.jpg": jpeg(40, 24, progressive=True)}, None),
            ("JPEG cut mid-stream", {"cut.jpg": j[:len(j) // 2]}, ["rows.jsonl:1", "cut.jpg"]),
            ("JPEG cut after its header", {"head.jpg": j[:j.find(b"\xff\xda") + 4]}, ["rows.jsonl:1", "head.jpg"]),
            ("JPEG: a valid header, garbage data", {"garbage.jpg": big[:scan] + noise + b"\xff\xd9"},
             ["rows.jsonl:1", "garbage.jpg", "corrupt"]),
            ("JPEG: a valid header, its data zeroed and cut short before the end marker",
             {"zeros.jpg": big[:scan] + b"\0" * 100 + b"\xff\xd9"}, ["rows.jsonl:1", "zeros.jpg", "corrupt"]),
            ("JPEG with the wrong magic", {"magic.jpg": b"\xff\xd9" + j[2:]}, ["rows.jsonl:1", "magic.jpg"]),
            ("JPEG declaring 60000x60000 pixels", {"bomb.jpg": jpeg_with_size(j, 60000, 60000)},
             ["rows.jsonl:1", "bomb.jpg", "pixels"]),
        ]
    else:
        CASES.add("media", "JPEG cases")(lambda ctx: record("media", "JPEG cases", True, "skipped: no Pillow"))
    for name, files, wants in jpegs:
        f = next(iter(files))
        CASES.add("media", name)(media_case(name, files, [conversation(image(f), "What?")], wants, ()))
    for name, files, rows, wants, over in media_table():
        CASES.add("media", name)(media_case(name, dict(files), rows, wants, over))


register_media()


@case("media", "a bomb is refused in bounded memory")
def _(ctx):
    # A PNG declaring 8192 x 8192 (2^26 pixels, at the limit) with 100 bytes of data: refused as truncated without
    # holding much more than the rows it has; and the 100000^2 one before anything is allocated.
    for name, data in [("limit.png", png(8192, 8192, 0, raw=b"\0" * 100)),
                       ("over.png", png(100000, 100000, 0, raw=b"\0" * 100))]:
        args, d = ctx.media_run("bomb-" + name, {name: data}, [conversation(image(name), "What?")])
        rc, out, mib = ctx.g4.run_measured(args)
        ok = rc == 1 and name in out and mib < 1024
        record("media", f"{name}: refused, peak memory {mib:.0f} MiB", ok, "" if ok else f"rc {rc}: {out[-500:]}")


@case("media", "path relative to the working directory (documented: relative to the JSONL)")
def _(ctx):
    d = ctx.dir("cwd-relative")
    os.makedirs(os.path.join(d, "data"))
    open(os.path.join(d, "cwd.png"), "wb").write(png(20, 12))
    rows = os.path.join(d, "data", "rows.jsonl")
    with open(rows, "w") as f:
        f.write(json.dumps(conversation(image("cwd.png"), "What?")) + "\n")
    recipe = mm_recipe(os.path.join(d, "recipe.yaml"), os.path.join(d, "run"), "data/rows.jsonl")
    expect_error("media", "path relative to the working directory", ctx.g4, ["train", recipe],
                 ["data/rows.jsonl:1", "cwd.png", "data file's folder"], cwd=d)


# --------------------------------------------------------------------------------------------------------- mmrecipe

MM_RECIPE_ERRORS = [
    (["data.max_soft_token=70"], ["unknown recipe key 'data.max_soft_token'"]),
    (["data.max_soft_tokens=71"], ["max_soft_tokens", "71"]),
    (["data.max_soft_tokens=-70"], ["max_soft_tokens"]),
    (["data.max_soft_tokens=many"], ["'data.max_soft_tokens' has the wrong type"]),
    (["data.media_cache_mb=-1"], ["'data.media_cache_mb' must be >= 0"]),
    (["data.media_cache_mb=lots"], ["'data.media_cache_mb' has the wrong type"]),
    (["dllm.mode=block_diffusion"], ["diffusion"]),
    (["tokenizer=" + KJV_TOKENIZER], ["kjv-tokenizer", "vocabulary"]),
]


def mm_args(ctx, name, *over):
    return ctx.media_run(name, {"a.png": png(20, 12), "t.wav": wav(4000)},
                         [conversation(image("a.png"), audio("t.wav"), "What?")], *over)[0]


for _over, _wants in MM_RECIPE_ERRORS:
    def _fn(ctx, over=_over, wants=_wants):
        expect_error("mmrecipe", " ".join(over), ctx.g4, mm_args(ctx, " ".join(over), *over), wants)
    CASES.add("mmrecipe", " ".join(_over))(_fn)


@case("mmrecipe", "images for a text-only model")
def _(ctx):
    # The example's tokenizer over a text-only MoE of its vocabulary: no vision tower.
    cfg = {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_experts": 4, "moe_intermediate_size": 32, "head_dim": 16, "global_head_dim": 32, "sliding_window": 16}
    args = mm_args(ctx, "text-only")
    args[1] = write_json(args[1], dict(json.load(open(args[1])), model={"name": "tiny-moe", "config": cfg}))
    expect_error("mmrecipe", "images for a text-only model (tiny-moe)", ctx.g4, args, ["no image tower"])


@case("mmrecipe", "tower settings on a text-only run")
def _(ctx):
    d = ctx.dir("text-tower-keys")
    recipe = sft_recipe(os.path.join(d, "r.yaml"), os.path.join(d, "run"), **{"train.steps": 1,
                                                                                "log.validation_every": 0})
    expect_success("mmrecipe", "data.max_soft_tokens and data.media_cache_mb on text data: allowed", ctx.g4,
                   ["train", recipe, "data.max_soft_tokens=140", "data.media_cache_mb=0"])
    expect_error("mmrecipe", "a freeze pattern naming a tower the model lacks", ctx.g4,
                 ["train", recipe, "checkpoint.dir=" + os.path.join(d, "run2"), "train.freeze=[model.vision_tower.*]"],
                 ["model.vision_tower.*"])


@case("mmrecipe", "audio for a model without an audio tower")
def _(ctx):
    # tiny-mm-e's config without its audio_config: a vision-only Gemma 4.
    d = ctx.dir("no-audio-model")
    m = os.path.join(d, "model")
    os.makedirs(m)
    cfg = json.load(open(os.path.join(MM_MODEL, "config.json")))
    cfg.pop("audio_config")
    write_json(os.path.join(m, "config.json"), cfg)
    os.symlink(os.path.join(MM_MODEL, "model.safetensors"), os.path.join(m, "model.safetensors"))
    args = mm_args(ctx, "audio-no-tower", "model.path=" + m)
    rc, out = ctx.g4.run(args)
    ok = rc == 1 and "audio" in out and "Segmentation" not in out and "what()" not in out
    record("mmrecipe", "audio for a model without an audio tower", ok, out.splitlines()[-1][:300] if out else "")


# ------------------------------------------------------------------------------------------------------------ dllm

def models(ctx):
    """The tiny MoE trained one step (an AR checkpoint) and its block-diffusion adaptation (canvas 8), made once."""
    if getattr(ctx, "models", None) is None:
        d = os.path.join(ctx.work, "models")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        recipe = sft_recipe(os.path.join(d, "ar.yaml"), os.path.join(d, "ar"), **{"train.steps": 1,
                                                                                  "log.validation_every": 0})
        rc, out = ctx.g4.run(["train", recipe])
        ar = os.path.join(d, "ar", "checkpoints", "step-00000001")
        dg = os.path.join(d, "dg")
        if rc == 0:
            rc, out = ctx.g4.run(["convert", ar, dg, "--to-diffusion", "--canvas-length", "8"])
        ctx.models = (ar, dg, rc, out)
    return ctx.models


def dllm_args(ctx, name, *over, model=None):
    ar, dg, rc, out = models(ctx)
    if rc:
        raise RuntimeError(f"making the models failed: {out[-400:]}")
    d = ctx.dir(name)
    return ["train", dllm_recipe(os.path.join(d, "recipe.yaml"), os.path.join(d, "run"), model or dg)] + list(over)


DLLM_RECIPE_ERRORS = [
    (["dllm.blok_size=8"], ["unknown recipe key 'dllm.blok_size'"]),
    (["dllm.mode=ar"], ["'dllm.mode'", "block_diffusion"]),
    (["dllm.block_size=eight"], ["'dllm.block_size' has the wrong type"]),
    (["dllm.block_size=-8"], ["'dllm.block_size' must be >= 0"]),
    (["dllm.block_size=64"], ["dllm.block_size 64 exceeds data.seq_len 32"]),
    (["dllm.pad_block_size=64"], ["dllm.pad_block_size 64 exceeds data.seq_len 32"]),
    (["dllm.eps=1"], ["'dllm.eps' must be in"]),
    (["dllm.eps=-0.1"], ["'dllm.eps' must be in"]),
    (["dllm.eps=.nan"], ["'dllm.eps'"]),
    (["dllm.self_conditioning_p=1.5"], ["'dllm.self_conditioning_p' must be in"]),
    (["dllm.self_conditioning_p=-0.1"], ["'dllm.self_conditioning_p' must be in"]),
    (["dllm.self_conditioning_p=.nan"], ["'dllm.self_conditioning_p'"]),
    (["dllm.encoder_loss_weight=-1"], ["'dllm.encoder_loss_weight' must be >= 0"]),
    (["dllm.encoder_loss_weight=.nan"], ["'dllm.encoder_loss_weight'"]),
    (["dllm.encoder_loss_weight=.inf"], ["'dllm.encoder_loss_weight'"]),
    (["dllm.pad_block_size=-1"], ["'dllm.pad_block_size' must be >= 0"]),
    (["dllm.pad_seq_len_divisible=-1"], ["'dllm.pad_seq_len_divisible' must be >= 0"]),
    (["dllm.supervise_padding=maybe"], ["'dllm.supervise_padding' has the wrong type"]),
    (["data.prompt_tokens=0"], ["'data.prompt_tokens' must be > 0"]),
    (["data.continuation_tokens=-1"], ["'data.continuation_tokens' must be >= 0"]),
    (["data.prompt_tokens=30"], ["data.seq_len"]),
    (["data.overlong=split"], ["data.overlong"]),
    (["train.router_aux_loss=0.01"], ["train.router_aux_loss"]),
    (["seed=-1"], ["'seed'"]),
    (["seed=x"], ["'seed' has the wrong type"]),
]

for _over, _wants in DLLM_RECIPE_ERRORS:
    def _fn(ctx, over=_over, wants=_wants):
        expect_error("dllm", " ".join(over), ctx.g4, dllm_args(ctx, " ".join(over), *over), wants)
    CASES.add("dllm", " ".join(_over))(_fn)


@case("dllm", "the adapted checkpoint trains; extremes of the draws")
def _(ctx):
    for over in [(), ("dllm.self_conditioning_p=0",), ("dllm.self_conditioning_p=1",), ("dllm.eps=0",),
                 ("dllm.encoder_loss_weight=0",), ("dllm.block_size=4",), ("dllm.block_size=5",),
                 ("data.continuation_tokens=0",),
                 ("dllm.supervise_padding=true", "dllm.pad_seq_len_divisible=16")]:
        name = "trains " + (" ".join(over) or "(the base recipe)")
        args = dllm_args(ctx, name, *over)
        out = expect_success("dllm", name, ctx.g4, args)
        run = json.load(open(args[1]))["checkpoint"]["dir"]
        bad = [j for j in metric_lines(run) if "loss" in j and not all(
            isinstance(j.get(k), float) and j[k] == j[k] and abs(j[k]) != float("inf") for k in DLLM_CURVE[:1])]
        if bad or not metric_lines(run):
            record("dllm", name + ": finite losses logged", False, f"{bad[:2]} {out[-300:]}")


@case("dllm", "a diffusion objective on an autoregressive checkpoint")
def _(ctx):
    ar, dg, rc, out = models(ctx)
    expect_error("dllm", "a diffusion objective on an autoregressive checkpoint", ctx.g4,
                 dllm_args(ctx, "on-ar", model=ar), ["diffusion", "--to-diffusion"])


@case("dllm", "an SFT recipe on a diffusion checkpoint")
def _(ctx):
    ar, dg, rc, out = models(ctx)
    d = ctx.dir("sft-on-dg")
    recipe = sft_recipe(os.path.join(d, "r.yaml"), os.path.join(d, "run"), **{"train.steps": 1,
                                                                                "log.validation_every": 0})
    r = json.load(open(recipe))
    r["model"] = {"path": dg}
    write_json(recipe, r)
    expect_error("dllm", "an SFT recipe (no dllm section) on a diffusion checkpoint", ctx.g4, ["train", recipe],
                 ["diffusion", "dllm"])


@case("dllm", "g4 convert --to-diffusion refusals")
def _(ctx):
    ar, dg, rc, out = models(ctx)
    d = ctx.dir("convert")
    expect_error("dllm", "convert a diffusion checkpoint again", ctx.g4,
                 ["convert", dg, os.path.join(d, "again"), "--to-diffusion"], ["already"])
    expect_error("dllm", "convert a dense checkpoint", ctx.g4,
                 ["convert", os.path.join(ROOT, "tests/data/hf-gemma4/tiny-dense-keqv"), os.path.join(d, "dense"),
                  "--to-diffusion"], ["routed experts"])
    expect_error("dllm", "convert with canvas length 0", ctx.g4,
                 ["convert", ar, os.path.join(d, "c0"), "--to-diffusion", "--canvas-length", "0"],
                 ["--canvas-length must be > 0"])
    expect_error("dllm", "convert with a negative canvas length", ctx.g4,
                 ["convert", ar, os.path.join(d, "cneg"), "--to-diffusion", "--canvas-length", "-8"],
                 ["--canvas-length must be > 0"])
    expect_error("dllm", "convert a missing checkpoint", ctx.g4,
                 ["convert", os.path.join(d, "nothing"), os.path.join(d, "x"), "--to-diffusion"],
                 [os.path.join(d, "nothing")])


CHAT = ("data.validation_fraction=0", "tokenizer=" + CHAT_TOKENIZER)  # conversations: the chat tokenizer
DLLM_DATA = [  # name, file name, bytes, overrides, None (trains) or the error's strings
    ("text shorter than one example", "short.txt", b"In the beginning.\n", (), ["short.txt"]),
    ("empty text", "empty.txt", b"", (), ["empty.txt"]),
    ("a one-turn chat", "chat.jsonl", (json.dumps({"messages": [{"role": "user", "content": "In the beginning"},
                                                                {"role": "assistant", "content": "God created"}]})
                                       + "\n").encode() * 6, CHAT, None),
    ("a two-reply chat", "two.jsonl", (json.dumps({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}) + "\n").encode(),
     CHAT, ["two.jsonl:1"]),
    ("a chat with an image part", "img.jsonl", (json.dumps(conversation(image("a.png"), "What?")) + "\n").encode(),
     CHAT, ["img.jsonl:1"]),
    ("a chat whose prompt fills seq_len", "long.jsonl", (json.dumps({"messages": [
        {"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "God created"}]}) + "\n")
     .encode() * 4, CHAT, ["long.jsonl"]),
]

for _name, _file, _data, _over, _wants in DLLM_DATA:
    def _fn(ctx, name=_name, file=_file, data=_data, over=_over, wants=_wants):
        args = dllm_args(ctx, name, *over)
        p = os.path.join(os.path.dirname(args[1]), file)
        open(p, "wb").write(data)
        open(os.path.join(os.path.dirname(p), "a.png"), "wb").write(png(20, 12))  # the image part's
        args.append("data.train=" + p)
        if wants is None:
            expect_success("dllm", name + ": trains", ctx.g4, args)
        else:
            expect_error("dllm", name, ctx.g4, args, wants)
    CASES.add("dllm", _name)(_fn)


# ------------------------------------------------------------------------------------------------------- interrupt

def mixed_rows(d):
    """The example's image conversations (absolute paths) and tone clips of five lengths: both towers train."""
    rows = []
    for line in open(os.path.join(ROOT, "recipes/multimodal/data/images.jsonl")):
        r = json.loads(line)
        for m in r["messages"]:
            for p in m["content"] if isinstance(m["content"], list) else []:
                if "path" in p:
                    p["path"] = os.path.join(ROOT, "recipes/multimodal/data", p["path"])
        rows.append(r)
    for i, n in enumerate([1600, 3200, 4000, 8000, 12000]):
        p = os.path.join(d, f"tone{i}.wav")
        open(p, "wb").write(wav(n, rate=[16000, 8000, 44100, 16000, 22050][i]))
        rows.insert(3 * i + 1, conversation(audio(p), "How long is it?", reply=f"{n} samples."))
    path = os.path.join(d, "mixed.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def interrupt_path(ctx, label, recipe, keys):
    """The uninterrupted run of `recipe`, then kills at fixed points (after step 3, halfway through writing the
    checkpoint of step 4 and the final one) and at random moments, each resumed."""
    import time
    ref, steps = json.load(open(recipe))["checkpoint"]["dir"], json.load(open(recipe))["train"]["steps"]
    shutil.rmtree(ref, ignore_errors=True)
    t0 = time.time()
    rc, out = ctx.g4.run(["train", recipe])
    span = time.time() - t0
    if rc:
        record("interrupt", f"{label}: reference run", False, out[-500:])
        return None
    of = lambda lines: curve(lines, keys)
    want = of(metric_lines(ref))
    record("interrupt", f"{label}: reference run ({len(want)} values, {span:.1f} s)", bool(want))
    trials = [("G4_FAULT_KILL=step:3", {"G4_FAULT_KILL": "step:3"}),
              ("G4_FAULT_KILL=checkpoint:4", {"G4_FAULT_KILL": "checkpoint:4"}),
              (f"G4_FAULT_KILL=checkpoint:{steps} (the final one)", {"G4_FAULT_KILL": f"checkpoint:{steps}"})]
    trials += [(f"random #{i}", None) for i in range(ctx.kills)]
    for name, env in trials:
        run = ref + "-" + "".join(c if c.isalnum() else "-" for c in name.split()[0])
        shutil.rmtree(run, ignore_errors=True)
        log, problems = interrupted_run_problems(ctx.g4, ["train", recipe, "checkpoint.dir=" + run], env, ctx.rng,
                                                 span, run, want, of)
        record("interrupt", f"{label}: {name} {' '.join(log)}".strip(), not problems, "; ".join(problems))
    return want


@case("interrupt", "multimodal SFT")
def _(ctx):
    d = ctx.dir("mm-interrupt")
    recipe = mm_recipe(os.path.join(d, "recipe.yaml"), os.path.join(d, "ref"), mixed_rows(d),
                       **{"train.steps": 8, "train.batch_size": 2, "data.validation_fraction": 0.1,
                          "checkpoint.every": 2, "log.validation_every": 4, "log.validation_batches": 1})
    want = interrupt_path(ctx, "multimodal", recipe, MM_CURVE)
    if want is None:
        return
    run = os.path.join(d, "nocache")
    rc, out = ctx.g4.run(["train", recipe, "checkpoint.dir=" + run, "data.media_cache_mb=0"])
    got = curve(metric_lines(run), MM_CURVE)
    record("interrupt", "multimodal: without the media cache, the same losses bit for bit", rc == 0 and got == want,
           "" if rc == 0 and got == want else f"rc {rc}: {out[-300:]}")


@case("interrupt", "block diffusion")
def _(ctx):
    ar, dg, rc, out = models(ctx)
    d = ctx.dir("dllm-interrupt")
    # Self-conditioning on half the examples and two blocks per continuation: the coins and the block choice vary.
    recipe = dllm_recipe(os.path.join(d, "recipe.yaml"), os.path.join(d, "ref"), dg,
                         **{"train.steps": 24, "checkpoint.every": 2, "log.validation_every": 4,
                            "dllm.self_conditioning_p": 0.5, "data.continuation_tokens": 16})
    interrupt_path(ctx, "block diffusion", recipe, DLLM_CURVE)


def main():
    CASES.main(__doc__, Ctx, kills=4, sections="media,mmrecipe,dllm,interrupt")


if __name__ == "__main__":
    main()
