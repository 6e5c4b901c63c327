#!/usr/bin/env python3
"""Writes tests/data/hf-gemma4-mm/processor/reference-image.safetensors: the part of the processor
fixture's reference.safetensors (17 MB) that the image tests compare with, small enough to commit.

Kept (torchvision backend, the transformers default, only):
  img.{png,jpg,rgba}.tv.70.*  and  img.{png,jpg}.tv.280.*:
    resized_hw, num_soft_tokens, image_position_ids (whole, i64);
    pixel_values_u8 [k, 768] u8 for the patches listed in patch_index [k] i32: every valid patch at
    budget 70, every 8th (png) / 4th (jpg) at 280. The codes are exact: pixel_values ==
    u8 * float32(1/255) (checked here on the two budgets that store pixel_values too).
  img.{png,jpg,rgba}.decoded_rgb_rows [r, W, 3] u8 for the rows in decoded_row_index [r] i32
    (every 4th row of png and jpg, all of rgba).
Usage: tools/subset_image_fixture.py SHARED_PROCESSOR_DIR OUT.safetensors  (plain python, no numpy)
"""
import json
import struct
import sys


def read_safetensors(path):
    f = open(path, "rb")
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    base = 8 + n

    def get(key):
        meta = header[key]
        a, b = meta["data_offsets"]
        f.seek(base + a)
        return meta["dtype"], meta["shape"], f.read(b - a)

    return header, get


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(text)) + text)
        for b in blobs:
            out.write(b)


def main(src_dir, out_path):
    header, get = read_safetensors(src_dir + "/reference.safetensors")
    inv255 = struct.unpack("<f", struct.pack("<f", 1 / 255))[0]
    out = {}
    for img, budgets, patch_stride, row_stride in (("png", (70, 280), 8, 4), ("jpg", (70, 280), 4, 4),
                                                   ("rgba", (70,), 1, 1)):
        for budget in budgets:
            key = f"img.{img}.tv.{budget}"
            _, _, soft = get(key + ".num_soft_tokens")
            valid = struct.unpack("<q", soft)[0] * 9
            _, shape, codes = get(key + ".pixel_values_u8")
            width = shape[-1]
            if key + ".pixel_values" in header:
                _, _, floats = get(key + ".pixel_values")
                values = struct.unpack(f"<{len(codes)}f", floats)
                for i, c in enumerate(codes):
                    assert struct.unpack("<f", struct.pack("<f", c * inv255))[0] == values[i], (key, i)
            stride = 1 if budget == 70 else patch_stride
            index = list(range(0, valid, stride))
            out[key + ".patch_index"] = ("I32", [len(index)], struct.pack(f"<{len(index)}i", *index))
            out[key + ".pixel_values_u8"] = ("U8", [len(index), width],
                                             b"".join(codes[i * width:(i + 1) * width] for i in index))
            for name in ("image_position_ids", "resized_hw", "num_soft_tokens"):
                dtype, shape, data = get(f"{key}.{name}")
                out[f"{key}.{name}"] = (dtype, shape, data)
        _, shape, rgb = get(f"img.{img}.decoded_rgb")
        h, w = shape[0], shape[1]
        rows = list(range(0, h, row_stride))
        out[f"img.{img}.decoded_row_index"] = ("I32", [len(rows)], struct.pack(f"<{len(rows)}i", *rows))
        out[f"img.{img}.decoded_rgb_rows"] = ("U8", [len(rows), w, 3],
                                              b"".join(rgb[r * w * 3:(r + 1) * w * 3] for r in rows))
    write_safetensors(out_path, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
