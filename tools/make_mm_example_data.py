#!/usr/bin/env python3
"""Writes recipes/multimodal/data: a tiny image+text chat dataset for `g4 train` from PNG files
Debian packages ship (cmake-data's Windows templates, git's gitweb logo, debconf's Debian logo,
adwaita-icon-theme's 48x48 icons), with questions whose answers are computed from the pixels:
the most common colour of the visible pixels, the orientation and a size class. Also writes the
tokenizer the recipe uses (tests/data/tokenizers/plain.json plus Gemma 4's media and turn tokens at
ids the tiny-mm-e fixture's vocabulary has). Offline, no Pillow: PNG is decoded here (8-bit and palette files).

    python3 tools/make_mm_example_data.py [OUT_DIR]
"""
import colorsys
import glob
import json
import os
import shutil
import struct
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = (["/usr/share/cmake-3.25/Templates/Windows/*.png", "/usr/share/gitweb/static/git-logo.png",
            "/usr/share/pixmaps/debian-logo.png"] +
           [f"/usr/share/icons/Adwaita/48x48/{d}/*.png" for d in ("apps", "devices", "places", "mimetypes")])
# The media tokens at tiny-mm-e's ids; the chat template's turn markers and the line break (which
# plain.json lacks) in free ids below its vocabulary of 320.
SPECIAL_TOKENS = {300: "<|image>", 301: "<image|>", 302: "<|audio>", 303: "<audio|>", 304: "<|image|>",
                  305: "<|audio|>", 306: "<|video|>", 307: "<|turn>", 308: "<turn|>",
                  309: "\n"}


def read_png(path):
    """(width, height, [(r, g, b, a)] row-major) as Pillow's RGBA conversion gives them."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, idat, palette, trns = 8, b"", None, None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            palette = [tuple(body[i:i + 3]) for i in range(0, len(body), 3)]
        elif kind == b"tRNS":
            trns = body
        elif kind == b"IDAT":
            idat += body
    if interlace or depth not in (1, 2, 4, 8) or (depth < 8 and ctype != 3):
        return None
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[ctype]
    bpp = max(1, channels * depth // 8)
    stride = (w * channels * depth + 7) // 8
    raw = zlib.decompress(idat)
    rows, prev = [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    pixels = []
    for line in rows:
        for x in range(w):
            if ctype == 3:
                per = 8 // depth
                idx = (line[x // per] >> (8 - depth * (x % per + 1))) & ((1 << depth) - 1)
                alpha = trns[idx] if trns and idx < len(trns) else 255
                pixels.append(palette[idx] + (alpha,))
            else:
                v = line[x * channels:(x + 1) * channels]
                rgb = (v[0],) * 3 if ctype in (0, 4) else tuple(v[:3])
                alpha = v[-1] if ctype in (4, 6) else 255
                pixels.append(rgb + (alpha,))
    return w, h, pixels


def colour_name(r, g, b):
    hue, light, sat = colorsys.rgb_to_hls(r / 255, g / 255, b / 255)
    if light < 0.15:
        return "black"
    if light > 0.9:
        return "white"
    if sat < 0.2:
        return "grey"
    for limit, name in ((15, "red"), (45, "orange"), (70, "yellow"), (170, "green"), (200, "cyan"), (260, "blue"),
                        (320, "purple"), (360, "red")):
        if hue * 360 < limit:
            return name
    return "red"


def describe(path):
    png = read_png(path)
    if png is None:
        return None
    w, h, pixels = png
    counts = {}
    for r, g, b, a in pixels:
        if a >= 128:  # the visible pixels (g4 feeds the RGB of every pixel, as transformers does)
            name = colour_name(r, g, b)
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return None
    colour = max(sorted(counts), key=lambda k: counts[k])
    shape = "square" if w == h else "wider than tall" if w > h else "taller than wide"
    size = "small" if max(w, h) < 64 else "medium" if max(w, h) <= 128 else "large"
    return {"width": w, "height": h, "colour": colour, "shape": shape, "size": size}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "recipes", "multimodal", "data")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    found = sorted(p for pattern in SOURCES for p in glob.glob(pattern) if "symbolic" not in p)
    described = [(p, d) for p, d in ((p, describe(p)) for p in found) if d is not None]
    # The few images that are not square first, then a few per colour, so that no answer dominates.
    described.sort(key=lambda pd: pd[1]["shape"] == "square")
    picked, per_colour = [], {}
    for path, d in described:
        if per_colour.get(d["colour"], 0) >= 3:
            continue
        per_colour[d["colour"]] = per_colour.get(d["colour"], 0) + 1
        picked.append((path, d))
    lines = []
    for path, d in picked:
        name = os.path.basename(os.path.dirname(path)) + "-" + os.path.basename(path)
        shutil.copyfile(path, os.path.join(out, "images", name))
        image = {"type": "image", "path": "images/" + name}
        qa = [("What colour covers most of the picture?", f"Mostly {d['colour']}."),
              ("Is the picture wider or taller?", f"It is {d['shape']}."),
              ("How big is the picture?", f"It is {d['size']}, {d['width']} by {d['height']} pixels.")]
        for question, answer in qa:
            lines.append({"messages": [{"role": "user", "content": [image, {"type": "text", "text": question}]},
                                       {"role": "assistant", "content": answer}]})
    with open(os.path.join(out, "images.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    tok = json.load(open(os.path.join(ROOT, "tests", "data", "tokenizers", "plain.json")))
    for i, content in sorted(SPECIAL_TOKENS.items()):
        tok["added_tokens"].append({"id": i, "content": content, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    with open(os.path.join(out, "tokenizer.json"), "w") as f:
        json.dump(tok, f)
    print(f"{len(picked)} images, {len(lines)} conversations: " +
          ", ".join(f"{k} {v}" for k, v in sorted(per_colour.items())))


if __name__ == "__main__":
    main()
