#!/usr/bin/env python3
"""Times PyTorch's scaled_dot_product_attention (each backend that accepts the shape: flash,
cuDNN, efficient, math) on the shapes of bench/attention_bench.cpp, with the same FLOP convention:
forward = 4 * pairs * d * nH (pairs = S^2/2 causal, the visible pairs for a sliding window),
backward = 2.5 x forward, forward + backward = 3.5 x forward. GQA is run by expanding k and v to
nH heads (every backend accepts that); a sliding window needs a boolean mask (flash refuses masks).
With --g4 FILE (bench_attention's output from the same session), it ends with the issue's yardstick:
g4's head-dim-512 causal forward + backward (the op's backward, marked *) against the best
backend's head-dim-256 causal forward + backward at each S, as a ratio.
Usage: python3 tools/bench_torch_attention.py [iters] [--g4 FILE]"""
import argparse
import re

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)]


def time_ms(fn, iters):
    for _ in range(2):
        fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters


# Packed-row case: documents of these lengths (causal within each, none across).
DOCS_4096 = [1024, 512, 1536, 768, 256]


# (S, nH, d, what) -> the best forward + backward TFLOP/s of any backend, and its name.
BEST = {}


def bench(S, nH, nKV, d, window, iters, docs=None):
    dev, dt = "cuda", torch.bfloat16
    pairs = S * S / 2 if window == 0 else sum(min(i + 1, window) for i in range(S))
    if docs:
        pairs = sum(n * (n + 1) / 2 for n in docs)
    fwd_flops = 4.0 * pairs * d * nH
    std_qk = d ** -0.25
    q = (torch.randn(1, S, nH, d, device=dev) * std_qk).to(dt).transpose(1, 2)
    k = (torch.randn(1, S, nKV, d, device=dev) * std_qk).to(dt).transpose(1, 2)
    v = torch.randn(1, S, nKV, d, device=dev).to(dt).transpose(1, 2)
    k = k.repeat_interleave(nH // nKV, dim=1)
    v = v.repeat_interleave(nH // nKV, dim=1)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    dout = torch.randn(1, nH, S, d, device=dev, dtype=dt)
    mask = None
    if window > 0:
        i = torch.arange(S, device=dev)
        mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    if docs:
        doc = torch.repeat_interleave(torch.arange(len(docs), device=dev), torch.tensor(docs, device=dev))
        i = torch.arange(S, device=dev)
        mask = (i[None, :] <= i[:, None]) & (doc[None, :] == doc[:, None])
    what = f"window {window}" if window else f"{len(docs)} documents" if docs else "causal"
    for name, backend in BACKENDS:
        if name == "math" and S * S * nH * 4 > 8 << 30:
            continue  # the S x S scores would not fit
        try:
            with sdpa_kernel(backend):
                def fwd():
                    with torch.no_grad():
                        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                              scale=1.0)

                def fwd_bwd():
                    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=1.0)
                    torch.autograd.grad(out, (q, k, v), dout)

                f_ms = time_ms(fwd, iters)
                fb_ms = time_ms(fwd_bwd, iters)
        except RuntimeError as e:
            print(f"torch {name:9s} S={S:<5d} nH={nH:<2d} d={d:<3d} {what:12s} not supported: {str(e).splitlines()[0][:80]}")
            torch.cuda.empty_cache()
            continue
        fb_tflops = 3.5 * fwd_flops / fb_ms * 1e-9
        print(f"torch {name:9s} S={S:<5d} nH={nH:<2d} nKV={nKV:<2d} d={d:<3d} {what:12s} fwd {f_ms:8.3f} ms "
              f"{fwd_flops / f_ms * 1e-9:6.1f} TFLOP/s | fwd+bwd {fb_ms:8.3f} ms {fb_tflops:6.1f} TFLOP/s")
        if fb_tflops > BEST.get((S, nH, d, what), (0.0, ""))[0]:
            BEST[(S, nH, d, what)] = (fb_tflops, name)
        torch.cuda.empty_cache()


G4_LINE = re.compile(r"^g4\s+S=(\d+)\s+nH=(\d+)\s+nKV=\d+\s+d=(\d+)\s+(.+?)\s+fwd\s+[\d.]+ ms\s+([\d.]+) TFLOP/s"
                     r" \| bwd (.+?)\| fwd\+bwd\s+[\d.]+ ms\s+([\d.]+) TFLOP/s")


def g4_rates(text):
    """(S, nH, d, what) -> (forward TFLOP/s, forward + backward TFLOP/s with the op's backward) from
    bench_attention's lines (each shape has one line per backward; the op's is marked *)."""
    rates = {}
    for line in text.splitlines():
        m = G4_LINE.match(line)
        if m and "*" in m.group(6):
            key = (int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4).strip())
            rates[key] = (float(m.group(5)), float(m.group(7)))
    return rates


def yardstick(g4, best):
    """Lines comparing g4's d 512 causal rates with the best backend's d 256 causal forward + backward."""
    lines = []
    for S in (4096, 8192):
        ours, theirs = g4.get((S, 16, 512, "causal")), best.get((S, 16, 256, "causal"))
        if ours is None or theirs is None:
            lines.append(f"S={S}: missing ({'no g4 d 512 line' if ours is None else 'no d 256 backend'})")
            continue
        lines.append(f"S={S}: g4 d 512 forward {ours[0]:.1f} TFLOP/s; forward + backward {ours[1]:.1f} = "
                     f"{100 * ours[1] / theirs[0]:.1f}% of {theirs[1]}'s d 256 {theirs[0]:.1f}")
    return lines


def main():
    parser = argparse.ArgumentParser(description="PyTorch SDPA on bench_attention's shapes")
    parser.add_argument("iters", nargs="?", type=int, default=10)
    parser.add_argument("--g4", metavar="FILE", help="bench_attention's output from the same session")
    args = parser.parse_args()
    iters = args.iters
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    for S in (4096, 8192):
        bench(S, 16, 8, 256, 0, iters)
        bench(S, 16, 8, 256, 1024, iters)
        bench(S, 16, 2, 512, 0, iters)
    bench(4096, 16, 2, 512, 0, iters, DOCS_4096)
    if args.g4 is not None:
        with open(args.g4) as f:
            g4 = g4_rates(f.read())
        print("\ng4 (bench_attention, this session) against the best SDPA backend:")
        for line in yardstick(g4, BEST):
            print("  " + line)


if __name__ == "__main__":
    main()
