#!/usr/bin/env python3
"""PyTorch timings of the Gemma 4 26B-A4B expert GEMMs, for comparison with build/bench_moe on the
same GPU: torch._grouped_mm (PyTorch >= 2.8 on Hopper) and a per-expert loop of torch.mm, forward
and forward+backward, bf16.

    python3 tools/bench_torch_moe.py [--tokens 4096]
"""
import argparse
import time

try:
    import torch
except ImportError:  # the device image may lack PyTorch
    torch = None


def time_ms(fn, reps=20):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ms.append((time.perf_counter() - t0) * 1e3)
    ms.sort()
    return ms[len(ms) // 2]


def report(what, ms, flops):
    print(f"  {what:<58} {ms:9.3f} ms  {flops / (ms * 1e-3) / 1e12:7.1f} TFLOP/s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()
    if torch is None or not torch.cuda.is_available():
        print("bench_torch_moe: PyTorch with CUDA is not available")
        return
    T, K, E, H, I = args.tokens, 8, 128, 2816, 704
    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}: T={T}, top-{K} of {E}, H={H}, I={I}")
    # The same kind of routing as bench_moe: top-k of a softmax of random logits.
    probs = torch.softmax(torch.randn(T, E, device=dev), dim=-1)
    idx = torch.topk(probs, K, dim=-1).indices.flatten()
    counts = torch.bincount(idx, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)  # end offset of each expert's rows
    N = int(offs[-1])
    counts_host = counts.tolist()
    print(f"rows per expert: min {min(counts_host)}, max {max(counts_host)}, mean {N // E}")

    xs = torch.randn(N, H, device=dev, dtype=torch.bfloat16)
    act = torch.randn(N, I, device=dev, dtype=torch.bfloat16)
    gate_up = (torch.randn(E, H, 2 * I, device=dev) * 0.02).to(torch.bfloat16)
    down = (torch.randn(E, I, H, device=dev) * 0.02).to(torch.bfloat16)
    f_up, f_down = 2.0 * N * H * 2 * I, 2.0 * N * I * H

    if hasattr(torch, "_grouped_mm"):
        print("torch._grouped_mm")
        try:
            report("gate_up fwd  [N,2816] x [E,2816,1408]", time_ms(lambda: torch._grouped_mm(xs, gate_up, offs=offs)),
                   f_up)
            report("down fwd     [N,704] x [E,704,2816]", time_ms(lambda: torch._grouped_mm(act, down, offs=offs)),
                   f_down)
            for name, x, w, f in (("gate_up", xs, gate_up, f_up), ("down", act, down, f_down)):
                xg = x.detach().requires_grad_()
                wg = w.detach().requires_grad_()
                dy = torch.randn(N, w.shape[2], device=dev, dtype=torch.bfloat16)

                def fwd_bwd():
                    y = torch._grouped_mm(xg, wg, offs=offs)
                    y.backward(dy)

                report(f"{name} fwd + bwd", time_ms(fwd_bwd), 3 * f)
        except RuntimeError as e:
            print(f"  torch._grouped_mm failed: {e}")
    else:
        print("torch._grouped_mm: not in this PyTorch")

    print("per-expert torch.mm loop")
    starts = [0] + torch.cumsum(counts, 0).tolist()

    def loop(x, w):
        out = torch.empty(x.shape[0], w.shape[2], device=dev, dtype=x.dtype)
        for e in range(E):
            a, b = starts[e], starts[e + 1]
            if b > a:
                torch.mm(x[a:b], w[e], out=out[a:b])
        return out

    report("gate_up fwd", time_ms(lambda: loop(xs, gate_up)), f_up)
    report("down fwd", time_ms(lambda: loop(act, down)), f_down)

    print("dense torch.nn.functional.linear (bf16)")
    for m, k, n in ((T, 2816, 2112), (T, 2816, 4096), (T, 4096, 2816), (T, 2816, 2816)):
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        w = (torch.randn(n, k, device=dev) * 0.02).to(torch.bfloat16)
        report(f"linear [{m},{k}] x [{k},{n}]", time_ms(lambda: torch.nn.functional.linear(a, w)), 2.0 * m * k * n)


if __name__ == "__main__":
    main()
